"""Deadline-bounded (lossy) fetch: which of a step's rows a tier with ``on_late = "drop"`` gives up.

A late row stalls the whole step. A tier marked ``on_late = "drop"`` trades quality for time instead:
of the rows it serves in a step, the step waits only for as many as its `TierModel` says arrive
within the tier's budget (`TierModel.rows_within`), and reads zero rows for the rest (a zero row is
the simplest honest stand-in: the Engram layer then adds nothing for that N-gram). The stall left is
that of the tiers that wait, so it never exceeds the stall of the same run without the option.

Budgets follow the simulator's overlap rule: with ``"parallel"`` every tier fetches beside the others
and a lossy tier has the whole window; with ``"serial"`` tiers fetch one after another, fastest
first, and a lossy tier has what the tiers before it left of the window (after their own drops).

What is modelled, and what is not: the policies decide as without the option (hits, admissions and
evictions are unchanged), so a dropped row is still read, after the step, and cached as usual; only
the step no longer waits for it. The stall saved is therefore an upper bound: late reads still
occupy the tier while the next step's fetch runs.

Which rows: per lossy tier, the *last* ones it serves in the order the engine resolves the step's
lookups (first occurrence in the step). The choice is deterministic, so the runtime drops exactly the
counts the simulator computes, and the same rows on every run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engramtier.cache.engine import Stream
from engramtier.cache.hierarchy import Hierarchy


def late_rows(hierarchy: Hierarchy, served: np.ndarray, row_bytes: int, window_s, overlap: str) -> np.ndarray:
    """Rows each tier drops per step, int64 ``[tiers, steps]`` like ``served`` (the rows each tier
    serves per step); zero for tiers that wait. ``window_s``: one number or one per step."""
    dropped = np.zeros_like(served)
    if not hierarchy.lossy:
        return dropped
    window = np.broadcast_to(np.asarray(window_s, np.float64), served.shape[1:])
    used = np.zeros(served.shape[1:], np.float64)  # seconds the tiers before this one take (serial)
    for i, tier in enumerate(hierarchy.tiers):
        if tier.lossy:
            budget = window if overlap == "parallel" else np.maximum(window - used, 0.0)
            dropped[i] = served[i] - tier.model.rows_within(budget, row_bytes, served[i])
        if overlap == "serial":
            used = used + tier.model.fetch_seconds(served[i] - dropped[i], row_bytes)
    return dropped


def late_keys(streams: Sequence[Stream], dropped: np.ndarray) -> np.ndarray:
    """The rows dropped in a one-step `Engine.feed` whose ``streams`` it left: per tier, the last
    ``dropped[i]`` rows that tier served (a cache tier's LOOKUP events that hit, the store's lookups)."""
    picked = []
    for stream, n in zip(streams, dropped.tolist(), strict=True):
        if n:
            lookups = stream.events >= 0
            served = stream.events[lookups & stream.hit] if stream.hit is not None else stream.events[lookups]
            picked.append(served[served.size - n:])
    return np.concatenate(picked) if picked else np.empty(0, np.int64)
