"""Opening a tiered table: the backing store a hierarchy names, the table over it, and serving a model.

The factories sit apart from `TieredTable` (`engramtier.tiers.tiered`) so that the step pipeline knows
tiers only by their interface: which store backs a hierarchy (the local LMDB table, or a remote store
behind its failover rule) and where a trained run's LMDB copy lives are decided here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from engramtier.cache.hierarchy import Hierarchy, TierSpec
from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import FailoverStore, open_remote, split_rule
from engramtier.tiers.tiered import TieredTable

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
    from engramtier.tiers.lmdb_table import FlatTableRows, build_lmdb_table

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


def open_table(hierarchy: Hierarchy | Mapping[str, Any], table_path: str | os.PathLike | None, *,
               expect_fingerprint: str | None = None, readers: int = 4, **options: Any) -> TieredTable:
    """A `TieredTable` over the LMDB table at ``table_path`` (or the remote store the hierarchy's last
    tier names, see `open_store`), refused if built for another hash fingerprint; ``options`` go to
    `TieredTable`."""
    hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy.from_dict(hierarchy)
    store = open_store(hierarchy.store, table_path, fingerprint=expect_fingerprint, readers=readers)
    try:
        return TieredTable(hierarchy, store, **options)
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
        return TieredTable(hierarchy, store, device=device, layers_per_step=len(config.layer_ids),
                           record_trace=record_trace, compute_window_s=compute_window_s)
    except BaseException:
        store.close()
        raise
