"""Circular doubly linked lists over a pool of integer nodes, shared by the built-in policies.

A policy keeps its rows (and ghost entries) in nodes ``0 <= s < pool``; ``prv``/``nxt`` link the
nodes of each list into a ring whose head ``st[q]`` (in the policy's int64 scalar array, -1 when
empty) is the newest node, so ``prv[head]`` is the oldest. Moving the oldest node to the front is
then just ``st[q] = tail`` (how CLOCK and FIFO-reinsertion rotate without touching links), and a
victim's node can take the incoming key in place. Free nodes are chained through ``nxt`` from
``st[free]``.

A node's fields (its key, links, list and whatever a policy keeps per node) are one record of a
structured array (`node_records`), and the state holds strided views of them: following a list then
touches one cache line per node, not one per field, which is what bounds a tier of millions of rows.

Every node holds a distinct key, so a pool never needs more nodes than there are keys: `bounded_pool`
caps it there, which keeps a tier far larger than a trace's working set (a 32 GiB DRAM tier over a
trace's dense keys) from allocating nodes no key can ever fill. A few nodes of slack cover a key
that is briefly in two lists while it moves.

Every list policy's state tuple begins with the same five arrays, named by `INDEX` .. `ST`: the key
map (`engramtier.cache.keymap`: key -> node, dense or hashed), each node's key, the links, and the
policy's int64 scalars. `node_of`, `link_key` and `unlink_key` are the key map seen through a state.

The helpers are `engramtier.cache.diskcache.inlined`: compiled once without reference counting and
inlined by LLVM into the policies' loops (see `engramtier.cache.policy`).
"""

import math

import numpy as np
from numba import types

from engramtier.cache import keymap
from engramtier.cache.diskcache import inlined

INDEX, KEY_OF = keymap.INDEX, keymap.KEY_OF
PRV, NXT, ST = 2, 3, 4  # the state tuple's first arrays, shared by every list policy


POOL_SLACK = 2


def bounded_pool(nodes: int, n_keys: int) -> int:
    """Nodes to allocate for a pool of ``nodes`` over ``n_keys`` keys (see the module docstring); at least
    two, because numba types the field views of a one-record pool as contiguous arrays, another type than
    every other pool's, whose policy and drivers it would compile again (a one-row miniature cache)."""
    return max(2, min(int(nodes), int(n_keys) + POOL_SLACK))


def free_chain(pool: int) -> np.ndarray:
    """``nxt`` for a pool whose nodes are all free, chained 0 -> 1 -> ... -> -1."""
    nxt = np.arange(1, pool + 1, dtype=np.int32)
    nxt[-1] = -1
    return nxt


@inlined
def node_of(state, key):
    """``key``'s node (cached or ghost), or -1."""
    return keymap.find(state[INDEX], state[KEY_OF], key)


@inlined
def link_key(state, key, s):
    """Record that node ``s`` holds ``key`` (sets ``key_of[s]``, then maps the key to it)."""
    state[KEY_OF][s] = key
    keymap.insert(state[INDEX], state[KEY_OF], key, s)


@inlined
def unlink_key(state, s):
    """Forget node ``s``'s key (the node keeps it in ``key_of`` until reused); returns the key."""
    key = state[KEY_OF][s]
    keymap.delete(state[INDEX], state[KEY_OF], key)
    return key


def key_index(n_keys: int, pool: int, hashed: bool) -> np.ndarray:
    """The key map of a pool of ``pool`` nodes over ``n_keys`` keys (`engramtier.cache.keymap.new_index`)."""
    return keymap.new_index(n_keys, pool, hashed)


# Numba types of the views into node records: strided ("A" layout) 1-D arrays.
NODE_KEYS, NODE_LINKS, NODE_BYTES = types.int64[:], types.int32[:], types.uint8[:]


def node_records(pool: int, fields=()) -> np.ndarray:
    """``pool`` free nodes: records of ``key`` (int64, -1), ``prv`` and ``nxt`` (int32, the free
    chain 0 -> 1 -> ... -> -1) and then ``fields``, (name, dtype) pairs, zeroed."""
    nodes = np.zeros(pool, np.dtype([("key", np.int64), ("prv", np.int32), ("nxt", np.int32), *fields], align=True))
    nodes["key"] = -1
    nodes["nxt"] = free_chain(pool)
    return nodes


@inlined
def take_node(nxt, st, free):
    s = st[free]
    st[free] = nxt[s]
    return s


@inlined
def give_node(nxt, st, free, s):
    nxt[s] = st[free]
    st[free] = s


@inlined
def tail(prv, st, q):
    return prv[st[q]]


@inlined
def push_head(prv, nxt, st, q, s):
    h = st[q]
    if h < 0:
        prv[s] = s
        nxt[s] = s
    else:
        p = prv[h]
        prv[s] = p
        nxt[s] = h
        nxt[p] = s
        prv[h] = s
    st[q] = s


@inlined
def unlink(prv, nxt, st, q, s):
    n = nxt[s]
    if n == s:
        st[q] = -1
        return
    p = prv[s]
    nxt[p] = n
    prv[n] = p
    if st[q] == s:
        st[q] = n


@inlined
def move_to_head(prv, nxt, st, q, s):
    h = st[q]
    if s == h:
        return
    if s == prv[h]:  # the oldest node: rotating the ring puts it in front
        st[q] = s
        return
    unlink(prv, nxt, st, q, s)
    push_head(prv, nxt, st, q, s)


# Policies with several lists over one pool (ARC, 2Q, S3-FIFO, W-TinyLFU) share a layout: their
# state tuple is the five shared arrays, then list_of[node] (`LIST_OF`), naming the node's list; st
# holds the heads of up to four lists, then their lengths from LENGTH, the free chain at FREE, and the
# policy's own scalars from SCALARS. Their own arrays follow from `EXTRA`.
LIST_OF, EXTRA = 5, 6
LENGTH, FREE, SCALARS = 4, 8, 9


def share(capacity: int, ratio: float) -> int:
    """Rows of a sub-list holding ``ratio`` of ``capacity``, rounded down as libCacheSim does."""
    return int(capacity * ratio)


def capacity_for(rows: int, ratio: float) -> int:
    """The smallest capacity whose ``ratio`` share holds ``rows`` rows (for error messages)."""
    capacity = math.ceil(rows / ratio)
    while share(capacity, ratio) < rows:
        capacity += 1
    return capacity


def lists_state_type(*extra) -> types.Tuple:
    """Numba type of a lists state tuple followed by the policy's ``extra`` arrays (`NODE_BYTES` for
    a per-node field of `lists_state`)."""
    return types.Tuple((types.int32[::1], NODE_KEYS, NODE_LINKS, NODE_LINKS, types.int64[::1], NODE_BYTES) + extra)


def lists_state(n_keys: int, pool: int, scalars: list[int], node_fields=(), hashed: bool = False) -> tuple:
    """Empty lists over a pool of ``pool`` nodes (at most `bounded_pool`), with the policy's scalars
    appended to st and views of its per-node ``node_fields`` ((name, dtype) pairs) appended to the tuple;
    ``hashed``: a hashed key map (see `key_index`)."""
    pool = bounded_pool(pool, n_keys)
    nodes = node_records(pool, [("list", np.uint8), *node_fields])
    st = np.array([-1] * 4 + [0] * 4 + [0] + list(scalars), np.int64)
    return (key_index(n_keys, pool, hashed), nodes["key"], nodes["prv"], nodes["nxt"], st, nodes["list"],
            *(nodes[name] for name, _ in node_fields))


@inlined
def move(state, s, src, dst):
    """Move node ``s`` from list ``src`` to the head of list ``dst``."""
    prv, nxt, st, list_of = state[PRV], state[NXT], state[ST], state[LIST_OF]
    unlink(prv, nxt, st, src, s)
    st[LENGTH + src] -= 1
    push_head(prv, nxt, st, dst, s)
    st[LENGTH + dst] += 1
    list_of[s] = dst


@inlined
def drop(state, s, src):
    """Forget node ``s`` of list ``src`` entirely and free it; returns its key."""
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    unlink(prv, nxt, st, src, s)
    st[LENGTH + src] -= 1
    key = unlink_key(state, s)
    give_node(nxt, st, FREE, s)
    return key


@inlined
def insert(state, key, dst):
    """Give ``key`` a free node at the head of list ``dst``; returns the node."""
    prv, nxt, st = state[PRV], state[NXT], state[ST]
    s = take_node(nxt, st, FREE)
    push_head(prv, nxt, st, dst, s)
    st[LENGTH + dst] += 1
    state[LIST_OF][s] = dst
    link_key(state, key, s)
    return s


@inlined
def holds(state, key, ghosts):
    """`contains` of a multi-list policy whose list ids from ``ghosts`` on only remember keys."""
    s = node_of(state, key)
    return s >= 0 and state[LIST_OF][s] < ghosts


@inlined
def remove_held(state, key, ghosts):
    """`remove` of such a policy: forget ``key`` if it is cached; a ghost entry stays."""
    s = node_of(state, key)
    if s < 0 or state[LIST_OF][s] >= ghosts:
        return False
    drop(state, s, state[LIST_OF][s])
    return True
