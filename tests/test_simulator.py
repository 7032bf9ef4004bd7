"""simulate() on hand-worked traces (hits, fetch time, stall, throughput worked out on paper), chunking
that cannot change a result, a plain-Python policy giving the built-in's numbers, and its input errors."""

import json

import numpy as np
import pytest
from reference_policies import PyLRU
from zipf import zipf_keys

import engramtier.cache.policy as policy_module
from engramtier.cache.hierarchy import Hierarchy, TierSpec
from engramtier.cache.simulator import simulate
from engramtier.cache.timing import TierModel
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

FAST = TierModel("fast", latency_s=1e-6, bandwidth_Bps=1e8, parallelism=1)  # 2 us per 100-B row
SLOW = TierModel("slow", latency_s=1e-5, bandwidth_Bps=1e8, parallelism=2)  # 10 us per pair + 1 us per row


def hand_trace(**meta):
    # steps [1 2 1] [2 3 2 2] [] [3 1 2]: unique lookups [1 2] [2 3] [] [3 1 2]
    rows = np.array([1, 2, 1, 2, 3, 2, 2, 3, 1, 2], np.int64)
    return RowTrace(rows, np.array([0, 3, 7, 7, 10], np.int64), n_table_rows=10, row_bytes=100, meta=meta)


def two_level(mode, cache_rows=(2,)):
    caches = tuple(TierSpec(f"c{i}", c, "lru", {}, FAST) for i, c in enumerate(cache_rows))
    return Hierarchy(caches + (TierSpec("store", None, None, {}, SLOW),), mode)


def test_inclusive_hand_worked():
    # LRU of 2 (MRU first): [2 1] | 2 hits, 3 evicts 1: [3 2] | - | 3 hits, 1 evicts 2, 2 evicts 3: [2 1]
    r = simulate(hand_trace(rows_per_token=2), two_level("inclusive"), compute_window_s=11.5e-6, progress=False)
    assert r.requests.tolist() == [3, 4, 0, 3] and r.unique.tolist() == [2, 2, 0, 3]
    assert r.served.tolist() == [[0, 1, 0, 1], [2, 1, 0, 2]]
    np.testing.assert_allclose(r.fetch_s, [[0, 2e-6, 0, 2e-6], [12e-6, 11e-6, 0, 12e-6]], rtol=1e-12)
    np.testing.assert_allclose(r.step_fetch_s, [12e-6, 11e-6, 0, 12e-6], rtol=1e-12)  # parallel: the max
    np.testing.assert_allclose(r.stall_s, [0.5e-6, 0, 0, 0.5e-6], rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(r.step_s, 11.5e-6 + r.stall_s, rtol=1e-12)
    s = r.summary()
    assert s["requests"] == 10 and s["lookups"] == 7 and s["steps"] == 4
    assert s["tokens_per_s"] == pytest.approx(5 / (4 * 11.5e-6 + 1e-6))
    assert s["stall_fraction"] == pytest.approx(1e-6 / (4 * 11.5e-6 + 1e-6))
    cache, store = s["tiers"]
    assert {k: cache[k] for k in ("lookups", "hits", "promoted", "demoted", "evicted", "declined")} == {
        "lookups": 7, "hits": 2, "promoted": 5, "demoted": 0, "evicted": 3, "declined": 0}
    assert cache["hit_rate"] == pytest.approx(2 / 7) and cache["bytes_read"] == 200
    assert (store["lookups"], store["hits"], store["bytes_read"], store["served_share"]) == (5, 5, 500, 5 / 7)


def test_serial_overlap_adds_tiers_and_window_may_vary_per_step():
    window = np.array([20e-6, 1e-6, 0.0, 0.0])
    r = simulate(hand_trace(), two_level("inclusive"), compute_window_s=window, step_compute_s=1e-4,
                 overlap="serial", progress=False)
    np.testing.assert_allclose(r.step_fetch_s, [12e-6, 13e-6, 0, 14e-6], rtol=1e-12)
    np.testing.assert_allclose(r.stall_s, [0, 12e-6, 0, 14e-6], rtol=1e-12)
    np.testing.assert_allclose(r.step_s, 1e-4 + r.stall_s, rtol=1e-12)
    assert r.summary()["requests_per_s"] == pytest.approx(10 / (4e-4 + 26e-6))  # no rows_per_token


def test_exclusive_hand_worked():
    # c0 LRU 2, c1 LRU 2. Step 1: 3 evicts 1 from c0, 1 demoted to c1. Step 3: 3 hits c0; 1 hits c1
    # (removed there), c0 evicts 2 into c1; 2 hits c1, c0 evicts 3 into c1.
    r = simulate(hand_trace(), two_level("exclusive", (2, 2)), compute_window_s=0.0, progress=False)
    assert r.served.tolist() == [[0, 1, 0, 1], [0, 0, 0, 2], [2, 1, 0, 0]]
    c0, c1, store = r.tier_stats()
    assert (c0["lookups"], c0["hits"], c0["promoted"], c0["evicted"]) == (7, 2, 5, 3)
    assert (c1["lookups"], c1["hits"], c1["demoted"], c1["evicted"], c1["promoted"]) == (5, 2, 3, 0, 0)
    assert (store["lookups"], store["hits"]) == (3, 3)
    np.testing.assert_allclose(r.stall_s, r.step_fetch_s)  # no window hides anything


def test_store_alone_serves_every_lookup():
    r = simulate(hand_trace(), Hierarchy((TierSpec("store", None, None, {}, SLOW),)), compute_window_s=0.0,
                 progress=False)
    assert r.served.tolist() == [[2, 2, 0, 3]]
    np.testing.assert_allclose(r.step_s, SLOW.fetch_seconds(np.array([2, 2, 0, 3]), 100), rtol=1e-12)


def zipf_trace(n=20_000, n_rows=3000, step=64, seed=0):
    rng = np.random.default_rng(seed)
    rows = zipf_keys(n, n_rows, 1.2, rng, shuffle=True)
    starts = np.unique(np.concatenate([np.arange(0, n, step), rng.integers(0, n, 50), [n]])).astype(np.int64)
    return RowTrace(rows, starts, n_rows, 160, {"rows_per_token": 16, "source": np.str_("synthetic")})


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_chunk_size_does_not_change_the_result(mode):
    trace = zipf_trace()
    h = Hierarchy.from_dict({"mode": mode, "tier": [
        {"name": "gpu", "capacity": 100, "policy": "lru", "model": "hbm"},
        {"name": "dram", "capacity": "64KiB", "policy": "belady", "model": "dram"},
        {"name": "nvme", "model": "nvme"}]})
    whole = simulate(trace, h, compute_window_s=2e-4, progress=False)
    chunked = simulate(trace, h, compute_window_s=2e-4, progress=False, chunk_requests=100)
    assert whole.served.tolist() == chunked.served.tolist()
    assert whole.tier_totals == chunked.tier_totals
    np.testing.assert_array_equal(whole.step_s, chunked.step_s)
    assert whole.served.sum() == whole.unique.sum() and whole.requests.sum() == trace.rows.size
    unique_per_step = [np.unique(trace.step(i)).size for i in range(trace.n_steps)]
    assert whole.unique.tolist() == unique_per_step
    json.dumps(whole.to_dict())  # JSON-ready, trace meta with numpy values included


@pytest.fixture
def python_lru_registered():
    """A plain-Python LRU registered as 'pylru' in a private copy of the registry, restored afterwards."""
    saved = dict(policy_module._REGISTRY)
    policy_module.register("pylru")(lambda capacity, ctx: PyLRU(capacity))
    yield
    policy_module._REGISTRY.clear()
    policy_module._REGISTRY.update(saved)


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_plain_python_policy_gives_the_builtin_numbers(python_lru_registered, mode):
    trace = zipf_trace(n=5000)

    def hierarchy(policy):
        return Hierarchy((TierSpec("gpu", 50, policy, {}, "hbm"), TierSpec("dram", 200, policy, {}, "dram"),
                          TierSpec("nvme", None, None, {}, "nvme")), mode)

    builtin = simulate(trace, hierarchy("lru"), compute_window_s=1e-4, progress=False, chunk_requests=700)
    python = simulate(trace, hierarchy("pylru"), compute_window_s=1e-4, progress=False, chunk_requests=700)
    assert python.served.tolist() == builtin.served.tolist()
    assert [t["evicted"] for t in python.tier_totals] == [t["evicted"] for t in builtin.tier_totals]


def test_progress_bar_runs(capsys):
    simulate(hand_trace(), two_level("inclusive"), compute_window_s=0.0, progress=True)
    assert "simulate" in capsys.readouterr().err


@pytest.mark.parametrize("make_trace, hierarchy, kwargs, match", [
    (lambda: RowTrace(np.zeros(0, np.int64), np.zeros(1, np.int64), 10, 100), two_level("inclusive"), {},
     "the trace is empty"),
    (lambda: RowTrace(np.array([1, 12], np.int64), np.array([0, 2], np.int64), 10, 100), two_level("inclusive"), {},
     "row id 12 lies outside the table's 10 rows"),
    (hand_trace, Hierarchy((TierSpec("c", 2, "lru", {}, FAST), TierSpec("store", 9, None, {}, SLOW))), {},
     "the backing store holds 9 rows but the table has 10"),
    (hand_trace, two_level("inclusive", (11,)), {}, "capacity 11 \\(11 rows\\) exceeds the table's 10 rows"),
    (hand_trace, two_level("inclusive"), {"compute_window_s": [1.0, 2.0]},
     "compute_window_s must be one number or one per step \\(4\\), got shape \\(2,\\)"),
    (hand_trace, two_level("inclusive"), {"compute_window_s": -1.0}, "compute_window_s must hold finite seconds"),
    (hand_trace, two_level("inclusive"), {"step_compute_s": np.full(4, np.nan)}, "step_compute_s must hold finite"),
    (hand_trace, two_level("inclusive"), {"overlap": "max"}, "unknown overlap 'max'; choose one of parallel, serial"),
    (hand_trace, two_level("inclusive"), {"chunk_requests": 0}, "chunk_requests must be a positive whole number"),
    (lambda: hand_trace(rows_per_token=0), two_level("inclusive"), {}, "rows_per_token must be a positive number"),
])
def test_bad_input_is_refused(make_trace, hierarchy, kwargs, match):
    kwargs = {"compute_window_s": 1e-3, "progress": False, **kwargs}
    with pytest.raises(EngramTierError, match=match) as err:
        simulate(make_trace(), hierarchy, **kwargs)
    assert "\n" not in str(err.value)
