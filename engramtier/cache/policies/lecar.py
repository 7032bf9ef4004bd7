"""LeCaR (Vietri et al., HotStorage'18): LRU and LFU as two experts, weighted by regret.

To evict, the policy asks both experts for a victim (LRU's least recent row, LFU's least used, the
oldest among equals as in `lfu`). When they agree that row goes; otherwise it follows LRU with
probability ``w_lru`` and LFU otherwise, and remembers the row in that expert's ghost list. A miss on
a ghost of expert E means E was wrong: its weight falls, ``w_E <- w_E * exp(-lr * dr**age) + 1e-10``,
``age`` the requests since the eviction, then both are normalised (``(w + 1e-10) / (w_E + w_other +
2e-10)`` for the other). The row itself comes back as a new row, used once.

libCacheSim 0.3.5's ``LeCaR``, whose rules this follows: ``lr`` 0.45, discount ``dr = 0.005 **
(1 / capacity)``, weights 0.5 each (``lru_weight`` sets w_lru alone, as its ``lru-weight`` does, so
they need not sum to one until the first update; ``update_weight = false`` keeps them fixed), a draw
``r = (rand % 100) / 100`` choosing LRU when ``r < w_lru``, each ghost list holding at most
``capacity // 2`` rows (oldest dropped first), a row both experts chose leaving no ghost. Ghosts are
met in `admit` (a lookup of one is a miss that changes nothing); ``remove`` leaves them. libCacheSim
draws from a clock-seeded generator, ours from ``seed`` (`_draws`): the tests hold the mean hit ratio
of several seeds within 0.01 of libCacheSim's mean.

State: `lfu`'s arrays over a pool of cached and ghost nodes (a ghost is in no bucket, so its bucket
links chain it into its ghost list), then LRU's links over the cached nodes, each node's expert
(`CACHED`, or the expert that evicted it) and eviction time, and the weights.
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
    PRV,
    ST,
    bounded_pool,
    give_node,
    move_to_head,
    node_of,
    push_head,
    tail,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import check_number

# st after lfu's scalars: LRU's head, the two ghost lists' heads and lengths (by expert), their bound,
# whether weights learn, the draws' seed and counter
LRU_HEAD = lfu.FREE_BUCKET + 1
GHOST_HEAD = LRU_HEAD  # + expert (1: LRU, 2: LFU)
GHOST_LENGTH = GHOST_HEAD + 2  # + expert
GHOST_MAX, LEARNS, SEED, DRAWS = GHOST_LENGTH + 3, GHOST_LENGTH + 4, GHOST_LENGTH + 5, GHOST_LENGTH + 6
N_SCALARS = DRAWS + 1
# the state's arrays after lfu's
LRU_PRV, LRU_NXT, EXPERT, EVICTED_AT, WEIGHTS = range(lfu.DOWN + 1, lfu.DOWN + 6)
CACHED, BY_LRU, BY_LFU = 0, 1, 2  # EXPERT[node]; a node both experts chose is freed, so needs no mark
W_LRU, W_LFU, LEARNING_RATE, DISCOUNT = range(4)  # WEIGHTS[...]: w_lru, w_lfu as BY_LRU - 1, BY_LFU - 1
LEARNING_RATE_DEFAULT = 0.45

STATE = types.Tuple(tuple(lfu.STATE.types) + (
    types.int32[::1],  # LRU_PRV[node] (the ring of cached nodes, newest at st[LRU_HEAD])
    types.int32[::1],  # LRU_NXT[node]
    types.uint8[::1],  # EXPERT[node]
    types.int64[::1],  # EVICTED_AT[node]: trace position of a ghost's eviction
    types.float64[::1],  # WEIGHTS
))


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0 or state[EXPERT][s] != CACHED:
        return False  # a ghost: met by admit
    move_to_head(state[LRU_PRV], state[LRU_NXT], state[ST], LRU_HEAD, s)
    lfu.touch(state, s)
    return True


@inlined
def _penalise(state, expert, age):
    """Expert ``expert`` evicted a row requested again ``age`` requests later: its weight falls."""
    w = state[WEIGHTS]
    if not state[ST][LEARNS]:
        return
    wrong, right = expert - 1, 2 - expert
    w[wrong] = w[wrong] * math.exp(-w[LEARNING_RATE] * math.pow(w[DISCOUNT], float(age))) + 1e-10
    total = w[wrong] + w[right] + 2e-10
    w[wrong] = w[wrong] / total
    w[right] = (w[right] + 1e-10) / total


@inlined
def _forget_ghost(state, s):
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    expert = state[EXPERT][s]
    unlink(prv, nxt, st, GHOST_HEAD + expert, s)
    st[GHOST_LENGTH + expert] -= 1
    unlink_key(state, s)
    give_node(nxt, st, lfu.FREE, s)


@inlined
def _evict(state, t):
    """Evict the experts' choice; returns its key."""
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    by_lru = tail(state[LRU_PRV], st, LRU_HEAD)
    by_lfu = lfu.least_used(state)
    if by_lru == by_lfu:
        s, expert = by_lru, CACHED
    elif draw_below(st, DRAWS, SEED, 100) / 100.0 < state[WEIGHTS][W_LRU]:
        s, expert = by_lru, BY_LRU
    else:
        s, expert = by_lfu, BY_LFU
    unlink(state[LRU_PRV], state[LRU_NXT], st, LRU_HEAD, s)
    lfu.leave_bucket(state, s)
    st[lfu.SIZE] -= 1
    victim = state[KEY_OF][s]
    if expert == CACHED:
        unlink_key(state, s)
        give_node(nxt, st, lfu.FREE, s)
        return victim
    state[EXPERT][s] = expert
    state[EVICTED_AT][s] = t
    push_head(prv, nxt, st, GHOST_HEAD + expert, s)
    st[GHOST_LENGTH + expert] += 1
    while st[GHOST_LENGTH + expert] > st[GHOST_MAX]:
        _forget_ghost(state, tail(prv, st, GHOST_HEAD + expert))
    return victim


@inlined
def admit(state, key, t):
    st = state[ST]
    s = node_of(state, key)
    if s >= 0:  # a ghost: the expert that evicted it was wrong
        _penalise(state, state[EXPERT][s], t - state[EVICTED_AT][s])
        _forget_ghost(state, s)
    victim = -1
    if st[lfu.SIZE] >= st[lfu.CAPACITY]:
        victim = _evict(state, t)
    s = take_node(state[NXT], st, lfu.FREE)
    st[lfu.SIZE] += 1
    push_head(state[LRU_PRV], state[LRU_NXT], st, LRU_HEAD, s)
    state[EXPERT][s] = CACHED
    lfu.enter(state, key, s)
    return victim


@inlined
def contains(state, key):
    s = node_of(state, key)
    return s >= 0 and state[EXPERT][s] == CACHED


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0 or state[EXPERT][s] != CACHED:
        return False  # a ghost stays
    unlink(state[LRU_PRV], state[LRU_NXT], state[ST], LRU_HEAD, s)
    lfu.remove_slot(state, s)
    return True


LECAR = compiled_policy("LeCaR", STATE, lookup, admit, remove, contains, lfu.occupancy)


@register("lecar")
def build(capacity: int, ctx: PolicyContext, lru_weight: float = 0.5, update_weight: bool = True,
          seed: int = 0) -> LECAR:
    check_number(lru_weight, "policy 'lecar': params.lru_weight", low=0, high=1)
    ghosts = capacity // 2
    nodes = bounded_pool(capacity + 2 * ghosts, ctx.n_keys)  # a victim's node turns into its ghost
    st = np.zeros(N_SCALARS, np.int64)
    st[[lfu.CAPACITY, lfu.LOWEST, LRU_HEAD, GHOST_HEAD + BY_LRU, GHOST_HEAD + BY_LFU]] = [capacity, -1, -1, -1, -1]
    st[[GHOST_MAX, LEARNS, SEED]] = [ghosts, update_weight, check_seed("lecar", seed)]
    weights = np.array([lru_weight, 0.5, LEARNING_RATE_DEFAULT, 0.005 ** (1.0 / capacity)])
    return LECAR((
        *lfu.state_arrays(nodes, ctx, st),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.int32),
        np.zeros(nodes, np.uint8),
        np.zeros(nodes, np.int64),
        weights,
    ), ctx.n_keys)
