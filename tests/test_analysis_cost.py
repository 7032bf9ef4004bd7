"""Cost of a hierarchy, the cost/stall frontier and the cheapest within budget, against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from configs import gpu_over_nvme, hierarchy, zipf_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.analysis.cost import (
    DEFAULT_USD_PER_GB,
    budget_line,
    cheapest_within,
    cost_frontier,
    hierarchy_cost_usd,
    least_stall,
    pareto_front,
)
from engramtier.cli import main
from engramtier.errors import EngramTierError

points = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(points)
def test_frontier_is_the_set_no_point_dominates(pts):
    cost, stall = (np.array(x, float) for x in zip(*pts, strict=True))
    front = pareto_front(cost, stall)
    for i in range(len(pts)):
        dominated = any(cost[j] <= cost[i] and stall[j] <= stall[i] and (cost[j] < cost[i] or stall[j] < stall[i])
                        for j in range(len(pts)))
        first_of_equals = all(pts[j] != pts[i] for j in range(i))  # equal points: the first one stands
        assert front[i] == (not dominated and first_of_equals)


@settings(max_examples=300, deadline=None)
@given(points, st.integers(0, 20), st.data())
def test_cheapest_within_budget(pts, budget, data):
    cost, stall = (np.array(x, float) for x in zip(*pts, strict=True))
    latency = data.draw(st.lists(st.one_of(st.none(), st.sampled_from([170.0, 270.0, 500.0])),
                                 min_size=len(pts), max_size=len(pts)))
    best = cheapest_within(cost, stall, budget, np.array([np.nan if x is None else x for x in latency]))
    ok = [i for i in range(len(pts)) if stall[i] <= budget]
    if not ok:
        assert best is None
        return
    # by brute force: the least cost; at that cost the greatest latency (none: the fastest), less stall, first
    assert best == min(ok, key=lambda i: (cost[i], -(latency[i] if latency[i] is not None else -np.inf), stall[i], i))


def test_hierarchy_cost_by_hand():
    tiers = [{"name": "gpu", "model": "hbm", "capacity_rows": 1_000_000},
             {"name": "dram", "model": "dram", "capacity_rows": 10_000_000},
             {"name": "nvme", "model": "nvme", "capacity_rows": 100_000_000}]
    # 0.16 GB of HBM, 1.6 GB of DRAM, 16 GB of NVMe
    expected = 0.16 * 15.0 + 1.6 * 4.0 + 16 * 0.10
    assert hierarchy_cost_usd(tiers, 160, DEFAULT_USD_PER_GB) == pytest.approx(expected)
    # a price keyed by the tier's name wins over its model's
    assert hierarchy_cost_usd(tiers[:1], 160, {**DEFAULT_USD_PER_GB, "gpu": 1.0}) == pytest.approx(0.16)


def test_missing_price_is_one_clear_line():
    with pytest.raises(EngramTierError, match=r"no price for tier 'far' \(model 'remote'\); add usd_per_gb.far"):
        hierarchy_cost_usd([{"name": "far", "model": "remote", "capacity_rows": 10}], 160, DEFAULT_USD_PER_GB)


def test_cost_frontier_marks_and_answers():
    def point(label, gpu_rows, stall):
        return {"label": label, "stall_fraction": stall, "tiers": [
            {"name": "gpu", "model": "hbm", "capacity_rows": gpu_rows},
            {"name": "nvme", "model": "nvme", "capacity_rows": 10_000}]}

    pts = [point("small", 100, 0.30), point("mid", 1000, 0.05), point("waste", 2000, 0.06), point("big", 4000, 0.0)]
    result = cost_frontier(pts, 1000, DEFAULT_USD_PER_GB, budget=0.1)
    assert [p["on_frontier"] for p in result["points"]] == [True, True, False, True]
    assert result["budget_met"] and result["cheapest"]["label"] == "mid" and result["equal_cost_choices"] == 1
    assert budget_line(result) == "cheapest within 10% stall: mid ($0.02, stall fraction 0.0500)"
    assert cost_frontier(pts, 1000, DEFAULT_USD_PER_GB, budget=0.01)["cheapest"]["label"] == "big"
    missed = cost_frontier(pts[:3], 1000, DEFAULT_USD_PER_GB, budget=0.025)
    assert not missed["budget_met"] and missed["cheapest"] is None and missed["equal_cost_choices"] == 0
    assert missed["least_stall"]["label"] == "mid"
    assert budget_line(missed) == "no hierarchy within 2.5% stall; the lowest stall is 0.0500 at $0.02: mid"
    with pytest.raises(EngramTierError, match="no simulated hierarchies"):
        cost_frontier([], 1000, DEFAULT_USD_PER_GB, 0.1)


def test_least_stall_ties_go_to_the_cheaper_then_the_first():
    assert least_stall(np.array([3.0, 2.0, 2.0, 1.0]), np.array([0.1, 0.1, 0.1, 0.2])) == 1


def cxl_point(latency_ns, stall, dram_rows=1000):
    return {"label": f"cxl store @ {latency_ns:g} ns", "stall_fraction": stall, "cxl_latency_ns": latency_ns,
            "tiers": [{"name": "dram", "model": "dram", "capacity_rows": dram_rows},
                      {"name": "cxl", "model": "cxl", "capacity_rows": 10_000}]}


def test_equal_cost_goes_to_the_highest_cxl_latency_within_budget():
    # one CXL hierarchy at four latencies (one cost), and a costlier one that stalls less
    pts = [cxl_point(170, 0.0), cxl_point(270, 0.01), cxl_point(500, 0.04), cxl_point(1000, 0.2),
           cxl_point(170, 0.0, dram_rows=2000)]
    result = cost_frontier(pts, 1000, DEFAULT_USD_PER_GB, budget=0.05)
    assert result["cheapest"]["label"] == "cxl store @ 500 ns" and result["equal_cost_choices"] == 3
    assert budget_line(result) == ("cheapest within 5% stall: cxl store @ 500 ns ($0.05, stall fraction 0.0400); "
                                   "the slowest of 3 choices at that cost")
    # a budget only the fastest meets: it alone, whatever its order among the points
    tight = cost_frontier(pts[::-1], 1000, DEFAULT_USD_PER_GB, budget=0.005)
    assert tight["cheapest"]["cxl_latency_ns"] == 170 and tight["cheapest"]["capacities"]["dram"] == 1000
    # latency breaks only ties of cost: a cheaper hierarchy within budget wins over a slower costlier one
    cheaper = cost_frontier([cxl_point(1000, 0.0, dram_rows=3000), cxl_point(170, 0.0)], 1000, DEFAULT_USD_PER_GB, 0.05)
    assert cheaper["cheapest"]["cxl_latency_ns"] == 170


SWEEP = zipf_trace() + hierarchy(gpu_over_nvme(20)) + """
[timing]
window_per_token_s = 1e-9

[sweep]
tier_sizes = {{ gpu = [20, 40] }}
cxl_latencies_ns = [170, 1000]
cxl_capacity = 100

[cost]
stall_budget = {budget}
usd_per_gb = {{ cxl = 0.0 }}  # free CXL: the CXL stores are the cheapest, one price at every latency
"""


def test_sweep_says_when_no_hierarchy_meets_the_budget(tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(SWEEP.format(budget=0.0))
    assert main(["sweep", str(config), "--out", str(tmp_path / "none"), "--quiet"]) == 0
    cost = json.loads((tmp_path / "none" / "summary.json").read_text())["cost"]
    low = cost["least_stall"]
    assert not cost["budget_met"] and cost["cheapest"] is None and low["stall_fraction"] > 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"no hierarchy within 0% stall; the lowest stall is {low['stall_fraction']:.4f} at ${low['cost_usd']:,.2f}: "
        f"{low['label']}")
    for budget, cxl_ns, ties in ((1.0, 1000, 2), (0.93, 170, 1)):  # at 1000 ns CXL stalls more
        config.write_text(SWEEP.format(budget=budget))
        out = tmp_path / f"within-{budget}"
        assert main(["sweep", str(config), "--out", str(out), "--quiet"]) == 0
        cost = json.loads((out / "summary.json").read_text())["cost"]
        best = cost["cheapest"]
        assert cost["budget_met"] and best["label"] == f"cxl store @ {cxl_ns} ns" and cost["equal_cost_choices"] == ties
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"cheapest within {budget * 100:g}% stall: {best['label']} (${best['cost_usd']:,.2f}, stall fraction "
            f"{best['stall_fraction']:.4f})" + ("; the slowest of 2 choices at that cost" if ties == 2 else ""))
