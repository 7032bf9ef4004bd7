"""LFU: evict the row requested the fewest times since it was admitted.

Counts start at 1 on admission and are forgotten on eviction (no history outside the cache). Ties
go to the row that reached its count earliest, which is the row used least recently among those
with the same count: libCacheSim's ``LFU`` appends a row to the tail of its new frequency's list on
every hit and evicts from the head of the lowest non-empty frequency, and this does the same.

O(1) per request with frequency buckets: every count present in the cache has a bucket (a ring of
its slots, newest at the head) and the buckets form a chain in increasing count, so the victim is
the oldest slot of the lowest bucket, and a hit moves a slot into the bucket just above (created if
that count is not present, or, for a slot alone in its bucket, by relabelling the bucket). At most
``capacity + 1`` buckets exist at once.
"""

import numpy as np
from numba import njit, types

from engramtier.cache.policies._lists import (
    NXT,
    PRV,
    ST,
    bounded_pool,
    free_chain,
    give_node,
    key_index,
    link_key,
    node_of,
    push_head,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

SIZE, CAPACITY, FREE, LOWEST, FREE_BUCKET = range(5)  # indices into st; LOWEST: bucket with the fewest uses
COUNT, BUCKET_OF, BUCKET_COUNT, BUCKET_HEAD, UP, DOWN = range(5, 11)  # the state's arrays after the shared five

STATE = types.Tuple((
    types.int32[::1],  # INDEX: key -> slot (`engramtier.cache.keymap`)
    types.int64[::1],  # KEY_OF[slot]
    types.int32[::1],  # PRV[slot]  (ring within the slot's bucket)
    types.int32[::1],  # NXT[slot]
    types.int64[::1],  # ST
    types.int64[::1],  # COUNT[slot]: uses since admission
    types.int32[::1],  # BUCKET_OF[slot]
    types.int64[::1],  # BUCKET_COUNT[bucket]
    types.int64[::1],  # BUCKET_HEAD[bucket]: newest slot of the bucket's ring, -1 when empty
    types.int32[::1],  # UP[bucket]: next bucket with a higher count (also chains free buckets)
    types.int32[::1],  # DOWN[bucket]
))


@njit(inline="always")
def _new_bucket(state, count, below, above):
    st, bucket_count, bucket_head, up, down = state[ST], state[BUCKET_COUNT], state[BUCKET_HEAD], state[UP], state[DOWN]
    b = take_node(up, st, FREE_BUCKET)
    bucket_count[b] = count
    bucket_head[b] = -1
    down[b] = below
    up[b] = above
    if below >= 0:
        up[below] = b
    else:
        st[LOWEST] = b
    if above >= 0:
        down[above] = b
    return b


@njit(inline="always")
def _drop_bucket(state, b):
    st, up, down = state[ST], state[UP], state[DOWN]
    below, above = down[b], up[b]
    if below >= 0:
        up[below] = above
    else:
        st[LOWEST] = above
    if above >= 0:
        down[above] = below
    give_node(up, st, FREE_BUCKET, b)


@njit(inline="always")
def _leave_bucket(state, s):
    """Take slot ``s`` out of its bucket, dropping the bucket once empty."""
    prv, nxt, bucket_of, bucket_head = state[PRV], state[NXT], state[BUCKET_OF], state[BUCKET_HEAD]
    b = bucket_of[s]
    unlink(prv, nxt, bucket_head, b, s)
    if bucket_head[b] < 0:
        _drop_bucket(state, b)


@njit(inline="always")
def lookup(state, key, t):
    prv, nxt, count, bucket_of, bucket_count, bucket_head, up = (
        state[PRV], state[NXT], state[COUNT], state[BUCKET_OF], state[BUCKET_COUNT], state[BUCKET_HEAD], state[UP])
    s = node_of(state, key)
    if s < 0:
        return False
    b = bucket_of[s]
    c = count[s] + 1
    count[s] = c
    above = up[b]
    if above < 0 or bucket_count[above] != c:
        if nxt[s] == s:  # alone in its bucket: the bucket itself takes the new count
            bucket_count[b] = c
            return True
        above = _new_bucket(state, c, b, above)
    _leave_bucket(state, s)
    push_head(prv, nxt, bucket_head, above, s)
    bucket_of[s] = above
    return True


@njit(inline="always")
def admit(state, key, t):
    prv, nxt, st, count, bucket_of, bucket_count, bucket_head = (
        state[PRV], state[NXT], state[ST], state[COUNT], state[BUCKET_OF], state[BUCKET_COUNT], state[BUCKET_HEAD])
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(nxt, st, FREE)
        st[SIZE] += 1
    else:
        s = prv[bucket_head[st[LOWEST]]]  # oldest slot among the least used
        _leave_bucket(state, s)
        victim = unlink_key(state, s)
    lowest = st[LOWEST]
    if lowest < 0 or bucket_count[lowest] != 1:
        lowest = _new_bucket(state, 1, -1, lowest)
    push_head(prv, nxt, bucket_head, lowest, s)
    bucket_of[s] = lowest
    count[s] = 1
    link_key(state, key, s)
    return victim


@njit(inline="always")
def remove(state, key):
    nxt, st = state[NXT], state[ST]
    s = node_of(state, key)
    if s < 0:
        return False
    _leave_bucket(state, s)
    unlink_key(state, s)
    give_node(nxt, st, FREE, s)
    st[SIZE] -= 1
    return True


@njit(inline="always")
def occupancy(state):
    return state[ST][SIZE]


LFU = compiled_policy("LFU", STATE, lookup, admit, remove, holds_key, occupancy)


@register("lfu")
def build(capacity: int, ctx: PolicyContext) -> LFU:
    st = np.array([0, capacity, 0, -1, 0], np.int64)
    slots = bounded_pool(capacity, ctx.n_keys)
    return LFU((
        key_index(ctx.n_keys, slots, ctx.hashed),
        np.full(slots, -1, np.int64),
        np.zeros(slots, np.int32),
        free_chain(slots),
        st,
        np.zeros(slots, np.int64),
        np.zeros(slots, np.int32),
        np.zeros(slots + 1, np.int64),
        np.full(slots + 1, -1, np.int64),
        free_chain(slots + 1),
        np.zeros(slots + 1, np.int32),
    ), ctx.n_keys)
