"""Filling a remote store from a local table, and timing its reads: `engramtier remote populate | calibrate`.

Both drive any backend through `RemoteTier`'s own methods (`done_blocks`, `write`, `read`), so they are
written once, here, not per backend; and they are operations on a tier, not part of one, so
`engramtier.tiers.remote.base` stays the tier's format alone. `populate_remote` resumes at the blocks
the store lacks (each block commits in one atomic step); `calibrate_remote` fits the `TierModel` the
simulator plans with.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from engramtier.cache.timing import calibrate
from engramtier.errors import EngramTierError
from engramtier.tiers.remote.base import RemoteTier

POPULATE_ROWS = 1 << 16


def populate_remote(source_rows: Any, tier: RemoteTier, *, batch_rows: int = POPULATE_ROWS,
                    progress: bool = True) -> int:
    """Copy every row of ``source_rows`` (an `NvmeTier`, or anything with ``read(ids, out)``) into ``tier``.

    Resumable: writes only the blocks the store has not committed, each in one atomic step, in runs of
    about ``batch_rows`` rows read from the source at once. Returns the rows written by this call. A store
    recorded as populated from another table (its manifest differs from ``source_rows.manifest``) is
    refused, finished or not: resuming it would mix the two tables' rows.
    """
    n, rb = tier.n_table_rows, tier.row_bytes
    shape = (getattr(source_rows, "n_table_rows", n), getattr(source_rows, "row_bytes", rb))
    if shape != (n, rb):
        raise EngramTierError(
            f"populate_remote: the source has {shape[0]} rows of {shape[1]} B, "
            f"the remote tier {n} rows of {rb} B; open the tier with the source's sizes"
        )
    recorded, source = tier.manifest.get("table"), getattr(source_rows, "manifest", None)
    if recorded is not None and source is not None and recorded != source:
        # resuming would mix two tables' rows (or call another table's rows this one's): same sizes and
        # fingerprint, other values (a retrained table, another seed)
        differ = sorted(k for k in set(recorded) | set(source) if recorded.get(k) != source.get(k))
        raise EngramTierError(
            f"remote tier {tier.where} prefix '{tier.key_prefix}' holds rows populated from another table (its "
            f"recorded manifest differs in {', '.join(map(str, differ))}); populate another key_prefix, or delete "
            "this prefix's keys from the store and populate it again"
        )
    if recorded is None and source is not None:
        tier.record_source(source)
    missing = np.flatnonzero(~tier.done_blocks())
    per_batch = max(1, batch_rows // tier.block_rows)
    buffer = np.empty((per_batch * tier.block_rows, rb), np.uint8)
    written = 0
    with tqdm(total=n, initial=n - tier.rows_in(missing), unit="row", disable=not progress,
              desc=f"populate {tier.key_prefix}") as bar:
        # runs of consecutive missing blocks, at most per_batch long: one source read each
        breaks = np.flatnonzero((np.diff(missing) != 1) | (np.arange(1, missing.size) % per_batch == 0)) + 1
        for run in np.split(missing, breaks) if missing.size else []:
            first, last = int(run[0]) * tier.block_rows, min(int(run[-1] + 1) * tier.block_rows, n)
            ids = np.arange(first, last, dtype=np.int64)
            source_rows.read(ids, buffer[: ids.size])
            tier.write(ids, buffer[: ids.size])
            written += ids.size
            bar.update(ids.size)
    return written


def calibrate_remote(tier: RemoteTier, sizes: Iterable[int] = (1, 16, 256, 4096, 16384), *, repeats: int = 5,
                     seed: int = 0) -> Any:
    """Time reads of random rows at each batch size (median of ``repeats``) and fit a `TierModel`.

    One read is one round of requests, one per block touched, sent together: hence the parallelism of
    ``block_rows`` rows per request.
    """

    rng = np.random.default_rng(seed)
    samples = []
    for size in sizes:
        ids = rng.integers(0, tier.n_table_rows, int(size))
        out = np.empty((ids.size, tier.row_bytes), np.uint8)
        tier.read(ids, out)  # warm the connection
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            tier.read(ids, out)
            seconds.append(time.perf_counter() - start)
        samples.append((ids.size, tier.row_bytes, statistics.median(seconds)))
    return calibrate(samples, name="remote", parallelism=tier.block_rows)
