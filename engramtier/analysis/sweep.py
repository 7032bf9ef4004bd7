"""Sweeps: many cache sizes and policies (hit rate), many hierarchies (stall), each point one JSON record.

One-tier hit rates come from `engramtier.cache.mrc`: the exact LRU curve in one pass (`lru_mrc`,
identical to replaying LRU at each size), every other policy replayed once per size. Stall needs the
whole hierarchy and the timing model, so each point is one `simulate` run. Every point of a sweep (each
policy at each size, LRU's whole curve, each hierarchy) is one task for an executor
(`engramtier.analysis.executors`): by default threads on every core of this machine, which share the
read-only trace (the compiled drivers release the GIL); or tasks on a Ray cluster.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from engramtier.analysis.config import TimingConfig
from engramtier.analysis.executors import LocalExecutor, RayExecutor
from engramtier.cache.hierarchy import Hierarchy, TierSpec, format_bytes
from engramtier.cache.mrc import compile_replay, lru_mrc
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.cache.simulator import SimResult, simulate
from engramtier.cache.timing import tier_model
from engramtier.errors import EngramTierError
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.rowtrace import RowTrace

Executor = LocalExecutor | RayExecutor


def trace_context(trace: RowTrace, where: str) -> PolicyContext:
    """The context one-tier replays of the whole ``trace`` share: its dense keys (policy state follows
    the rows the trace touches, not the table), steps, row ids and sub-table layout."""
    return PolicyContext(n_keys=trace.n_distinct, keys=trace.dense_keys(), step_starts=trace.step_starts,
                         n_table_rows=trace.n_table_rows, row_ids=trace.row_ids(),
                         layout=SubtableLayout.from_meta(trace.meta, trace.n_table_rows, where))


def hit_rate_point(ctx: PolicyContext, point: tuple[str, int | np.ndarray]) -> np.ndarray:
    """Hits of one point of a hit-rate sweep over the trace ``ctx`` holds: ``(policy, rows)`` replayed,
    or ``("lru", sizes)``, the exact curve at every size in one pass."""
    policy, size = point
    if policy == "lru":
        return lru_mrc(ctx.keys, size).hits
    return np.array([replay(make_policy(policy, int(size), ctx), ctx.keys)])


def hit_rate_sweep(trace: RowTrace, policies: Sequence[str], sizes: Sequence[int], workers: int | None = None,
                   progress: bool = True, executor: Executor | None = None) -> list[dict]:
    """One record per (policy, size): hits of a single cache of ``size`` rows over the whole trace.
    Points: every (policy, size), LRU's whole curve as one; on ``executor`` (default: ``workers`` threads)."""
    sizes = np.asarray(sorted(set(int(s) for s in sizes)), np.int64)
    if sizes.size == 0:
        raise EngramTierError("hit-rate sweep: no sizes; give [sweep] sizes = [\"16MiB\", ...] or rows")
    executor = executor or LocalExecutor(workers)
    policies = list(dict.fromkeys(policies))
    ctx = trace_context(trace, "hit-rate sweep")
    points = [(p, sizes) if p == "lru" else (p, int(s)) for p in policies for s in (sizes[:1] if p == "lru" else sizes)]
    if executor.in_process:  # compile each policy and fill ctx's derived arrays once, before threads share them
        for policy in dict.fromkeys(p for p in policies if p != "lru"):
            compile_replay(policy, int(sizes[0]), ctx)
    hits = executor.map(hit_rate_point, ctx, points, "hit-rate sweep", progress)
    by_policy = {p: np.concatenate([h for (q, _), h in zip(points, hits, strict=True) if q == p]) for p in policies}
    return [{"experiment": "hit_rate", "policy": policy, "size_rows": int(s), "size_bytes": int(s) * trace.row_bytes,
             "hits": int(h), "requests": trace.n_rows, "hit_rate": int(h) / trace.n_rows}
            for policy in policies for s, h in zip(sizes, by_policy[policy], strict=True)]


def step_seconds(trace: RowTrace, timing: TimingConfig):
    """(window, compute) seconds per step of ``trace`` under ``timing`` (per-token figures need the
    trace's ``rows_per_token``)."""
    rows_per_token = trace.meta.get("rows_per_token")
    if (timing.window_per_token_s is not None or timing.compute_per_token_s is not None) and not rows_per_token:
        raise EngramTierError("timing: per-token seconds need a trace that records rows_per_token; "
                              "give window_s (seconds per step) instead")
    tokens = np.diff(trace.step_starts) / rows_per_token if rows_per_token else None
    return timing.per_step(tokens)


def simulate_point(trace: RowTrace, hierarchy: Hierarchy, timing: TimingConfig, progress: bool = False) -> SimResult:
    window, compute = step_seconds(trace, timing)
    return simulate(trace, hierarchy, compute_window_s=window, step_compute_s=compute, overlap=timing.overlap,
                    progress=progress)


def point_record(experiment: str, label: str, result: SimResult, **extra) -> dict:
    """A simulation as one JSON record: the summary (tiers included) without the repeated config."""
    summary = result.summary()
    summary.pop("config")
    return {"experiment": experiment, "label": label, **extra, **summary}


def simulate_one(shared: tuple[RowTrace, TimingConfig], hierarchy: Hierarchy) -> SimResult:
    """One point of a stall or CXL sweep: ``hierarchy`` simulated over the shared (trace, timing)."""
    trace, timing = shared
    return simulate_point(trace, hierarchy, timing)


def simulate_many(trace: RowTrace, points: Sequence[tuple[dict, Hierarchy]], timing: TimingConfig,
                  workers: int | None = None, progress: bool = True, desc: str = "simulate",
                  executor: Executor | None = None) -> list[SimResult]:
    """`simulate` each hierarchy of ``points`` (``(label fields, hierarchy)``) on ``executor`` (default:
    ``workers`` threads), in order."""
    step_seconds(trace, timing)  # refuse a bad timing before any point starts
    return (executor or LocalExecutor(workers)).map(simulate_one, (trace, timing), [h for _, h in points], desc,
                                                    progress)


def with_capacities(hierarchy: Hierarchy, rows: Mapping[str, int]) -> Hierarchy:
    """``hierarchy`` with the cache tiers named in ``rows`` resized."""
    unknown = set(rows) - {t.name for t in hierarchy.caches}
    if unknown:
        raise EngramTierError(f"sweep: no cache tier named {sorted(unknown)[0]!r}; "
                              f"cache tiers are {', '.join(t.name for t in hierarchy.caches)}")
    return Hierarchy(tuple(replace(t, capacity=rows[t.name]) if t.name in rows else t for t in hierarchy.tiers),
                     hierarchy.mode)


def cxl_tier(latency_s: float, rows: int | None = None, policy: str | None = None) -> TierSpec:
    """A tier named ``cxl`` with the default CXL model at ``latency_s``: a cache of ``rows`` under
    ``policy``, or (``rows`` None) a store holding the whole table."""
    return TierSpec("cxl", rows, policy, {}, replace(tier_model("cxl"), latency_s=float(latency_s)))


def with_cxl(hierarchy: Hierarchy, role: str, latency_s: float, rows: int | None = None,
             policy: str | None = None) -> Hierarchy:
    """``hierarchy`` with CXL memory swapped in. ``role="cache"``: a CXL tier of ``rows`` just above the
    backing store, under ``policy`` (default: the last cache tier's); ``role="store"``: CXL replaces the
    backing store and holds the whole table."""
    if any(t.name == "cxl" for t in hierarchy.tiers):
        raise EngramTierError("CXL sweep: the hierarchy has a tier named 'cxl' already; the sweep adds its own, "
                              "so declare the hierarchy without it")
    if role == "store":
        return Hierarchy(hierarchy.caches + (cxl_tier(latency_s),), hierarchy.mode)
    if role != "cache":
        raise EngramTierError(f"CXL sweep: unknown role '{role}'; choose cache or store")
    policy = policy or (hierarchy.caches[-1].policy if hierarchy.caches else "lru")
    return Hierarchy(hierarchy.caches + (cxl_tier(latency_s, int(rows), policy), hierarchy.store), hierarchy.mode)


def _label(rows: Mapping[str, int], row_bytes: int) -> str:
    return " ".join(f"{name}={format_bytes(r * row_bytes)}" for name, r in rows.items())


def stall_sweep(trace: RowTrace, hierarchy: Hierarchy, tier_rows: Mapping[str, Sequence[int]], timing: TimingConfig,
                workers: int | None = None, progress: bool = True, executor: Executor | None = None) -> list[dict]:
    """One record per combination of the cache tier sizes in ``tier_rows`` (every other tier as declared)."""
    names = list(tier_rows)
    combos = [dict(zip(names, c, strict=True)) for c in itertools.product(*(tier_rows[n] for n in names))]
    points = [(c, with_capacities(hierarchy, c)) for c in combos]
    results = simulate_many(trace, points, timing, workers, progress, desc="stall sweep", executor=executor)
    return [point_record("stall", _label(c, trace.row_bytes), r, sizes=c) for c, r in zip(combos, results, strict=True)]


CXL_ROLES = ("cache", "store")


def cxl_sweep(trace: RowTrace, hierarchy: Hierarchy, cxl_rows: int, latencies_ns: Sequence[float],
              timing: TimingConfig, policy: str | None = None, workers: int | None = None,
              progress: bool = True, executor: Executor | None = None) -> list[dict]:
    """The hierarchy as declared (``cxl_role`` None), then at each latency with a CXL cache tier of
    ``cxl_rows`` above the store, and with CXL in place of the store (see `with_cxl`)."""
    points = [({"cxl_role": None, "cxl_latency_ns": None}, hierarchy)]
    points += [({"cxl_role": role, "cxl_latency_ns": float(ns)}, with_cxl(hierarchy, role, ns * 1e-9, cxl_rows, policy))
               for role in CXL_ROLES for ns in latencies_ns]
    results = simulate_many(trace, points, timing, workers, progress, desc="cxl sweep", executor=executor)

    def label(p: dict) -> str:
        if p["cxl_role"] is None:
            return " > ".join(t.name for t in hierarchy.tiers)
        what = f"cxl cache {format_bytes(cxl_rows * trace.row_bytes)}" if p["cxl_role"] == "cache" else "cxl store"
        return f"{what} @ {p['cxl_latency_ns']:g} ns"

    return [point_record("cxl", label(p), r, **p) for (p, _), r in zip(points, results, strict=True)]
