"""S3-FIFO: a small FIFO that filters one-hit wonders in front of a main FIFO with reinsertion.

Yang et al. (SOSP '23) as libCacheSim's ``S3FIFO`` implements it, with its defaults: the small queue
holds ``small_ratio = 0.1`` of the capacity, main the rest, and a ghost FIFO remembers the keys of
``ghost_ratio = 0.9`` of the capacity (sizes rounded down). A hit only counts: ``freq += 1``. A miss
whose key is in the ghost goes to main, others to small, except that until the first eviction an
admission finding small full goes to main (libCacheSim's current ``S3FIFO``, not ``S3FIFOv0``).

When full, main is cleaned if it holds more than its share (or small is empty): its oldest row is
reinserted at the front with ``min(freq, 3) - 1`` while ``freq >= 1`` (a 2-bit CLOCK), else evicted.
Otherwise small is cleaned: its oldest row moves to main (with ``freq`` reset) if it was hit at least
``move_to_main = 2`` times, else it is evicted into the ghost; this repeats until one row is evicted.

Counts saturate at ``max(move_to_main, 3)``, which changes no decision. Ghost entries are not cached
(`contains` is False, `remove` ignores them); the ghost check libCacheSim makes in its lookup happens
at the start of `admit` here, with the same outcome. libCacheSim admits nothing into a small queue of
fewer than 2 rows (it refuses a row as large as the queue), so such capacities are refused.
"""

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    KEY_OF,
    LENGTH,
    LIST_OF,
    NODE_BYTES,
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
    node_of,
    remove_held,
    share,
    tail,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import EngramTierError

SMALL, MAIN, GHOST = range(3)  # list ids
CAPACITY, SMALL_SHARE, MAIN_SHARE, GHOST_SHARE, MOVE_TO_MAIN, MAX_FREQ, HAS_EVICTED = range(SCALARS, SCALARS + 7)

FREQ = EXTRA  # the state's array of each node's hit count
STATE = lists_state_type(NODE_BYTES)  # then freq[node]


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0 or state[LIST_OF][s] == GHOST:
        return False
    freq, st = state[FREQ], state[ST]
    if freq[s] < st[MAX_FREQ]:
        freq[s] += 1
    return True


@inlined
def _clean_main(state):
    """Reinsert main's oldest rows while they were used; evict the first unused one."""
    prv, st, freq = state[PRV], state[ST], state[FREQ]
    s = tail(prv, st, MAIN)
    while freq[s] >= 1:
        freq[s] = min(freq[s], 3) - 1
        st[MAIN] = s  # rotating the ring puts the oldest in front
        s = prv[s]
    return drop(state, s, MAIN)


@inlined
def _clean_small(state):
    """Promote small's oldest rows while they were used enough; evict the first other one into the
    ghost. Returns its key, or -1 when small emptied into main without an eviction."""
    key_of, prv, st, freq = state[KEY_OF], state[PRV], state[ST], state[FREQ]
    while st[LENGTH + SMALL] > 0:
        s = tail(prv, st, SMALL)
        if freq[s] >= st[MOVE_TO_MAIN]:
            move(state, s, SMALL, MAIN)
            freq[s] = 0
            continue
        victim = key_of[s]
        if st[GHOST_SHARE] == 0:
            drop(state, s, SMALL)
        else:
            if st[LENGTH + GHOST] >= st[GHOST_SHARE]:
                drop(state, tail(prv, st, GHOST), GHOST)
            move(state, s, SMALL, GHOST)
        return victim
    return -1


@inlined
def admit(state, key, t):
    st, freq = state[ST], state[FREQ]
    s = node_of(state, key)
    from_ghost = s >= 0
    if from_ghost:
        drop(state, s, GHOST)
    victim = -1
    while st[LENGTH + SMALL] + st[LENGTH + MAIN] >= st[CAPACITY]:
        st[HAS_EVICTED] = 1
        if st[LENGTH + MAIN] > st[MAIN_SHARE] or st[LENGTH + SMALL] == 0:
            victim = _clean_main(state)
        else:
            victim = _clean_small(state)
    if from_ghost or (st[HAS_EVICTED] == 0 and st[LENGTH + SMALL] >= st[SMALL_SHARE]):
        s = insert(state, key, MAIN)
    else:
        s = insert(state, key, SMALL)
    freq[s] = 0
    return victim


@inlined
def remove(state, key):
    return remove_held(state, key, GHOST)


@inlined
def contains(state, key):
    return holds(state, key, GHOST)


@inlined
def occupancy(state):
    return state[ST][LENGTH + SMALL] + state[ST][LENGTH + MAIN]


S3FIFO = compiled_policy("S3FIFO", STATE, lookup, admit, remove, contains, occupancy)


@register("s3fifo")
def build(capacity: int, ctx: PolicyContext, small_ratio: float = 0.1, ghost_ratio: float = 0.9,
          move_to_main: int = 2) -> S3FIFO:
    if not 0 < small_ratio < 1 or ghost_ratio < 0 or not 0 <= move_to_main <= 255:
        raise EngramTierError(
            "policy 's3fifo': small_ratio must lie in (0, 1), ghost_ratio be >= 0 and move_to_main in 0..255, "
            f"got {small_ratio}, {ghost_ratio} and {move_to_main}"
        )
    small, ghost = share(capacity, small_ratio), share(capacity, ghost_ratio)
    if small < 2:  # main gets the rest, at least one row since small_ratio < 1
        raise EngramTierError(
            f"policy 's3fifo': the small queue would get {small} of the {capacity} rows (small_ratio {small_ratio}) "
            f"and needs 2: use at least {capacity_for(2, small_ratio)} rows or a larger small_ratio"
        )
    scalars = [capacity, small, capacity - small, ghost, move_to_main, max(move_to_main, 3), 0]
    return S3FIFO(lists_state(ctx.n_keys, capacity + ghost, scalars, [("freq", np.uint8)], hashed=ctx.hashed), ctx.n_keys)
