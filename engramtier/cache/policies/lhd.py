"""LHD, Least Hit Density (Beckmann, Chen and Cidon, NSDI'18): evict the sampled row expected to earn
the fewest hits per unit of cache space and time.

Rows fall into classes by the ages of their last two hits; per class the policy counts hits and
evictions at each (coarsened) age and, every 2**20 accesses, turns them into each age's hit density
(hits expected over the rest of a row's lifetime, per lifetime; older counts decay by 0.9). To evict
it samples rows and takes the one of least density at its current age.

This is libCacheSim 0.3.5's ``LHD`` (the authors' code) for rows of size 1, every constant as there:
ages in accesses shifted right by 10 (re-chosen from the number of rows cached at the 6th and 26th
reconfiguration, so that ages stay below ``MAX_AGE`` = 20,000; an age at the cap ranks lowest of
all), 16 hit-age classes (``log2`` doublings of ``lastHitAge + lastLastHitAge`` up to ``MAX_AGE``),
densities first ``(class + 1) / (age + 1)`` (a GDSF-like start), 8 sampled candidates until the 51st
reconfiguration and 32 after, plus the last 8 admissions that looked worse than the average victim
(an EWMA of victims' densities), and explorers: an access makes its row an explorer (density + 1)
with probability 1/32 while fewer than 50 reconfigurations have passed and the budget, 1% of the
capacity, allows. Counts and densities are float32 as there. Every row belongs to libCacheSim's one
application class (``DEFAULT_APP_ID``), so only those 16 of its 256 classes are kept (3.8 MB).

libCacheSim draws from a clock-seeded generator, ours from ``seed`` (`_draws`): the tests hold the
mean hit ratio of several seeds within 0.01 of libCacheSim's mean. Rows sit in the slots of `lru`'s
ring like `random`'s, which a full cache samples uniformly, as libCacheSim samples its tag vector.
"""

import numpy as np
from numba import njit, types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._draws import check_seed, draw_below
from engramtier.cache.policies._lists import NODE_BYTES, NODE_KEYS, ST, node_of
from engramtier.cache.policies.lru import CAPACITY, HEAD, SIZE, SLOT_FIELDS, admit_at_head, occupancy, remove, ring_state
from engramtier.cache.policies.lru import STATE as RING_STATE
from engramtier.cache.policies.random import DRAWS, SEED, random_slot, replace
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

MAX_AGE = 20_000
HIT_AGE_CLASSES = 16
APP_CLASS = 1  # libCacheSim's DEFAULT_APP_ID % APP_CLASSES: classes APP_CLASS * 16 + 0..15 are the live ones
ASSOCIATIVITY, EARLY_CANDIDATES, ADMISSIONS = 32, 8, 8
EXPLORE_INVERSE_PROBABILITY = 32
EXPLORER_BUDGET_FRACTION = np.float32(0.01)
EXPLORING_RECONFIGURATIONS, EARLY_RECONFIGURATIONS = 50, 50
ACCESSES_PER_RECONFIGURATION = 1 << 20
EWMA_DECAY = np.float32(0.9)
AGE_COARSENING_ERROR_TOLERANCE = np.float32(0.01)
FIRST_SHIFT = 10
RANK_MAX, RANK_LOWEST = np.float32(np.finfo(np.float32).max), np.float32(np.finfo(np.float32).min)

# st after Random's SEED and DRAWS
TIMESTAMP, UNTIL_RECONFIGURATION, RECONFIGURATIONS, SHIFT, EXPLORER_BUDGET, RECENT_HEAD = range(DRAWS + 1, DRAWS + 7)
# the state's arrays after lru's: per slot, then the policy's
STAMP, LAST_AGE, LAST_LAST_AGE, EXPLORER = range(SLOT_FIELDS, SLOT_FIELDS + 4)
RECENT, HITS, EVICTIONS, DENSITIES, EWMA = range(SLOT_FIELDS + 4, SLOT_FIELDS + 9)
VICTIM_DENSITY, OBJECTS, OBJECTS_MASS = range(3)  # EWMA[...]

STATE = types.Tuple(tuple(RING_STATE.types) + (
    NODE_KEYS,  # STAMP[slot]: access count at the row's last access
    NODE_KEYS,  # LAST_AGE[slot]: coarsened age at its last hit (0 on admission)
    NODE_KEYS,  # LAST_LAST_AGE[slot]: the hit before (MAX_AGE on admission)
    NODE_BYTES,  # EXPLORER[slot]
    types.int64[::1],  # RECENT: keys of the last ADMISSIONS suspicious admissions, -1 for none
    types.float32[:, ::1],  # HITS[class, age]
    types.float32[:, ::1],  # EVICTIONS[class, age]
    types.float32[:, ::1],  # DENSITIES[class, age]
    types.float32[::1],  # EWMA
))


@inlined
def _hit_age_class(age):
    if age == 0:
        return HIT_AGE_CLASSES - 1
    log = 0
    while age < MAX_AGE and log < HIT_AGE_CLASSES - 1:
        age <<= 1
        log += 1
    return log


@inlined
def _class(state, s):
    return _hit_age_class(state[LAST_AGE][s] + state[LAST_LAST_AGE][s])


@inlined
def _age(state, s):
    st = state[ST]
    return min((st[TIMESTAMP] - state[STAMP][s]) >> st[SHIFT], MAX_AGE - 1)


@inlined
def _density(state, s):
    age = _age(state, s)
    if age == MAX_AGE - 1:
        return RANK_LOWEST
    density = state[DENSITIES][_class(state, s), age]
    if state[EXPLORER][s]:
        density = np.float32(density + 1.0)
    return density


@inlined
def _victim(state):
    st, recent = state[ST], state[RECENT]
    victim, victim_rank = -1, RANK_MAX
    for _ in range(ASSOCIATIVITY if st[RECONFIGURATIONS] > EARLY_RECONFIGURATIONS else EARLY_CANDIDATES):
        s = random_slot(st)
        rank = _density(state, s)
        if rank < victim_rank:
            victim, victim_rank = s, rank
    for i in range(ADMISSIONS):
        s = node_of(state, recent[i]) if recent[i] >= 0 else -1
        if s >= 0:
            rank = _density(state, s)
            if rank < victim_rank:
                victim, victim_rank = s, rank
    ewma = state[EWMA]
    ewma[VICTIM_DENSITY] = EWMA_DECAY * ewma[VICTIM_DENSITY] + (np.float32(1) - EWMA_DECAY) * victim_rank
    return victim


@njit(nogil=True, _nrt=False, forceinline=False)  # cold (every 2**20 accesses): a call (numba would pass an inlined caller's flag down)
def _adapt_age_coarsening(state):
    st, ewma, hits, evictions = state[ST], state[EWMA], state[HITS], state[EVICTIONS]
    ewma[OBJECTS] = ewma[OBJECTS] * EWMA_DECAY + np.float32(st[SIZE])
    ewma[OBJECTS_MASS] = ewma[OBJECTS_MASS] * EWMA_DECAY + np.float32(1)
    if st[RECONFIGURATIONS] != 5 and st[RECONFIGURATIONS] != 25:
        return
    optimal = np.float32(ewma[OBJECTS] / ewma[OBJECTS_MASS]) / np.float32(AGE_COARSENING_ERROR_TOLERANCE * MAX_AGE)
    shift = 1
    while (1 << shift) < optimal:
        shift += 1
    delta = shift - st[SHIFT]
    st[SHIFT] = shift
    ewma[OBJECTS] *= np.float32(8)
    ewma[OBJECTS_MASS] *= np.float32(8)
    for c in range(HIT_AGE_CLASSES):
        if delta < 0:  # stretch
            d = -delta
            for a in range(MAX_AGE >> d, MAX_AGE - 1):
                hits[c, MAX_AGE - 1] += hits[c, a]
                evictions[c, MAX_AGE - 1] += evictions[c, a]
            for a in range(MAX_AGE - 2, -1, -1):
                hits[c, a] = hits[c, a >> d] / np.float32(1 << d)
                evictions[c, a] = evictions[c, a >> d] / np.float32(1 << d)
        elif delta > 0:  # compress
            for a in range(MAX_AGE >> delta):
                hits[c, a] = hits[c, a << delta]
                evictions[c, a] = evictions[c, a << delta]
                for i in range(1, 1 << delta):
                    hits[c, a] += hits[c, (a << delta) + i]
                    evictions[c, a] += evictions[c, (a << delta) + i]
            for a in range(MAX_AGE >> delta, MAX_AGE - 1):
                hits[c, a] = 0
                evictions[c, a] = 0


@njit(nogil=True, _nrt=False, forceinline=False)  # cold (every 2**20 accesses): a call (numba would pass an inlined caller's flag down)
def _reconfigure(state):
    """Decay the counts, maybe re-coarsen ages, and model each class's density at each age."""
    hits, evictions, densities = state[HITS], state[EVICTIONS], state[DENSITIES]
    for c in range(HIT_AGE_CLASSES):
        for a in range(MAX_AGE):
            hits[c, a] *= EWMA_DECAY
            evictions[c, a] *= EWMA_DECAY
    _adapt_age_coarsening(state)
    for c in range(HIT_AGE_CLASSES):
        events = hits[c, MAX_AGE - 1] + evictions[c, MAX_AGE - 1]
        total_hits = hits[c, MAX_AGE - 1]
        lifetime = events
        for a in range(MAX_AGE - 2, -1, -1):
            total_hits += hits[c, a]
            events += hits[c, a] + evictions[c, a]
            lifetime += events
            densities[c, a] = total_hits / lifetime if events > 1e-5 else np.float32(0)


@inlined
def _access(state, s, key, admitted):
    """libCacheSim's ``update``: a hit (counted at its age and class) or an admission of slot ``s``."""
    st = state[ST]
    if admitted:
        state[LAST_LAST_AGE][s] = MAX_AGE
        state[LAST_AGE][s] = 0
    else:
        age = _age(state, s)
        state[HITS][_class(state, s), age] += np.float32(1)
        if state[EXPLORER][s]:
            st[EXPLORER_BUDGET] += 1
        state[LAST_LAST_AGE][s] = state[LAST_AGE][s]
        state[LAST_AGE][s] = age
    state[STAMP][s] = st[TIMESTAMP]
    explore = draw_below(st, DRAWS, SEED, EXPLORE_INVERSE_PROBABILITY) == 0
    explorer = explore and st[EXPLORER_BUDGET] > 0 and st[RECONFIGURATIONS] < EXPLORING_RECONFIGURATIONS
    state[EXPLORER][s] = explorer
    if explorer:
        st[EXPLORER_BUDGET] -= 1
    if admitted and not explore and _density(state, s) < state[EWMA][VICTIM_DENSITY]:
        state[RECENT][st[RECENT_HEAD] % ADMISSIONS] = key
        st[RECENT_HEAD] += 1
    st[TIMESTAMP] += 1
    st[UNTIL_RECONFIGURATION] -= 1
    if st[UNTIL_RECONFIGURATION] == 0:
        _reconfigure(state)
        st[UNTIL_RECONFIGURATION] = ACCESSES_PER_RECONFIGURATION
        st[RECONFIGURATIONS] += 1


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    _access(state, s, key, False)
    return True


@inlined
def admit(state, key, t):
    st = state[ST]
    if st[SIZE] < st[CAPACITY]:
        victim = admit_at_head(state, key, t)
        s = st[HEAD]
    else:
        s = _victim(state)
        state[EVICTIONS][_class(state, s), _age(state, s)] += np.float32(1)
        if state[EXPLORER][s]:
            st[EXPLORER_BUDGET] += 1
        victim = replace(state, s, key)
    _access(state, s, key, True)
    return victim


LHD = compiled_policy("LHD", STATE, lookup, admit, remove, holds_key, occupancy)


@register("lhd")
def build(capacity: int, ctx: PolicyContext, seed: int = 0) -> LHD:
    st_extra = [check_seed("lhd", seed), 0, 0, ACCESSES_PER_RECONFIGURATION, 0, FIRST_SHIFT,
                int(np.float32(capacity) * EXPLORER_BUDGET_FRACTION), 0]
    ring = ring_state(capacity, ctx, extra_scalars=st_extra,
                      slot_fields=[("stamp", np.int64), ("last_age", np.int64), ("last_last_age", np.int64),
                                   ("explorer", np.uint8)])
    classes = APP_CLASS * HIT_AGE_CLASSES + np.arange(HIT_AGE_CLASSES)
    densities = ((classes[:, None] + 1.0) / (np.arange(MAX_AGE)[None, :] + 1.0)).astype(np.float32)
    return LHD((*ring, np.full(ADMISSIONS, -1, np.int64), np.zeros((HIT_AGE_CLASSES, MAX_AGE), np.float32),
                np.zeros((HIT_AGE_CLASSES, MAX_AGE), np.float32), densities, np.zeros(3, np.float32)), ctx.n_keys)
