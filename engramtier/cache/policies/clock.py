"""CLOCK: FIFO that gives a used row another lap instead of evicting it.

Each slot has a ``bits``-bit counter, raised by one on a hit up to ``2**bits - 1`` and set to 0 on
admission. To evict, the hand looks at the oldest row: if its counter is non-zero it is decremented
and the row goes back to the front, otherwise the row is the victim. This is libCacheSim's ``Clock``
(FIFO-reinsertion, default ``n-bit-counter=1``): in the ring of `lru` a reinsertion is just a
rotation of the head, so a lap costs no link updates.
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
    link_key,
    node_of,
    push_head,
    tail,
    take_node,
    unlink_key,
)
from engramtier.cache.policies.lru import CAPACITY, FREE, HEAD, SIZE, SLOT_FIELDS, occupancy, remove, ring_state
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError

MAX_COUNT = FREE + 1  # index into st
COUNT = SLOT_FIELDS  # the state's array of each slot's counter

# lru's five arrays, then the counter of each slot
STATE = types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_BYTES))


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    count, st = state[COUNT], state[ST]
    if count[s] < st[MAX_COUNT]:
        count[s] += 1
    return True


@inlined
def admit(state, key, t):
    prv, nxt, st, count = state[PRV], state[NXT], state[ST], state[COUNT]
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(nxt, st, FREE)
        st[SIZE] += 1
        push_head(prv, nxt, st, HEAD, s)
    else:
        s = tail(prv, st, HEAD)
        while count[s] > 0:
            count[s] -= 1
            st[HEAD] = s  # back to the front
            s = prv[s]
        victim = unlink_key(state, s)
        st[HEAD] = s
    link_key(state, key, s)
    count[s] = 0
    return victim


CLOCK = compiled_policy("CLOCK", STATE, lookup, admit, remove, holds_key, occupancy)


@register("clock")
def build(capacity: int, ctx: PolicyContext, bits: int = 1) -> CLOCK:
    if not 1 <= bits <= 8:
        raise EngramTierError(f"policy 'clock': bits must be between 1 and 8, got {bits}")
    return CLOCK(ring_state(capacity, ctx, extra_scalars=[2**bits - 1], slot_fields=[("ref", np.uint8)]), ctx.n_keys)
