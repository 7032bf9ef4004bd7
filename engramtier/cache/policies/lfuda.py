"""LFUDA: LFU with dynamic aging, as libCacheSim's ``LFUDA`` implements it (no parameters).

Arlitt et al.'s LFU with Dynamic Aging (2000) keeps a priority per row and an age ``L``, the priority of
the last evicted row. libCacheSim's version, reproduced here rule for rule because its hit counts
depend on each: rows sit in FIFO buckets by priority ``p``, and ``m`` (its ``min_freq``, 0 until the
first eviction) plays the age.

- admission: ``p = m + 1``, appended to its bucket;
- hit: ``p += m`` (not ``+1``: before the first eviction ``m = 0``, so a hit only moves the row to the
  back of its bucket), then appended to the new bucket. When the row leaves the bucket ``m`` and the
  bucket empties, ``m`` becomes the smallest priority among the *other* rows above ``m`` (the hit row
  is between buckets then); a row whose new priority ``2m`` lies below that new ``m`` is never
  picked for eviction again until its next hit (it stays cached, "stranded"), exactly as in
  libCacheSim, whose eviction only looks at the bucket ``m``;
- eviction: the oldest row of bucket ``max(m, 1)``, and ``m`` is set to that bucket's priority; when
  the bucket empties ``m`` becomes the smallest priority above it.

Buckets are rings of nodes found by priority through a hashed key map (`engramtier.cache.keymap`, keyed
by priority over bucket ids), and a heap of the non-empty buckets (`engramtier.cache.nextuse`, keyed by
minus the priority) gives the smallest priority, where libCacheSim walks every integer up to the
largest priority. Stranded rows wait in a ring of their own. A state libCacheSim cannot handle (its
bucket ``m`` empty when it must evict: it dereferences a null object) evicts the oldest row of the
smallest non-empty bucket instead, or else the oldest stranded row; one such state is certain at
capacity 1, which is refused. Nothing is kept for rows not cached.

Priorities grow geometrically under this rule (a hit adds ``m``, and ``m`` follows the evicted
priorities): at a few rows of capacity, a few thousand requests of a skewed trace take them past 2**62.
libCacheSim's ``update_min_freq`` walks every integer up to the largest priority, so it stalls long
before, and its int64 would then overflow; here a priority saturates at `MAX_PRIORITY` (2**62), where
rows keep their bucket's first-in first-out order. The tests compare hit counts on trace prefixes and
sizes where libCacheSim finishes, all far below saturation.
"""

import numpy as np
from numba import types

from engramtier.cache import keymap
from engramtier.cache.diskcache import inlined
from engramtier.cache.nextuse import heap_delete, heap_push
from engramtier.cache.policies._lists import (
    NODE_KEYS,
    NODE_LINKS,
    NXT,
    PRV,
    ST,
    bounded_pool,
    free_chain,
    give_node,
    key_index,
    link_key,
    move_to_head,
    node_of,
    node_records,
    push_head,
    take_node,
    unlink,
    unlink_key,
)
from engramtier.cache.policy import PolicyContext, compiled_policy, holds_key, register
from engramtier.errors import EngramTierError

SIZE, CAPACITY, FREE, FREE_BUCKET, M, HEAPED, STRANDED = range(7)  # indices into st; STRANDED: that ring's head
# then each node's priority and bucket (-1: stranded); and per bucket: the map from priority to bucket,
# each bucket's priority, its ring head and free chain, and the heap of non-empty buckets (bucket per
# heap slot, minus its priority, each bucket's heap slot)
PRIORITY, BUCKET, BUCKET_INDEX, BUCKET_PRIORITY, BUCKET_HEAD, BUCKET_NEXT, HEAP_BUCKET, HEAP_PRI, HEAP_SLOT = range(5, 14)

MAX_PRIORITY = 1 << 62  # priorities saturate here rather than overflow int64 (see the module docstring)

STATE = types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_KEYS, NODE_LINKS,
                     types.int32[::1], types.int64[::1], types.int64[::1], types.int32[::1], types.int64[::1],
                     types.int64[::1], types.int64[::1]))


@inlined
def _raised(p, by):
    """``p + by``, saturating at `MAX_PRIORITY` (see the module docstring)."""
    return p + by if p <= MAX_PRIORITY - by else MAX_PRIORITY


@inlined
def _bucket_for(state, p):
    """The bucket of priority ``p``, made (and heaped) if there is none."""
    index, bucket_priority, st = state[BUCKET_INDEX], state[BUCKET_PRIORITY], state[ST]
    b = keymap.find(index, bucket_priority, p)
    if b < 0:
        b = take_node(state[BUCKET_NEXT], st, FREE_BUCKET)
        bucket_priority[b] = p
        keymap.insert(index, bucket_priority, p, b)
        state[BUCKET_HEAD][b] = -1
        heap_push(state[HEAP_BUCKET], state[HEAP_PRI], state[HEAP_SLOT], st[HEAPED], b, -p)
        st[HEAPED] += 1
    return b


@inlined
def _join(state, s, p):
    """Append node ``s`` to the bucket of priority ``p`` (as its newest row)."""
    b = _bucket_for(state, p)
    push_head(state[PRV], state[NXT], state[BUCKET_HEAD], b, s)
    state[BUCKET][s] = b
    state[PRIORITY][s] = p


@inlined
def _part(state, s):
    """Take node ``s`` out of its bucket, dropping the bucket once empty; returns whether it emptied."""
    st, b, bucket_head = state[ST], state[BUCKET][s], state[BUCKET_HEAD]
    unlink(state[PRV], state[NXT], bucket_head, b, s)
    if bucket_head[b] >= 0:
        return False
    heap_delete(state[HEAP_BUCKET], state[HEAP_PRI], state[HEAP_SLOT], state[HEAP_SLOT][b], st[HEAPED])
    st[HEAPED] -= 1
    keymap.delete(state[BUCKET_INDEX], state[BUCKET_PRIORITY], state[BUCKET_PRIORITY][b])
    give_node(state[BUCKET_NEXT], st, FREE_BUCKET, b)
    return True


@inlined
def _leave(state, s):
    """Take node ``s`` out of its bucket or the stranded ring; when that empties the bucket ``m``, ``m``
    becomes the smallest priority left (libCacheSim's ``update_min_freq``)."""
    st = state[ST]
    if state[BUCKET][s] < 0:
        unlink(state[PRV], state[NXT], st, STRANDED, s)
    elif _part(state, s) and state[PRIORITY][s] == st[M] and st[HEAPED] > 0:
        st[M] = -state[HEAP_PRI][0]


@inlined
def lookup(state, key, t):
    s = node_of(state, key)
    if s < 0:
        return False
    st = state[ST]
    if st[M] == 0:  # p += 0: to the back of its bucket
        move_to_head(state[PRV], state[NXT], state[BUCKET_HEAD], state[BUCKET][s], s)
        return True
    p = _raised(state[PRIORITY][s], st[M])
    _leave(state, s)
    if p < st[M]:
        state[BUCKET][s] = -1
        state[PRIORITY][s] = p
        push_head(state[PRV], state[NXT], st, STRANDED, s)
    else:
        _join(state, s, p)
    return True


@inlined
def _evict(state):
    st, prv = state[ST], state[PRV]
    b = keymap.find(state[BUCKET_INDEX], state[BUCKET_PRIORITY], max(st[M], 1))
    if b < 0 and st[HEAPED] > 0:  # libCacheSim would crash here (see the module docstring)
        b = state[HEAP_BUCKET][0]
    if b >= 0:
        st[M] = state[BUCKET_PRIORITY][b]
        s = prv[state[BUCKET_HEAD][b]]
    else:
        s = prv[st[STRANDED]]
    return _drop(state, s)


@inlined
def _drop(state, s):
    """Forget row node ``s`` (evicted or removed) and free it; returns its key."""
    st = state[ST]
    _leave(state, s)
    st[SIZE] -= 1
    key = unlink_key(state, s)
    give_node(state[NXT], st, FREE, s)
    return key


@inlined
def admit(state, key, t):
    st = state[ST]
    victim = _evict(state) if st[SIZE] >= st[CAPACITY] else -1
    s = take_node(state[NXT], st, FREE)
    link_key(state, key, s)
    _join(state, s, _raised(st[M], 1))
    st[SIZE] += 1
    return victim


@inlined
def remove(state, key):
    s = node_of(state, key)
    if s < 0:
        return False
    _drop(state, s)
    return True


@inlined
def occupancy(state):
    return state[ST][SIZE]


LFUDA = compiled_policy("LFUDA", STATE, lookup, admit, remove, holds_key, occupancy)


@register("lfuda")
def build(capacity: int, ctx: PolicyContext) -> LFUDA:
    if capacity < 2:
        raise EngramTierError(
            "policy 'lfuda': libCacheSim's LFUDA crashes on a one-row cache (its eviction finds an empty "
            "bucket); use at least 2 rows"
        )
    pool = bounded_pool(capacity, ctx.n_keys)
    buckets = pool + 1  # a bucket per row, and one made before the row it is for leaves its old one
    nodes = node_records(pool, [("priority", np.int64), ("bucket", np.int32)])
    return LFUDA((key_index(ctx.n_keys, pool, ctx.hashed), nodes["key"], nodes["prv"], nodes["nxt"],
                  np.array([0, capacity, 0, 0, 0, 0, -1], np.int64), nodes["priority"], nodes["bucket"],
                  keymap.hashed_index(buckets), np.zeros(buckets, np.int64), np.full(buckets, -1, np.int64),
                  free_chain(buckets), np.zeros(buckets, np.int64), np.zeros(buckets, np.int64),
                  np.full(buckets, -1, np.int64)), ctx.n_keys)
