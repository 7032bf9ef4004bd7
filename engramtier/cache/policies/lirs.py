"""LIRS: keep the rows of low inter-reference recency (LIR); a small queue holds the rest (HIR).

Jiang & Zhang (SIGMETRICS '02), as libCacheSim 0.3.5's ``LIRS`` implements it, so hit counts match
exactly. The cache holds ``lir_limit`` LIR rows and ``hir_limit = max(1, int(0.01 * capacity))``
resident HIR rows (libCacheSim's fixed ``hirs_ratio`` of 0.01, rounded down; LIR gets the rest).
Stack S orders recently used rows (LIR, resident HIR and non-resident HIR), newest first; list Q
holds the resident HIR rows in use order, and the oldest of Q is what a miss evicts. A key found in S
is moved to S's front, one found in Q to Q's front, on every request (a miss on a non-resident HIR
entry of S moves it too). Then:

- an LIR row hits and S is pruned: HIR entries at S's bottom are dropped until an LIR row is there
  (S's front entry always stays);
- a resident HIR row in S hits and becomes LIR: it leaves Q, and if LIR was full S's bottom LIR row
  is demoted to Q's front (Q evicting its oldest row first if full) and S is pruned;
- a resident HIR row only in Q hits and enters S's front as HIR; if LIR was full S's bottom LIR row
  is demoted first as above, which may evict Q's oldest row (`hit_victim`). LIR is then one row short
  until a miss fills it (libCacheSim's order);
- a miss on a non-resident HIR entry of S makes it LIR (demoting S's bottom LIR row if LIR is full);
- any other miss enters as LIR while LIR has room, else as resident HIR at the front of S and Q, Q
  evicting its oldest row first if it is full.

A row evicted from Q stays in S as a non-resident HIR entry if it is there. Non-resident entries are
remembered in order of eviction (libCacheSim's NH list), and after each request, while S holds more
than ``2 * capacity`` entries, the oldest of them is forgotten. They are not cached (`contains` is
False, `remove` leaves them). All entries share one pool of ``2 * capacity + hir_limit + 1`` nodes
(S's bound, Q's rows not in S, and the row entering S before the bound is applied).

libCacheSim's bookkeeping assumes Q holds at least two rows. With one (``capacity < 200``) a hit on
Q's only row when LIR is full evicts that row from Q while keeping it resident in S, uncounted, and
the cache goes on to hold more rows than its capacity, which no tier can: such capacities are refused.

State: the shared list arrays, S linked by ``prv``/``nxt``; each node's flags (`FLAGS`: in S, LIR,
resident, in Q); Q and the non-resident list linked by their own ``qprv``/``qnxt`` (a non-resident
entry is never in Q, so one pair of links serves both).
"""

import itertools

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    FREE,
    KEY_OF,
    LENGTH,
    LIST_OF,
    NODE_LINKS,
    NXT,
    PRV,
    SCALARS,
    ST,
    give_node,
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
from engramtier.errors import EngramTierError

S, Q, NH = range(3)  # lists: the stack, the resident HIR queue, the non-resident entries (oldest evicted last)
CAPACITY, LIR_LIMIT, HIR_LIMIT, LIR_COUNT, HIT_VICTIM = range(SCALARS, SCALARS + 5)
FLAGS = LIST_OF  # the per-node byte of the list layout holds LIRS's flags
IN_S, LIR, RESIDENT, IN_Q = 1, 2, 4, 8  # a node in S that is neither LIR nor RESIDENT is in NH
QPRV, QNXT = EXTRA, EXTRA + 1  # links of Q and NH

STATE = lists_state_type(NODE_LINKS, NODE_LINKS)
HIRS_RATIO = 0.01  # libCacheSim's LIRS hard-codes it
MIN_HIR_ROWS = 2


@inlined
def _enter(state, s, q, flag):
    """Put node ``s`` at the front of list ``q`` (S through prv/nxt, Q and NH through qprv/qnxt)."""
    st = state[ST]
    if q == S:
        push_head(state[PRV], state[NXT], st, S, s)
    else:
        push_head(state[QPRV], state[QNXT], st, q, s)
    st[LENGTH + q] += 1
    state[FLAGS][s] |= flag


@inlined
def _leave(state, s, q, flags):
    """Unlink node ``s`` from list ``q`` and clear ``flags``."""
    st = state[ST]
    if q == S:
        unlink(state[PRV], state[NXT], st, S, s)
    else:
        unlink(state[QPRV], state[QNXT], st, q, s)
    st[LENGTH + q] -= 1
    state[FLAGS][s] &= ~flags


@inlined
def _release(state, s):
    """Free node ``s`` if it is in neither S nor Q."""
    if state[FLAGS][s] & (IN_S | IN_Q) == 0:
        unlink_key(state, s)
        give_node(state[NXT], state[ST], FREE, s)


@inlined
def _evict_hir(state):
    """Evict Q's oldest row; it stays in S as a non-resident entry if it is there. Returns its key."""
    st, flags = state[ST], state[FLAGS]
    s = state[QPRV][st[Q]]
    _leave(state, s, Q, IN_Q)
    if flags[s] & IN_S:
        flags[s] &= ~RESIDENT
        _enter(state, s, NH, 0)
    else:
        _release(state, s)
    return state[KEY_OF][s]


@inlined
def _prune(state):
    """Drop HIR entries from S's bottom until an LIR row is there or one entry is left."""
    prv, st, flags = state[PRV], state[ST], state[FLAGS]
    while st[S] >= 0:
        s = prv[st[S]]
        if s == st[S] or flags[s] & LIR:
            return
        if flags[s] & RESIDENT == 0:
            _leave(state, s, NH, 0)
        _leave(state, s, S, IN_S | RESIDENT)
        _release(state, s)


@inlined
def _demote_lir(state):
    """Move S's bottom LIR row to Q's front (Q evicting its oldest row first if full) and prune S.
    Returns the evicted key, or -1."""
    st = state[ST]
    s = state[PRV][st[S]]
    _leave(state, s, S, IN_S | LIR | RESIDENT)
    st[LIR_COUNT] -= 1
    victim = -1
    if st[LENGTH + Q] >= st[HIR_LIMIT]:
        victim = _evict_hir(state)
    _enter(state, s, Q, IN_Q)
    _prune(state)
    return victim


@inlined
def _limit_stack(state):
    """Forget the oldest non-resident entries while S holds more than twice the capacity."""
    st = state[ST]
    while st[LENGTH + S] > 2 * st[CAPACITY] and st[NH] >= 0:
        s = state[QPRV][st[NH]]
        _leave(state, s, NH, 0)
        _leave(state, s, S, IN_S)
        _release(state, s)


@inlined
def _make_lir(state, s):
    st = state[ST]
    state[FLAGS][s] |= LIR | RESIDENT
    st[LIR_COUNT] += 1


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    st, flags = state[ST], state[FLAGS]
    st[HIT_VICTIM] = -1
    f = flags[s]
    if f & IN_S:
        move_to_head(state[PRV], state[NXT], st, S, s)
    if f & IN_Q:
        move_to_head(state[QPRV], state[QNXT], st, Q, s)
    if f & LIR:
        _prune(state)
        return True
    if f & IN_S:
        if f & RESIDENT == 0:
            return False  # a non-resident entry: a miss, completed by admit
        _leave(state, s, Q, IN_Q)  # a resident HIR row in S is in Q too
        if st[LIR_COUNT] >= st[LIR_LIMIT]:
            _demote_lir(state)  # Q has room now: nothing is evicted
        _make_lir(state, s)
        return True
    if st[LIR_COUNT] >= st[LIR_LIMIT]:
        st[HIT_VICTIM] = _demote_lir(state)
    _enter(state, s, S, IN_S | RESIDENT)
    _limit_stack(state)
    return True


@inlined
def admit(state, key, t):
    st = state[ST]
    s = node_of(state, key)
    victim = -1
    if s >= 0:  # a non-resident entry of S, which the lookup moved to S's front
        if st[LIR_COUNT] >= st[LIR_LIMIT]:
            victim = _demote_lir(state)
        _leave(state, s, NH, 0)
        _make_lir(state, s)
        return victim
    if st[LIR_COUNT] >= st[LIR_LIMIT] and st[LENGTH + Q] >= st[HIR_LIMIT]:
        victim = _evict_hir(state)
    s = take_node(state[NXT], st, FREE)
    link_key(state, key, s)
    if st[LIR_COUNT] < st[LIR_LIMIT]:
        _enter(state, s, S, IN_S)
        _make_lir(state, s)
    else:
        _enter(state, s, S, IN_S | RESIDENT)
        _enter(state, s, Q, IN_Q)
    _limit_stack(state)
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    st, f = state[ST], state[FLAGS][s]
    if f & IN_S and f & (LIR | RESIDENT) == 0:
        return False  # a non-resident entry stays
    if f & IN_S:
        _leave(state, s, S, IN_S | LIR | RESIDENT)
    if f & IN_Q:
        _leave(state, s, Q, IN_Q)
    _release(state, s)
    if f & LIR:
        st[LIR_COUNT] -= 1
        _prune(state)
    return True


@inlined
def contains(state, key):
    s = node_of(state, key)
    return s >= 0 and state[FLAGS][s] & (LIR | IN_Q) != 0


@inlined
def occupancy(state):
    return state[ST][LIR_COUNT] + state[ST][LENGTH + Q]


@inlined
def hit_victim(state):
    return state[ST][HIT_VICTIM]


LIRS = compiled_policy("LIRS", STATE, lookup, admit, remove, contains, occupancy, hit_victim)


def hir_rows(capacity: int) -> int:
    """libCacheSim's resident HIR rows for ``capacity``: ``max(1, int(0.01 * capacity))``."""
    return max(1, int(HIRS_RATIO * capacity))


@register("lirs")
def build(capacity: int, ctx: PolicyContext) -> LIRS:
    hir = hir_rows(capacity)
    if hir < MIN_HIR_ROWS:
        smallest = next(c for c in itertools.count(capacity) if hir_rows(c) >= MIN_HIR_ROWS)
        raise EngramTierError(
            f"policy 'lirs': {capacity} rows give the HIR queue {hir} row (libCacheSim's 1%), with which "
            f"libCacheSim's LIRS keeps a hit row it evicted and holds more rows than its capacity; use at "
            f"least {smallest} rows"
        )
    scalars = [capacity, capacity - hir, hir, 0, -1]
    state = lists_state(ctx.n_keys, 2 * capacity + hir + 1, scalars, [("qprv", np.int32), ("qnxt", np.int32)],
                        hashed=ctx.hashed)
    return LIRS(state, ctx.n_keys)
