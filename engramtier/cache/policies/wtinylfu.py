"""W-TinyLFU: a small LRU window in front of a segmented-LRU main cache, guarded by a frequency sketch.

Einziger, Friedman & Manes (2017) as libCacheSim's ``WTinyLFU`` implements it, with its defaults:
the window holds ``window_ratio = 0.01`` of the capacity (rounded down), main (an SLRU with a
probation segment of 1/5 and a protected segment of 4/5 of its rows, rounded down) the rest.
Frequencies live in a count-min sketch sized as libCacheSim's minimal-increment counting Bloom
filter for ``main`` entries at error 0.001 (10 hashes, ~14.4 uint32 counters per entry, indices
``(h0 + i * h1) mod counters`` from the low 32 bits of XXH64 of the key with libCacheSim's two
seeds, computed once when a row is admitted and kept with its node); every counter of a key is
incremented, and all counters are halved after ``32 * main`` hits in main. There is no
doorkeeper: libCacheSim has none.

A miss enters the window and is counted. A window hit moves the row to the window's front; a main
hit promotes the row (probation -> protected, whose LRU row falls back to probation) and is counted.
While the cache is full, the window's LRU row is offered to main: taken while main has room,
admitted in place of main's victim (probation's LRU row, else protected's) if the sketch counts it
strictly more often, evicted otherwise, and counted in every case; an empty window lets main evict
its victim. The window has no bound of its own: until the first eviction every row is admitted to
it, and the first eviction moves rows into main until main is full.

A main hit can evict a row: rounding can leave probation holding one row more than its share, and
then the row that a promotion demotes from protected overfills it, so probation's LRU row is evicted
(libCacheSim's SLRU does the same). `lookup` leaves that row's key in ``state[ST][HIT_VICTIM]``
(-1 when a lookup evicted nothing), which `hit_victim()` reports to the drivers.

libCacheSim admits nothing when the window rounds to zero rows and refuses an empty probation
segment, so such capacities are refused (the defaults need at least 100 rows).
"""

import math

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    LENGTH,
    LIST_OF,
    NXT,
    PRV,
    SCALARS,
    ST,
    capacity_for,
    drop,
    insert,
    lists_state,
    lists_state_type,
    move,
    move_to_head,
    node_of,
    share,
    tail,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError
from engramtier.xxh64 import xxh64_u64

WINDOW, PROBATION, PROTECTED = range(3)  # list ids
(CAPACITY, MAIN_SHARE, PROBATION_SHARE, PROTECTED_SHARE, COUNTERS, AGING_PERIOD, HITS_SINCE_AGING,
 HIT_VICTIM) = range(SCALARS, SCALARS + 8)

# then the sketch's counters, the indexes of each node's counters (N_HASHES a node), 1 / counters, and
# each key's global row id (empty when keys are row ids): the sketch hashes rows, so dense keys
# (`PolicyContext.row_ids`) count exactly as the global ids would
SKETCH, ROWS_OF, INVERSE, ROW_IDS = range(EXTRA, EXTRA + 4)
STATE = lists_state_type(types.uint32[::1], types.uint32[::1], types.float64[::1], types.int64[::1])

# libCacheSim's counting Bloom filter for n entries at error 0.001
BITS_PER_ENTRY = -math.log(0.001) / 0.480453013918201
N_HASHES = math.ceil(0.693147180559945 * BITS_PER_ENTRY)

# libCacheSim's seeds for XXH64 of the key as one little-endian 8-byte word, truncated to 32 bits
SEED0, SEED1 = np.uint64(0x12345678), np.uint64(0x12344321)
LOW32 = np.uint64(0xFFFFFFFF)
SATURATED = np.uint32(0xFFFFFFFF)  # a counter's ceiling


@inlined
def key_hash(key):
    """The key's two 32-bit sketch hashes, packed as ``h0 | h1 << 32``."""
    word = np.uint64(key)
    return (xxh64_u64(word, SEED0) & LOW32) | (xxh64_u64(word, SEED1) << np.uint64(32))


@inlined
def _place(state, s, key):
    """Store in ``rows_of`` the counters of node ``s``'s new key, ``(h0 + i * h1) mod counters``, so
    that its estimates and counts while it stays cached hash nothing and divide nothing.

    The modulo goes through a float reciprocal, exact after a one-step correction (the quotient of
    32-bit operands is off by at most one), because an integer division is several times slower."""
    st, rows_of, row_ids = state[ST], state[ROWS_OF], state[ROW_IDS]
    packed = key_hash(row_ids[key] if row_ids.size else key)
    h0, h1 = np.int64(packed & LOW32), np.int64(packed >> np.uint64(32))
    n, inverse = st[COUNTERS], state[INVERSE][0]
    for i in range(N_HASHES):
        x = (h0 + i * h1) & 0xFFFFFFFF
        r = x - np.int64(x * inverse) * n
        r = r + n if r < 0 else r
        rows_of[s * N_HASHES + i] = r - n if r >= n else r


@inlined
def _estimate(state, s):
    """The sketch's count for node ``s``'s key: its smallest counter."""
    sketch, rows_of = state[SKETCH], state[ROWS_OF]
    least = SATURATED
    for i in range(N_HASHES):
        least = min(least, sketch[rows_of[s * N_HASHES + i]])
    return least


@inlined
def _increment(state, s):
    sketch, rows_of = state[SKETCH], state[ROWS_OF]
    for i in range(N_HASHES):
        sketch[rows_of[s * N_HASHES + i]] += np.uint32(1)


@inlined
def _count(state, s):
    """Add one use of node ``s``'s key: one to each of its counters, unless all are saturated
    (libCacheSim's rule). A first counter below saturation settles that without reading the
    others, so a use costs one pass over the counters, not an estimate and then a count."""
    if state[SKETCH][state[ROWS_OF][s * N_HASHES]] < SATURATED or _estimate(state, s) < SATURATED:
        _increment(state, s)


@inlined
def _main_victim(state):
    prv, st = state[PRV], state[ST]
    return tail(prv, st, PROBATION if st[LENGTH + PROBATION] > 0 else PROTECTED)


@inlined
def _main_evict(state):
    s = _main_victim(state)
    return drop(state, s, state[LIST_OF][s])


@inlined
def _main_take(state, s):
    """Move window row ``s`` into main: the lowest segment with room, else probation."""
    st = state[ST]
    if st[LENGTH + PROBATION] < st[PROBATION_SHARE] or st[LENGTH + PROTECTED] >= st[PROTECTED_SHARE]:
        move(state, s, WINDOW, PROBATION)
    else:
        move(state, s, WINDOW, PROTECTED)


@inlined
def _main_hit(state, s):
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    if state[LIST_OF][s] == PROTECTED:
        move_to_head(prv, nxt, st, PROTECTED, s)
        return
    move(state, s, PROBATION, PROTECTED)
    while st[LENGTH + PROTECTED] > st[PROTECTED_SHARE]:
        move(state, tail(prv, st, PROTECTED), PROTECTED, PROBATION)
        while st[LENGTH + PROBATION] > st[PROBATION_SHARE]:
            st[HIT_VICTIM] = _main_evict(state)


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    st = state[ST]
    st[HIT_VICTIM] = -1
    if state[LIST_OF][s] == WINDOW:
        move_to_head(state[PRV], state[NXT], st, WINDOW, s)
        return True
    _main_hit(state, s)
    _count(state, s)
    st[HITS_SINCE_AGING] += 1
    if st[HITS_SINCE_AGING] >= st[AGING_PERIOD]:
        st[HITS_SINCE_AGING] = 0
        sketch = state[SKETCH]
        for i in range(sketch.size):  # a loop: slice arithmetic would allocate
            sketch[i] >>= np.uint32(1)
    return True


@inlined
def occupancy(state):
    st = state[ST]
    return st[LENGTH + WINDOW] + st[LENGTH + PROBATION] + st[LENGTH + PROTECTED]


@inlined
def _evict_step(state):
    """One step of libCacheSim's WTinyLFU_evict: the evicted key, or -1 when a row only moved to main."""
    prv, st = state[PRV], state[ST]
    if st[LENGTH + WINDOW] == 0:
        return _main_evict(state)
    s = tail(prv, st, WINDOW)
    offered = _estimate(state, s)
    victim = -1
    if st[LENGTH + PROBATION] + st[LENGTH + PROTECTED] < st[MAIN_SHARE]:
        _main_take(state, s)
    elif offered > _estimate(state, _main_victim(state)):
        victim = _main_evict(state)
        _main_take(state, s)
    else:
        victim = drop(state, s, WINDOW)
    # counted last, as the comparison saw the sketch before it; a dropped node keeps its rows until reused
    if offered < SATURATED:
        _increment(state, s)
    return victim


@inlined
def admit(state, key, t):
    victim = -1
    while occupancy(state) >= state[ST][CAPACITY]:
        victim = _evict_step(state)
    s = insert(state, key, WINDOW)
    _place(state, s, key)
    _count(state, s)
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    drop(state, s, state[LIST_OF][s])
    return True



@inlined
def hit_victim(state):
    return state[ST][HIT_VICTIM]

WTinyLFU = compiled_policy("WTinyLFU", STATE, lookup, admit, remove, holds_key, occupancy, hit_victim)


def _segments(capacity: int, window_ratio: float) -> tuple[int, int, int]:
    """Rows of the window, probation and protected, rounded as libCacheSim does ("seg-size=1:4")."""
    window = share(capacity, window_ratio)
    main = capacity - window
    return window, int(1 / 5 * main), int(4 / 5 * main)


@register("wtinylfu")
def build(capacity: int, ctx: PolicyContext, window_ratio: float = 0.01) -> WTinyLFU:
    if not 0 < window_ratio < 1:
        raise EngramTierError(f"policy 'wtinylfu': window_ratio must lie in (0, 1), got {window_ratio}")
    window, probation, protected = _segments(capacity, window_ratio)
    if window < 1 or probation < 1:
        need = capacity_for(1, window_ratio)
        while min(_segments(need, window_ratio)[:2]) < 1:
            need += 1
        raise EngramTierError(
            f"policy 'wtinylfu': {capacity} rows give a window of {window} and a probation segment of {probation}; "
            f"both need a row: use at least {need} rows or another window_ratio"
        )
    main = capacity - window
    counters = int(min(math.ceil(BITS_PER_ENTRY * main), 2**31 - 1))
    if counters < N_HASHES:
        counters = 2 * N_HASHES
    scalars = [capacity, main, probation, protected, counters, 32 * main, 0, -1]
    lists = lists_state(ctx.n_keys, capacity, scalars, hashed=ctx.hashed)
    row_ids = ctx.global_ids()
    return WTinyLFU(lists + (np.zeros(counters, np.uint32), np.zeros(lists[1].size * N_HASHES, np.uint32),
                             np.array([1.0 / counters]),
                             np.empty(0, np.int64) if row_ids is None else np.ascontiguousarray(row_ids, np.int64)), ctx.n_keys)
