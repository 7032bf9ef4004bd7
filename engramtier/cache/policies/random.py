"""Random: evict a row chosen uniformly at random among the cached ones.

libCacheSim 0.3.5's ``Random`` picks its victim by drawing hash buckets until one is non-empty
(``chained_hashtable_rand_obj_v2``) and takes that bucket's first object; every row has one bucket
to itself there unless two collide, so it is uniform over the rows up to those rare collisions. Its
generator is seeded from the clock; ours is seeded by the ``seed`` parameter (`_draws`), so a run is
reproducible, and agrees with libCacheSim's hit counts in distribution: the tests hold the mean hit
ratio over several seeds within 0.01 of libCacheSim's mean.

The rows sit in the slots of `lru`'s ring (its admission while there is room, its `remove`); once the
cache is full every slot ``0 .. capacity-1`` holds a row, so the victim is a uniform slot, which takes
the incoming key in place. The ring's order is never read.
"""


from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._draws import check_seed, draw_below
from engramtier.cache.policies._lists import ST, link_key, unlink_key
from engramtier.cache.policies.lru import CAPACITY, FREE, SIZE, STATE, admit_at_head, occupancy, remove, ring_state
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register

SEED, DRAWS = FREE + 1, FREE + 2  # indices into st, after the ring's scalars


@inlined
def lookup(state, key, t):
    return holds_key(state, key)


@inlined
def random_slot(st):
    """A uniform slot of a full ring (every slot holds a row); Hyperbolic and LHD sample candidates so."""
    return draw_below(st, DRAWS, SEED, st[CAPACITY])


@inlined
def replace(state, s, key):
    """Slot ``s`` gives up its key (returned) for ``key``."""
    victim = unlink_key(state, s)
    link_key(state, key, s)
    return victim


@inlined
def admit(state, key, t):
    st = state[ST]
    if st[SIZE] < st[CAPACITY]:
        return admit_at_head(state, key, t)
    return replace(state, random_slot(st), key)


RANDOM = compiled_policy("Random", STATE, lookup, admit, remove, holds_key, occupancy)


@register("random")
def build(capacity: int, ctx: PolicyContext, seed: int = 0) -> RANDOM:
    return RANDOM(ring_state(capacity, ctx, extra_scalars=[check_seed("random", seed), 0]), ctx.n_keys)
