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

Layout (the paper's L1 and L2): a ghost is always older than every row of its T list, since it
entered its B list as that list's LRU row. So T1 and B1 are one ring, L1, newest first, in which B1
is the tail end starting at the node ``st[B1]`` (-1: B1 empty); T2 and B2 likewise are ring L2 with
``st[B2]``. REPLACE, the work of almost every miss, then demotes T's LRU row by moving that boundary
one node and relabelling the node, without touching a link, and trimming B forgets the ring's oldest
node. A miss so touches a few nodes where four linked lists would touch twice as many.
"""

import numpy as np
from numba import types

from engramtier.cache import keymap
from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    FREE,
    INDEX,
    KEY_OF,
    LENGTH,
    LIST_OF,
    NXT,
    PRV,
    SCALARS,
    ST,
    give_node,
    holds,
    link_key,
    lists_state,
    lists_state_type,
    move_to_head,
    node_of,
    push_head,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.cache.prefetch import prefetch

T1, T2, B1, B2 = range(4)  # list ids; T1 and B1 share ring L1 = st[T1], T2 and B2 ring L2 = st[T2]
GHOSTS = B1  # list ids from here on only remember keys; B of ring r is list GHOSTS + r, its first node st[GHOSTS + r]
CAPACITY = SCALARS  # index into st
P = EXTRA  # the state's one-element array holding p

STATE = lists_state_type(types.float64[::1])  # then p, the target size of T1


@inlined
def _take_out(state, s, q):
    """Unlink node ``s`` of list ``q`` from its ring, moving its ghost boundary past it if it is B's first."""
    prv, nxt, st, list_of = state[PRV], state[NXT], state[ST], state[LIST_OF]
    ring = q & 1
    if st[GHOSTS + ring] == s:
        n = nxt[s]
        st[GHOSTS + ring] = n if n != s and list_of[n] >= GHOSTS else -1
    unlink(prv, nxt, st, ring, s)
    st[LENGTH + q] -= 1


@inlined
def _push(state, s, q):
    """Put node ``s`` at the front of T list ``q`` (the front of its ring)."""
    push_head(state[PRV], state[NXT], state[ST], q, s)
    state[ST][LENGTH + q] += 1
    state[LIST_OF][s] = q


@inlined
def _demote(state, ring):
    """T's LRU row of ``ring`` becomes B's newest ghost: the boundary moves one node; returns its key."""
    prv, st = state[PRV], state[ST]
    first_ghost = st[GHOSTS + ring]
    s = prv[first_ghost if first_ghost >= 0 else st[ring]]
    st[GHOSTS + ring] = s
    state[LIST_OF][s] = GHOSTS + ring
    st[LENGTH + ring] -= 1
    st[LENGTH + GHOSTS + ring] += 1
    return state[KEY_OF][s]


@inlined
def _drop(state, s, q):
    """Forget node ``s`` of list ``q`` and free it; returns its key."""
    _take_out(state, s, q)
    key = unlink_key(state, s)
    give_node(state[NXT], state[ST], FREE, s)
    return key


@inlined
def _drop_oldest(state, ring):
    """Forget the oldest node of ``ring`` (B's oldest ghost, or T's LRU row when B is empty); returns its key."""
    s = state[PRV][state[ST][ring]]
    return _drop(state, s, state[LIST_OF][s])


@inlined
def _reuse_oldest(state, key):
    """Forget L1's oldest entry (B1's oldest ghost, or T1's LRU row when B1 is empty) and give its node
    to ``key`` as T1's newest row: the ring turns one node, no link changes. Returns the forgotten key."""
    st, list_of = state[ST], state[LIST_OF]
    s = state[PRV][st[T1]]
    if st[GHOSTS + T1] == s:  # it was B1's only ghost
        st[GHOSTS + T1] = -1
    st[LENGTH + list_of[s]] -= 1
    forgotten = unlink_key(state, s)
    st[T1] = s
    st[LENGTH + T1] += 1
    list_of[s] = T1
    link_key(state, key, s)
    return forgotten


@inlined
def _replace(state, from_b2):
    """REPLACE: demote T1's or T2's LRU row to its ghost list; returns the demoted key."""
    st, p = state[ST], state[P][0]
    t1 = st[LENGTH + T1]
    if (t1 > 0 and (t1 > p or (t1 == p and from_b2))) or st[LENGTH + T2] == 0:
        return _demote(state, T1)
    return _demote(state, T2)


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    list_of = state[LIST_OF]
    if list_of[s] == T1:
        _take_out(state, s, T1)
        _push(state, s, T2)
    elif list_of[s] == T2:
        move_to_head(state[PRV], state[NXT], state[ST], T2, s)  # never B2's first node, so no boundary moves
    else:
        return False  # a ghost: handled by admit
    return True


@inlined
def admit(state, key, t):
    st, list_of, p = state[ST], state[LIST_OF], state[P]
    capacity = st[CAPACITY]
    s = node_of(state, key)
    from_ghost = s >= 0
    from_b2 = False
    if from_ghost:
        b1, b2 = st[LENGTH + B1], st[LENGTH + B2]
        if list_of[s] == B1:
            p[0] = min(p[0] + max(b2 / b1, 1.0), capacity)
            _take_out(state, s, B1)
        else:
            p[0] = max(p[0] - max(b1 / b2, 1.0), 0.0)
            _take_out(state, s, B2)
            from_b2 = True
        # the ghost's node carries the key on into T2: its key map entry stays
    victim = -1
    if st[LENGTH + T1] + st[LENGTH + T2] >= capacity:
        if from_ghost:
            victim = _replace(state, from_b2)
        elif st[LENGTH + T1] + st[LENGTH + B1] >= capacity:
            # forget B1's oldest ghost (B1 empty: evict T1's LRU row) and REPLACE; the two commute, since
            # REPLACE adds to B1's newest end and decides on T1, T2 and p alone
            victim = _replace(state, False) if st[LENGTH + B1] > 0 else -1
            evicted = _reuse_oldest(state, key)
            _prefetch_next_miss(state)
            return evicted if victim < 0 else victim
        else:
            directory = st[LENGTH + T1] + st[LENGTH + T2] + st[LENGTH + B1] + st[LENGTH + B2]
            if directory >= 2 * capacity and st[LENGTH + B2] > 0:
                _drop_oldest(state, T2)  # B2's oldest ghost
            victim = _replace(state, False)
    if from_ghost:
        _push(state, s, T2)
    else:
        s = take_node(state[NXT], st, FREE)
        _push(state, s, T1)
        link_key(state, key, s)
    _prefetch_next_miss(state)
    return victim


@inlined
def _prefetch_next_miss(state):
    """Start loading what the next miss reads at random places: L1's oldest node's predecessor and the
    key map entry of its key (trimming B1 unlinks and unmaps it), and T1's LRU row (REPLACE demotes it)."""
    key_of, prv, st = state[KEY_OF], state[PRV], state[ST]
    if st[T1] < 0:
        return
    oldest = prv[st[T1]]
    prefetch(key_of, np.int64(prv[oldest]))
    keymap.prefetch_home(state[INDEX], key_of[oldest])
    if st[GHOSTS + T1] >= 0:
        prefetch(key_of, np.int64(prv[st[GHOSTS + T1]]))


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0 or state[LIST_OF][s] >= GHOSTS:
        return False
    _drop(state, s, state[LIST_OF][s])
    return True


@inlined
def contains(state, key):
    return holds(state, key, GHOSTS)


@inlined
def occupancy(state):
    return state[ST][LENGTH + T1] + state[ST][LENGTH + T2]


ARC = compiled_policy("ARC", STATE, lookup, admit, remove, contains, occupancy)


@register("arc")
def build(capacity: int, ctx: PolicyContext) -> ARC:
    return ARC(lists_state(ctx.n_keys, 2 * capacity, [capacity], hashed=ctx.hashed) + (np.zeros(1, np.float64),), ctx.n_keys)
