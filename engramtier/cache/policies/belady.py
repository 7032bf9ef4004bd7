"""Belady's MIN: evict the cached row whose next use lies farthest in the future (the offline optimum).

Cached keys sit in a max-heap keyed by their next use, so each request costs O(log capacity): a hit
moves the key's priority to its following use, a miss replaces the heap's top. Next uses come from
`engramtier.cache.nextuse` and need the whole trace (``ctx.keys``). ``t`` is the trace position of
the request for ``key``; a key admitted at a position where it was not requested (a victim demoted
into a lower tier) ranks by its first request after ``t``. A driver that serves each row once per
step must pass the row's *last* position in the step: an earlier one makes the repeat inside the step
look like a next use that never arrives, which keeps the row cached until its next real lookup.

Two variants, same eviction rule:
- ``bypass=False`` (default) always admits the missed key, evicting the farthest cached key. This is
  what libCacheSim's ``Belady`` does (its get() evicts before inserting and never refuses an insert),
  and the hit counts are identical to it: ties in next use only occur between keys never requested
  again, and which of those goes cannot change a hit count.
- ``bypass=True`` also refuses the missed key when its own next use is strictly farther than every
  cached key's (``admit`` returns the key), the true optimum when caching on a miss is optional.
"""

import numpy as np
from numba import boolean, int32, int64
from numba.experimental import jitclass

from engramtier.cache.nextuse import (
    heap_delete, heap_push, heap_replace_top, heap_set, next_request_after, next_use, occurrences, trace_keys,
)
from engramtier.cache.policy import PolicyContext, register


@jitclass([
    ("capacity", int64),
    ("size", int64),
    ("bypass", boolean),
    ("keys", int64[:]),
    ("next_use", int64[:]),
    ("starts", int64[:]),
    ("positions", int64[:]),
    ("where", int32[:]),
    ("heap_key", int64[:]),
    ("heap_next", int64[:]),
])
class Belady:
    def __init__(self, capacity, n_keys, keys, next_use, starts, positions, bypass):
        self.capacity = capacity
        self.size = 0
        self.bypass = bypass
        self.keys = keys
        self.next_use = next_use
        self.starts = starts
        self.positions = positions
        self.where = np.full(n_keys, -1, np.int32)
        self.heap_key = np.empty(capacity, np.int64)
        self.heap_next = np.empty(capacity, np.int64)

    def _next(self, key, t):
        return next_request_after(key, t, self.keys, self.next_use, self.starts, self.positions)

    def lookup(self, key, t):
        i = self.where[key]
        if i < 0:
            return False
        heap_set(self.heap_key, self.heap_next, self.where, i, self._next(key, t), self.size)
        return True

    def admit(self, key, t):
        nxt = self._next(key, t)
        if self.size < self.capacity:
            heap_push(self.heap_key, self.heap_next, self.where, self.size, key, nxt)
            self.size += 1
            return -1
        if self.bypass and nxt > self.heap_next[0]:
            return key
        return heap_replace_top(self.heap_key, self.heap_next, self.where, self.size, key, nxt)

    def remove(self, key):
        i = self.where[key]
        if i < 0:
            return False
        heap_delete(self.heap_key, self.heap_next, self.where, i, self.size)
        self.size -= 1
        return True

    def contains(self, key):
        return self.where[key] >= 0

    def occupancy(self):
        return self.size

    def hit_victim(self):
        return -1


@register("belady")
def build(capacity: int, ctx: PolicyContext, bypass: bool = False) -> Belady:
    starts, positions = occurrences(ctx, "belady")
    return Belady(
        capacity, ctx.n_keys, trace_keys(ctx, "belady"), next_use(ctx, "belady"), starts, positions, bool(bypass)
    )
