"""Cacheus (Rodriguez et al., FAST'21): SR-LRU and CR-LFU as two experts, weighted by regret, with a
learning rate that adapts itself. libCacheSim 0.3.5's ``Cacheus``, rule for rule, because its hit
counts depend on each:

- **SR-LRU** keeps the cached rows in two LRU lists: SR (scan resistant: new rows) and R (churn resistant:
  rows requested again), each first ``capacity // 2`` rows, and a history H of rows that left, trimmed to
  ``capacity - 1`` rows. A miss goes to SR's front, or, if it is in H, to R's front; a hit in SR moves the
  row to R's front; R over its size demotes its oldest rows to SR's front (marked demoted), and SR over
  its size sends its oldest rows to H: evicted, whatever the cache's occupancy. A row that was new in SR
  and returns from H grows SR by ``max(1, C_demoted // C_new + 0.5)`` (at most to the rows cached, minus
  one) and R is what is left of the capacity. libCacheSim 0.3.5 carries that new mark from H to R (its
  hits and occupancy show it; the source in the repository snapshot read here does not, which leaves
  SR and R at half the capacity each and a cache of odd capacity a row short: the fix of its PR #163).
  The matching shrink of SR, on a hit on a demoted row, reads a mark that the move from SR to R never
  carries, so it never happens, here as there, and ``C_demoted`` keeps counting such rows.
- **CR-LFU** counts uses; a row returning from H takes the count it left with, plus one. Its victim is
  the *newest* row among the least used (churn resistance).
- When a miss finds the cache full, each expert names a victim; if they differ, a draw ``r = (rand %
  100) / 100`` follows SR-LRU when ``r < w_lru`` and the chosen expert's victim is remembered in that
  expert's ghost list (``capacity // 2`` rows each). Either way the victim goes to H. A miss on a ghost
  of expert E sets ``w_E *= exp(-lr)``; every miss then normalises, ``w_lru /= (w_lru + w_lfu)``,
  ``w_lfu = 1 - w_lru``, and forgets the ghost.
- Every ``capacity`` requests the learning rate (first ``0.001 + (rand % 1000) / 1000``) moves by
  ``±|lr * Δlr|`` (up when the hit rate moved the same way as ``lr``, floored at 0.0001); the hit rate is
  libCacheSim's integer ``hits // capacity``, 1 only when every request of the period hit. When ``lr``
  stood still, ten periods without a rising hit rate redraw it.

libCacheSim draws from a clock-seeded generator, ours from ``seed`` (`_draws`). Given the draws everything
is deterministic: `tests/cacheus_model.py` replays the rules in plain Python and the policy must answer
as it does, operation by operation; until a full cache's experts first disagree no draw decides, and
there the model and libCacheSim agree request by request. Beyond, the tests compare the hit ratios of
several seeds with libCacheSim's runs: both have a long left tail (a run whose LRU weight falls to
nothing keeps following CR-LFU), so they compare medians.

One request can make libCacheSim evict two rows: a full cache evicts CR-LFU's choice out of R, and the
new row then overflows SR. The policy interface reports one row per admission (or hit), so the second
is *pending*: gone from every list, as in libCacheSim, but still held for the caller (`contains`,
`occupancy`, a lookup hits it without changing anything) until the next admission that evicts nothing or
the next hit reports it (`hit_victim`). Pending rows and cached rows never exceed the capacity. Where
libCacheSim's rules leave the row no room (SR grown to the rows cached minus one can reach 0 rows), the
admission is declined (`admit` returns the key). Every capacity from 2 rows is accepted (at 1 libCacheSim's
halves are 0 rows and it caches nothing).

State: `lfu`'s arrays (CR-LFU's count buckets; a node keeps its count in H) over a pool of nodes, each
node a row cached, in H, in a ghost list or pending; then its SR-LRU list and marks, its ghost list and
its pending links, and the weights.
"""

import math

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies import lfu
from engramtier.cache.policies._draws import check_seed, draw_below
from engramtier.cache.policies._lists import (
    KEY_OF,
    NXT,
    ST,
    bounded_pool,
    give_node,
    link_key,
    move_to_head,
    node_of,
    push_head,
    tail,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import EngramTierError

# WHERE[node]: OUT of SR-LRU's lists, or in R, SR or H; GHOST_OF[node]: no ghost, or a ghost of the expert
OUT, R, SR, H = range(4)
LRU_EXPERT, LFU_EXPERT = 1, 2
DEMOTED, NEW = 1, 2  # MARKS[node] bits

# st after lfu's scalars: the heads of R, SR, H (HEAD + where) and their lengths, R's and SR's sizes,
# libCacheSim's counters of demoted rows cached and new rows sent to H, the ghost lists' heads and
# lengths (+ expert) and bound, the pending list's head and length, requests and hits of the period,
# periods without learning, a learning-rate update due after an admission, the last hit's victim, the
# draws' seed and counter
HEAD = lfu.FREE_BUCKET  # + where (R, SR, H)
LENGTH = HEAD + 3
R_SIZE, SR_SIZE, C_DEMOTED, C_NEW = LENGTH + 4, LENGTH + 5, LENGTH + 6, LENGTH + 7
GHOST_HEAD = C_NEW  # + expert
GHOST_LENGTH = GHOST_HEAD + 2  # + expert
GHOST_MAX, PENDING_HEAD, PENDING_LENGTH = GHOST_LENGTH + 3, GHOST_LENGTH + 4, GHOST_LENGTH + 5
N_REQ, NUM_HIT, UNLEARN, LR_DUE = range(PENDING_LENGTH + 1, PENDING_LENGTH + 5)
HIT_VICTIM, SEED, DRAWS = LR_DUE + 1, LR_DUE + 2, LR_DUE + 3
N_SCALARS = DRAWS + 1
# the state's arrays after lfu's
LIST_PRV, LIST_NXT, WHERE, MARKS, GHOST_PRV, GHOST_NXT, GHOST_OF, PENDING_PRV, PENDING_NXT, PENDING, WEIGHTS = (
    range(lfu.DOWN + 1, lfu.DOWN + 12))
W_LRU, W_LFU, LR, LR_PREVIOUS, HIT_RATE_PREVIOUS = range(5)  # WEIGHTS[...]

STATE = types.Tuple(tuple(lfu.STATE.types) + (
    types.int32[::1],  # LIST_PRV[node]: the ring of R, SR or H, newest at st[HEAD + where]
    types.int32[::1],  # LIST_NXT[node]
    types.uint8[::1],  # WHERE[node]
    types.uint8[::1],  # MARKS[node]
    types.int32[::1],  # GHOST_PRV[node]
    types.int32[::1],  # GHOST_NXT[node]
    types.uint8[::1],  # GHOST_OF[node]
    types.int32[::1],  # PENDING_PRV[node]: rows evicted and not reported yet, newest at st[PENDING_HEAD]
    types.int32[::1],  # PENDING_NXT[node]
    types.uint8[::1],  # PENDING[node]
    types.float64[::1],  # WEIGHTS
))


@inlined
def _release(state, s):
    """Free node ``s`` once it is in no list."""
    if state[WHERE][s] == OUT and state[GHOST_OF][s] == 0 and state[PENDING][s] == 0:
        unlink_key(state, s)
        give_node(state[NXT], state[ST], lfu.FREE, s)


@inlined
def _enter(state, s, where):
    push_head(state[LIST_PRV], state[LIST_NXT], state[ST], HEAD + where, s)
    state[ST][LENGTH + where] += 1
    state[WHERE][s] = where


@inlined
def _leave(state, s):
    where = state[WHERE][s]
    unlink(state[LIST_PRV], state[LIST_NXT], state[ST], HEAD + where, s)
    state[ST][LENGTH + where] -= 1
    state[WHERE][s] = OUT


@inlined
def _demote_r_oldest(state):
    """R's oldest row to SR's front, marked demoted (R's rows never are: each is a fresh copy)."""
    st = state[ST]
    s = tail(state[LIST_PRV], st, HEAD + R)
    _leave(state, s)
    _enter(state, s, SR)
    state[MARKS][s] = DEMOTED
    st[C_DEMOTED] += 1


@inlined
def _trim_history(state):
    st = state[ST]
    while st[LENGTH + H] >= st[lfu.CAPACITY]:
        s = tail(state[LIST_PRV], st, HEAD + H)
        _leave(state, s)
        _release(state, s)


@inlined
def _to_history(state, s):
    """Cached row ``s`` leaves both experts for H (keeping its count, and its new mark); returns its key."""
    st, marks = state[ST], state[MARKS]
    _leave(state, s)
    lfu.leave_bucket(state, s)
    if marks[s] & NEW:
        st[C_NEW] += 1
    if marks[s] & DEMOTED:
        st[C_DEMOTED] -= 1
    marks[s] &= NEW
    _enter(state, s, H)
    return state[KEY_OF][s]


@inlined
def _pend(state, s):
    """Row ``s``, evicted, waits to be reported."""
    push_head(state[PENDING_PRV], state[PENDING_NXT], state[ST], PENDING_HEAD, s)
    state[ST][PENDING_LENGTH] += 1
    state[PENDING][s] = 1


@inlined
def _unpend(state, s):
    unlink(state[PENDING_PRV], state[PENDING_NXT], state[ST], PENDING_HEAD, s)
    state[ST][PENDING_LENGTH] -= 1
    state[PENDING][s] = 0
    _release(state, s)


@inlined
def _report_pending(state):
    """The oldest pending row, reported now (no longer held); -1 when none waits."""
    st = state[ST]
    if st[PENDING_LENGTH] == 0:
        return -1
    s = tail(state[PENDING_PRV], st, PENDING_HEAD)
    key = state[KEY_OF][s]
    _unpend(state, s)
    return key


@inlined
def _forget_ghost(state, s):
    st, expert = state[ST], state[GHOST_OF][s]
    unlink(state[GHOST_PRV], state[GHOST_NXT], st, GHOST_HEAD + expert, s)
    st[GHOST_LENGTH + expert] -= 1
    state[GHOST_OF][s] = 0


@inlined
def _remember_ghost(state, s, expert):
    st = state[ST]
    if st[GHOST_MAX] == 0:
        return
    push_head(state[GHOST_PRV], state[GHOST_NXT], st, GHOST_HEAD + expert, s)
    st[GHOST_LENGTH + expert] += 1
    state[GHOST_OF][s] = expert
    if st[GHOST_LENGTH + expert] > st[GHOST_MAX]:
        oldest = tail(state[GHOST_PRV], st, GHOST_HEAD + expert)
        _forget_ghost(state, oldest)
        _release(state, oldest)


@inlined
def _history_check(state, s):
    """A miss: a ghost's expert loses weight, the weights are normalised, the ghost is forgotten."""
    w = state[WEIGHTS]
    expert = state[GHOST_OF][s] if s >= 0 else 0
    if expert == LRU_EXPERT:
        w[W_LRU] = w[W_LRU] * math.exp(-w[LR])
    elif expert == LFU_EXPERT:
        w[W_LFU] = w[W_LFU] * math.exp(-w[LR])
    w[W_LRU] = w[W_LRU] / (w[W_LRU] + w[W_LFU])
    w[W_LFU] = 1 - w[W_LRU]
    if expert:
        _forget_ghost(state, s)
        _release(state, s)


@inlined
def _update_learning_rate(state):
    st, w = state[ST], state[WEIGHTS]
    current = float(st[NUM_HIT] // st[lfu.CAPACITY])  # libCacheSim divides integers
    delta_hit_rate = current - w[HIT_RATE_PREVIOUS]
    delta_lr = w[LR] - w[LR_PREVIOUS]
    w[LR_PREVIOUS] = w[LR]
    w[HIT_RATE_PREVIOUS] = current
    if delta_lr != 0:
        sign = 1.0 if delta_hit_rate / delta_lr > 0 else -1.0
        step = w[LR] + sign * abs(w[LR] * delta_lr)
        w[LR] = step if step > 0.001 else 0.0001
        st[UNLEARN] = 0
    elif current == 0 or delta_hit_rate <= 0:
        st[UNLEARN] += 1
    elif st[UNLEARN] >= 10:
        st[UNLEARN] = 0
        w[LR] = 0.001 + draw_below(st, DRAWS, SEED, 1000) / 1000.0
    st[NUM_HIT] = 0


@inlined
def _learning_rate_due(state):
    """Run the learning-rate update a miss left due (libCacheSim makes it after the admission)."""
    st = state[ST]
    if st[LR_DUE]:
        st[LR_DUE] = 0
        _update_learning_rate(state)


@inlined
def _evict(state):
    """The full cache's eviction: the experts' choice goes to H; returns its key."""
    st = state[ST]
    by_lru = tail(state[LIST_PRV], st, HEAD + (SR if st[LENGTH + SR] > 0 else R))
    by_lfu = state[lfu.BUCKET_HEAD][st[lfu.LOWEST]]
    expert = LRU_EXPERT if draw_below(st, DRAWS, SEED, 100) / 100.0 < state[WEIGHTS][W_LRU] else LFU_EXPERT
    s = by_lru if expert == LRU_EXPERT else by_lfu
    victim = _to_history(state, s)
    _trim_history(state)
    if by_lru != by_lfu:
        _remember_ghost(state, s, expert)
    return victim


@inlined
def _grow_sr(state):
    """A row that was new in SR came back from H: SR was too small."""
    st = state[ST]
    q = st[C_DEMOTED] // st[C_NEW]
    delta = 1.0 if 1.0 > q + 0.5 else q + 0.5
    cached = st[LENGTH + R] + st[LENGTH + SR]
    st[SR_SIZE] = cached - 1 if st[SR_SIZE] + delta > cached - 1 else int(st[SR_SIZE] + delta)
    st[R_SIZE] = st[lfu.CAPACITY] - st[SR_SIZE]


@inlined
def lookup(state, key, t):
    st = state[ST]
    _learning_rate_due(state)
    st[HIT_VICTIM] = -1
    s = node_of(state, key)
    st[N_REQ] += 1
    hit = s >= 0 and (state[WHERE][s] == R or state[WHERE][s] == SR or state[PENDING][s] == 1)
    if not hit:
        _history_check(state, s)
        st[LR_DUE] = 1 if st[N_REQ] % st[lfu.CAPACITY] == 0 else 0
        return False
    st[NUM_HIT] += 1
    if state[PENDING][s] == 0:  # a pending row is served as it is: libCacheSim no longer holds it
        if state[WHERE][s] == R:
            move_to_head(state[LIST_PRV], state[LIST_NXT], st, HEAD + R, s)
        else:
            _leave(state, s)
            _enter(state, s, R)
            state[MARKS][s] = 0
            while st[LENGTH + R] > st[R_SIZE]:
                _demote_r_oldest(state)
        lfu.touch(state, s)
        st[HIT_VICTIM] = _report_pending(state)
    if st[N_REQ] % st[lfu.CAPACITY] == 0:
        _update_learning_rate(state)
    return True


@inlined
def admit(state, key, t):
    st = state[ST]
    first = -1
    if st[LENGTH + R] + st[LENGTH + SR] + 1 > st[lfu.CAPACITY]:
        first = _evict(state)
    s = node_of(state, key)  # after the eviction, which may have trimmed the row out of H
    in_history = s >= 0 and state[WHERE][s] == H
    if not (st[R_SIZE] if in_history else st[SR_SIZE]) >= 1:  # libCacheSim's SR_LRU_can_insert
        if first >= 0:
            _pend(state, node_of(state, first))
        _learning_rate_due(state)
        return key
    if s >= 0 and state[GHOST_OF][s]:  # admitted without a lookup (a demotion into this tier)
        _forget_ghost(state, s)
    if in_history:
        _leave(state, s)
        lfu.join(state, s, state[lfu.COUNT][s] + 1)
        while st[LENGTH + R] + 1 > st[R_SIZE]:
            _demote_r_oldest(state)
        _enter(state, s, R)
        new = state[MARKS][s] & NEW
        state[MARKS][s] = 0
        if new:
            _grow_sr(state)
    else:
        if s < 0:
            s = take_node(state[NXT], st, lfu.FREE)
            link_key(state, key, s)
        lfu.join(state, s, 1)
        _enter(state, s, SR)
        state[MARKS][s] = NEW
    while st[LENGTH + SR] > st[SR_SIZE]:
        victim = _to_history(state, tail(state[LIST_PRV], st, HEAD + SR))
        if first < 0:
            first = victim
        else:
            _pend(state, node_of(state, victim))
    _trim_history(state)
    _learning_rate_due(state)
    return first if first >= 0 else _report_pending(state)


@inlined
def contains(state, key):
    s = node_of(state, key)
    return s >= 0 and (state[WHERE][s] == R or state[WHERE][s] == SR or state[PENDING][s] == 1)


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    if state[PENDING][s]:
        _unpend(state, s)
        return True
    if state[WHERE][s] != R and state[WHERE][s] != SR:
        return False
    _to_history(state, s)  # libCacheSim's Cacheus_remove: SR-LRU's remove sends it to H
    _trim_history(state)
    return True


@inlined
def occupancy(state):
    st = state[ST]
    return st[LENGTH + R] + st[LENGTH + SR] + st[PENDING_LENGTH]


@inlined
def hit_victim(state):
    return state[ST][HIT_VICTIM]


CACHEUS = compiled_policy("Cacheus", STATE, lookup, admit, remove, contains, occupancy, hit_victim)


@register("cacheus")
def build(capacity: int, ctx: PolicyContext, seed: int = 0) -> CACHEUS:
    if capacity < 2:
        raise EngramTierError("policy 'cacheus': capacity 1 gives SR and R 0 rows each (libCacheSim's halves), "
                              "and it caches nothing; use at least 2 rows")
    half = capacity // 2
    # cached and pending rows (at most capacity), H (capacity - 1), the ghosts (2 * half), one being admitted
    nodes = bounded_pool(2 * capacity + 2 * half + 1, ctx.n_keys)
    st = np.zeros(N_SCALARS, np.int64)
    st[[lfu.CAPACITY, lfu.LOWEST, HEAD + R, HEAD + SR, HEAD + H]] = [capacity, -1, -1, -1, -1]
    st[[R_SIZE, SR_SIZE, GHOST_HEAD + LRU_EXPERT, GHOST_HEAD + LFU_EXPERT, GHOST_MAX, PENDING_HEAD]] = [
        half, half, -1, -1, half, -1]
    st[[HIT_VICTIM, SEED]] = [-1, check_seed("cacheus", seed)]
    weights = np.zeros(5)
    weights[[W_LRU, W_LFU]] = 0.5
    weights[LR] = 0.001 + draw_below(st, DRAWS, SEED, 1000) / 1000.0
    return CACHEUS((
        *lfu.state_arrays(nodes, ctx, st),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.uint8),
        np.zeros(nodes, np.uint8),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.uint8),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.uint8),
        weights,
    ), ctx.n_keys)
