"""What a hierarchy costs, and the cheapest hierarchies for a stall budget.

A hierarchy's cost is the memory it provisions: each tier's capacity in GB (10**9 bytes) times its
$/GB, the backing store holding the whole table. Among simulated hierarchies, the *frontier* holds
those no other beats on both cost and stall fraction; the answer to "what should I buy" is the
cheapest one whose stall fraction is within the budget, and among equal-cost ones the slowest (the
highest CXL latency: how slow may CXL be at that price?). When none is within the budget, that is
said, with the least stall any of them reached.

Prices are per tier model name (``hbm``, ``dram``, ``cxl``, ``nvme``), overridable per tier name or
model name in the ``[cost]`` table. They are order-of-magnitude street prices, not quotes; the ratio
between tiers decides the frontier far more than their absolute values.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from engramtier.errors import EngramTierError

GB = 10**9

DEFAULT_USD_PER_GB = {
    # HBM3/HBM3E: analyst estimates of 2024 contract prices put HBM near $15/GB, about five times DDR5
    # per bit (TrendForce HBM market reports, 2023-2024). Not sold separately: it comes with the GPU.
    "hbm": 15.0,
    # DDR5 RDIMM server memory: ~$4/GB (64 GB DDR5-4800 RDIMMs listed at ~$250 by server resellers, 2024).
    "dram": 4.0,
    # CXL Type-3 expander: DDR5 behind a CXL controller on an E3.S/AIC module; the controller and board
    # add roughly a quarter to the DRAM price (Micron CZ120 / Samsung CMM-D class modules, 2024 estimates).
    "cxl": 5.0,
    # Datacenter NVMe TLC SSD: ~$0.10/GB (7.68 TB PCIe 4.0/5.0 enterprise TLC drives at ~$700-900, 2024).
    "nvme": 0.10,
}


def tier_price(tier: Mapping, prices: Mapping[str, float]) -> float:
    """$/GB of one tier of a simulation summary (keys ``name`` and ``model``): its name first, then its model."""
    for key in (tier["name"], tier.get("model")):
        if key in prices:
            return float(prices[key])
    raise EngramTierError(
        f"cost: no price for tier '{tier['name']}' (model '{tier.get('model')}'); add "
        f"usd_per_gb.{tier['name']} = DOLLARS to the [cost] table (known: {', '.join(sorted(prices))})"
    )


def hierarchy_cost_usd(tiers: Sequence[Mapping], row_bytes: int, prices: Mapping[str, float]) -> float:
    """Dollars of memory in ``tiers`` (each with ``capacity_rows``), rows of ``row_bytes``."""
    return sum(t["capacity_rows"] * row_bytes / GB * tier_price(t, prices) for t in tiers)


def pareto_front(cost: np.ndarray, stall: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats on both: not costlier and not more stalled, and better in one."""
    cost, stall = np.asarray(cost, float), np.asarray(stall, float)
    order = np.lexsort((stall, cost))  # by cost, ties by stall
    front = np.zeros(cost.size, bool)
    best_stall = np.inf
    for i in order:
        if stall[i] < best_stall:
            front[i] = True
            best_stall = stall[i]
    return front


COST_RTOL = 1e-9  # costs this close are one price: the same capacities, summed in another order


def cheapest_within(cost: np.ndarray, stall: np.ndarray, budget: float, latency: np.ndarray | None = None) -> int | None:
    """Index of the cheapest point with stall fraction <= ``budget``, or None when none is.

    Points of equal cost (within `COST_RTOL`) buy the same memory, so the tie goes to the slowest
    one that still meets the budget: the greatest ``latency`` (for a CXL latency sweep, the CXL
    latency: "how slow may CXL be at this price?"; NaN, no swept latency, counts as the fastest),
    then the least stall, then the first listed."""
    cost, stall = np.asarray(cost, float), np.asarray(stall, float)
    latency = np.full(cost.size, np.nan) if latency is None else np.asarray(latency, float)
    ok = np.flatnonzero(stall <= budget)
    if ok.size == 0:
        return None
    ties = ok[np.isclose(cost[ok], cost[ok].min(), rtol=COST_RTOL, atol=0)]
    slowest = np.where(np.isnan(latency[ties]), -np.inf, latency[ties])
    return int(ties[np.lexsort((ties, stall[ties], -slowest))[0]])


def least_stall(cost: np.ndarray, stall: np.ndarray) -> int:
    """Index of the point with the least stall fraction (ties: the cheaper, then the first listed)."""
    return int(np.lexsort((np.arange(np.size(cost)), cost, stall))[0])


def cost_frontier(points: Sequence[Mapping], row_bytes: int, prices: Mapping[str, float], budget: float) -> dict:
    """Cost, frontier membership and the budget's answer for simulated hierarchies.

    ``points`` are simulation records (``tiers`` with ``capacity_rows``, ``stall_fraction``, ``label``,
    ``cxl_latency_ns`` for a CXL sweep's). Returns ``{"points": [{label, cost_usd, stall_fraction,
    on_frontier, ...}], "budget": budget, "budget_met": bool, "cheapest": the `cheapest_within` point or
    None, "equal_cost_choices": how many points meet the budget at the cheapest's cost (0 when none
    does), "least_stall": the `least_stall` point}``, so a budget no hierarchy meets is said, not implied.
    """
    if not points:
        raise EngramTierError("cost frontier: no simulated hierarchies; give [sweep] tier_sizes to simulate")
    cost = np.array([hierarchy_cost_usd(p["tiers"], row_bytes, prices) for p in points])
    stall = np.array([p["stall_fraction"] for p in points])
    latency = np.array([np.nan if p.get("cxl_latency_ns") is None else p["cxl_latency_ns"] for p in points], float)
    front = pareto_front(cost, stall)
    best = cheapest_within(cost, stall, budget, latency)
    rows = [{"label": p["label"], "cost_usd": float(c), "stall_fraction": float(s), "on_frontier": bool(f),
             "tokens_per_s": p.get("tokens_per_s"), "cxl_latency_ns": p.get("cxl_latency_ns"),
             "capacities": {t["name"]: t["capacity_rows"] for t in p["tiers"]}}
            for p, c, s, f in zip(points, cost, stall, front, strict=True)]
    choices = 0 if best is None else int(np.sum((stall <= budget) & np.isclose(cost, cost[best], rtol=COST_RTOL, atol=0)))
    return {"budget": budget, "prices_usd_per_gb": dict(prices), "points": rows, "budget_met": best is not None,
            "cheapest": None if best is None else rows[best], "equal_cost_choices": choices,
            "least_stall": rows[least_stall(cost, stall)]}


def budget_line(cost: Mapping) -> str:
    """The budget's answer in one line, from a `cost_frontier` result (or the summary's ``cost``)."""
    within = f"{cost['budget'] * 100:g}% stall"
    best = cost["cheapest"]
    if best is None:
        low = cost["least_stall"]
        return (f"no hierarchy within {within}; the lowest stall is {low['stall_fraction']:.4f} "
                f"at ${low['cost_usd']:,.2f}: {low['label']}")
    ties = cost["equal_cost_choices"]
    return (f"cheapest within {within}: {best['label']} (${best['cost_usd']:,.2f}, stall fraction "
            f"{best['stall_fraction']:.4f})" + (f"; the slowest of {ties} choices at that cost" if ties > 1 else ""))
