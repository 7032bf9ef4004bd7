"""CLOCK-Pro: a CLOCK that tells hot rows from cold ones by their reuse distance, and remembers rows
it evicted for as long as a cold row is given to prove itself.

Jiang, Chen & Zhang (USENIX ATC'05), as PyClockPro (Sami Lehtinen, 2013) runs it: the implementation
libCacheSim, Caffeine's simulator and Go's clockpro packages cite. libCacheSim 0.3.5's own ``ClockPro``
never evicts (it refuses a miss once its cold rows reach their target), so there is no libCacheSim hit
count to match; these rules give PyClockPro's hits exactly on the four test traces at 2 to 1,200 rows
(checked once, outside the tests, README "libCacheSim interop").

One ring holds three kinds of entries: resident **hot** rows, resident **cold** rows, and **test**
entries, rows evicted from cold that are remembered without their data. A hit sets the row's reference
bit and changes nothing else. The capacity ``m`` bounds the resident rows; the cold rows' target
``m_c`` starts at ``m`` (hot rows may hold ``m - m_c``) and adapts: +1 (to ``m`` at most) when a test
entry's row comes back, -1 (to 1 at least) when a test entry expires. Three hands move the same way
round the ring, one entry per step:

- **HAND_cold** at a cold row: referenced, it turns hot (reference cleared); unreferenced, it is evicted
  into a test entry, after which HAND_test runs while test entries outnumber ``m``. The hand moves on;
  then HAND_hot runs while hot rows outnumber ``m - m_c``.
- **HAND_test** (first pushing HAND_cold a step if it stands on the same entry) at a test entry: the
  entry expires, ``m_c`` shrinks. The hand moves on.
- **HAND_hot** (first pushing HAND_test a step if it stands on the same entry) at a hot row: referenced,
  its reference is cleared; unreferenced, it turns cold. The hand moves on.

A miss runs HAND_cold while the resident rows fill the capacity. A new row then enters as cold, a row
whose test entry is in the ring as hot (its test entry leaves first), just behind HAND_hot (the last
entry every hand reaches); HAND_cold, if it stood on HAND_hot's entry, stands on the new one. A hand on
an entry that leaves the ring steps back to the entry before it.

Where PyClockPro departs from the paper, this takes PyClockPro's rule: a referenced cold row turns hot
whether or not its test period is over (the paper keeps a row cold, with a new test period, once the
period ended); HAND_hot neither ends test periods nor removes test entries (only HAND_test does, and only
while test entries outnumber ``m``); a hand's step lands on any entry (the paper's hands skip to the
next entry of their kind); ``m_c`` starts at ``m`` rather than at a fraction of it. PyClockPro's hands
push one another recursively: HAND_cold's step runs the other hands, which may push HAND_cold again;
here that recursion is an explicit stack of hand steps in the state (`_run_hands`), visited in the same
order.

Rarely (loops a little longer than the capacity), one such cascade evicts two rows in one admission.
The policy interface reports one row per admission, so the second is *pending*, as in
`engramtier.cache.policies.cacheus`: evicted as in PyClockPro (its test entry is in the ring), but still
held for the caller (`contains`, `occupancy`; a lookup is served without changing anything) until the
next hit reports it (`hit_victim`) or the next admission that evicts nothing does (the admission after
a double eviction never evicts, so it waits one request at most). A request for the pending row itself
(in a loop, often the very next one) is a hit, since the caller still holds the row, where PyClockPro
misses; the policy then makes PyClockPro's miss (the row comes back, hot while its test entry is in the
ring, and whatever that evicts is the hit's victim), so the two go on alike, one hit apart. `remove`
drops a resident row's entry from the ring (PyClockPro has no removal) and leaves a test entry where it
is, and forgets a pending row.

Every capacity from 2 rows is accepted: at 1 PyClockPro's hands push one another for ever on a ring of
a single hot entry, which it avoids by refusing fewer than 3 rows; at 2 they do not, and the rules give
PyClockPro's hits with its size check lifted. No parameters, no draws: it is deterministic.

State: the shared list arrays (the ring linked by ``prv``/``nxt``, each node's kind in `KIND`), each
node's reference bit, the stack of hand steps and the pending rows (oldest first, a ring buffer).
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    EXTRA,
    FREE,
    KEY_OF,
    LENGTH,
    LIST_OF,
    NODE_BYTES,
    NXT,
    PRV,
    SCALARS,
    ST,
    give_node,
    link_key,
    lists_state,
    lists_state_type,
    node_of,
    push_head,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import EngramTierError

HOT, COLD, TEST = range(3)  # an entry's kind; st[LENGTH + kind] counts them
RING = 0  # st[RING]: scratch head for `push_head`, which links a node in just behind it
(CAPACITY, COLD_TARGET, HAND_HOT, HAND_COLD, HAND_TEST, VICTIM, HIT_VICTIM, PENDING_FIRST,
 PENDING_LENGTH) = range(SCALARS, SCALARS + 9)
KIND = LIST_OF
REFERENCED, STACK, PENDING = EXTRA, EXTRA + 1, EXTRA + 2

# The steps on the hand stack: a hand's run begins (COLD_RUN, TEST_RUN, HOT_RUN) or resumes after the run it pushed
# (COLD_TESTS: HAND_cold evicted and runs HAND_test while tests outnumber m; COLD_HOTS: it moved and runs
# HAND_hot while hot rows exceed their share; TEST_STEP, HOT_STEP: the hand's own step, after pushing).
COLD_RUN, COLD_TESTS, COLD_HOTS, TEST_RUN, TEST_STEP, HOT_RUN, HOT_STEP = range(7)

STATE = lists_state_type(NODE_BYTES, types.uint8[::1], types.int64[::1])
# Hand runs nested at most 3 x capacity + 12 deep (tests/clockpro_model.py's count) on the test traces, on
# loops and Zipf requests over 1 to 5 times the capacity's rows with removals (2 to 1,000 rows), and on 400
# random mixes of loops, Zipf, uniform requests and scans (2 to 80 rows): the stack holds twice that, and
# a deeper cascade is refused in one line rather than written past its end.
STACK_ROWS, STACK_SLACK = 6, 32


@inlined
def _link(state, s, kind):
    """Put node ``s`` in the ring as ``kind``, just behind HAND_hot."""
    st = state[ST]
    st[RING] = st[HAND_HOT]
    push_head(state[PRV], state[NXT], st, RING, s)
    if st[HAND_HOT] < 0:
        st[HAND_HOT] = st[HAND_COLD] = st[HAND_TEST] = s
    elif st[HAND_COLD] == st[HAND_HOT]:
        st[HAND_COLD] = s
    state[KIND][s] = kind
    state[REFERENCED][s] = 0
    st[LENGTH + kind] += 1


@inlined
def _unlink(state, s):
    """Take node ``s`` out of the ring; a hand on it steps back to the entry before it."""
    st, before = state[ST], state[PRV][s]
    st[RING] = s
    unlink(state[PRV], state[NXT], st, RING, s)
    if before == s:
        before = -1  # the ring is empty
    for hand in (HAND_HOT, HAND_COLD, HAND_TEST):
        if st[hand] == s:
            st[hand] = before
    st[LENGTH + state[KIND][s]] -= 1


@inlined
def _retype(state, s, kind):
    st = state[ST]
    st[LENGTH + state[KIND][s]] -= 1
    st[LENGTH + kind] += 1
    state[KIND][s] = kind
    state[REFERENCED][s] = 0


@inlined
def _pend(state, key):
    """``key``, evicted beyond the one row an admission reports, waits to be reported."""
    st, pending = state[ST], state[PENDING]
    pending[(st[PENDING_FIRST] + st[PENDING_LENGTH]) % pending.size] = key
    st[PENDING_LENGTH] += 1


@inlined
def _report_pending(state):
    """The oldest pending row, reported now (no longer held); -1 when none waits."""
    st, pending = state[ST], state[PENDING]
    if st[PENDING_LENGTH] == 0:
        return -1
    key = pending[st[PENDING_FIRST]]
    st[PENDING_FIRST] = (st[PENDING_FIRST] + 1) % pending.size
    st[PENDING_LENGTH] -= 1
    return key


@inlined
def _find_pending(state, key):
    """``key``'s place among the pending rows (0: the oldest), or -1."""
    st, pending = state[ST], state[PENDING]
    for i in range(st[PENDING_LENGTH]):
        if pending[(st[PENDING_FIRST] + i) % pending.size] == key:
            return i
    return -1


@inlined
def _drop_pending(state, i):
    """Forget the ``i``-th pending row, keeping the others' order."""
    st, pending = state[ST], state[PENDING]
    for j in range(i, st[PENDING_LENGTH] - 1):
        pending[(st[PENDING_FIRST] + j) % pending.size] = pending[(st[PENDING_FIRST] + j + 1) % pending.size]
    st[PENDING_LENGTH] -= 1


@inlined
def _cold_step(state):
    """HAND_cold's look at its entry; True when it evicted the row there into a test entry."""
    st, s = state[ST], state[ST][HAND_COLD]
    if state[KIND][s] != COLD:
        return False
    if state[REFERENCED][s]:
        _retype(state, s, HOT)
        return False
    _retype(state, s, TEST)
    key = state[KEY_OF][s]
    if st[VICTIM] < 0:
        st[VICTIM] = key
    else:
        _pend(state, key)
    return True


@inlined
def _test_step(state):
    st, s = state[ST], state[ST][HAND_TEST]
    if state[KIND][s] == TEST:
        _unlink(state, s)
        unlink_key(state, s)
        give_node(state[NXT], st, FREE, s)
        st[COLD_TARGET] = max(st[COLD_TARGET] - 1, 1)
    st[HAND_TEST] = state[NXT][st[HAND_TEST]]


@inlined
def _hot_step(state):
    st, s = state[ST], state[ST][HAND_HOT]
    if state[KIND][s] == HOT:
        if state[REFERENCED][s]:
            state[REFERENCED][s] = 0
        else:
            _retype(state, s, COLD)
    st[HAND_HOT] = state[NXT][s]


@inlined
def _push(stack, depth, step):
    if depth >= stack.size:
        raise EngramTierError("policy 'clockpro': its hands pushed one another deeper than its stack holds; "
                              "please report the trace and capacity")
    stack[depth] = step
    return depth + 1


@inlined
def _run_hands(state):
    """One run of HAND_cold, with every run of the other hands it sets off, in PyClockPro's order: a step
    that must wait for another hand's run is kept on the stack under it and resumed after it."""
    st, nxt, stack = state[ST], state[NXT], state[STACK]
    depth = _push(stack, 0, COLD_RUN)
    while depth > 0:
        depth -= 1
        step = stack[depth]
        if step == COLD_RUN:
            if _cold_step(state):
                step = COLD_TESTS
            else:
                st[HAND_COLD] = nxt[st[HAND_COLD]]
                step = COLD_HOTS
        if step == COLD_TESTS:
            if st[LENGTH + TEST] > st[CAPACITY]:
                depth = _push(stack, _push(stack, depth, COLD_TESTS), TEST_RUN)
                continue
            st[HAND_COLD] = nxt[st[HAND_COLD]]
            step = COLD_HOTS
        if step == COLD_HOTS:
            if st[LENGTH + HOT] > st[CAPACITY] - st[COLD_TARGET]:
                depth = _push(stack, _push(stack, depth, COLD_HOTS), HOT_RUN)
            continue
        if step == TEST_RUN:
            if st[HAND_TEST] == st[HAND_COLD]:
                depth = _push(stack, _push(stack, depth, TEST_STEP), COLD_RUN)
                continue
            step = TEST_STEP
        if step == TEST_STEP:
            _test_step(state)
            continue
        if step == HOT_RUN:
            if st[HAND_HOT] == st[HAND_TEST]:
                depth = _push(stack, _push(stack, depth, HOT_STEP), TEST_RUN)
                continue
        _hot_step(state)  # HOT_RUN with HAND_test elsewhere, or HOT_STEP


@inlined
def _admit(state, key):
    """PyClockPro's miss: HAND_cold runs until the resident rows leave room, then ``key`` enters; returns
    the row to report evicted (the first the runs evicted, else the oldest pending one) or -1."""
    st = state[ST]
    s = node_of(state, key)
    if s >= 0:  # a test entry: its row is back within its test period
        st[COLD_TARGET] = min(st[COLD_TARGET] + 1, st[CAPACITY])
        _unlink(state, s)
    st[VICTIM] = -1
    while st[LENGTH + HOT] + st[LENGTH + COLD] >= st[CAPACITY]:
        _run_hands(state)
    if s >= 0:
        _link(state, s, HOT)
    else:
        s = take_node(state[NXT], st, FREE)
        link_key(state, key, s)
        _link(state, s, COLD)
    return st[VICTIM] if st[VICTIM] >= 0 else _report_pending(state)


@inlined
def lookup(state, key, t):
    st = state[ST]
    st[HIT_VICTIM] = -1
    s = node_of(state, key)
    if s >= 0 and state[KIND][s] != TEST:
        state[REFERENCED][s] = 1
        st[HIT_VICTIM] = _report_pending(state)
        return True
    if st[PENDING_LENGTH] == 0:
        return False
    i = _find_pending(state, key)
    if i < 0:
        return False
    _drop_pending(state, i)  # still held: a hit, on which PyClockPro's miss brings the row back
    st[HIT_VICTIM] = _admit(state, key)
    return True


@inlined
def admit(state, key, t):
    return _admit(state, key)


@inlined
def remove(state, key):
    st = state[ST]
    if st[PENDING_LENGTH] > 0:
        i = _find_pending(state, key)
        if i >= 0:
            _drop_pending(state, i)
            return True
    s = node_of(state, key)
    if s < 0 or state[KIND][s] == TEST:
        return False
    _unlink(state, s)
    unlink_key(state, s)
    give_node(state[NXT], st, FREE, s)
    return True


@inlined
def contains(state, key):
    s = node_of(state, key)
    if s >= 0 and state[KIND][s] != TEST:
        return True
    return state[ST][PENDING_LENGTH] > 0 and _find_pending(state, key) >= 0


@inlined
def occupancy(state):
    st = state[ST]
    return st[LENGTH + HOT] + st[LENGTH + COLD] + st[PENDING_LENGTH]


@inlined
def hit_victim(state):
    return state[ST][HIT_VICTIM]


ClockPro = compiled_policy("ClockPro", STATE, lookup, admit, remove, contains, occupancy, hit_victim)


@register("clockpro")
def build(capacity: int, ctx: PolicyContext) -> ClockPro:
    if capacity < 2:
        raise EngramTierError(
            "policy 'clockpro': 1 row leaves CLOCK-Pro's ring a single hot entry, on which PyClockPro's hands "
            "push one another for ever (it refuses fewer than 3 rows); use at least 2 rows"
        )
    # at most m resident rows and m test entries: an admission's cascade only retypes and removes entries,
    # and when it ends the residents are fewer than m and the tests at most m, so its new row makes 2m
    scalars = [capacity, capacity, -1, -1, -1, -1, -1, 0, 0]
    state = lists_state(ctx.n_keys, 2 * capacity, scalars, [("referenced", np.uint8)], hashed=ctx.hashed)
    stack = np.zeros(STACK_ROWS * capacity + STACK_SLACK, np.uint8)
    return ClockPro((*state, stack, np.full(capacity, -1, np.int64)), ctx.n_keys)
