"""MQ: LRU queues by access frequency, with expiring residence and a ghost FIFO remembering frequencies.

Zhou, Philbin & Li (USENIX ATC '01) as libCacheSim's ``MQ`` implements it, with its defaults:
``n_queue = 8`` LRU queues, ``lifetime = 10000`` and ``qout_ratio = 4.0``. A row used ``f`` times lives
in queue ``min(floor(log2 f), n_queue - 1)``. Each hit and each admission counts one use, moves the row
to the front of its queue and sets its expiry to ``now + lifetime``, then runs the paper's Adjust: the
clock ``now`` ticks and, in every queue above the lowest, the LRU row is demoted to the front of the
queue below (with a new expiry) if its expiry lies before ``now``. A full cache evicts the LRU row
of the lowest non-empty queue and remembers its key and frequency in Qout, a FIFO of
``int(capacity * qout_ratio)`` keys (the oldest forgotten when full); a missed key found in Qout comes
back with its remembered frequency plus one, others with one. Frequencies stop at 2**31 - 1, as
libCacheSim's ``int32`` does.

Qout entries are not cached (`contains` is False); `remove` drops a cached row and leaves Qout alone
(libCacheSim's ``MQ_remove`` also forgets a Qout entry, but it never holds one for a cached row, and
an exclusive hierarchy's remove moves a row up, after which its remembered frequency is what MQ
would want when it comes back). The Qout check libCacheSim makes in its lookup happens at the start of
`admit` here, with the same outcome.
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.policies._lists import (
    KEY_OF,
    NODE_BYTES,
    NODE_KEYS,
    NODE_LINKS,
    NXT,
    PRV,
    ST,
    bounded_pool,
    give_node,
    key_index,
    link_key,
    node_of,
    node_records,
    push_head,
    tail,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, register
from engramtier.errors import EngramTierError

MAX_QUEUES = 64  # libCacheSim's MQ_MAX_N_QUEUE
QOUT = MAX_QUEUES  # the list id of Qout, after the queues
# st: each list's head, then its length, then the free chain and the scalars
LENGTH = MAX_QUEUES + 1
FREE, CAPACITY, N_QUEUE, LIFETIME, QOUT_SHARE, NOW, HELD = range(2 * LENGTH, 2 * LENGTH + 7)
QUEUE, FREQ, EXPIRY = range(5, 8)  # the state's arrays of each node's list, frequency and expiry
MAX_FREQ = 2**31 - 1

STATE = types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_BYTES,
                     NODE_LINKS, NODE_KEYS))  # then the views of each node's list, frequency (int32) and expiry


@inlined
def _queue_of(state, freq):
    """``min(floor(log2 freq), n_queue - 1)``."""
    last = state[ST][N_QUEUE] - 1
    q = 0
    while freq > 1 and q < last:
        freq >>= 1
        q += 1
    return q


@inlined
def _leave(state, s):
    st = state[ST]
    q = state[QUEUE][s]
    unlink(state[PRV], state[NXT], st, q, s)
    st[LENGTH + q] -= 1


@inlined
def _enter(state, s, q):
    st = state[ST]
    push_head(state[PRV], state[NXT], st, q, s)
    st[LENGTH + q] += 1
    state[QUEUE][s] = q


@inlined
def _forget(state, s):
    """Free node ``s`` (out of every list already); returns its key."""
    key = unlink_key(state, s)
    give_node(state[NXT], state[ST], FREE, s)
    return key


@inlined
def _touch(state, s):
    """Count a use of cached node ``s``: to the front of its frequency's queue, a new expiry, Adjust."""
    st, expiry = state[ST], state[EXPIRY]
    _enter(state, s, _queue_of(state, state[FREQ][s]))
    expiry[s] = st[NOW] + st[LIFETIME]
    st[NOW] += 1
    for q in range(1, st[N_QUEUE]):
        if st[LENGTH + q] > 0:
            old = tail(state[PRV], st, q)
            if expiry[old] < st[NOW]:
                _leave(state, old)
                _enter(state, old, q - 1)
                expiry[old] = st[NOW] + st[LIFETIME]


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0 or state[QUEUE][s] == QOUT:
        return False
    freq = state[FREQ]
    _leave(state, s)
    if freq[s] < MAX_FREQ:
        freq[s] += 1
    _touch(state, s)
    return True


@inlined
def admit(state, key, t):
    st, freq = state[ST], state[FREQ]
    s = node_of(state, key)
    remembered = 0
    if s >= 0:  # in Qout
        remembered = freq[s]
        _leave(state, s)
        _forget(state, s)
    victim = -1
    if st[HELD] >= st[CAPACITY]:
        q = 0
        while st[LENGTH + q] == 0:
            q += 1
        v = tail(state[PRV], st, q)
        _leave(state, v)
        st[HELD] -= 1
        victim = state[KEY_OF][v]
        if st[QOUT_SHARE] == 0:
            _forget(state, v)
        else:
            if st[LENGTH + QOUT] >= st[QOUT_SHARE]:
                old = tail(state[PRV], st, QOUT)
                _leave(state, old)
                _forget(state, old)
            _enter(state, v, QOUT)
    s = take_node(state[NXT], st, FREE)
    link_key(state, key, s)
    freq[s] = remembered + 1 if remembered < MAX_FREQ else MAX_FREQ
    st[HELD] += 1
    _touch(state, s)
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0 or state[QUEUE][s] == QOUT:
        return False
    _leave(state, s)
    _forget(state, s)
    state[ST][HELD] -= 1
    return True


@inlined
def contains(state, key):
    s = node_of(state, key)
    return s >= 0 and state[QUEUE][s] != QOUT


@inlined
def occupancy(state):
    return state[ST][HELD]


MQ = compiled_policy("MQ", STATE, lookup, admit, remove, contains, occupancy)


@register("mq")
def build(capacity: int, ctx: PolicyContext, n_queue: int = 8, lifetime: int = 10000,
          qout_ratio: float = 4.0) -> MQ:
    if int(n_queue) != n_queue or not 1 <= n_queue <= MAX_QUEUES or int(lifetime) != lifetime or lifetime < 1 \
            or not 0 < qout_ratio <= 64:
        raise EngramTierError(
            f"policy 'mq': n_queue must be an integer from 1 to {MAX_QUEUES}, lifetime a positive integer and "
            f"qout_ratio in (0, 64] (libCacheSim's limits), got {n_queue}, {lifetime} and {qout_ratio}"
        )
    qout = int(capacity * qout_ratio)
    st = [-1] * LENGTH + [0] * LENGTH + [0, capacity, int(n_queue), int(lifetime), qout, 0, 0]
    pool = bounded_pool(capacity + qout, ctx.n_keys)
    nodes = node_records(pool, [("queue", np.uint8), ("freq", np.int32), ("expiry", np.int64)])
    return MQ((key_index(ctx.n_keys, pool, ctx.hashed), nodes["key"], nodes["prv"], nodes["nxt"],
               np.array(st, np.int64), nodes["queue"], nodes["freq"], nodes["expiry"]), ctx.n_keys)
