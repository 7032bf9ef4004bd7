"""Sweeps against independent models: a plain-Python LRU/FIFO, single `simulate` runs, the timing model."""

from __future__ import annotations

import numpy as np
import pytest
from reference_policies import python_cache_hits

from engramtier.analysis.config import TimingConfig
from engramtier.analysis.sweep import cxl_sweep, hit_rate_sweep, simulate_point, stall_sweep, step_seconds, with_capacities, with_cxl
from engramtier.cache.hierarchy import Hierarchy
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

N_KEYS, STEP = 600, 80


@pytest.fixture(scope="module")
def trace() -> RowTrace:
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, N_KEYS + 1) ** 0.9
    rows = rng.choice(N_KEYS, size=4000, p=weights / weights.sum()).astype(np.int64)
    starts = np.arange(0, rows.size + 1, STEP, dtype=np.int64)
    return RowTrace(rows, starts, N_KEYS, 160, {"rows_per_token": 4})


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy.from_dict({"tier": [
        {"name": "gpu", "capacity": 20, "policy": "lru", "model": "hbm"},
        {"name": "dram", "capacity": 100, "policy": "fifo", "model": "dram"},
        {"name": "nvme", "model": "nvme"}]})


def test_hit_rate_sweep_matches_plain_python(trace):
    sizes = [5, 40, 40, 300, 1]
    records = hit_rate_sweep(trace, ["lru", "fifo"], sizes, workers=2, progress=False)
    assert [(r["policy"], r["size_rows"]) for r in records] == [(p, s) for p in ("lru", "fifo") for s in (1, 5, 40, 300)]
    for r in records:
        assert r["hits"] == python_cache_hits(trace.rows, r["size_rows"], recency=r["policy"] == "lru")
        assert r["hit_rate"] == r["hits"] / trace.n_rows and r["size_bytes"] == r["size_rows"] * 160


def test_step_seconds_scale_with_tokens(trace):
    window, compute = step_seconds(trace, TimingConfig(window_per_token_s=1e-6, compute_per_token_s=5e-6))
    assert np.allclose(window, STEP / 4 * 1e-6) and np.allclose(compute, STEP / 4 * 5e-6)
    assert step_seconds(trace, TimingConfig(window_s=0.5)) == (0.5, None)
    bare = RowTrace(trace.rows, trace.step_starts, N_KEYS, 160, {})
    with pytest.raises(EngramTierError, match="per-token seconds need a trace that records rows_per_token"):
        step_seconds(bare, TimingConfig(window_per_token_s=1e-6))


def test_stall_sweep_is_each_simulation(trace, hierarchy):
    timing = TimingConfig(window_s=2e-5)
    records = stall_sweep(trace, hierarchy, {"gpu": [10, 30], "dram": [50, 200]}, timing, workers=2, progress=False)
    assert [r["sizes"] for r in records] == [{"gpu": g, "dram": d} for g in (10, 30) for d in (50, 200)]
    for r in records:
        alone = simulate_point(trace, with_capacities(hierarchy, r["sizes"]), timing).summary()
        assert r["stall_seconds"] == pytest.approx(alone["stall_seconds"])
        assert [t["hits"] for t in r["tiers"]] == [t["hits"] for t in alone["tiers"]]
        assert [t["capacity_rows"] for t in r["tiers"][:2]] == [r["sizes"]["gpu"], r["sizes"]["dram"]]
    with pytest.raises(EngramTierError, match="no cache tier named 'hbm'"):
        with_capacities(hierarchy, {"hbm": 10})


def test_cxl_sweep_latency_only_changes_time(trace, hierarchy):
    timing = TimingConfig(window_s=0.0, overlap="serial")  # every fetch second stalls
    latencies = [100, 400, 1600]
    records = cxl_sweep(trace, hierarchy, 150, latencies, timing, workers=2, progress=False)
    base, cache, store = records[0], records[1:4], records[4:]
    assert base["cxl_role"] is None and [t["name"] for t in base["tiers"]] == ["gpu", "dram", "nvme"]
    assert [t["name"] for t in cache[0]["tiers"]] == ["gpu", "dram", "cxl", "nvme"]
    assert [t["name"] for t in store[0]["tiers"]] == ["gpu", "dram", "cxl"]
    for group in (cache, store):
        assert [r["cxl_latency_ns"] for r in group] == latencies
        assert len({tuple(t["hits"] for t in r["tiers"]) for r in group}) == 1  # same decisions at any latency
        stalls = [r["stall_seconds"] for r in group]
        assert stalls[0] < stalls[1] < stalls[2]
    # a CXL store serves what NVMe served: same upper tiers, and far cheaper reads than NVMe's 80 us
    assert [t["hits"] for t in store[0]["tiers"]] == [t["hits"] for t in base["tiers"]]
    assert store[0]["stall_seconds"] < base["stall_seconds"]
    with pytest.raises(EngramTierError, match="has a tier named 'cxl' already"):
        with_cxl(with_cxl(hierarchy, "store", 1e-7), "cache", 1e-7, 10)
