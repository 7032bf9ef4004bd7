"""LRUProb: LRU whose hits move a row to the front only with probability ``prob``.

libCacheSim 0.3.5's ``LRU_Prob``: a miss inserts the row at the head of an LRU queue and evicts the
tail; a hit moves the row to the head when ``next_rand() % threshold == 0``, where ``threshold`` is
``(int)1.0 / prob`` stored in an int, i.e. ``1 / prob`` truncated (C casts the 1.0, not the quotient),
with ``prob`` parsed as a C float. So the probability is really ``1 / threshold``: 0.5 gives 1/2, 0.3
gives 1/3, and 0.2 and 0.1, as floats a hair above, give 1/4 and 1/9. This module reproduces that rounding
(`threshold`). ``prob`` must lie in (0, 1] (above 1, libCacheSim divides by zero) and its threshold fit
libCacheSim's int (``prob`` >= about 5e-10). Default 0.5.

Draws are seeded by ``seed`` (`_draws`; libCacheSim's come from the clock), so hit counts agree with
libCacheSim's in distribution: the tests hold the mean hit ratio over several seeds within 0.01 of
libCacheSim's mean. The rows sit in `lru`'s ring, whose admission, removal and eviction it shares.
"""

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._draws import check_seed, draw_below
from engramtier.cache.policies._lists import NXT, PRV, ST, move_to_head, node_of
from engramtier.cache.policies.lru import FREE, HEAD, STATE, admit_at_head, occupancy, remove, ring_state
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError, check_number

SEED, DRAWS, THRESHOLD = FREE + 1, FREE + 2, FREE + 3  # indices into st, after the ring's scalars
INT_MAX = 2**31 - 1  # libCacheSim keeps the threshold in a C int


def threshold(prob: float) -> int:
    """libCacheSim's ``(int)1.0 / prob`` with ``prob`` read as a C float: a hit promotes 1 in this many."""
    return int(1.0 / float(np.float32(prob)))


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    st = state[ST]
    if draw_below(st, DRAWS, SEED, st[THRESHOLD]) == 0:
        move_to_head(state[PRV], state[NXT], st, HEAD, s)
    return True


LRUPROB = compiled_policy("LRUProb", STATE, lookup, admit_at_head, remove, holds_key, occupancy)


@register("lruprob")
def build(capacity: int, ctx: PolicyContext, prob: float = 0.5, seed: int = 0) -> LRUPROB:
    check_number(prob, "policy 'lruprob': params.prob", low=0, high=1, low_open=True)
    if threshold(prob) > INT_MAX:
        raise EngramTierError(f"policy 'lruprob': params.prob {prob!r} is too small for libCacheSim's int "
                              f"threshold (1/prob > {INT_MAX}); give at least 5e-10")
    return LRUPROB(ring_state(capacity, ctx, extra_scalars=[check_seed("lruprob", seed), 0, threshold(prob)]),
                   ctx.n_keys)
