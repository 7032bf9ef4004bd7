"""Which sub-table, order and head a global row id belongs to, from what a trace's meta records.

A table is ``layers x orders x heads`` sub-tables laid end to end (`engramtier.model.hashing`), each
with its own prime size, so a row's sub-table is found by bisecting the cumulative sizes. Statistics
(per-order skew) and order-aware policies both need this mapping; it lives here, read from the meta a
trace or the runtime already carries, so that neither needs the hasher itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engramtier.errors import EngramTierError

META_KEYS = ("subtable_sizes", "layer_ids", "n_heads", "max_ngram")


@dataclass(frozen=True)
class SubtableLayout:
    """Sub-table sizes in table order (layer-major, then order, then head)."""

    sizes: np.ndarray
    layer_ids: tuple[int, ...]
    n_heads: int
    max_ngram: int

    @property
    def orders(self) -> range:
        return range(2, self.max_ngram + 1)

    @property
    def n_rows(self) -> int:
        return int(self.sizes.sum())

    @classmethod
    def from_meta(cls, meta: dict, n_table_rows: int, where: str) -> "SubtableLayout | None":
        """The layout a trace meta records; None when it records none (a trace of raw row ids);
        refused unless it describes a table of ``n_table_rows`` rows."""
        if not all(k in meta for k in META_KEYS):
            return None
        try:
            sizes = np.asarray(meta["subtable_sizes"], np.int64).reshape(-1)
            layers, n_heads, max_ngram = tuple(int(x) for x in meta["layer_ids"]), int(meta["n_heads"]), int(meta["max_ngram"])
        except (TypeError, ValueError, OverflowError):
            sizes = layers = None
        if (sizes is None or not sizes.size or n_heads < 1 or max_ngram < 2
                or len(layers) * (max_ngram - 1) * n_heads != sizes.size or sizes.min() < 1
                or sizes.sum() != n_table_rows):
            raise EngramTierError(
                f"{where}: the trace meta's sub-table layout (subtable_sizes, layer_ids, n_heads, max_ngram) does "
                f"not describe its table of {n_table_rows} rows; the trace was damaged or hand-edited, rebuild it"
            )
        return cls(sizes, layers, n_heads, max_ngram)

    @classmethod
    def of_hasher(cls, hasher) -> "SubtableLayout":
        """The layout of the table an `engramtier.model.hashing.NgramHasher` addresses."""
        config = hasher.config
        return cls(hasher.subtable_sizes, config.layer_ids, config.n_heads, config.max_ngram_size)

    def to_meta(self) -> dict:
        return {"subtable_sizes": self.sizes.tolist(), "layer_ids": list(self.layer_ids), "n_heads": self.n_heads,
                "max_ngram": self.max_ngram}

    def subtable_of(self, row_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.cumsum(self.sizes), row_ids, side="right")

    def order_of(self, row_ids: np.ndarray) -> np.ndarray:
        """The n-gram order (2..max_ngram) of each row, int8."""
        return (2 + (self.subtable_of(row_ids) // self.n_heads) % (self.max_ngram - 1)).astype(np.int8)

    def head_of(self, row_ids: np.ndarray) -> np.ndarray:
        return (self.subtable_of(row_ids) % self.n_heads).astype(np.int16)
