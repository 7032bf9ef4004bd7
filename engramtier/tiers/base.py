"""The storage-tier interface: fixed-size opaque byte rows addressed by global row id.

A tier only moves bytes; the model decodes them. Every tier answers the same six calls so that the
runtime can stack any of them into a hierarchy:

    read(ids, out)      copy the rows ``ids`` (int64) into ``out`` (uint8 ``[len(ids), row_bytes]``)
    write(ids, rows)    store rows under ``ids``
    contains(ids)       bool mask: which of ``ids`` this tier can read now
    capacity_rows       how many rows it can hold
    stats()             counters (reads, rows and bytes read, writes) plus tier-specific facts
    close()             release memory, threads and files

and carries a ``model`` (a `engramtier.cache.timing.TierModel`) saying what a read costs, which the
simulator uses and calibration fits. Cache tiers (gpu, dram, cxl) hold a subset of the table in slots:
see `engramtier.tiers.slab`. The nvme tier holds every row and is the table's source of truth.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from engramtier.cache.timing import tier_model
from engramtier.errors import EngramTierError


def default_model(name: str) -> Any:
    """The published-figure `TierModel` called ``name`` (hbm, dram, cxl, nvme, remote)."""

    return tier_model(name)


class Tier(ABC):
    """A store of ``row_bytes``-byte rows for a table of ``n_table_rows`` rows."""

    name = "tier"

    def __init__(self, n_table_rows: int, capacity_rows: int, row_bytes: int, model: Any) -> None:
        if n_table_rows <= 0 or row_bytes <= 0:
            raise EngramTierError(
                f"{self.name} tier: table rows ({n_table_rows}) and row_bytes ({row_bytes}) must be positive"
            )
        if not 0 < capacity_rows <= n_table_rows:
            raise EngramTierError(
                f"{self.name} tier: capacity_rows must lie in 1..{n_table_rows} (the table's rows), "
                f"got {capacity_rows}"
            )
        self.n_table_rows = int(n_table_rows)
        self.capacity_rows = int(capacity_rows)
        self.row_bytes = int(row_bytes)
        self.model = model
        self.reads = self.rows_read = self.writes = self.rows_written = 0

    @abstractmethod
    def read(self, ids: Any, out: Any) -> None:
        """Copy rows ``ids`` into ``out[i]``; every id must be held (see `contains`)."""

    @abstractmethod
    def write(self, ids: Any, rows: Any) -> None:
        """Store ``rows[i]`` under ``ids[i]``."""

    @abstractmethod
    def contains(self, ids: Any) -> np.ndarray:
        """Bool mask of the ``ids`` this tier holds."""

    def stats(self) -> dict:
        return {
            "tier": self.name,
            "capacity_rows": self.capacity_rows,
            "row_bytes": self.row_bytes,
            "reads": self.reads,
            "rows_read": self.rows_read,
            "bytes_read": self.rows_read * self.row_bytes,
            "writes": self.writes,
            "rows_written": self.rows_written,
            "bytes_written": self.rows_written * self.row_bytes,
        }

    def report(self) -> dict:
        """Facts of its own a tier adds to the runtime's per-tier report (`TieredTable.tier_stats`)."""
        return {}

    def close(self) -> None:  # noqa: B027 (a default, not abstract: a tier holding nothing need not override it)
        """Release what the tier holds; the base has nothing to release."""

    def __enter__(self) -> "Tier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _count_read(self, n: int) -> None:
        self.reads += 1
        self.rows_read += n

    def _count_write(self, n: int) -> None:
        self.writes += 1
        self.rows_written += n

    def _ids(self, ids: Any) -> np.ndarray:
        """``ids`` as a contiguous int64 numpy array, refused when any id lies outside the table."""
        if hasattr(ids, "detach"):  # a torch tensor: ids are decided on the host
            ids = ids.detach().cpu().numpy()
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_table_rows):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise EngramTierError(
                f"{self.name} tier: row id {bad} lies outside the table's {self.n_table_rows} rows; "
                "the ids were computed for another table"
            )
        return ids

    def _host_rows(self, rows: Any, n: int, what: str) -> np.ndarray:
        """``rows`` (numpy or CPU torch, uint8 ``[n, row_bytes]``) as a numpy view, refused otherwise.

        ``out`` buffers must be C-contiguous so that a view writes through to the caller's memory.
        """
        if hasattr(rows, "detach"):
            if rows.device.type != "cpu":
                raise EngramTierError(
                    f"{self.name} tier: {what} is on {rows.device}; this tier reads and writes host memory"
                )
            rows = rows.detach().numpy()
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.shape != (n, self.row_bytes):
            shape = getattr(rows, "shape", None)
            dtype = getattr(rows, "dtype", type(rows).__name__)
            raise EngramTierError(
                f"{self.name} tier: {what} must be uint8 of shape ({n}, {self.row_bytes}), "
                f"got {dtype} {shape}"
            )
        if not rows.flags.c_contiguous:
            raise EngramTierError(f"{self.name} tier: {what} must be C-contiguous; pass np.ascontiguousarray(...)")
        return rows


def check_fits(name: str, nbytes: int, available: int, where: str) -> None:
    """Refuse to allocate ``nbytes`` when only ``available`` bytes are free in ``where``."""
    if nbytes > available:
        raise EngramTierError(
            f"{name} tier: needs {nbytes / 2**30:.2f} GiB but only {available / 2**30:.2f} GiB are free "
            f"in {where}; lower capacity_rows"
        )
