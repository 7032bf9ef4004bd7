"""Hyperbolic caching (Blankstein, Sen and Freedman, USENIX ATC'17): evict the sampled row whose
requests per unit of time in the cache are fewest.

A row's priority is its hits plus one (``freq``, 1 on admission) over its age, the requests since it
was admitted. Keeping rows ordered by such a decaying priority would cost a re-sort at every request,
so to evict the policy samples ``samples`` cached rows uniformly, with replacement, and takes the one
of least priority (the first sampled among equals). This is libCacheSim 0.3.5's ``Hyperbolic``:
``n-sample`` 64 (``samples`` here), score ``1e8 * freq / age`` in doubles, age counted in requests
from the admitting request to the evicting one, samples drawn from its hash table (`random` explains
why that is uniform but for bucket collisions). libCacheSim's draws are seeded by the clock; ours by
``seed`` (`_draws`), so hit counts agree in distribution: the tests hold the mean hit ratio of several
seeds within 0.01 of libCacheSim's mean. libCacheSim's Python binding cannot set ``n-sample``, so only
the default is compared.

In a hierarchy a row can be admitted and have to make room at the same position (an exclusive
hierarchy's demotion), where libCacheSim never evicts: such a row's age counts as one request.

Rows sit in the slots of `lru`'s ring (its admission while there is room, its `remove`), with each
slot's ``freq`` and admission time; once the cache is full every slot holds a row (see `random`).
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._draws import check_seed
from engramtier.cache.policies._lists import NODE_KEYS, NODE_LINKS, ST, node_of
from engramtier.cache.policies.lru import CAPACITY, HEAD, SIZE, SLOT_FIELDS, admit_at_head, occupancy, remove, ring_state
from engramtier.cache.policies.random import DRAWS, random_slot, replace
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import check_number

SAMPLES = DRAWS + 1  # index into st, after Random's SEED and DRAWS (`random`)
FREQ, ENTERED = SLOT_FIELDS, SLOT_FIELDS + 1  # the state's arrays of each slot's count and admission time

# lru's five arrays, then each slot's freq and admission position
STATE = types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_KEYS, NODE_KEYS))


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    state[FREQ][s] += 1
    return True


@inlined
def least_valued_sample(state, t):
    """The sampled slot of least ``1e8 * freq / age`` (libCacheSim's score), the first among equals."""
    st, freq, entered = state[ST], state[FREQ], state[ENTERED]
    best, best_score = -1, 1.0e16
    for _ in range(st[SAMPLES]):
        s = random_slot(st)
        score = 1.0e8 * freq[s] / max(t - entered[s], 1)
        if best_score > score:
            best, best_score = s, score
    return best


@inlined
def admit(state, key, t):
    st = state[ST]
    if st[SIZE] < st[CAPACITY]:
        victim = admit_at_head(state, key, t)
        s = st[HEAD]
    else:
        s = least_valued_sample(state, t)
        victim = replace(state, s, key)
    state[FREQ][s] = 1
    state[ENTERED][s] = t
    return victim


HYPERBOLIC = compiled_policy("Hyperbolic", STATE, lookup, admit, remove, holds_key, occupancy)


@register("hyperbolic")
def build(capacity: int, ctx: PolicyContext, samples: int = 64, seed: int = 0) -> HYPERBOLIC:
    check_number(samples, "policy 'hyperbolic': params.samples", integer=True, low=1, high=2**20)
    return HYPERBOLIC(ring_state(capacity, ctx, extra_scalars=[check_seed("hyperbolic", seed), 0, samples],
                                 slot_fields=[("freq", np.int64), ("entered", np.int64)]), ctx.n_keys)
