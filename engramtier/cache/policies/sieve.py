"""SIEVE: FIFO order with a hand that sweeps from the oldest row towards the newest.

A hit only marks the row visited. To evict, the hand (starting where the last eviction left it, or at
the oldest row) clears visited marks as it moves towards newer rows, wrapping from the newest back
to the oldest, and evicts the first unvisited row; the hand then rests on the next newer row, or on
nothing (meaning: the oldest row, next time) when the victim was the newest. Rows are admitted at the
front and never move, so the ring of `lru` applies unchanged. This is libCacheSim's ``Sieve``,
including where the hand goes when the row under it is removed.
"""

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies import lru
from engramtier.cache.policies._lists import NXT, PRV, ST, link_key, node_of, push_head, tail, take_node, unlink, unlink_key
from engramtier.cache.policies.clock import STATE  # the same arrays: a visited mark per slot
from engramtier.cache.policies.lru import CAPACITY, FREE, HEAD, SIZE, SLOT_FIELDS, occupancy, ring_state
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

HAND = FREE + 1  # index into st: slot under the hand, -1 for none
VISITED = SLOT_FIELDS  # the state's array of each slot's visited mark


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    state[VISITED][s] = 1
    return True


@inlined
def _hand_after(prv, st, s):
    """Where the hand rests once ``s`` leaves: the next newer row, or none past the newest."""
    return -1 if s == st[HEAD] else prv[s]


@inlined
def admit(state, key, t):
    prv, nxt, st, visited = state[PRV], state[NXT], state[ST], state[VISITED]
    victim = -1
    if st[SIZE] < st[CAPACITY]:
        s = take_node(nxt, st, FREE)
        st[SIZE] += 1
    else:
        s = st[HAND] if st[HAND] >= 0 else tail(prv, st, HEAD)
        while visited[s]:
            visited[s] = 0
            s = prv[s]  # towards newer rows; the ring wraps from the newest to the oldest
        st[HAND] = _hand_after(prv, st, s)
        unlink(prv, nxt, st, HEAD, s)
        victim = unlink_key(state, s)
    push_head(prv, nxt, st, HEAD, s)
    link_key(state, key, s)
    visited[s] = 0
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s >= 0 and s == state[ST][HAND]:
        state[ST][HAND] = _hand_after(state[PRV], state[ST], s)
    return lru.remove(state, key)


SIEVE = compiled_policy("SIEVE", STATE, lookup, admit, remove, holds_key, occupancy)


@register("sieve")
def build(capacity: int, ctx: PolicyContext) -> SIEVE:
    return SIEVE(ring_state(capacity, ctx, extra_scalars=[-1], slot_fields=[("visited", np.uint8)]), ctx.n_keys)
