"""LRU-K: evict the row whose K-th most recent use is oldest; rows used fewer than K times go first.

O'Neil, O'Neil & Weikum (SIGMOD '93) as libCacheSim's ``LRU_K`` implements it, with its default
``k = 2``. Each cached row remembers the times of its last ``k`` uses (its admission is the first).
A row used fewer than ``k`` times has an infinite backward K-distance: it waits in a FIFO (admission
order; hits do not reorder it) and is evicted first. Once it reaches ``k`` uses it leaves the FIFO for
a priority queue ordered by the time of its K-th most recent use, which each later hit moves on; the
queue's oldest is evicted when the FIFO is empty. ``k = 1`` puts every row straight into the queue:
that is LRU. libCacheSim forgets a row's history when it evicts it, so nothing outside the cache is
kept: the state is the capacity's nodes.

Times come from a clock in the state that ticks on every lookup and every admission, so that no two
uses share a time and the queue never needs libCacheSim's tie-break on object ids (which would order
dense keys and row ids differently); only the order of times matters, and it is the order of the
requests. The queue is `engramtier.cache.nextuse`'s indexed heap over nodes, keyed by minus the time.
"""

import numpy as np
from numba import types

from engramtier.cache.diskcache import inlined
from engramtier.cache.nextuse import heap_delete, heap_push, heap_set
from engramtier.cache.policies._lists import (
    EXTRA,
    FREE,
    LENGTH,
    LIST_OF,
    NXT,
    PRV,
    SCALARS,
    ST,
    drop,
    give_node,
    insert,
    lists_state,
    lists_state_type,
    node_of,
    tail,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError

FIFO, QUEUE = range(2)  # list ids: the FIFO ring, and the mark of a node held in the priority queue
CAPACITY, K, CLOCK, QUEUED = range(SCALARS, SCALARS + 4)  # QUEUED: nodes in the heap
# Then each node's last k use times (k per node, a ring), its next write position and its uses (up to
# k); and the heap: the node in each heap slot, that slot's priority (minus the K-th time), and each
# node's heap slot.
HISTORY, WRITE, USES, HEAP_NODE, HEAP_PRI, HEAP_SLOT = range(EXTRA, EXTRA + 6)
STATE = lists_state_type(types.int64[::1], types.int32[::1], types.int32[::1], types.int64[::1], types.int64[::1],
                         types.int64[::1])
MAX_K = 64


@inlined
def _use(state, s):
    """Record a use of node ``s`` now; returns its K-th most recent use time, or -1 below k uses."""
    st, history, write, uses = state[ST], state[HISTORY], state[WRITE], state[USES]
    k = st[K]
    st[CLOCK] += 1
    history[s * k + write[s]] = st[CLOCK]
    write[s] = write[s] + 1 if write[s] + 1 < k else 0
    if uses[s] < k:
        uses[s] += 1
    return history[s * k + write[s]] if uses[s] == k else -1  # the window's oldest is written next


@inlined
def _enqueue(state, s, kth):
    st = state[ST]
    heap_push(state[HEAP_NODE], state[HEAP_PRI], state[HEAP_SLOT], st[QUEUED], s, -kth)
    st[QUEUED] += 1
    state[LIST_OF][s] = QUEUE


@inlined
def _dequeue(state, s):
    """Take node ``s`` out of the heap, forget its key and free it; returns the key."""
    st = state[ST]
    heap_delete(state[HEAP_NODE], state[HEAP_PRI], state[HEAP_SLOT], state[HEAP_SLOT][s], st[QUEUED])
    st[QUEUED] -= 1
    key = unlink_key(state, s)
    give_node(state[NXT], st, FREE, s)
    return key


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    kth = _use(state, s)
    if kth < 0:
        return True  # still below k uses: its FIFO place stands
    st = state[ST]
    if state[LIST_OF][s] == FIFO:  # its k-th use: from the FIFO into the queue
        unlink(state[PRV], state[NXT], st, FIFO, s)
        st[LENGTH + FIFO] -= 1
        _enqueue(state, s, kth)
    else:
        heap_set(state[HEAP_NODE], state[HEAP_PRI], state[HEAP_SLOT], state[HEAP_SLOT][s], -kth, st[QUEUED])
    return True


@inlined
def occupancy(state):
    st = state[ST]
    return st[LENGTH + FIFO] + st[QUEUED]


@inlined
def admit(state, key, t):
    st = state[ST]
    victim = -1
    if occupancy(state) >= st[CAPACITY]:
        if st[LENGTH + FIFO] > 0:
            victim = drop(state, tail(state[PRV], st, FIFO), FIFO)
        else:
            victim = _dequeue(state, state[HEAP_NODE][0])
    s = insert(state, key, FIFO)
    state[USES][s] = 0
    state[WRITE][s] = 0
    kth = _use(state, s)
    if kth >= 0:  # k = 1: straight into the queue
        unlink(state[PRV], state[NXT], st, FIFO, s)
        st[LENGTH + FIFO] -= 1
        _enqueue(state, s, kth)
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    if state[LIST_OF][s] == FIFO:
        drop(state, s, FIFO)
    else:
        _dequeue(state, s)
    return True


LRUK = compiled_policy("LRUK", STATE, lookup, admit, remove, holds_key, occupancy)


@register("lruk")
def build(capacity: int, ctx: PolicyContext, k: int = 2) -> LRUK:
    if int(k) != k or not 1 <= k <= MAX_K:
        raise EngramTierError(f"policy 'lruk': k must be an integer from 1 to {MAX_K}, got {k}")
    k = int(k)
    lists = lists_state(ctx.n_keys, capacity, [capacity, k, 0, 0], hashed=ctx.hashed)
    pool = lists[1].size
    return LRUK(lists + (np.zeros(pool * k, np.int64), np.zeros(pool, np.int32), np.zeros(pool, np.int32),
                         np.zeros(pool, np.int64), np.zeros(pool, np.int64), np.full(pool, -1, np.int64)), ctx.n_keys)
