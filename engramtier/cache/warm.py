"""Warm start: cache tiers that open holding the rows a frequency profile ranks hottest.

A cold cache misses every row's first request, so a run's first steps stall on the slow tiers until
the policies have met the hot set. Engram rows are addressed by tokens alone, so a profile (requests
per table row, from a profiling run, another trace or an earlier part of the workload) names that set
before serving starts. A tier declared with ``warm`` opens holding its capacity's worth of them:

inclusive   each tier takes the hottest rows of its own profile (with one profile, a lower tier's set
            holds the upper tier's)
exclusive   each tier takes the hottest rows of its profile that no tier above took (with one
            profile, the next-hottest slice), so no row is held twice

Only rows the profile counts (count > 0) are taken, ranked as `static` ranks its hot set (ties: the
lower row id first). They enter through the policy's own path, coldest first, each admitted and then
looked up once (`Engine.warm`): the hottest end up most recent, most frequent, most protected, in a
state the policy could reach by serving requests, and an admission filter may decline some. The
simulator and the runtime both call `warm_rows` and `Engine.warm`, so they start from one state and
their hit counts stay equal. Online policies only: an offline one (belady, lookahead) places by the
future, and static preloads its own hot set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policies.static import hot_set
from engramtier.errors import EngramTierError
from engramtier.trace.stats import row_counts
from engramtier.trace.tracefile import TraceReader

NOT_WARMABLE = {
    "belady": "it places rows by their next use, which a warm start cannot give",
    "lookahead": "it places rows by their next use, which a warm start cannot give",
    "static": "it preloads its own hot set from its profile already",
}


def load_profile(source: str | os.PathLike | np.ndarray, n_table_rows: int, where: str = "warm") -> np.ndarray:
    """Requests per table row from ``source``: an array, a .npy file of one, or a trace file (its row
    ids counted, chunk by chunk). Refused unless it holds ``n_table_rows`` finite counts >= 0."""
    if isinstance(source, np.ndarray):
        counts, named = source, "the warm profile"
    else:
        path, named = Path(source), f"warm profile {source}"
        if not path.is_file():
            raise EngramTierError(f"{where}: {named} does not exist; give a .npy of requests per table row or a "
                                  "trace file (`engramtier trace`)")
        if path.suffix == ".npy":
            try:
                counts = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise EngramTierError(f"{where}: {named} cannot be read as a .npy array ({err})") from None
        else:
            with TraceReader(path) as trace:
                if trace.n_table_rows != n_table_rows:
                    raise EngramTierError(f"{where}: {named} addresses {trace.n_table_rows} rows, the table has "
                                          f"{n_table_rows}; profile a trace of this table")
                counts = row_counts(trace)
    if counts.shape != (n_table_rows,) or counts.dtype.kind not in "iuf":
        raise EngramTierError(f"{where}: {named} must hold one count per table row ({n_table_rows}), got "
                              f"{counts.dtype}{list(counts.shape)}; build it with np.bincount(row_ids, "
                              "minlength=n_table_rows)")
    if counts.size and not (np.isfinite(counts).all() and counts.min() >= 0):
        raise EngramTierError(f"{where}: {named} holds a negative or non-finite count; counts are requests >= 0")
    return counts


def warm_rows(hierarchy: Hierarchy, capacities: list[int], n_table_rows: int) -> list[np.ndarray | None]:
    """Per cache tier, the table rows it opens holding, coldest first (None: it opens empty), for a
    table of ``n_table_rows`` rows and the tiers' ``capacities`` in rows."""
    profiles: dict[Any, np.ndarray] = {}
    taken = np.empty(0, np.int64)
    out: list[np.ndarray | None] = []
    for tier, capacity in zip(hierarchy.caches, capacities, strict=True):
        if tier.warm is None:
            out.append(None)
            continue
        where = f"{hierarchy._at()}tier '{tier.name}'"
        if tier.policy in NOT_WARMABLE:
            raise EngramTierError(f"{where}: policy '{tier.policy}' takes no warm start: {NOT_WARMABLE[tier.policy]}; "
                                  "drop its warm key")
        key = id(tier.warm) if isinstance(tier.warm, np.ndarray) else str(tier.warm)
        if key not in profiles:
            profiles[key] = load_profile(tier.warm, n_table_rows, where)
        counts = profiles[key]
        counted = np.flatnonzero(counts > 0)
        if hierarchy.mode == "exclusive":
            counted = counted[~np.isin(counted, taken)]
        rows = counted[hot_set(counts[counted], capacity, counted)]
        taken = np.concatenate([taken, rows])
        out.append(rows[::-1].copy())
    return out
