"""The engine against `replay` (one tier) and against a brute-force, sequential plain-Python model of the
inclusive and exclusive semantics written here from the module docstring, on random traces."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_policies import PyLRU
from zipf import zipf_keys

from engramtier.cache.engine import COUNTERS, Engine
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace.lookups import unique_per_step


class PyEvenLRU(PyLRU):
    """An LRU that declines odd rows (an admission filter), to exercise the declined path."""

    def admit(self, key, t):
        return key if key % 2 else super().admit(key, t)


def unique_steps(steps):
    """Each step's unique rows in first-occurrence order, with the position of the row's last request."""
    out, pos = [], 0
    for step in steps:
        last = {}
        for i, k in enumerate(step):
            last[k] = pos + i
        out.append([(k, last[k]) for k in dict.fromkeys(step)])
        pos += len(step)
    return out


def brute_force(steps, policies, mode):
    """Resolve each lookup to the end before the next, literally as the engine's docstring states.
    Returns served[tier][step] (store last), per-tier victim sequences and counters."""
    n = len(policies)
    served = [[0] * len(steps) for _ in range(n + 1)]
    victims = [[] for _ in range(n)]
    counts = [dict.fromkeys(COUNTERS, 0) for _ in range(n)]
    for s, lookups in enumerate(unique_steps(steps)):
        for k, t in lookups:
            if mode == "inclusive":
                for i, p in enumerate(policies):
                    counts[i]["lookups"] += 1
                    if p.lookup(k, t):
                        counts[i]["hits"] += 1
                        served[i][s] += 1
                        break
                    v = p.admit(k, t)
                    _count_admission(counts[i], victims[i], v, k, "promoted")
                else:
                    served[n][s] += 1
                continue
            counts[0]["lookups"] += 1
            if policies[0].lookup(k, t):
                counts[0]["hits"] += 1
                served[0][s] += 1
                continue
            for i in range(1, n):
                counts[i]["lookups"] += 1
                if policies[i].remove(k):
                    counts[i]["hits"] += 1
                    served[i][s] += 1
                    break
            else:
                served[n][s] += 1
            moving = k  # the row arrives at tier 0; whatever is pushed out moves one tier down
            for i, p in enumerate(policies):
                v = p.admit(moving, t)
                _count_admission(counts[i], victims[i], v, moving, "promoted" if i == 0 else "demoted")
                if v < 0:
                    break
                moving = v
    return served, victims, counts


def _count_admission(counts, victims, v, key, kind):
    if v == key:
        counts["declined"] += 1
        return
    counts[kind] += 1
    if v >= 0:
        counts["evicted"] += 1
        victims.append(v)


def run_engine(steps, policies, mode, chunk_steps):
    """Feed the engine ``chunk_steps`` steps at a time; returns served, victims and counters."""
    uniq = unique_steps(steps)
    engine = Engine(policies, mode, 25)
    served, victims = [], [[] for _ in policies]
    for a in range(0, len(uniq), chunk_steps):
        chunk = uniq[a : a + chunk_steps]
        keys = np.array([k for step in chunk for k, _ in step], np.int64)
        ts = np.array([t for step in chunk for _, t in step], np.int64)
        starts = np.concatenate(([0], np.cumsum([len(step) for step in chunk]))).astype(np.int64)
        served.append(engine.feed(keys, ts, starts))
        for i, stream in enumerate(engine.streams[:-1]):
            is_admit = ~stream.hit & (stream.victim >= 0)
            admitted = np.where(stream.events[is_admit] >= 0, stream.events[is_admit], -1 - stream.events[is_admit])
            real = stream.victim[is_admit] != admitted  # a declined row is not an eviction
            victims[i].extend(stream.victim[is_admit][real].tolist())
    counts = [dict(zip(COUNTERS, row.tolist(), strict=True)) for row in engine.counters]
    return np.concatenate(served, axis=1).tolist(), victims, counts, engine


steps_strategy = st.lists(st.lists(st.integers(0, 24), min_size=0, max_size=12), min_size=1, max_size=25)


@settings(max_examples=80, deadline=None)
@given(steps=steps_strategy, capacities=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       mode=st.sampled_from(["inclusive", "exclusive"]), chunk_steps=st.integers(1, 30))
def test_compiled_lru_hierarchy_equals_brute_force(steps, capacities, mode, chunk_steps):
    ctx = PolicyContext(n_keys=25)
    compiled = [make_policy("lru", c, ctx) for c in capacities]
    served, victims, counts, engine = run_engine(steps, compiled, mode, chunk_steps)
    want_served, want_victims, want_counts = brute_force(steps, [PyLRU(c) for c in capacities], mode)
    assert served == want_served
    assert victims == want_victims
    assert counts == want_counts
    assert engine.store_lookups == sum(want_served[-1])
    for p, c in zip(compiled, capacities, strict=True):
        assert p.occupancy() <= c
    if mode == "exclusive":  # no row in two caches above the store
        for k in range(25):
            assert sum(p.contains(k) for p in compiled) <= 1


@settings(max_examples=60, deadline=None)
@given(steps=steps_strategy, capacities=st.lists(st.integers(1, 6), min_size=2, max_size=3),
       mode=st.sampled_from(["inclusive", "exclusive"]))
def test_python_policies_with_declines_equal_brute_force(steps, capacities, mode):
    """Plain-Python policies go through the same driver source (py_func); tier 0 declines odd rows."""
    make = lambda: [PyEvenLRU(capacities[0])] + [PyLRU(c) for c in capacities[1:]]  # noqa: E731
    engine_policies = make()
    served, victims, counts, _ = run_engine(steps, engine_policies, mode, chunk_steps=4)
    want_served, want_victims, want_counts = brute_force(steps, make(), mode)
    assert (served, victims, counts) == (want_served, want_victims, want_counts)
    if mode == "exclusive":
        for k in range(25):
            assert sum(p.contains(k) for p in engine_policies) <= 1


@pytest.mark.parametrize("name", ["lru", "fifo", "belady", "lookahead"])
def test_single_tier_over_one_request_steps_equals_replay(name):
    rng = np.random.default_rng(7)
    keys = zipf_keys(3000, 1000, 1.3, rng)
    starts = np.arange(keys.size + 1, dtype=np.int64)
    ctx = PolicyContext(n_keys=1000, keys=keys, step_starts=starts)
    engine = Engine([make_policy(name, 100, ctx)], "inclusive", 1000)
    served = engine.feed(keys, np.arange(keys.size, dtype=np.int64), starts)
    hits = np.empty(keys.size, np.bool_)
    want = replay(make_policy(name, 100, ctx), keys, hits)
    assert served[0].sum() == want
    np.testing.assert_array_equal(engine.streams[0].hit, hits)
    assert served[0].sum() + served[1].sum() == keys.size


# Compiling the drivers for a policy takes seconds, so not every registered policy is run here: these
# cover an admission filter that declines (wtinylfu), a pinned set that declines everything else
# (static) and an offline policy handed demoted rows at positions where they were not requested (belady).
@pytest.mark.parametrize("name", ["wtinylfu", "static", "belady"])
def test_policies_keep_exclusive_invariants(name):
    """A registered policy works at every level of an exclusive hierarchy: no row in two caches,
    occupancy within capacity, each lookup served exactly once."""
    rng = np.random.default_rng(3)
    rows = zipf_keys(8000, 1500, 1.2, rng)
    keys, ts, starts = np.empty_like(rows), np.empty_like(rows), np.empty(1001, np.int64)
    n = unique_per_step(rows, np.arange(0, rows.size + 1, 8, dtype=np.int64), 0, np.full(1500, -1, np.int64), 0,
                        keys, ts, starts)
    ctx = PolicyContext(n_keys=1500, keys=rows, step_starts=np.arange(0, rows.size + 1, 8, dtype=np.int64))
    policies = [make_policy(name, 100, ctx), make_policy(name, 300, ctx)]
    served = Engine(policies, "exclusive", 1500).feed(keys[:n], ts[:n], starts)
    assert served.sum() == n
    assert policies[0].occupancy() <= 100 and policies[1].occupancy() <= 300
    assert [k for k in range(1500) if policies[0].contains(k) and policies[1].contains(k)] == []


def test_unique_per_step_keeps_first_order_and_last_position_across_calls():
    rows = np.array([5, 3, 5, 7, 3, 3, 5, 9, 5], np.int64)
    stamp = np.full(10, -1, np.int64)
    keys, ts, starts = np.empty(9, np.int64), np.empty(9, np.int64), np.empty(3, np.int64)
    # steps [5 3 5 7 3] and [3 5] in one call, then [9 5] in a second call at trace offset 7
    n = unique_per_step(rows[:7], np.array([0, 5, 7], np.int64), 0, stamp, 0, keys, ts, starts)
    assert (keys[:n].tolist(), ts[:n].tolist(), starts.tolist()) == ([5, 3, 7, 3, 5], [2, 4, 3, 5, 6], [0, 3, 5])
    m = unique_per_step(rows[7:], np.array([0, 2], np.int64), 7, stamp, n, keys, ts, starts[:2])
    assert (keys[:m].tolist(), ts[:m].tolist(), starts[:2].tolist()) == ([9, 5], [7, 8], [0, 2])


def test_exclusive_start_drops_preloaded_rows_held_above():
    """Two static tiers pin the top 3 and top 5 rows of the same profile; exclusive leaves the lower
    tier ranks 4-5 only, inclusive leaves both as built."""
    profile = np.array([9, 1, 8, 7, 2, 6, 5, 0], np.int64)  # ranks: 0, 2, 3, 5, 6, 4, 1, 7
    ctx = PolicyContext(n_keys=8, profile=profile)
    for mode, lower_rows in (("exclusive", [5, 6]), ("inclusive", [0, 2, 3, 5, 6])):
        upper, lower = make_policy("static", 3, ctx), make_policy("static", 5, ctx)
        Engine([upper, lower], mode, 8)
        assert [k for k in range(8) if upper.contains(k)] == [0, 2, 3]
        assert [k for k in range(8) if lower.contains(k)] == lower_rows


def test_unknown_mode_is_refused():
    with pytest.raises(EngramTierError, match="unknown mode 'both'"):
        Engine([], "both", 10)


def test_rows_a_hit_evicts_are_demoted_not_lost():
    # W-TinyLFU's hits can overflow probation and evict (`hit_victim`); with a second tier large
    # enough never to evict, every row ever looked up must still be held by one of the two tiers.
    n_keys = 3000
    rng = np.random.default_rng(0)
    keys = zipf_keys(30_000, n_keys, 1.05, rng)
    ctx = PolicyContext(n_keys=n_keys)
    top = make_policy("wtinylfu", 100, ctx)
    engine = Engine([top, make_policy("lru", n_keys, ctx)], "exclusive", n_keys)
    engine.feed(keys, np.arange(keys.size, dtype=np.int64), np.arange(keys.size + 1, dtype=np.int64))
    first = engine.streams[0]
    assert np.any(first.hit & (first.victim >= 0))  # some hits did evict
    held = [k for k in np.unique(keys) if top.contains(k) or engine.policies[1].contains(k)]
    assert len(held) == np.unique(keys).size
