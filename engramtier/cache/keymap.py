"""Key maps: where a structure that keeps rows by key (a policy's lists, a cache tier's slots) finds a key.

Every such structure has *nodes* (list nodes, slab slots) and remembers the key each node holds,
``key_of[node]`` (-1: none). The map from a key to its node is then one int32 array, ``index``, in
one of two forms, told apart by its last entry:

dense
    One entry per key: ``index[key]`` is the key's node or -1. One memory access per lookup, and
    the size of the key space: right for a trace's dense keys (`engramtier.trace.rowindex`), which
    number the rows a trace touches, so the simulator keeps it.
hashed
    An open-addressing table of node ids (-1: empty) over a power of two entries, then one marker
    entry ``-2 - bits`` (so a last entry below -1 means "hashed", as no dense entry can be). A key's
    home entry is the top ``bits`` bits of its Fibonacci hash; probing walks forward until it finds a
    node whose ``key_of`` is the key, or an empty entry. The table has at least twice as many entries
    as the structure has nodes, so a probe ends after about 1.5 entries, and deleting shifts the
    entries behind it back (Knuth's algorithm R, no tombstones), so it never degrades. Its size follows
    the nodes (a tier's capacity plus its ghosts), not the key space: the runtime keys policies and
    slot maps by global row id, and DeepSeek-V4.1-Flash's table has 768M of them.

Because a hashed entry is compared through ``key_of``, the order of updates matters: `insert` a key
after its node's ``key_of`` holds it, and `delete` it while ``key_of`` still does. Keys are
non-negative int64. The functions are `engramtier.cache.diskcache.inlined` and allocate nothing, so
policies compiled without reference counting (`engramtier.cache.policy.compiled_policy`) use them freely.
"""

from __future__ import annotations

import numpy as np

from engramtier.cache.diskcache import inlined
from engramtier.cache.prefetch import prefetch

# A compiled policy's state begins with its key map and each node's key (`engramtier.cache.policy`'s
# `holds_key` and `held_keys` read them by these names; `policies/_lists.py` names the rest).
INDEX, KEY_OF = 0, 1

FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads consecutive row ids evenly
EMPTY = -1
LOAD = 2  # table entries per node, at least
DENSE_KEYS = 1 << 22  # a dense map over at most this many keys (16 MiB) is used whatever its nodes


def dense_index(n_keys: int) -> np.ndarray:
    """A dense map over keys ``0 <= key < n_keys``, all absent."""
    return np.full(int(n_keys), EMPTY, np.int32)


def hashed_index(nodes: int) -> np.ndarray:
    """A hashed map for a structure of ``nodes`` nodes, all absent: ``2**bits`` entries (at least
    `LOAD` per node) and the marker."""
    bits = max(3, int(LOAD * max(int(nodes), 1) - 1).bit_length())
    index = np.full((1 << bits) + 1, EMPTY, np.int32)
    index[-1] = -2 - bits
    return index


def _is_hashed(n_keys: int, nodes: int, hashed: bool) -> bool:
    """`new_index`'s choice: hashed when asked, or when a dense map would be both large (over
    `DENSE_KEYS` keys) and several times a hashed one's size (a tier of a few rows over a huge table).
    A dense map up to `DENSE_KEYS` keys is taken however few the nodes: a lookup is one load where a
    probe is a load and a comparison through ``key_of``, and a replay over a million keys at 1% of
    them runs about a fifth faster (ARC) to half again as fast (LRU) for 4 MiB."""
    return hashed or n_keys > max(4 * LOAD * max(int(nodes), 1), DENSE_KEYS)


def new_index(n_keys: int, nodes: int, hashed: bool) -> np.ndarray:
    """The map for ``nodes`` nodes over ``n_keys`` keys (dense or hashed: `_is_hashed`)."""
    return hashed_index(nodes) if _is_hashed(n_keys, nodes, hashed) else dense_index(n_keys)


def index_bytes(n_keys: int, nodes: int, hashed: bool) -> int:
    """What `new_index` will allocate, for memory checks before allocating."""
    if _is_hashed(n_keys, nodes, hashed):
        return 4 * ((1 << max(3, int(LOAD * max(int(nodes), 1) - 1).bit_length())) + 1)
    return 4 * int(n_keys)


@inlined
def _bits(index):
    """The table's bits for a hashed map, 0 for a dense one."""
    if index.size == 0:
        return 0
    marker = index[index.size - 1]
    return -2 - marker if marker < -1 else 0


@inlined
def _home(key, bits):
    return np.int64((np.uint64(key) * FIBONACCI) >> np.uint64(64 - bits))


@inlined
def _entry(index, key_of, key, bits):
    """The entry holding ``key`` in a hashed map, or the empty entry that ends its probe."""
    mask = (1 << bits) - 1
    e = _home(key, bits)
    while True:
        node = index[e]
        if node < 0 or key_of[node] == key:
            return e
        e = (e + 1) & mask


@inlined
def find(index, key_of, key):
    """``key``'s node, or -1."""
    bits = _bits(index)
    if bits == 0:
        return index[key]
    return index[_entry(index, key_of, key, bits)]


@inlined
def insert(index, key_of, key, node):
    """Map ``key`` (which ``key_of[node]`` holds already) to ``node``, replacing any earlier node;
    returns the entry written."""
    bits = _bits(index)
    e = key if bits == 0 else _entry(index, key_of, key, bits)
    index[e] = node
    return e


@inlined
def entry(index, key_of, key):
    """The entry of a hashed map that holds ``key``, or else the free entry where `insert` would put
    it: a find and an insert in one probe, for maps that only grow until cleared."""
    return _entry(index, key_of, key, _bits(index))


@inlined
def delete(index, key_of, key):
    """Forget ``key`` (``key_of`` still holding it); nothing happens if it is absent."""
    bits = _bits(index)
    if bits == 0:
        index[key] = EMPTY
        return
    mask = (1 << bits) - 1
    hole = _entry(index, key_of, key, bits)
    if index[hole] < 0:
        return
    e = hole
    while True:  # shift back every entry whose probe passes the hole
        e = (e + 1) & mask
        node = index[e]
        if node < 0:
            break
        home = _home(key_of[node], bits)
        if (e > hole and (home <= hole or home > e)) or (e < hole and hole >= home > e):
            index[hole] = node
            hole = e
    index[hole] = EMPTY


@inlined
def home_entry(index, key):
    """The entry a lookup of ``key`` reads first (what compiled loops prefetch)."""
    bits = _bits(index)
    return key if bits == 0 else _home(key, bits)


@inlined
def prefetch_home(index, key):
    """Start loading the entry a lookup of ``key`` reads first (`engramtier.cache.prefetch`)."""
    prefetch(index, home_entry(index, key))

