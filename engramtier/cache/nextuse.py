"""Knowledge of the future for the offline policies (belady, lookahead), and the heap they rank it in.

For a request at trace position ``t``, ``next_use[t]`` is the position of the next request for the same
key, or ``NEVER``: one backward O(n) pass, computed once per `PolicyContext` and shared by every size
of a sweep. A policy is sometimes handed a key at a position where that key was not requested (an
exclusive hierarchy demotes a victim into the tier below at the position of the request that evicted
it); "the first request for ``key`` after ``t``" then comes from the key's sorted request positions
(a CSR index built by counting sort, O(n + n_keys)) by binary search.

The indexed max-heap below holds ``size`` items in ``items[:size]`` with int64 priorities in
``pris``; ``where[item]`` is the item's heap index or -1, so membership, a priority change and the
removal of any item cost O(log size). Belady ranks cached keys by next use in it, lookahead by a
next use or a recency, SHARDS's fixed-size sampler by hash value. It is 4-ary (the children of ``i``
are ``4i + 1 .. 4i + 4``): half the levels of a binary heap, so a sift moves half as many items and
rewrites half as many ``where`` entries (random writes into a table-sized array), and the four
children's priorities sit in one or two cache lines; measured 1.1-1.4x faster Belady replays than
binary. The helpers are `engramtier.cache.diskcache.inlined` (compiled without reference counting)
and allocate nothing, so policies call them freely.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engramtier.cache.diskcache import inlined
from engramtier.cache.policy import PolicyContext
from engramtier.errors import EngramTierError

NEVER = np.iinfo(np.int64).max  # the next use of a key that is not requested again


@njit(nogil=True, cache=True)
def _next_use(keys, n_keys):
    following = np.full(n_keys, NEVER, np.int64)  # the earliest position seen so far, walking backwards
    out = np.empty(keys.size, np.int64)
    for t in range(keys.size - 1, -1, -1):
        k = keys[t]
        out[t] = following[k]
        following[k] = t
    return out


@njit(nogil=True, cache=True)
def _occurrence_starts(keys, n_keys):
    starts = np.zeros(n_keys + 1, np.int64)
    for t in range(keys.size):
        starts[keys[t] + 1] += 1
    for k in range(n_keys):
        starts[k + 1] += starts[k]
    return starts


@njit(nogil=True, cache=True)
def _occurrence_positions(keys, starts):
    fill = starts[:-1].copy()
    positions = np.empty(keys.size, np.int64)
    for t in range(keys.size):
        k = keys[t]
        positions[fill[k]] = t
        fill[k] += 1
    return positions


def trace_keys(ctx: PolicyContext, policy: str) -> np.ndarray:
    """``ctx.keys`` as contiguous int64, checked once to lie in ``[0, n_keys)`` (numba does not bound-check)."""

    def checked(c: PolicyContext) -> np.ndarray:
        keys = np.ascontiguousarray(c.require_keys(policy), dtype=np.int64)
        if keys.size and (keys.min() < 0 or keys.max() >= c.n_keys):
            bad = keys.min() if keys.min() < 0 else keys.max()
            raise EngramTierError(
                f"policy '{policy}': trace key {bad} lies outside [0, {c.n_keys}); "
                "pass the table's row count as PolicyContext(n_keys=...)"
            )
        return keys

    return ctx.derived("keys_int64", checked)


def next_use(ctx: PolicyContext, policy: str) -> np.ndarray:
    """``next_use[t]``: position of the next request for ``keys[t]`` after ``t``, or ``NEVER``."""
    keys = trace_keys(ctx, policy)
    return ctx.derived("next_use", lambda c: _next_use(keys, c.n_keys))


def occurrences(ctx: PolicyContext, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, positions): the requests for key ``k`` are at ``positions[starts[k]:starts[k + 1]]``, ascending."""
    keys = trace_keys(ctx, policy)
    starts = ctx.derived("occurrence_starts", lambda c: _occurrence_starts(keys, c.n_keys))
    positions = ctx.derived("occurrence_positions", lambda c: _occurrence_positions(keys, starts))
    return starts, positions


@inlined
def next_request_after(key, t, keys, next_use, starts, positions):
    """Position of the first request for ``key`` after position ``t``, or ``NEVER``. ``t`` may lie outside
    the trace (a warm start before it, a runtime running past it): the occurrences answer then."""
    if 0 <= t < keys.size and keys[t] == key:
        return next_use[t]
    lo = starts[key]
    hi = starts[key + 1]
    while lo < hi:  # first position > t
        mid = (lo + hi) >> 1
        if positions[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return positions[lo] if lo < starts[key + 1] else NEVER


@inlined
def heap_sift_up(items, pris, where, i):
    item = items[i]
    pri = pris[i]
    while i > 0:
        parent = (i - 1) >> 2
        if pris[parent] >= pri:
            break
        items[i] = items[parent]
        pris[i] = pris[parent]
        where[items[i]] = i
        i = parent
    items[i] = item
    pris[i] = pri
    where[item] = i


@inlined
def _largest_child(pris, first, size):
    """Index of the highest priority among the children ``first .. first + 3`` that exist.

    Four children are compared as two pairs and the pair winners, without data-dependent branches
    (which child wins is unpredictable, and a mispredicted branch costs more than the comparisons).
    """
    if first + 4 <= size:
        a = first + (pris[first + 1] > pris[first])
        b = first + 2 + (pris[first + 3] > pris[first + 2])
        return b if pris[b] > pris[a] else a
    child = first
    for c in range(first + 1, size):
        if pris[c] > pris[child]:
            child = c
    return child


@inlined
def heap_sift_down(items, pris, where, i, size):
    item = items[i]
    pri = pris[i]
    while True:
        first = 4 * i + 1
        if first >= size:
            break
        child = _largest_child(pris, first, size)
        if pris[child] <= pri:
            break
        items[i] = items[child]
        pris[i] = pris[child]
        where[items[i]] = i
        i = child
    items[i] = item
    pris[i] = pri
    where[item] = i


@inlined
def heap_push(items, pris, where, size, item, pri):
    """Insert ``item``; the caller then holds ``size + 1`` items."""
    items[size] = item
    pris[size] = pri
    heap_sift_up(items, pris, where, size)


@inlined
def heap_replace_top(items, pris, where, size, item, pri):
    """Evict the item of highest priority in favour of ``item``; returns the evicted item."""
    victim = items[0]
    where[victim] = -1
    items[0] = item
    pris[0] = pri
    heap_sift_down(items, pris, where, 0, size)
    return victim


@inlined
def heap_set(items, pris, where, i, pri, size):
    """Give the item at heap index ``i`` a new priority."""
    old = pris[i]
    pris[i] = pri
    if pri > old:
        heap_sift_up(items, pris, where, i)
    else:
        heap_sift_down(items, pris, where, i, size)


@inlined
def heap_delete(items, pris, where, i, size):
    """Remove the item at heap index ``i``; the caller then holds ``size - 1`` items."""
    where[items[i]] = -1
    last = size - 1
    if i != last:
        items[i] = items[last]
        where[items[i]] = i
        heap_set(items, pris, where, i, pris[last], last)  # pris[i] still holds the removed priority
