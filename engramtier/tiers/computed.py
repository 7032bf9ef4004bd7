"""A store whose rows are computed from their ids: a table of any size without storage.

It answers the question the runtime's scale work asks, what serving a table of hundreds of millions
(or 2**33) rows costs in bookkeeping, on a machine that could not hold the table: every row is a
deterministic function of its id and a seed (a mix of the two, one 64-bit word at a time), so reads
are exact and checkable (`expected_rows`) and cost a few nanoseconds per byte, like a warm memory map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier, default_model


@njit(nogil=True, cache=True)
def _fill(ids, seed, out):
    for i in range(ids.size):
        x = np.uint64(ids[i]) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(seed)
        for b in range(out.shape[1]):
            if b % 8 == 0:  # a splitmix64 step per word
                x += np.uint64(0x9E3779B97F4A7C15)
                z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                z ^= z >> np.uint64(31)
            out[i, b] = np.uint8((z >> np.uint64(8 * (b % 8))) & np.uint64(0xFF))


def expected_rows(ids: np.ndarray, row_bytes: int, seed: int = 0) -> np.ndarray:
    """The rows a `ComputedStore` of this ``row_bytes`` and ``seed`` holds under ``ids``."""
    out = np.empty((len(ids), row_bytes), np.uint8)
    _fill(np.ascontiguousarray(ids, np.int64), seed, out)
    return out


class ComputedStore(Tier):
    """Every row of an ``n_rows`` table of ``row_bytes``-byte rows, computed from its id and ``seed``;
    read-only. ``model``: what its reads cost for the simulator (default: nvme's)."""

    name = "computed"

    def __init__(self, n_rows: int, row_bytes: int, seed: int = 0, model: Any = None) -> None:
        super().__init__(n_rows, n_rows, row_bytes, model or default_model("nvme"))
        self.seed = int(seed)
        self.manifest = {"fingerprint": None, "source": f"rows computed from their ids, seed {self.seed}"}

    def read(self, ids: Any, out: Any) -> None:
        ids = self._ids(ids)
        _fill(ids, self.seed, self._host_rows(out, ids.size, "out"))
        self._count_read(ids.size)

    def write(self, ids: Any, rows: Any) -> None:
        raise EngramTierError("computed store: its rows are computed from their ids and cannot be written")

    def contains(self, ids: Any) -> np.ndarray:
        return np.ones(self._ids(ids).size, dtype=bool)
