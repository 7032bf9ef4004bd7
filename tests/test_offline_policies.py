"""Offline policies (belady, lookahead) and static placement against independent references.

References: libCacheSim's Belady on oracleGeneral files, brute-force Python models that rescan the
trace at every eviction, a dict model of their heap, hand-worked examples, and exact identities
(lookahead with a window past the end is Belady; lookahead with W=0 over one-request steps is LRU).
"""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libcachesim_io import lcs, libcachesim_hits, next_positions, write_oracle_general
from zipf import zipf_keys

from engramtier.cache.nextuse import (
    NEVER,
    heap_delete,
    heap_push,
    heap_replace_top,
    heap_set,
    next_use,
    occurrences,
)
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace import export

FAR = 1 << 62  # "never again" in the brute-force models


# ---------------------------------------------------------------------------------------- references


def first_request_after(keys, key, t, end=None):
    end = len(keys) if end is None else end
    for u in range(t + 1, end):
        if keys[u] == key:
            return u
    return FAR


def brute_belady(keys, capacity, bypass):
    cache, hits = set(), 0
    for t, k in enumerate(keys):
        if k in cache:
            hits += 1
            continue
        if len(cache) < capacity:
            cache.add(k)
            continue
        victim = max(cache, key=lambda c: first_request_after(keys, c, t))
        if bypass and first_request_after(keys, k, t) > first_request_after(keys, victim, t):
            continue
        cache.remove(victim)
        cache.add(k)
    return hits


def brute_lookahead(keys, step_starts, capacity, window, removals=None):
    """Hit mask; ``removals`` maps a position to keys removed just before that request."""
    step_of = np.searchsorted(step_starts, np.arange(len(keys)), side="right") - 1
    last_touch, hits = {}, []
    for t, k in enumerate(keys):
        for gone in (removals or {}).get(t, ()):
            last_touch.pop(gone, None)
        end = step_starts[min(step_of[t] + window + 1, len(step_starts) - 1)]
        if k in last_touch:
            hits.append(True)
        else:
            hits.append(False)
            if len(last_touch) >= capacity:
                def rank(c, t=t, end=end):
                    nxt = first_request_after(keys, c, t, end)
                    return (0, nxt) if nxt != FAR else (1, -last_touch[c])

                del last_touch[max(last_touch, key=rank)]
        last_touch[k] = t
    return np.array(hits)


def ctx_for(keys, n_keys=None, step_starts=None):
    keys = np.asarray(keys, dtype=np.int64)
    n_keys = int(keys.max()) + 1 if n_keys is None else n_keys
    return PolicyContext(n_keys=n_keys, keys=keys, step_starts=step_starts)


def hits_of(name, keys, capacity, ctx, **params):
    return replay(make_policy(name, capacity, ctx, **params), np.asarray(keys, dtype=np.int64))


small_traces = st.lists(st.integers(0, 11), min_size=1, max_size=120)


# --------------------------------------------------------------------------------------------- belady


def test_next_use_and_occurrences_on_a_hand_worked_trace():
    ctx = ctx_for([2, 0, 2, 2, 1, 0], n_keys=4)
    np.testing.assert_array_equal(next_use(ctx, "t"), [2, 5, 3, NEVER, NEVER, NEVER])
    starts, positions = occurrences(ctx, "t")
    np.testing.assert_array_equal(starts, [0, 2, 3, 6, 6])
    np.testing.assert_array_equal(positions, [1, 5, 4, 0, 2, 3])


@pytest.mark.parametrize("kind", ["zipf", "uniform", "loop", "phases"])
def test_belady_hits_equal_libcachesim(tmp_path, kind):
    rng = np.random.default_rng(7)
    n = 20_000
    if kind == "zipf":
        keys = zipf_keys(n, 2000, 1.2, rng)
    elif kind == "uniform":
        keys = rng.integers(0, 500, n)
    elif kind == "loop":
        keys = np.arange(n) % 300
    else:
        keys = np.concatenate([rng.integers(0, 200, n // 2), 1000 + rng.integers(0, 400, n // 2)])
    path = tmp_path / "trace.bin"
    write_oracle_general(path, keys)
    ctx = ctx_for(keys)
    for capacity in (1, 2, 3, 7, 50, 299, 1000):
        if capacity > ctx.n_keys:
            continue
        assert hits_of("belady", keys, capacity, ctx) == libcachesim_hits(lcs.Belady(capacity), path), capacity


def test_belady_hits_equal_libcachesim_on_the_benchmark_writer(tmp_path):
    """The benchmark's trace file: next-access field from the export's `next_positions` (libCacheSim's
    ``next_access_vtime``: the position of the next request, -1 for none), which must be the test-side
    writer's; capacities deep in the heap."""
    keys = zipf_keys(60_000, 20_000, 1.05, 11)
    np.testing.assert_array_equal(export.next_positions(keys, 0, np.full(20_000, -1, np.int64)), next_positions(keys))
    path = tmp_path / "trace.bin"
    write_oracle_general(path, keys)
    ctx = ctx_for(keys, n_keys=20_000)
    for capacity in (4, 5, 17, 200, 1365, 5000):  # heaps ending on full and partial groups of 4 children
        assert hits_of("belady", keys, capacity, ctx) == libcachesim_hits(lcs.Belady(capacity), path), capacity


@pytest.mark.parametrize("bypass", [False, True])
def test_belady_replay_kernel_matches_its_methods(bypass):
    """`replay` runs Belady's own inlined loop; a hierarchy calls its methods: same hits request by request."""
    keys = zipf_keys(20_000, 3000, 1.1, 5)
    ctx = ctx_for(keys)
    fast = np.empty(keys.size, np.bool_)
    replay(make_policy("belady", 300, ctx, bypass=bypass), keys, fast)
    policy = make_policy("belady", 300, ctx, bypass=bypass)
    for t, k in enumerate(keys.tolist()):
        hit = policy.lookup(k, t)
        assert hit == fast[t], t
        if not hit:
            policy.admit(k, t)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["push", "replace", "set", "delete"]), st.integers(0, 40),
                              st.integers(0, 60)), max_size=150))
def test_heap_keeps_the_largest_priority_on_top(ops):
    """The indexed 4-ary heap against a dict: top, membership, heap indices and priorities after every
    operation (pushes, replacing the top, raising or lowering any item, deleting any item)."""
    items, pris = np.empty(41, np.int64), np.empty(41, np.int64)
    where = np.full(41, -1, np.int32)
    model = {}
    for op, item, pri in ops:
        if op == "push" and item not in model:
            heap_push(items, pris, where, len(model), item, pri)
            model[item] = pri
        elif op == "replace" and model and item not in model:
            top = max(model.values())
            assert model.pop(heap_replace_top(items, pris, where, len(model), item, pri)) == top
            model[item] = pri
        elif op == "set" and item in model:
            heap_set(items, pris, where, where[item], pri, len(model))
            model[item] = pri
        elif op == "delete" and item in model:
            heap_delete(items, pris, where, where[item], len(model))
            del model[item]
        size = len(model)
        assert sorted(items[:size].tolist()) == sorted(model)
        assert all(where[items[i]] == i and pris[i] == model[items[i]] for i in range(size))
        assert all(where[k] == -1 for k in range(41) if k not in model)
        assert all(pris[(i - 1) // 4] >= pris[i] for i in range(1, size))


@settings(max_examples=60, deadline=None)
@given(keys=small_traces, capacity=st.integers(1, 8), bypass=st.booleans())
def test_belady_matches_brute_force(keys, capacity, bypass):
    ctx = ctx_for(keys, n_keys=12)
    assert hits_of("belady", keys, capacity, ctx, bypass=bypass) == brute_belady(keys, capacity, bypass)


@settings(max_examples=40, deadline=None)
@given(keys=small_traces, capacity=st.integers(1, 8))
def test_belady_beats_lru_and_bypass_beats_belady(keys, capacity):
    ctx = ctx_for(keys, n_keys=12)
    lru = hits_of("lru", keys, capacity, ctx)
    belady = hits_of("belady", keys, capacity, ctx)
    assert lru <= belady <= hits_of("belady", keys, capacity, ctx, bypass=True)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), capacity=st.integers(1, 6))
def test_belady_remove_and_demoted_admits_follow_the_reference(data, capacity):
    """Interleave the trace with removals and admissions of keys not requested at ``t`` (an exclusive
    hierarchy demoting a victim); a tail that requests every key keeps all next uses distinct."""
    body = data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=60))
    keys = np.array(body + list(range(10)), dtype=np.int64)
    policy = make_policy("belady", capacity, ctx_for(keys, n_keys=10))
    cache = set()
    for t in range(len(body)):
        action = data.draw(st.sampled_from(["request", "remove", "demote"]))
        other = data.draw(st.integers(0, 9))
        if action == "remove":
            assert policy.remove(other) == (other in cache)
            cache.discard(other)
        elif action == "demote" and other not in cache:
            victim = policy.admit(other, t)
            expect = -1
            if len(cache) == capacity:  # before the request at t is served, so a use at t counts
                expect = max(cache, key=lambda c: first_request_after(keys, c, t - 1))
                cache.remove(expect)
            cache.add(other)
            assert victim == expect
        k = int(keys[t])
        assert policy.lookup(k, t) == (k in cache)
        if k not in cache:
            victim = policy.admit(k, t)
            if len(cache) == capacity:
                expect = max(cache, key=lambda c: first_request_after(keys, c, t))
                assert victim == expect
                cache.remove(expect)
            else:
                assert victim == -1
            cache.add(k)
        assert policy.occupancy() == len(cache)
        assert all(policy.contains(c) == (c in cache) for c in range(10))


# ------------------------------------------------------------------------------------------ lookahead


@st.composite
def stepped_traces(draw):
    keys = draw(st.lists(st.integers(0, draw(st.integers(1, 9))), min_size=1, max_size=100))
    cuts = sorted(draw(st.lists(st.integers(0, len(keys)), max_size=15)))
    return np.array(keys, dtype=np.int64), np.array([0, *cuts, len(keys)], dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(trace=stepped_traces(), capacity=st.integers(1, 5), window=st.integers(0, 4))
def test_lookahead_matches_brute_force(trace, capacity, window):
    keys, steps = trace
    policy = make_policy("lookahead", capacity, ctx_for(keys, 10, steps), window_steps=window)
    hits = np.empty(keys.size, np.bool_)
    replay(policy, keys, hits)
    np.testing.assert_array_equal(hits, brute_lookahead(keys, steps, capacity, window))


@settings(max_examples=40, deadline=None)
@given(trace=stepped_traces(), capacity=st.integers(1, 6), window=st.integers(0, 4), data=st.data())
def test_lookahead_remove_follows_the_reference(trace, capacity, window, data):
    keys, steps = trace
    policy = make_policy("lookahead", capacity, ctx_for(keys, 10, steps), window_steps=window)
    removals = {t: data.draw(st.lists(st.integers(0, 9), max_size=2)) for t in range(keys.size)}
    expected = brute_lookahead(keys, steps, capacity, window, removals)
    for t, k in enumerate(keys.tolist()):
        for gone in removals[t]:
            was = policy.contains(gone)
            assert policy.remove(gone) == was and not policy.contains(gone)
        hit = policy.lookup(k, t)
        assert hit == expected[t]
        if not hit:
            policy.admit(k, t)
        assert policy.occupancy() <= capacity


@settings(max_examples=40, deadline=None)
@given(trace=stepped_traces(), capacity=st.integers(1, 6))
def test_lookahead_with_a_window_past_the_end_is_belady(trace, capacity):
    keys, steps = trace
    ctx = ctx_for(keys, 10, steps)
    belady = hits_of("belady", keys, capacity, ctx)
    assert hits_of("lookahead", keys, capacity, ctx, window_steps=steps.size - 1) == belady
    assert hits_of("lookahead", keys, capacity, ctx, window_steps=10**9) == belady


def test_lookahead_long_trace_window_past_the_end_is_belady():
    keys = zipf_keys(30_000, 3000, 1.1, 3)
    ctx = ctx_for(keys, step_starts=np.append(np.arange(0, keys.size, 64), keys.size))
    for capacity in (1, 10, 300):
        belady = hits_of("belady", keys, capacity, ctx)
        assert hits_of("lookahead", keys, capacity, ctx, window_steps=keys.size) == belady


@settings(max_examples=40, deadline=None)
@given(keys=small_traces, capacity=st.integers(1, 8))
def test_lookahead_without_window_on_single_request_steps_is_lru(keys, capacity):
    """W=0 with one request per step knows only the request being served, never a cached key's next
    use, so every eviction falls to the least recently used key."""
    ctx = ctx_for(keys, 12, np.arange(len(keys) + 1))
    assert hits_of("lookahead", keys, capacity, ctx, window_steps=0) == hits_of("lru", keys, capacity, ctx)


def test_lookahead_window_on_a_hand_worked_trace():
    # Capacity 2, one request per step. At the miss on 2 (t=2) the cache holds 0 (next use t=3) and
    # 1 (next use t=4).
    # W=0: neither next use is known -> evict the LRU key 0 -> at t=3, 0 misses and evicts the LRU
    #      key 1 (both remaining next uses unknown) -> at t=4, 1 misses: no hits.
    # W=1: 0's next use is known, 1's is not -> evict 1 -> 0 hits at t=3: one hit.
    # W=2: both known, 1's is farther -> evict 1 as well: the Belady choice.
    keys, steps = [0, 1, 2, 0, 1], np.arange(6)
    ctx = ctx_for(keys, step_starts=steps)
    masks = {}
    for window in (0, 1, 2):
        hits = np.empty(5, np.bool_)
        replay(make_policy("lookahead", 2, ctx, window_steps=window), np.array(keys), hits)
        masks[window] = hits.tolist()
    assert masks[0] == [False] * 5
    assert masks[1] == masks[2] == [False, False, False, True, False]


def test_lookahead_window_ends_with_its_last_step():
    # Capacity 2, steps [0 1 2] [0]. At the miss on 2 the cache holds 0 (next use: the first request
    # of step 1) and 1 (never again). W=0 knows only step 0, so both are unknown and LRU evicts 0;
    # W=1 knows step 1, keeps 0 and hits it.
    keys, steps = np.array([0, 1, 2, 0]), np.array([0, 3, 4])
    ctx = ctx_for(keys, step_starts=steps)
    assert hits_of("lookahead", keys, 2, ctx, window_steps=0) == 0
    assert hits_of("lookahead", keys, 2, ctx, window_steps=1) == 1


def test_lookahead_keeps_the_nearest_known_use_when_a_later_one_enters_the_window():
    # Capacity 2, W=1, steps [x k] [y k x] [k]. When step 1 starts, k's request in step 2 enters the
    # window, but k's next use is still the one in step 1 (t=3), nearer than x's (t=4): evict x.
    keys, steps = np.array([0, 1, 2, 1, 0, 1]), np.array([0, 2, 5, 6])
    hits = np.empty(6, np.bool_)
    replay(make_policy("lookahead", 2, ctx_for(keys, step_starts=steps), window_steps=1), keys, hits)
    assert hits.tolist() == [False, False, False, True, False, True]


# --------------------------------------------------------------------------------------------- static


def test_static_pins_the_most_frequent_keys_and_breaks_ties_by_lower_id():
    keys = np.array([5, 3, 5, 3, 1, 4, 4, 2, 0, 5], dtype=np.int64)  # counts: 5:3, 3:2, 4:2, 0,1,2:1
    ctx = ctx_for(keys, n_keys=6)
    policy = make_policy("static", 3, ctx)
    assert [k for k in range(6) if policy.contains(k)] == [3, 4, 5]
    assert make_policy("static", 4, ctx).contains(0)  # among the count-1 keys 0, 1, 2, key 0 wins
    hits = np.empty(keys.size, np.bool_)
    assert replay(policy, keys, hits) == 7  # pinned rows start resident: every request for 3, 4, 5 hits
    assert policy.occupancy() == 3


@settings(max_examples=40, deadline=None)
@given(keys=small_traces, profile_keys=small_traces, capacity=st.integers(1, 12))
def test_static_hits_are_the_requests_for_the_profile_hot_set(keys, profile_keys, capacity):
    counts = np.bincount(profile_keys, minlength=12)
    hot = sorted(range(12), key=lambda k: (-counts[k], k))[:capacity]
    ctx = PolicyContext(n_keys=12, keys=np.array(keys), profile=counts)
    assert hits_of("static", keys, capacity, ctx) == sum(k in hot for k in keys)


def test_static_declines_other_rows_and_readmits_removed_pinned_rows():
    policy = make_policy("static", 2, PolicyContext(n_keys=4, profile=np.array([0, 9, 0, 7])))
    assert policy.admit(0, 0) == 0 and not policy.contains(0)
    assert policy.remove(1) and not policy.remove(1) and not policy.remove(0)
    assert policy.occupancy() == 1 and not policy.lookup(1, 1)
    assert policy.admit(1, 1) == -1 and policy.lookup(1, 2) and policy.occupancy() == 2


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, ctx, params, message",
    [
        ("belady", PolicyContext(n_keys=4), {}, "offline and needs the whole trace"),
        ("lookahead", PolicyContext(n_keys=4, keys=np.array([0, 1])), {}, "needs the trace's step boundaries"),
        ("lookahead", PolicyContext(n_keys=4, keys=np.array([0, 1]), step_starts=np.array([0, 3])), {},
         "step_starts must rise from 0 to the trace length 2"),
        ("lookahead", PolicyContext(n_keys=4, keys=np.array([0, 1]), step_starts=np.array([0, 2, 1, 2])), {},
         "step_starts must rise from 0 to the trace length 2"),
        ("lookahead", PolicyContext(n_keys=4, keys=np.array([0, 1]), step_starts=np.array([0, 2])),
         {"window_steps": 1.5}, "window_steps must be a whole number of steps >= 0"),
        ("lookahead", PolicyContext(n_keys=4, keys=np.array([0, 1]), step_starts=np.array([0, 2])),
         {"window_steps": -1}, "window_steps must be a whole number of steps >= 0"),
        ("belady", PolicyContext(n_keys=4, keys=np.array([0, 4])), {}, "trace key 4 lies outside [0, 4)"),
        ("static", PolicyContext(n_keys=4), {}, "needs a frequency profile"),
        ("static", PolicyContext(n_keys=4, profile=np.array([1, 2, 3])), {},
         "one non-negative integer count per row (4)"),
        ("static", PolicyContext(n_keys=2, profile=np.array([1, -2])), {},
         "one non-negative integer count per row (2)"),
    ],
)
def test_bad_input_raises_one_clear_line(name, ctx, params, message):
    with pytest.raises(EngramTierError, match=re.escape(message)) as err:
        make_policy(name, 1, ctx, **params)
    assert "\n" not in str(err.value)
