"""2Q: a FIFO probation queue (Ain) in front of an LRU main queue (Am), with a ghost FIFO (Aout).

libCacheSim's ``TwoQ`` (Johnson & Shasha's full 2Q), with its defaults: Ain holds ``in_ratio = 0.25``
of the capacity, Am the rest, Aout remembers the keys of ``out_ratio = 0.5`` of the capacity (all
sizes rounded down). A miss is admitted to Ain, or straight to Am when its key is in Aout. Hits in
Ain change nothing; hits in Am move the row to its front. When the cache is full, the oldest row of
Ain moves to Aout if Ain holds more than its share, else Am's LRU row is evicted. Ain may overfill
while Am has room; Am itself never exceeds its share (an admission into a full Am evicts Am's LRU
row first, as libCacheSim's nested LRU does).

Ghost entries are not cached (`contains` is False, `remove` ignores them); the Aout check that
libCacheSim makes in its lookup happens at the start of `admit` here, with the same outcome. A
capacity whose Ain share rounds to zero rows admits nothing in libCacheSim, so it is refused.
"""


from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    KEY_OF,
    LENGTH,
    LIST_OF,
    NXT,
    PRV,
    SCALARS,
    ST,
    capacity_for,
    drop,
    holds,
    insert,
    lists_state,
    lists_state_type,
    move,
    move_to_head,
    node_of,
    remove_held,
    share,
    tail,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import EngramTierError

AIN, AM, AOUT = range(3)  # list ids
CAPACITY, IN_SHARE, OUT_SHARE, AM_SHARE = range(SCALARS, SCALARS + 4)  # indices into st

STATE = lists_state_type()


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    where = state[LIST_OF][s]
    if where == AM:
        move_to_head(state[PRV], state[NXT], state[ST], AM, s)
    return where != AOUT


@inlined
def admit(state, key, t):
    key_of, prv, st = state[KEY_OF], state[PRV], state[ST]
    s = node_of(state, key)
    from_ghost = s >= 0
    if from_ghost:
        drop(state, s, AOUT)
    victim = -1
    if st[LENGTH + AIN] + st[LENGTH + AM] >= st[CAPACITY]:
        if st[LENGTH + AIN] > st[IN_SHARE]:
            s = tail(prv, st, AIN)
            victim = key_of[s]
            if st[OUT_SHARE] == 0:
                drop(state, s, AIN)
            else:
                if st[LENGTH + AOUT] >= st[OUT_SHARE]:
                    drop(state, tail(prv, st, AOUT), AOUT)
                move(state, s, AIN, AOUT)
        else:
            victim = drop(state, tail(prv, st, AM), AM)
    if from_ghost:
        if st[LENGTH + AM] >= st[AM_SHARE]:
            victim = drop(state, tail(prv, st, AM), AM)
        insert(state, key, AM)
    else:
        insert(state, key, AIN)
    return victim


@inlined
def remove(state, key):
    return remove_held(state, key, AOUT)


@inlined
def contains(state, key):
    return holds(state, key, AOUT)


@inlined
def occupancy(state):
    return state[ST][LENGTH + AIN] + state[ST][LENGTH + AM]


TwoQ = compiled_policy("TwoQ", STATE, lookup, admit, remove, contains, occupancy)


@register("twoq")
def build(capacity: int, ctx: PolicyContext, in_ratio: float = 0.25, out_ratio: float = 0.5) -> TwoQ:
    if not 0 < in_ratio < 1 or out_ratio < 0:
        raise EngramTierError(
            f"policy 'twoq': in_ratio must lie in (0, 1) and out_ratio be >= 0, got {in_ratio} and {out_ratio}"
        )
    in_share, out_share = share(capacity, in_ratio), share(capacity, out_ratio)
    if in_share < 1:
        raise EngramTierError(
            f"policy 'twoq': Ain would get 0 of the {capacity} rows (in_ratio {in_ratio}) and admit nothing; "
            f"use a capacity of at least {capacity_for(1, in_ratio)} rows or a larger in_ratio"
        )
    scalars = [capacity, in_share, out_share, capacity - in_share]
    return TwoQ(lists_state(ctx.n_keys, capacity + out_share, scalars, hashed=ctx.hashed), ctx.n_keys)
