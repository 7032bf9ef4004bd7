"""LRU: evict the row whose last use is oldest.

Rows live in ``capacity`` slots linked into one ring (see `_lists`) whose head is the most recently
used slot, so the tail is the victim, and a full cache hands the victim's slot to the incoming key by
rotating the ring. Slot arrays are capacity-sized and stay in the CPU cache; only ``slot_of`` (one
int32 per table row) is touched at random.

FIFO, CLOCK and SIEVE keep the same ring: their state tuples begin with these five arrays, so they
share `ring_state`, `admit_at_head` (FIFO and LRU differ only on a hit), `remove` and
`occupancy`.
"""

import numpy as np
from numba import njit, types

from engramtier.cache.policies._lists import (NODE_KEYS, NODE_LINKS, bounded_pool, give_node, move_to_head, node_records,
                                              push_head, tail, take_node, unlink)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

HEAD, SIZE, CAPACITY, FREE = range(4)  # indices into st

STATE = types.Tuple((
    types.int32[::1],  # slot_of[key]: slot or -1
    NODE_KEYS,  # key_of[slot]
    NODE_LINKS,  # prv[slot]
    NODE_LINKS,  # nxt[slot]
    types.int64[::1],  # st
))


@njit(inline="always")
def lookup(state, key, t):
    s = state[0][key]
    if s < 0:
        return False
    move_to_head(state[2], state[3], state[4], HEAD, s)
    return True


@njit(inline="always")
def admit_at_head(state, key, t):
    """Insert ``key`` as the newest row; when full, the oldest makes room (LRU and FIFO)."""
    slot_of, key_of, prv, nxt, st = state
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(nxt, st, FREE)
        st[SIZE] += 1
        push_head(prv, nxt, st, HEAD, s)
    else:
        s = tail(prv, st, HEAD)
        victim = key_of[s]
        slot_of[victim] = -1
        st[HEAD] = s
    key_of[s] = key
    slot_of[key] = s
    return victim


@njit(inline="always")
def remove(state, key):
    slot_of, prv, nxt, st = state[0], state[2], state[3], state[4]
    s = slot_of[key]
    if s < 0:
        return False
    unlink(prv, nxt, st, HEAD, s)
    slot_of[key] = -1
    give_node(nxt, st, FREE, s)
    st[SIZE] -= 1
    return True


@njit(inline="always")
def occupancy(state):
    return state[4][SIZE]


def ring_state(capacity: int, n_keys: int, extra_scalars=(), slot_fields=()) -> tuple:
    """An empty ring of ``capacity`` slots over ``n_keys`` rows (the five arrays of `STATE`, st
    followed by ``extra_scalars``), then views of the per-slot ``slot_fields`` ((name, dtype) pairs,
    kept in the slot records, see `_lists`); slots are allocated only up to `bounded_pool`."""
    st = np.array([-1, 0, capacity, 0, *extra_scalars], np.int64)  # HEAD, SIZE, CAPACITY, FREE
    slots = node_records(bounded_pool(capacity, n_keys), slot_fields)
    return (np.full(n_keys, -1, np.int32), slots["key"], slots["prv"], slots["nxt"], st,
            *(slots[name] for name, _ in slot_fields))


LRU = compiled_policy("LRU", STATE, lookup, admit_at_head, remove, holds_key, occupancy)


@register("lru")
def build(capacity: int, ctx: PolicyContext) -> LRU:
    return LRU(ring_state(capacity, ctx.n_keys))
