"""Seeded random draws for the randomised policies (Random, LRUProb), inside their compiled operations.

A draw is XXH64 of a running counter under the policy's seed (as `engramtier.cache.admission`'s
``prob`` filter draws): two int64 scalars in the policy's st array, no generator object and no
allocation, so a policy with the same seed makes the same choices in the simulator and the runtime.
libCacheSim draws from a clock-seeded xoshiro generator, which cannot be reproduced; the policies
agree with it in distribution, which the tests measure over several seeds.
"""

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.errors import check_number
from engramtier.xxh64 import xxh64_u64

SEED_HIGH = 2**63 - 1


def check_seed(policy: str, seed) -> int:
    """``seed`` when it is an integer a draw can take, else one line naming the policy."""
    return check_number(seed, f"policy '{policy}': params.seed", integer=True, low=0, high=SEED_HIGH)


@inlined
def draw_below(st, draws, seed, n):
    """The next draw of st's counter ``st[draws]`` under ``st[seed]``, uniform in ``[0, n)``."""
    st[draws] += 1
    return np.int64(xxh64_u64(np.uint64(st[draws]), np.uint64(st[seed])) % np.uint64(n))
