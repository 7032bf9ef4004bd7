"""Opening a tiered table: every tier a hierarchy names, the table over them, and serving a model.

This is the composition root: the only place that knows the concrete tiers. It builds the backing
store (the local LMDB table, or a remote store behind its failover rule), the cache tiers (gpu, dram
or cxl slabs, as each tier's `storage` says), and hands them to `TieredTable`
(`engramtier.tiers.tiered`), which knows them only by their interface. Where a trained run's LMDB
copy lives is decided here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from engramtier.cache.hierarchy import Hierarchy, TierSpec
from engramtier.cache.policy import PolicyContext
from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.base import Tier
from engramtier.tiers.cxl import CxlTier
from engramtier.tiers.dram import GATHERS, DramTier
from engramtier.tiers.gpu import GpuTier
from engramtier.tiers.lmdb_table import FlatTableRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import FailoverStore, open_remote, split_rule
from engramtier.tiers.slab import SlabTier
from engramtier.tiers.step import PARALLEL_MIN_ROWS
from engramtier.tiers.tiered import TieredTable
from engramtier.trace.layout import SubtableLayout

# The slab behind each of a cache tier's `storage` names (`engramtier.cache.hierarchy.CACHE_STORAGE`).
STORAGE = {"gpu": GpuTier, "dram": DramTier, "cxl": CxlTier}

DEFAULT_TOP_FRACTION, DEFAULT_MIDDLE_FRACTION = 1 / 64, 1 / 8
LMDB_TABLE = "table.lmdb"  # the LMDB copy of a run's flat table, built next to it when asked for


def default_hierarchy(n_rows: int) -> Hierarchy:
    """gpu (LRU, 1/64 of the rows) -> dram (S3-FIFO, 1/8) -> nvme, inclusive: the serving default."""
    top = max(1, int(n_rows * DEFAULT_TOP_FRACTION))
    middle = max(20, int(n_rows * DEFAULT_MIDDLE_FRACTION))  # S3-FIFO's small queue needs 20 rows
    if middle >= n_rows:
        raise EngramTierError(f"default hierarchy: a table of {n_rows} rows is too small to tier; give --hierarchy")
    return Hierarchy.from_dict({"mode": "inclusive", "tier": [
        {"name": "gpu", "capacity": top, "policy": "lru", "model": "hbm"},
        {"name": "dram", "capacity": middle, "policy": "s3fifo", "model": "dram"},
        {"name": "nvme", "model": "nvme"},
    ]})


def lmdb_table_for(run_dir: str | os.PathLike, progress: bool = False) -> str:
    """The LMDB copy of a run's flat table (``RUN/table.lmdb``), built on first use (resumable); a run
    without a flat table (an imported checkpoint's) has only the LMDB one, which opening checks."""

    path = Path(run_dir) / LMDB_TABLE
    if not (Path(run_dir) / "table").exists() and path.is_dir():
        return str(path)
    build_lmdb_table(FlatTableRows(Path(run_dir) / "table"), path, progress=progress)
    return str(path)


def open_store(spec: TierSpec, table_path: str | os.PathLike | None, *, fingerprint: str | None, readers: int = 4,
               shape: tuple[int, int] | None = None) -> Tier:
    """The hierarchy's backing store: the LMDB table at ``table_path``, or, when its ``storage`` table
    names a backend, that remote store behind its failover rule (`FailoverStore`; the LMDB table is
    the fallback for ``on_failure = "fallback"``, also when the store is down at open). A remote store
    has the sizes of the local table, or ``shape`` (rows, row bytes) when there is none."""
    local = NvmeTier(table_path, readers=readers, expect_fingerprint=fingerprint, model=spec.model) \
        if table_path is not None else None
    if not spec.storage:
        if local is None:
            raise EngramTierError(f"tier '{spec.name}': the backing store is a local LMDB table, but no table path "
                                  "was given; pass --table")
        return local
    try:
        options, rule = split_rule(spec.storage)
        rows, row_bytes = (local.n_table_rows, local.row_bytes) if local is not None else shape
        if local is not None:
            fingerprint = local.manifest["fingerprint"]
        where = f"tier '{spec.name}' storage"

        def connect() -> Any:  # now, and again while the store is down under "fallback"
            return open_remote(options, n_table_rows=rows, row_bytes=row_bytes, model=spec.model,
                               fingerprint=fingerprint, where=where)

        fallback = local if rule.get("on_failure") == "fallback" else None
        if local is not None and fallback is None:
            local.close()
            local = None
        return FailoverStore(connect, **rule, fallback=fallback, backend=str(options.get("backend")), where=where,
                             model=spec.model)
    except BaseException:
        if local is not None:
            local.close()
        raise


def cache_tier(spec: TierSpec, n_rows: int, capacity: int, row_bytes: int, device: torch.device,
               dram_gather: str, first: bool) -> SlabTier:
    """The cache tier ``spec`` names, of ``capacity`` rows, in the storage it says; a gpu tier lives on
    ``device`` (emulated in host memory on a CPU) and must be the ``first`` tier there."""
    if spec.cache_storage is None:
        raise EngramTierError(
            f"tiered table: cannot tell where cache tier '{spec.name}' lives (its model '{spec.model.name}' names no "
            f"storage); give it storage = one of {', '.join(repr(s) for s in STORAGE)}"
        )
    kind = STORAGE[spec.cache_storage]
    options: dict[str, Any] = {"model": spec.model, "parallel_min_rows": PARALLEL_MIN_ROWS}
    if kind is GpuTier and not first and device.type == "cuda":
        raise EngramTierError(f"tier '{spec.name}': a gpu tier must be the first (fastest) tier of the hierarchy")
    if kind is GpuTier:
        options["device"] = device if device.type == "cuda" else "cpu"
    if kind is DramTier:
        options["gather"] = dram_gather
        if dram_gather == "uva":
            options["device"] = device
    try:
        return kind(n_rows, capacity, row_bytes, **options)
    except EngramTierError as err:
        raise EngramTierError(f"tier '{spec.name}': {err}") from None


def tiered_table(hierarchy: Hierarchy | Mapping[str, Any], store: Tier, *, device: Any = None,
                 dram_gather: str = "copy", **options: Any) -> TieredTable:
    """A `TieredTable` over ``store`` with the hierarchy's cache tiers built here; ``device``: where rows
    are delivered (default cuda if available); ``dram_gather``: how a dram tier's rows reach a CUDA
    device, "copy" (a CPU gather into pinned staging, then one copy) or "uva" (the GPU gathers them out
    of the pinned slab, `engramtier.tiers.uva`); ``options`` go to `TieredTable`. The table owns the
    tiers once made; if it cannot be made, the cache tiers are closed (the store stays the caller's)."""
    hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy.from_dict(hierarchy)
    refuse_unknown([dram_gather], GATHERS, "tiered table", "dram_gather")
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngramTierError(f"tiered table: device {device} requested but CUDA is not available; use --device cpu")
    capacities = hierarchy.capacities(store.n_table_rows, store.row_bytes)
    caches: list[SlabTier] = []
    try:
        for i, (spec, rows) in enumerate(zip(hierarchy.caches, capacities, strict=True)):
            caches.append(cache_tier(spec, store.n_table_rows, rows, store.row_bytes, device, dram_gather, i == 0))
        return TieredTable(hierarchy, store, caches, device=device, report={"dram_gather": dram_gather}, **options)
    except BaseException:
        for tier in caches:
            tier.close()
        raise


def open_table(hierarchy: Hierarchy | Mapping[str, Any], table_path: str | os.PathLike | None, *,
               expect_fingerprint: str | None = None, readers: int = 4, **options: Any) -> TieredTable:
    """A `TieredTable` over the LMDB table at ``table_path`` (or the remote store the hierarchy's last
    tier names, see `open_store`), refused if built for another hash fingerprint; ``options`` go to
    `tiered_table`."""
    hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy.from_dict(hierarchy)
    store = open_store(hierarchy.store, table_path, fingerprint=expect_fingerprint, readers=readers)
    try:
        return tiered_table(hierarchy, store, **options)
    except BaseException:
        store.close()
        raise


def open_for_model(model: Any, table_path: str | os.PathLike | None, hierarchy: Hierarchy | None = None, *,
                   device: Any = None, readers: int = 4, record_trace: bool = False,
                   compute_window_s: float | None = None) -> TieredTable:
    """A TieredTable serving ``model`` (an `EngramLM`): its fingerprint checked, one step per forward.
    ``table_path``: the LMDB table (optional when the hierarchy's store is remote); ``compute_window_s``:
    each step's prefetch window, for a tier that drops late rows."""
    config = model.config.engram
    if config is None:
        raise EngramTierError("tiered table: this model has no Engram layers, so there is no table to serve")
    hierarchy = hierarchy or default_hierarchy(model.hasher.n_rows)
    store = open_store(hierarchy.store, table_path, fingerprint=config.fingerprint, readers=readers,
                       shape=(model.hasher.n_rows, model.config.format.row_bytes))
    try:
        if store.row_bytes != model.config.format.row_bytes or store.n_table_rows != model.hasher.n_rows:
            raise EngramTierError(
                f"tiered table: the table holds {store.n_table_rows} rows of {store.row_bytes} B, the model reads "
                f"{model.hasher.n_rows} rows of {model.config.format.row_bytes} B; rebuild it from the model's table"
            )
        return tiered_table(hierarchy, store, device=device, layers_per_step=len(config.layer_ids),
                            ctx=PolicyContext(n_keys=store.n_table_rows, layout=SubtableLayout.of_hasher(model.hasher)),
                            record_trace=record_trace, compute_window_s=compute_window_s)
    except BaseException:
        store.close()
        raise
