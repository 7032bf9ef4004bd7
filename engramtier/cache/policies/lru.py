"""LRU: evict the row whose last use is oldest.

Rows live in ``capacity`` slots linked into one ring (see `_lists`) whose head is the most recently
used slot, so the tail is the victim, and a full cache hands the victim's slot to the incoming key by
rotating the ring. Slot arrays are capacity-sized; a key finds its slot through the key map
(`engramtier.cache.keymap`).

FIFO, CLOCK and SIEVE keep the same ring: their state tuples begin with these five arrays, so they
share `ring_state`, `admit_at_head` (FIFO and LRU differ only on a hit), `remove` and
`occupancy`.
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
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

HEAD, SIZE, CAPACITY, FREE = range(4)  # indices into st
SLOT_FIELDS = 5  # the ring's per-slot fields (`ring_state`'s slot_fields) start here

STATE = types.Tuple((
    types.int32[::1],  # INDEX: key -> slot (`engramtier.cache.keymap`)
    NODE_KEYS,  # KEY_OF[slot]
    NODE_LINKS,  # PRV[slot]
    NODE_LINKS,  # NXT[slot]
    types.int64[::1],  # ST
))  # the five arrays every list policy's state begins with (`_lists`)


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    move_to_head(state[PRV], state[NXT], state[ST], HEAD, s)
    return True


@inlined
def evict_tail(state):
    """Hand the oldest slot over (the ring rotates it to the front); returns (slot, its key)."""
    s = tail(state[PRV], state[ST], HEAD)
    state[ST][HEAD] = s
    return s, unlink_key(state, s)


@inlined
def admit_at_head(state, key, t):
    """Insert ``key`` as the newest row; when full, the oldest makes room (LRU and FIFO)."""
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(nxt, st, FREE)
        st[SIZE] += 1
        push_head(prv, nxt, st, HEAD, s)
    else:
        s, victim = evict_tail(state)
    link_key(state, key, s)
    return victim


@inlined
def remove(state, key):
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    s = node_of(state, key)
    if s < 0:
        return False
    unlink(prv, nxt, st, HEAD, s)
    unlink_key(state, s)
    give_node(nxt, st, FREE, s)
    st[SIZE] -= 1
    return True


@inlined
def occupancy(state):
    return state[ST][SIZE]


def ring_state(capacity: int, ctx: PolicyContext, extra_scalars=(), slot_fields=()) -> tuple:
    """An empty ring of ``capacity`` slots over ``ctx``'s keys (the five arrays of `STATE`, st
    followed by ``extra_scalars``), then views of the per-slot ``slot_fields`` ((name, dtype) pairs,
    kept in the slot records, see `_lists`); slots are allocated only up to `bounded_pool`."""
    st = np.array([-1, 0, capacity, 0, *extra_scalars], np.int64)  # HEAD, SIZE, CAPACITY, FREE
    pool = bounded_pool(capacity, ctx.n_keys)
    slots = node_records(pool, slot_fields)
    return (key_index(ctx.n_keys, pool, ctx.hashed), slots["key"], slots["prv"], slots["nxt"], st,
            *(slots[name] for name, _ in slot_fields))


LRU = compiled_policy("LRU", STATE, lookup, admit_at_head, remove, holds_key, occupancy)


@register("lru")
def build(capacity: int, ctx: PolicyContext) -> LRU:
    return LRU(ring_state(capacity, ctx), ctx.n_keys)
