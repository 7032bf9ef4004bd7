"""Key maps (engramtier.cache.keymap): dense and hashed maps answer like a dict under any sequence of
inserts and deletes, hashed maps stay sized by their nodes, and the runtime's step dedup equals the
simulator's."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from engramtier.cache import keymap
from engramtier.tiers.step import clear, dedup
from engramtier.trace.lookups import unique_per_step


@njit
def _find(index, key_of, key):
    return keymap.find(index, key_of, key)


@njit
def _insert(index, key_of, key, node):
    key_of[node] = key
    keymap.insert(index, key_of, key, node)


@njit
def _delete(index, key_of, key):
    keymap.delete(index, key_of, key)


NODES = 24


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=300),
       spread=st.sampled_from([1, 2**31 - 1, 2**40 + 7]), hashed=st.booleans())
def test_a_key_map_answers_like_a_dict(ops, spread, hashed):
    """Keys far apart (row ids of a huge table) or close together; inserting while nodes are free,
    deleting what is there; after every operation every key's node is the dict's."""
    index = keymap.hashed_index(NODES) if hashed else keymap.dense_index(61)
    key_of = np.full(NODES, -1, np.int64)
    expected: dict[int, int] = {}
    free = list(range(NODES))
    for add, k in ops:
        key = k * spread if hashed else k
        if add and key not in expected and free:
            node = free.pop()
            _insert(index, key_of, key, node)
            expected[key] = node
        elif not add and key in expected:
            _delete(index, key_of, key)
            free.append(expected.pop(key))
        for probe in range(61):
            probe_key = probe * spread if hashed else probe
            assert _find(index, key_of, probe_key) == expected.get(probe_key, -1)


def test_deleting_shifts_back_entries_whose_probe_wrapped_around_the_table():
    index = keymap.hashed_index(4)
    bits, last = -2 - int(index[-1]), index.size - 2
    wrapping = [k for k in range(10**6) if keymap._home(k, bits) == last][:3]  # all three want the last entry
    key_of = np.full(4, -1, np.int64)
    for node, key in enumerate(wrapping):
        _insert(index, key_of, key, node)
    assert sorted(index[:-1].tolist())[-3:] == [0, 1, 2] and index[last] == 0 and index[0] == 1
    _delete(index, key_of, wrapping[0])
    assert [_find(index, key_of, k) for k in wrapping] == [-1, 1, 2]
    assert index[last] == 1 and index[0] == 2 and index[1] == -1


def test_a_hashed_map_is_sized_by_its_nodes_not_its_keys():
    index = keymap.hashed_index(1000)
    assert 2000 <= index.size - 1 <= 4000 and (index.size - 1) & (index.size - 2) == 0
    assert keymap.new_index(2**33, 1000, hashed=False).size == index.size  # a dense map would be 32 GiB
    assert keymap.new_index(5000, 1000, hashed=False).size == 5000
    # dense up to DENSE_KEYS keys however few the nodes; hashed beyond, when a hashed map is much smaller
    assert keymap.new_index(keymap.DENSE_KEYS, 10, hashed=False).size == keymap.DENSE_KEYS
    assert keymap.new_index(keymap.DENSE_KEYS + 1, 10, hashed=False).size == keymap.hashed_index(10).size
    assert keymap.new_index(1000, 10, hashed=True).size == keymap.hashed_index(10).size
    assert keymap.index_bytes(2**33, 1000, hashed=False) == index.nbytes


def _simulator_dedup(ids, start):
    """The simulator's unique rows of one step (first-occurrence order) and their last positions."""
    uniq = np.unique(ids)
    dense = np.searchsorted(uniq, ids)  # the simulator's keys for the same rows
    keys, ts, starts = (np.empty(max(ids.size, 1), np.int64) for _ in range(3))
    n = unique_per_step(dense, np.array([0, ids.size], np.int64), start, np.full(max(uniq.size, 1), -1, np.int64), 0,
                        keys, ts, starts)
    return uniq[keys[:n]], ts[:n]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.lists(st.integers(0, 2**34), max_size=200), min_size=1, max_size=3),
       start=st.integers(0, 10**6))
def test_step_dedup_equals_the_simulators(steps, start):
    """The runtime's hashed dedup gives the simulator's unique rows, order and last positions, step after
    step over one map that each step empties of the last one's entries."""
    cap = max(1, max(len(rows) for rows in steps))
    index = keymap.hashed_index(cap)
    needed, got_ts, inv, entries = (np.empty(cap, np.int64) for _ in range(4))
    u = 0
    for rows in steps:
        ids = np.array(rows, np.int64)
        want_rows, want_ts = _simulator_dedup(ids, start)
        u = dedup(ids, start, index, needed, got_ts, inv, entries, u)
        assert u == want_rows.size
        np.testing.assert_array_equal(needed[:u], want_rows)
        np.testing.assert_array_equal(got_ts[:u], want_ts)
        np.testing.assert_array_equal(needed[inv[: ids.size]], ids)
        start += ids.size
    clear(index, entries, u)
    assert (index[:-1] == -1).all()
