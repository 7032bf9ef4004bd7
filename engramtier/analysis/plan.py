"""HBM budget planner: how to split one GPU's memory between the KV cache and the Engram gpu tier.

A batch of ``b`` sequences reserves ``b x context x kv_bytes_per_token`` of HBM for its KV cache;
the rest of the budget is the Engram tier's. A larger batch computes more tokens per forward pass
(the fixed per-step compute, ``[timing] compute_s``, is shared by more tokens) but leaves fewer rows
on the GPU, so more of them come from DRAM or NVMe and the step stalls longer. Each candidate split
is one run of the existing stall model (`simulate_point`) over the trace re-cut into steps of that
batch by `StepPlan` (prefill: ``batch`` sequences per step; decode: ``requests`` in flight), so the
rows per step grow with the batch exactly as a server's would. The split with the most tokens per
second wins.

With ``[sweep] tier_sizes`` for the other cache tiers (or CXL latencies) and ``[cost]``, the best
split's hierarchy then goes through the experiment's own stall, cxl and cost stages
(`Experiment`): the cheapest DRAM/CXL/NVMe sizes within the stall budget, at that split's HBM use.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from engramtier.analysis import plots
from engramtier.analysis.config import ExperimentConfig, PlanConfig, TraceConfig, size_to_rows
from engramtier.analysis.experiment import Experiment, build_trace, timing_assumption, trace_summary
from engramtier.analysis.sweep import point_record, simulate_point, with_capacities
from engramtier.cache.hierarchy import Hierarchy, format_bytes
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

APPROXIMATION = (
    "each split re-cuts the same token stream into steps of its batch (StepPlan: prefill batch = B sequences "
    "per step, decode requests = B in flight) and simulates the whole trace; KV is reserved for B x context_len "
    "tokens (with a mix, its mean context) at kv_bytes_per_token, for the whole run; the Engram tier gets the "
    "rest of the budget in whole rows (at most the table); step compute = compute_s + compute_per_token_s x tokens"
)


@dataclass(frozen=True)
class Budget:
    """The numbers of a [plan] in bytes: the HBM budget and the KV one sequence reserves."""

    hbm_bytes: int
    kv_bytes_per_token: int
    context_len: float

    @classmethod
    def of(cls, plan: PlanConfig, trace: TraceConfig) -> "Budget":
        context = (sum(c * share for c, share in plan.mix) if plan.mix else
                   plan.context_len if plan.context_len is not None else trace.seq_len)
        return cls(size_to_rows(plan.hbm_budget, 1, "[plan] hbm_budget"),
                   size_to_rows(plan.kv_bytes_per_token, 1, "[plan] kv_bytes_per_token"), float(context))

    def kv_bytes(self, batch: int) -> int:
        return int(round(batch * self.context_len * self.kv_bytes_per_token))

    def batches(self, plan: PlanConfig) -> list[int]:
        """The candidate batches: [plan] batches, or for each kv fraction the largest batch whose KV fits in it."""
        if plan.batches:
            return sorted(set(plan.batches))
        per_sequence = self.context_len * self.kv_bytes_per_token
        return sorted({int(f * self.hbm_bytes // per_sequence) for f in plan.kv_fractions} - {0})


def feasible_batches(budget: Budget, plan: PlanConfig, where: str) -> tuple[list[int], list[int]]:
    """(batches whose KV fits in the budget, those whose KV alone exceeds it); none fitting is refused."""
    batches = budget.batches(plan)
    fit = [b for b in batches if budget.kv_bytes(b) <= budget.hbm_bytes]
    if not fit:
        smallest = batches[0] if batches else 1
        raise EngramTierError(
            f"{where}: the KV cache alone exceeds hbm_budget {format_bytes(budget.hbm_bytes)} for every split: batch "
            f"{smallest} needs {format_bytes(budget.kv_bytes(smallest))} ({smallest} x {budget.context_len:g} tokens x "
            f"{budget.kv_bytes_per_token:,} B); raise hbm_budget or lower batches, kv_fractions or context_len")
    return fit, [b for b in batches if b not in fit]


def split_hierarchy(hierarchy: Hierarchy, tier: str, rows: int) -> Hierarchy:
    """``hierarchy`` with cache tier ``tier`` holding ``rows`` rows, or without it when no row fits."""
    if rows > 0:
        return with_capacities(hierarchy, {tier: rows})
    return Hierarchy(tuple(t for t in hierarchy.tiers if t.name != tier), hierarchy.mode, hierarchy.where)


def batched(trace: TraceConfig, batch: int) -> TraceConfig:
    """[trace] with its steps cut for ``batch`` sequences in flight."""
    return replace(trace, batch=batch) if trace.mode == "prefill" else replace(trace, requests=batch)


def evaluate_split(trace: RowTrace, cfg: ExperimentConfig, budget: Budget, batch: int) -> tuple[dict, Hierarchy]:
    """The record of one split (batch, KV and tier bytes, the simulation's summary) and its hierarchy."""
    kv = budget.kv_bytes(batch)
    tier_rows = min((budget.hbm_bytes - kv) // trace.row_bytes, trace.n_table_rows)
    hierarchy = split_hierarchy(cfg.hierarchy, cfg.plan.tier, tier_rows)
    result = simulate_point(trace, hierarchy, cfg.timing)
    record = point_record("plan", f"batch {batch}", result, feasible=True, batch=batch, kv_bytes=kv,
                          kv_fraction=kv / budget.hbm_bytes, tier=cfg.plan.tier, tier_rows=int(tier_rows),
                          tier_bytes=int(tier_rows) * trace.row_bytes,
                          tokens_per_step=result.requests.sum() / (result.rows_per_token or 1) / result.requests.size)
    return record, hierarchy


TraceFor = Callable[[TraceConfig, Path], RowTrace]


def check_plan(cfg: ExperimentConfig) -> tuple[Budget, list[int], list[int]]:
    """The budget, the batches that fit and those that do not; refuses, before any trace is built, a
    config without [plan], a trace file (no tokens to re-cut) and a budget no batch fits in."""
    where = f"{cfg.path}: [plan]"
    if cfg.plan is None:
        raise EngramTierError(f"{cfg.path}: no [plan] section; give hbm_budget, kv_bytes_per_token and batches "
                              "(or the --hbm-budget, --kv-bytes-per-token and --batches options)")
    if cfg.trace.source == "file":
        raise EngramTierError(f"{where}: the planner re-cuts the token stream into steps per batch, and a trace file "
                              "holds rows, not tokens; give [trace] source = \"sample\", \"text\" or \"zipf\"")
    budget = Budget.of(cfg.plan, cfg.trace)
    return (budget, *feasible_batches(budget, cfg.plan, where))


def plan_splits(cfg: ExperimentConfig, build: TraceFor, progress: bool = True) -> tuple[list[dict], dict]:
    """Every feasible split simulated (records, in batch order; infeasible ones recorded as such) and
    the best: ``{"record", "trace", "hierarchy"}``. ``build(trace_config, path)`` makes a trace."""
    budget, fit, too_big = check_plan(cfg)
    records = [{"experiment": "plan", "label": f"batch {b}", "feasible": False, "batch": b, "kv_bytes": budget.kv_bytes(b),
                "reason": f"KV {format_bytes(budget.kv_bytes(b))} exceeds hbm_budget {format_bytes(budget.hbm_bytes)}"}
               for b in too_big]
    best = None
    with tempfile.TemporaryDirectory(prefix="engramtier-plan-") as scratch:
        for batch in tqdm(fit, desc="plan", unit="split", disable=not progress):
            trace = build(batched(cfg.trace, batch), Path(scratch) / f"batch-{batch}.trace")
            record, hierarchy = evaluate_split(trace, cfg, budget, batch)
            records.append(record)
            if best is None or record["tokens_per_s"] > best["record"]["tokens_per_s"]:
                best = {"record": record, "trace": trace, "hierarchy": hierarchy}
    records.sort(key=lambda r: r["batch"])
    return records, best


def plan_summary(records: list[dict], best: dict, cfg: ExperimentConfig) -> dict:
    """The headline: the best split, how many were tried, and what the model assumes."""
    budget = Budget.of(cfg.plan, cfg.trace)
    r = best["record"]
    keys = ("batch", "kv_bytes", "kv_fraction", "tier_rows", "tier_bytes", "tokens_per_s", "stall_fraction",
            "tokens_per_step")
    return {"best": {k: r[k] for k in keys} | {"tiers": [{k: t[k] for k in ("name", "capacity_rows", "served_share")}
                                                        for t in r["tiers"]]},
            "hbm_budget_bytes": budget.hbm_bytes, "kv_bytes_per_token": budget.kv_bytes_per_token,
            "context_len": budget.context_len, "tier": cfg.plan.tier,
            "splits": sum(x["feasible"] for x in records), "infeasible": [x["batch"] for x in records if not x["feasible"]],
            "approximation": APPROXIMATION}


def cost_stages(cfg: ExperimentConfig, hierarchy: Hierarchy) -> tuple[ExperimentConfig, list[str]]:
    """The experiment config and stages that price the best split's ``hierarchy``: [sweep] tier_sizes
    of its cache tiers but the planned one (its size is the split's), CXL latencies, then cost; no
    stage when [sweep] gives neither."""
    sizes = {name: s for name, s in cfg.sweep.tier_sizes.items()
             if name != cfg.plan.tier and name in {t.name for t in hierarchy.caches}}
    stages = (["stall"] if sizes else []) + (["cxl"] if cfg.sweep.cxl_latencies_ns else [])
    cfg = replace(cfg, hierarchy=hierarchy, sweep=replace(cfg.sweep, tier_sizes=sizes))
    return cfg, (stages + ["cost"] if stages else [])


def result_line(summary: dict) -> str:
    """The planner's answer in one line."""
    b = summary["best"]
    return (f"best split: batch {b['batch']} (KV {format_bytes(b['kv_bytes'])}, {summary['tier']} tier "
            f"{format_bytes(b['tier_bytes'])} of {format_bytes(summary['hbm_budget_bytes'])}): "
            f"{b['tokens_per_s']:,.0f} tokens/s, stall fraction {b['stall_fraction']:.4f} "
            f"({summary['splits']} splits simulated" + (f", {len(summary['infeasible'])} over budget" if summary["infeasible"] else "")
            + ")")


def run_plan(cfg: ExperimentConfig, run, progress: bool = True, cost: bool = True,
             build: TraceFor | None = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """The planner into run directory ``run``: one record per split, the tokens/s-vs-split figure,
    the summary, then (``cost``, when [sweep] gives sizes to price) the best split's cost frontier."""

    records, best = plan_splits(cfg, build or (lambda t, path: build_trace(t, path, progress=False)), progress)
    run.append(records)
    run.update_config(fingerprint=best["trace"].meta.get("fingerprint"))
    summary = {"trace": trace_summary(best["trace"]), "timing_assumption": timing_assumption(cfg.timing),
               "plan": plan_summary(records, best, cfg)}
    run.save_figure(plots.plan_figure(records, summary["plan"]), "plan_tokens_per_s")
    run.write_summary(summary)
    log(result_line(summary["plan"]))
    priced, stages = cost_stages(cfg, best["hierarchy"])
    if cost and stages:
        Experiment(priced, best["trace"], run, progress, summary=summary).run_stages(stages, log=log)
    return summary
