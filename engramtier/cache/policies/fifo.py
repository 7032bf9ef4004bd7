"""FIFO: evict the row admitted longest ago; hits change nothing.

LRU's ring without the move on a hit, so admission, eviction and removal are LRU's own.
"""


from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import node_of
from engramtier.cache.policies.lru import STATE, admit_at_head, occupancy, remove, ring_state
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register


@inlined
def lookup(state, key, t):
    return node_of(state, key) >= 0


FIFO = compiled_policy("FIFO", STATE, lookup, admit_at_head, remove, holds_key, occupancy)


@register("fifo")
def build(capacity: int, ctx: PolicyContext) -> FIFO:
    return FIFO(ring_state(capacity, ctx), ctx.n_keys)
