"""Clock2QPlus: a small FIFO with a correlation window in front of a CLOCK main queue, with a ghost FIFO.

No paper: libCacheSim's own ``Clock2QPlus`` (0.3.5, a 2Q whose main queue is a CLOCK, beside its S3-FIFO),
with its defaults: the FIFO holds ``fifo_ratio = 0.1`` of the capacity
(``F`` rows), main the rest, and a ghost FIFO remembers the keys of ``ghost_ratio = 0.9`` of the
capacity (sizes rounded down). A hit in main counts a use; a hit in the FIFO counts one only once
``corr_window_ratio * F = 0.5 * F`` newer rows have entered the FIFO since the row did (hits inside that
correlation window are taken for one burst and not counted). A miss whose key is in the ghost goes to
main, others to the FIFO, except that until the first eviction an admission finding the FIFO full
goes to main. Uses count from 0 on admission.

When full, main is cleaned if it holds more than its share or the FIFO is empty: its oldest row goes
back to main's front with its count cleared if it was used (a 1-bit CLOCK), else it is evicted.
Otherwise the FIFO is cleaned: its oldest row moves to main's front (count cleared) if it was used at
least ``move_to_main = 1`` times, else it is evicted into the ghost; this repeats until one row is
evicted. The correlation window is libCacheSim's ``corr-window-ratio`` times ``F`` (a float; a row's
age, counted in FIFO admissions, must reach it); its adaptive bounds are computed there but unused.

Ghost entries are not cached (`contains` is False, `remove` ignores them); the ghost check libCacheSim
makes in its lookup happens at the start of `admit` here, with the same outcome. libCacheSim admits no
row to a FIFO of fewer than 2 rows (it refuses a row as large as the FIFO, and then dereferences the
object it did not make), so such capacities are refused. Counts saturate at 2**31 - 1, which changes no
decision. libCacheSim's Clock2QPlus replaces the insert check that asks an admissioner, so one given to it is
never asked; here a tier's admission filter applies as to any policy.
"""

import math

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    KEY_OF,
    LENGTH,
    LIST_OF,
    NODE_KEYS,
    NODE_LINKS,
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
from engramtier.errors import EngramTierError, check_number

FIFO, MAIN, GHOST = range(3)  # list ids
(CAPACITY, FIFO_SHARE, MAIN_SHARE, GHOST_SHARE, MOVE_TO_MAIN, WINDOW, ADMITTED_TO_FIFO,
 HAS_EVICTED) = range(SCALARS, SCALARS + 8)
USES, ENTERED = EXTRA, EXTRA + 1  # the state's arrays of each node's use count and FIFO admission number
STATE = lists_state_type(NODE_LINKS, NODE_KEYS)
MAX_USES = 2**31 - 1


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    where, st, uses = state[LIST_OF][s], state[ST], state[USES]
    if where == GHOST:
        return False
    if (where == MAIN or st[ADMITTED_TO_FIFO] - state[ENTERED][s] >= st[WINDOW]) and uses[s] < MAX_USES:
        uses[s] += 1
    return True


@inlined
def _clean_fifo(state):
    """Move the FIFO's oldest used rows to main; evict the first unused one into the ghost. Returns its
    key, or -1 when the FIFO emptied into main without an eviction."""
    key_of, prv, st, uses = state[KEY_OF], state[PRV], state[ST], state[USES]
    while st[LENGTH + FIFO] > 0:
        s = tail(prv, st, FIFO)
        if uses[s] >= st[MOVE_TO_MAIN]:
            move(state, s, FIFO, MAIN)
            uses[s] = 0
            continue
        victim = key_of[s]
        if st[GHOST_SHARE] == 0:
            drop(state, s, FIFO)
        else:
            if st[LENGTH + GHOST] >= st[GHOST_SHARE]:
                drop(state, tail(prv, st, GHOST), GHOST)
            move(state, s, FIFO, GHOST)
        return victim
    return -1


@inlined
def _clean_main(state):
    """Give main's oldest used rows another lap with their count cleared; evict the first unused one."""
    prv, st, uses = state[PRV], state[ST], state[USES]
    s = tail(prv, st, MAIN)
    while uses[s] >= 1:
        uses[s] = 0
        st[MAIN] = s  # rotating the ring puts the oldest in front
        s = prv[s]
    return drop(state, s, MAIN)


@inlined
def admit(state, key, t):
    st = state[ST]
    s = node_of(state, key)
    from_ghost = s >= 0
    if from_ghost:
        drop(state, s, GHOST)
    victim = -1
    while st[LENGTH + FIFO] + st[LENGTH + MAIN] >= st[CAPACITY]:
        st[HAS_EVICTED] = 1
        if st[LENGTH + MAIN] > st[MAIN_SHARE] or st[LENGTH + FIFO] == 0:
            victim = _clean_main(state)
        else:
            victim = _clean_fifo(state)
    if from_ghost or (st[HAS_EVICTED] == 0 and st[LENGTH + FIFO] >= st[FIFO_SHARE]):
        s = insert(state, key, MAIN)
    else:
        st[ADMITTED_TO_FIFO] += 1
        s = insert(state, key, FIFO)
        state[ENTERED][s] = st[ADMITTED_TO_FIFO]
    state[USES][s] = 0
    return victim


@inlined
def remove(state, key):
    return remove_held(state, key, GHOST)


@inlined
def contains(state, key):
    return holds(state, key, GHOST)


@inlined
def occupancy(state):
    return state[ST][LENGTH + FIFO] + state[ST][LENGTH + MAIN]


Clock2QPlus = compiled_policy("Clock2QPlus", STATE, lookup, admit, remove, contains, occupancy)


@register("clock2qplus")
def build(capacity: int, ctx: PolicyContext, fifo_ratio: float = 0.1, ghost_ratio: float = 0.9,
          move_to_main: int = 1, corr_window_ratio: float = 0.5) -> Clock2QPlus:
    where = "policy 'clock2qplus': params."
    check_number(fifo_ratio, where + "fifo_ratio", low=0, high=1, low_open=True)
    if fifo_ratio == 1:
        raise EngramTierError(f"{where}fifo_ratio must be below 1 (main needs rows), got 1")
    check_number(ghost_ratio, where + "ghost_ratio", low=0)
    check_number(move_to_main, where + "move_to_main", integer=True, low=0, high=MAX_USES)
    check_number(corr_window_ratio, where + "corr_window_ratio", low=0)
    fifo, ghost = share(capacity, fifo_ratio), share(capacity, ghost_ratio)
    if fifo < 2:
        raise EngramTierError(
            f"policy 'clock2qplus': the FIFO would get {fifo} of the {capacity} rows (fifo_ratio {fifo_ratio}) and "
            f"libCacheSim's Clock2QPlus admits nothing to a FIFO under 2 rows: use at least "
            f"{capacity_for(2, fifo_ratio)} rows or a larger fifo_ratio"
        )
    window = math.ceil(fifo * corr_window_ratio)  # an integer age reaches the float window at its ceiling
    scalars = [capacity, fifo, capacity - fifo, ghost, move_to_main, window, 0, 0]
    nodes = lists_state(ctx.n_keys, capacity + ghost, scalars, [("uses", np.int32), ("entered", np.int64)],
                        hashed=ctx.hashed)
    return Clock2QPlus(nodes, ctx.n_keys)
