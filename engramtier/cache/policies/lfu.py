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
from numba import types

from engramtier.cache.diskcache import inlined
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


@inlined
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


@inlined
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


@inlined
def leave_bucket(state, s):
    """Take slot ``s`` out of its bucket, dropping the bucket once empty."""
    prv, nxt, bucket_of, bucket_head = state[PRV], state[NXT], state[BUCKET_OF], state[BUCKET_HEAD]
    b = bucket_of[s]
    unlink(prv, nxt, bucket_head, b, s)
    if bucket_head[b] < 0:
        _drop_bucket(state, b)


@inlined
def touch(state, s):
    """A hit on slot ``s``: one more use, which moves it into the bucket just above."""
    prv, nxt, count, bucket_of, bucket_count, bucket_head, up = (
        state[PRV], state[NXT], state[COUNT], state[BUCKET_OF], state[BUCKET_COUNT], state[BUCKET_HEAD], state[UP])
    b = bucket_of[s]
    c = count[s] + 1
    count[s] = c
    above = up[b]
    if above < 0 or bucket_count[above] != c:
        if nxt[s] == s:  # alone in its bucket: the bucket itself takes the new count
            bucket_count[b] = c
            return
        above = _new_bucket(state, c, b, above)
    leave_bucket(state, s)
    push_head(prv, nxt, bucket_head, above, s)
    bucket_of[s] = above


@inlined
def least_used(state):
    """The oldest slot among the least used: LFU's victim."""
    return state[PRV][state[BUCKET_HEAD][state[ST][LOWEST]]]


@inlined
def join(state, s, count):
    """Slot ``s``, in no bucket, joins the bucket of ``count`` uses as its newest slot (the bucket is made if
    no slot has that count). Buckets are found by walking up from the lowest, so this costs one step per
    count present below ``count``: none for a new row's 1, which is all `enter` asks."""
    up, bucket_count = state[UP], state[BUCKET_COUNT]
    below, b = -1, state[ST][LOWEST]
    while b >= 0 and bucket_count[b] < count:
        below, b = b, up[b]
    if b < 0 or bucket_count[b] != count:
        b = _new_bucket(state, count, below, b)
    push_head(state[PRV], state[NXT], state[BUCKET_HEAD], b, s)
    state[BUCKET_OF][s] = b
    state[COUNT][s] = count


@inlined
def enter(state, key, s):
    """Slot ``s``, taken out of every bucket, holds ``key`` now, used once."""
    join(state, s, 1)
    link_key(state, key, s)


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    touch(state, s)
    return True


@inlined
def admit(state, key, t):
    st = state[ST]
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(state[NXT], st, FREE)
        st[SIZE] += 1
    else:
        s = least_used(state)
        leave_bucket(state, s)
        victim = unlink_key(state, s)
    enter(state, key, s)
    return victim


@inlined
def remove_slot(state, s):
    """Forget cached slot ``s`` and free it."""
    st = state[ST]
    leave_bucket(state, s)
    unlink_key(state, s)
    give_node(state[NXT], st, FREE, s)
    st[SIZE] -= 1


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    remove_slot(state, s)
    return True


@inlined
def occupancy(state):
    return state[ST][SIZE]


LFU = compiled_policy("LFU", STATE, lookup, admit, remove, holds_key, occupancy)


def state_arrays(nodes: int, ctx: PolicyContext, st: np.ndarray) -> tuple:
    """LFU's state for ``nodes`` nodes around its scalars ``st``: the key map, the nodes and the
    frequency buckets. The policies built on LFU (LeCaR, Cacheus) append their own arrays to it."""
    return (
        key_index(ctx.n_keys, nodes, ctx.hashed),
        np.full(nodes, -1, np.int64),
        np.zeros(nodes, np.int32),
        free_chain(nodes),
        st,
        np.zeros(nodes, np.int64),
        np.zeros(nodes, np.int32),
        np.zeros(nodes + 1, np.int64),
        np.full(nodes + 1, -1, np.int64),
        free_chain(nodes + 1),
        np.zeros(nodes + 1, np.int32),
    )


@register("lfu")
def build(capacity: int, ctx: PolicyContext) -> LFU:
    st = np.array([0, capacity, 0, -1, 0], np.int64)
    return LFU(state_arrays(bounded_pool(capacity, ctx.n_keys), ctx, st), ctx.n_keys)
