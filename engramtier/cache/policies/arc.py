"""ARC: adaptive split between recency (T1) and frequency (T2), steered by ghost lists B1 and B2.

Megiddo & Modha (FAST '03), as libCacheSim's ``ARC`` implements it, so hit counts match exactly:
``p`` (the target size of T1) is a float; a hit in T1 or T2 moves the row to the front of T2; a miss
that finds the row in ghost list B1 (B2) raises (lowers) ``p`` by ``max(|B2|/|B1|, 1)``
(``max(|B1|/|B2|, 1)``), and the row comes back at the front of T2. When the cache is full, REPLACE
demotes the LRU row of T1 to B1 if ``|T1| > p`` (or ``|T1| == p`` and the row came from B2, or T2 is
empty), else the LRU row of T2 to B2. A miss on all four lists first trims the directory as in the
paper's case IV: if ``|T1| + |B1|`` is full it forgets the oldest of B1 (or, B1 being empty, evicts
T1's LRU row outright), else when all four lists hold ``2 * capacity`` rows it forgets the oldest of
B2. The cache trims and replaces only when it is full.

Ghost entries are not cached (`contains` is False, `remove` ignores them). libCacheSim reads and
adapts on a ghost hit inside its lookup; here `lookup` leaves a miss untouched and `admit` does that
work first, in the same order, so counts are identical. All four lists share one pool of
``2 * capacity`` nodes: ghosts are made only while the cache is full, when the trimming keeps the
four lists within ``2 * capacity`` entries, so there are never more ghosts than ``capacity`` and an
admission, which has just made room, always finds a free node (`remove` only frees nodes).
"""

import numpy as np
from numba import njit, types

from engramtier.cache.policies._lists import (
    EXTRA, KEY_OF, LENGTH, LIST_OF, NXT, PRV, SCALARS, ST, drop, holds, insert, lists_state, lists_state_type, move,
    move_to_head, node_of, remove_held, tail,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register

T1, T2, B1, B2 = range(4)  # list ids
CAPACITY = SCALARS  # index into st
P = EXTRA  # the state's one-element array holding p

STATE = lists_state_type(types.float64[::1])  # then p, the target size of T1


@njit(inline="always")
def _replace(state, from_b2):
    """REPLACE: demote T1's or T2's LRU row to its ghost list; returns the demoted key."""
    key_of, prv, st, p = state[KEY_OF], state[PRV], state[ST], state[P][0]
    t1 = st[LENGTH + T1]
    if (t1 > 0 and (t1 > p or (t1 == p and from_b2))) or st[LENGTH + T2] == 0:
        s = tail(prv, st, T1)
        move(state, s, T1, B1)
    else:
        s = tail(prv, st, T2)
        move(state, s, T2, B2)
    return key_of[s]


@njit(inline="always")
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    list_of = state[LIST_OF]
    if list_of[s] == T1:
        move(state, s, T1, T2)
    elif list_of[s] == T2:
        move_to_head(state[PRV], state[NXT], state[ST], T2, s)
    else:
        return False  # a ghost: handled by admit
    return True


@njit(inline="always")
def admit(state, key, t):
    prv, st, list_of, p = state[PRV], state[ST], state[LIST_OF], state[P]
    capacity = st[CAPACITY]
    s = node_of(state, key)
    from_ghost = s >= 0
    from_b2 = False
    if from_ghost:
        b1, b2 = st[LENGTH + B1], st[LENGTH + B2]
        if list_of[s] == B1:
            p[0] = min(p[0] + max(b2 / b1, 1.0), capacity)
            drop(state, s, B1)
        else:
            p[0] = max(p[0] - max(b1 / b2, 1.0), 0.0)
            drop(state, s, B2)
            from_b2 = True
    victim = -1
    if st[LENGTH + T1] + st[LENGTH + T2] >= capacity:
        if from_ghost:
            victim = _replace(state, from_b2)
        elif st[LENGTH + T1] + st[LENGTH + B1] >= capacity:
            if st[LENGTH + B1] > 0:
                drop(state, tail(prv, st, B1), B1)
                victim = _replace(state, False)
            else:
                victim = drop(state, tail(prv, st, T1), T1)
        else:
            directory = st[LENGTH + T1] + st[LENGTH + T2] + st[LENGTH + B1] + st[LENGTH + B2]
            if directory >= 2 * capacity and st[LENGTH + B2] > 0:
                drop(state, tail(prv, st, B2), B2)
            victim = _replace(state, False)
    insert(state, key, T2 if from_ghost else T1)
    return victim


@njit(inline="always")
def remove(state, key):
    return remove_held(state, key, B1)


@njit(inline="always")
def contains(state, key):
    return holds(state, key, B1)


@njit(inline="always")
def occupancy(state):
    return state[ST][LENGTH + T1] + state[ST][LENGTH + T2]


ARC = compiled_policy("ARC", STATE, lookup, admit, remove, contains, occupancy)


@register("arc")
def build(capacity: int, ctx: PolicyContext) -> ARC:
    return ARC(lists_state(ctx.n_keys, 2 * capacity, [capacity], hashed=ctx.hashed) + (np.zeros(1, np.float64),), ctx.n_keys)
