"""SLRU: segmented LRU, rows promoted one segment up per hit, demoted one down when a segment overflows.

libCacheSim's ``SLRU`` (the multi-list one, not ``SLRUv0``), with its default ``n_seg = 4`` segments of
``capacity // n_seg`` rows each (its ``n-seg`` parameter; segment 0 is the coldest). A hit in the top
segment moves the row to that segment's front; a hit below moves it to the front of the next segment
up, and while a segment holds more than its share its least recently used row falls to the front of
the segment below, the overflow of segment 0 being evicted. A miss goes to the front of the lowest
segment with room, so a filling cache fills segment 0 first, then 1, and so on; when none has room
the cache evicts (segment 0's LRU row, or the lowest non-empty segment's) until it has room, then
puts the row into segment 0.

The segments hold ``n_seg * (capacity // n_seg)`` rows between them; the ``capacity % n_seg`` rows
left over make segment 0 overflow by that much once the cache is full, and a hit promoting a row out
of a full segment 0 then evicts the overflow: several rows when ``capacity % n_seg >= 2``. The
policy interface reports one row per hit (`hit_victim`), so those capacities are refused (the nearest
accepted ones are named). libCacheSim admits nothing when a segment rounds to zero rows, so
``capacity < n_seg`` is refused too. Hits that evict one row report it through `hit_victim`, as
W-TinyLFU's do.
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    NODE_BYTES,
    NODE_KEYS,
    NODE_LINKS,
    NXT,
    PRV,
    ST,
    bounded_pool,
    give_node,
    key_index,
    link_key,
    move_to_head,
    node_of,
    node_records,
    push_head,
    tail,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError

MAX_SEGMENTS = 16  # libCacheSim's SLRU_MAX_N_SEG
# st: each segment's head, then its length, then the free chain and the scalars
LENGTH = MAX_SEGMENTS
FREE, CAPACITY, N_SEG, SHARE, HIT_VICTIM = range(2 * MAX_SEGMENTS, 2 * MAX_SEGMENTS + 5)
SEGMENT = 5  # the state's array of each node's segment

STATE = types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_BYTES))


@inlined
def occupancy(state):
    st = state[ST]
    n = 0
    for i in range(st[N_SEG]):
        n += st[LENGTH + i]
    return n


@inlined
def _leave(state, s):
    """Unlink node ``s`` from its segment; returns the segment."""
    st = state[ST]
    i = state[SEGMENT][s]
    unlink(state[PRV], state[NXT], st, i, s)
    st[LENGTH + i] -= 1
    return i


@inlined
def _enter(state, s, i):
    st = state[ST]
    push_head(state[PRV], state[NXT], st, i, s)
    st[LENGTH + i] += 1
    state[SEGMENT][s] = i


@inlined
def _evict(state):
    """Evict the LRU row of the lowest non-empty segment; returns its key."""
    st = state[ST]
    i = 0
    while st[LENGTH + i] == 0:
        i += 1
    s = tail(state[PRV], st, i)
    _leave(state, s)
    key = unlink_key(state, s)
    give_node(state[NXT], st, FREE, s)
    return key


@inlined
def _cool(state, i):
    """Demote segment ``i``'s overflow downwards, segment by segment; segment 0's is evicted (its key
    left in ``HIT_VICTIM``)."""
    st = state[ST]
    while i >= 0 and st[LENGTH + i] > st[SHARE]:
        if i == 0:
            st[HIT_VICTIM] = _evict(state)
            continue
        s = tail(state[PRV], st, i)
        _leave(state, s)
        _enter(state, s, i - 1)
        i -= 1


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    st = state[ST]
    st[HIT_VICTIM] = -1
    i = state[SEGMENT][s]
    if i == st[N_SEG] - 1:
        move_to_head(state[PRV], state[NXT], st, i, s)
        return True
    _leave(state, s)
    _enter(state, s, i + 1)
    _cool(state, i + 1)
    return True


@inlined
def admit(state, key, t):
    st = state[ST]
    victim = -1
    while occupancy(state) >= st[CAPACITY]:
        victim = _evict(state)
    target = 0
    while target < st[N_SEG] and st[LENGTH + target] >= st[SHARE]:
        target += 1
    s = take_node(state[NXT], st, FREE)
    _enter(state, s, target if target < st[N_SEG] else 0)
    link_key(state, key, s)
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    _leave(state, s)
    unlink_key(state, s)
    give_node(state[NXT], state[ST], FREE, s)
    return True


@inlined
def hit_victim(state):
    return state[ST][HIT_VICTIM]


SLRU = compiled_policy("SLRU", STATE, lookup, admit, remove, holds_key, occupancy, hit_victim)


def _accepted_near(capacity: int, n_seg: int) -> str:
    """The accepted capacities (a multiple of ``n_seg``, or one more) just below and above ``capacity``."""
    below = capacity - capacity % n_seg + 1
    return f"{below} or {below + n_seg - 1}"


@register("slru")
def build(capacity: int, ctx: PolicyContext, n_seg: int = 4) -> SLRU:
    if int(n_seg) != n_seg or not 1 <= n_seg <= MAX_SEGMENTS:
        raise EngramTierError(f"policy 'slru': n_seg must be an integer from 1 to {MAX_SEGMENTS}, got {n_seg}")
    n_seg = int(n_seg)
    if capacity < n_seg:
        raise EngramTierError(
            f"policy 'slru': {capacity} rows give each of the {n_seg} segments 0 rows and libCacheSim's SLRU "
            f"admits nothing then; use at least {n_seg} rows or a smaller n_seg"
        )
    if capacity % n_seg >= 2:
        raise EngramTierError(
            f"policy 'slru': {capacity} rows leave segment 0 {capacity % n_seg} rows over its share, and "
            f"libCacheSim's SLRU then evicts {capacity % n_seg} rows on one hit, which a tier reports one at a "
            f"time; use a capacity of a multiple of n_seg ({n_seg}) or one more, e.g. "
            f"{_accepted_near(capacity, n_seg)} rows"
        )
    st = [-1] * MAX_SEGMENTS + [0] * MAX_SEGMENTS + [0, capacity, n_seg, capacity // n_seg, -1]
    pool = bounded_pool(capacity, ctx.n_keys)
    nodes = node_records(pool, [("segment", np.uint8)])
    return SLRU((key_index(ctx.n_keys, pool, ctx.hashed), nodes["key"], nodes["prv"], nodes["nxt"],
                 np.array(st, np.int64), nodes["segment"]), ctx.n_keys)
