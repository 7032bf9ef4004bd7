"""Static placement: pin the ``capacity`` most frequent rows of a profile and never evict.

This is the paper's Zipf-aware hot set: Engram rows are Zipf-distributed, so the rows most used in a
profiling run are loaded into the fast tier once and kept. The profile is ``ctx.profile`` (request
counts per key, from a profiling prefix or another trace), else the counts of ``ctx.keys``. Ties in
count go to the lower row id (``ctx.row_ids`` when keys are a trace's dense keys), so the hot set is a
deterministic function of the profile.

Pinned rows start resident (they are preloaded before serving), so their first request is a hit. A
miss on any other row is declined (``admit`` returns the key). A pinned row removed by an exclusive
hierarchy is re-admitted on its next miss; nothing is ever evicted.
"""

import numpy as np
from numba import int64, uint8
from numba.experimental import jitclass

from engramtier.cache.nextuse import trace_keys
from engramtier.cache.policy import PolicyContext, check_key, register
from engramtier.errors import EngramTierError

OTHER, PINNED_ABSENT, PINNED_PRESENT = 0, 1, 2


@jitclass([
    ("size", int64),
    ("state", uint8[:]),
])
class Static:
    def __init__(self, hot_keys, n_keys):
        self.state = np.zeros(n_keys, np.uint8)
        self.state[hot_keys] = PINNED_PRESENT
        self.size = hot_keys.size

    def lookup(self, key, t):
        check_key("static", self.state.size, key)
        return self.state[key] == PINNED_PRESENT

    def admit(self, key, t):
        check_key("static", self.state.size, key)
        if self.state[key] == OTHER:
            return key
        self.state[key] = PINNED_PRESENT
        self.size += 1
        return -1

    def remove(self, key):
        check_key("static", self.state.size, key)
        if self.state[key] != PINNED_PRESENT:
            return False
        self.state[key] = PINNED_ABSENT
        self.size -= 1
        return True

    def contains(self, key):
        check_key("static", self.state.size, key)
        return self.state[key] == PINNED_PRESENT

    @property
    def n_keys(self):
        return self.state.size

    def occupancy(self):
        return self.size

    def hit_victim(self):
        return -1


def hot_set(counts: np.ndarray, capacity: int, row_ids: np.ndarray | None = None) -> np.ndarray:
    """The ``capacity`` keys with the highest counts; equal counts rank the lower row id first (the
    key itself when ``row_ids`` is None)."""
    if row_ids is None:
        return np.argsort(-counts, kind="stable")[:capacity]
    return np.lexsort((row_ids, -counts))[:capacity]


@register("static")
def build(capacity: int, ctx: PolicyContext) -> Static:
    if ctx.profile is not None:
        counts = np.asarray(ctx.profile)
        if counts.shape != (ctx.n_keys,) or counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
            raise EngramTierError(
                f"policy 'static': the profile must hold one non-negative integer count per row ({ctx.n_keys}), "
                f"got shape {counts.shape} dtype {counts.dtype}; build it with np.bincount(keys, minlength=n_keys)"
            )
    elif ctx.trace_keys() is not None:
        counts = np.bincount(trace_keys(ctx, "static"), minlength=ctx.n_keys)
    else:
        raise EngramTierError(
            "policy 'static' needs a frequency profile (PolicyContext(profile=counts per row)) "
            "or the trace to count (PolicyContext(keys=...))"
        )
    return Static(hot_set(counts.astype(np.int64), capacity, ctx.global_ids()), ctx.n_keys)
