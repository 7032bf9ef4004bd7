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

Built by `compiled_policy`, so a request costs no reference counting: the state tuple starts with
``where`` (key -> heap index), the array `replay` prefetches. At a position where ``key`` was
requested its next use is read straight from ``next_use[t]``; only demoted keys search their
occurrences.
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.nextuse import (
    heap_delete,
    heap_push,
    heap_replace_top,
    heap_set,
    next_request_after,
    next_use,
    occurrences,
    trace_keys,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

SIZE, CAPACITY, BYPASS = range(3)  # indices into st
WHERE, HEAP_KEY, HEAP_NEXT, KEYS, NEXT_USE, OCC_STARTS, OCC_POSITIONS, ST = range(8)  # the state's arrays

STATE = types.Tuple((
    types.int32[::1],  # where[key]: heap index or -1
    types.int64[::1],  # heap_key[i]
    types.int64[::1],  # heap_next[i]: next use of heap_key[i]
    types.int64[::1],  # the trace's keys
    types.int64[::1],  # next_use[t]
    types.int64[::1],  # occurrence starts
    types.int64[::1],  # occurrence positions
    types.int64[::1],  # st
))


@inlined
def _next(state, key, t):
    return next_request_after(key, t, state[KEYS], state[NEXT_USE], state[OCC_STARTS], state[OCC_POSITIONS])


@inlined
def lookup(state, key, t):
    i = state[WHERE][key]
    if i < 0:
        return False
    heap_set(state[HEAP_KEY], state[HEAP_NEXT], state[WHERE], i, _next(state, key, t), state[ST][SIZE])
    return True


@inlined
def admit(state, key, t):
    where, heap_key, heap_next, st = state[WHERE], state[HEAP_KEY], state[HEAP_NEXT], state[ST]
    nxt = _next(state, key, t)
    size = st[SIZE]
    if size < st[CAPACITY]:
        heap_push(heap_key, heap_next, where, size, key, nxt)
        st[SIZE] = size + 1
        return -1
    if st[BYPASS] and nxt > heap_next[0]:
        return key
    return heap_replace_top(heap_key, heap_next, where, size, key, nxt)


@inlined
def remove(state, key):
    where, st = state[WHERE], state[ST]
    i = where[key]
    if i < 0:
        return False
    heap_delete(state[HEAP_KEY], state[HEAP_NEXT], where, i, st[SIZE])
    st[SIZE] -= 1
    return True


@inlined
def occupancy(state):
    return state[ST][SIZE]


Belady = compiled_policy("Belady", STATE, lookup, admit, remove, holds_key, occupancy)


@register("belady")
def build(capacity: int, ctx: PolicyContext, bypass: bool = False) -> Belady:
    keys = trace_keys(ctx, "belady")
    starts, positions = occurrences(ctx, "belady")
    slots = min(capacity, ctx.n_keys)  # a heap holds each key at most once
    return Belady((
        np.full(ctx.n_keys, -1, np.int32), np.empty(slots, np.int64), np.empty(slots, np.int64),
        keys, next_use(ctx, "belady"), starts, positions, np.array([0, capacity, bool(bypass)], np.int64),
    ), ctx.n_keys)
