"""Cost of a hierarchy, the cost/stall frontier and the cheapest within budget, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.analysis.cost import (DEFAULT_USD_PER_GB, cheapest_within, cost_frontier, hierarchy_cost_usd,
                                      pareto_front)
from engramtier.errors import EngramTierError

points = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(points)
def test_frontier_is_the_set_no_point_dominates(pts):
    cost, stall = (np.array(x, float) for x in zip(*pts))
    front = pareto_front(cost, stall)
    for i in range(len(pts)):
        dominated = any(cost[j] <= cost[i] and stall[j] <= stall[i] and (cost[j] < cost[i] or stall[j] < stall[i])
                        for j in range(len(pts)))
        first_of_equals = all(pts[j] != pts[i] for j in range(i))  # equal points: the first one stands
        assert front[i] == (not dominated and first_of_equals)


@settings(max_examples=150, deadline=None)
@given(points, st.integers(0, 20))
def test_cheapest_within_budget(pts, budget):
    cost, stall = (np.array(x, float) for x in zip(*pts))
    best = cheapest_within(cost, stall, budget)
    ok = [(cost[i], stall[i]) for i in range(len(pts)) if stall[i] <= budget]
    if not ok:
        assert best is None
    else:
        assert (cost[best], stall[best]) == min(ok)


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
    assert result["cheapest"]["label"] == "mid"
    assert cost_frontier(pts, 1000, DEFAULT_USD_PER_GB, budget=0.01)["cheapest"]["label"] == "big"
    assert cost_frontier(pts[:1], 1000, DEFAULT_USD_PER_GB, budget=0.1)["cheapest"] is None
    with pytest.raises(EngramTierError, match="no simulated hierarchies"):
        cost_frontier([], 1000, DEFAULT_USD_PER_GB, 0.1)
