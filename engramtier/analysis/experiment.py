"""One experiment, in stages, into one run directory: the shared body of `simulate`, `sweep`, `mrc` and
`quickstart`.

    trace      build the row trace the [trace] table describes (saved as RUN/trace.trace) or load it
    stats      trace statistics and the rank-frequency plot with its Zipf fit
    mrc        exact LRU miss-ratio curve against SHARDS estimates over several hash seeds (RUN/mrc.csv)
    hit_rate   policies x one-tier sizes (RUN/hit_rate.csv)
    simulate   the declared hierarchy, step by step (per-step records and the timeline plot), with the
               cold-start figure of its first steps; given a warm profile, once cold and once warm-started
               from it (`engramtier.cache.warm`), both first-steps figures and the warm_start plot
    stall      every combination of [sweep] tier_sizes, simulated (heatmap)
    cxl        the declared hierarchy without, then with a CXL tier at each latency
    cost       cost of every simulated hierarchy, its frontier and the cheapest within the stall budget (or
               that none is, and the least stall reached)

Each stage appends its records to results.jsonl, saves its figures, and adds its headline numbers to
the summary, which is rewritten after every stage so an interrupted run still reports what it did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from engramtier.analysis import plots
from engramtier.analysis.config import ExperimentConfig, TimingConfig, TraceConfig, size_to_rows
from engramtier.analysis.cost import cost_frontier
from engramtier.analysis.executors import LocalExecutor, RayExecutor, default_workers
from engramtier.analysis.sweep import cxl_sweep, hit_rate_sweep, point_record, simulate_point, stall_sweep, trace_context
from engramtier.analysis.tables import HIT_RATE_CSV, MRC_CSV, curve_row, write_curves_csv
from engramtier.cache.hierarchy import format_bytes
from engramtier.cache.mrc import (
    KeyStream,
    compile_replay,
    lru_mrc,
    mini_mrc,
    mini_sizes,
    sample_context,
    shards_mrc,
    spatial_samples,
    sweep,
)
from engramtier.cache.warm import load_profile
from engramtier.errors import EngramTierError
from engramtier.rundir import RunDir
from engramtier.trace.build import StepPlan, hasher_for, write_trace
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import TextSource, ZipfSource, sample_text_dir
from engramtier.trace.stats import row_counts, trace_stats
from engramtier.trace.tracefile import TraceReader, load_trace

STAGES = ("stats", "mrc", "hit_rate", "simulate", "stall", "cxl", "cost")
TIMED_STAGES = ("simulate", "stall", "cxl")


def timing_assumption(timing: TimingConfig) -> str | None:
    """The one line saying what step time is assumed when [timing] gives no compute, else None."""
    if timing.compute_s is not None or timing.compute_per_token_s is not None:
        return None
    return ("[timing] gives no compute_s or compute_per_token_s, so each step is taken to compute for exactly its "
            "prefetch window and nothing else (stall fraction = stall / (window + stall)); give compute_per_token_s "
            "(or --compute-per-token-s) for the model's real step time")


TRACE_FILE = "trace.trace"


def build_trace(cfg: TraceConfig, out: Path | None, progress: bool = True) -> RowTrace:
    """The trace ``cfg`` describes: loaded from its file, or built into ``out`` (a trace file) and loaded."""

    if cfg.source == "file":
        return load_trace(cfg.file)
    if cfg.source == "zipf":
        source = ZipfSource(cfg.zipf_alpha, cfg.vocab, cfg.tokens, cfg.seed, doc_len=cfg.seq_len)
    else:
        source = TextSource([str(sample_text_dir())] if cfg.source == "sample" else list(cfg.paths),
                            cfg.tokenizer, cfg.field, cfg.engram_pad, cfg.image_token)
    plan = StepPlan(cfg.mode, cfg.batch, cfg.seq_len, cfg.requests, cfg.prompt_len)
    hasher = hasher_for(source, cfg.table_size, cfg.layers, cfg.heads, cfg.max_ngram, cfg.seed)
    write_trace(source, hasher, plan, out, cfg.row_bytes, progress=progress, preset=cfg.preset)
    return load_trace(out)


@dataclass
class Experiment:
    """A config, its trace and the run directory the stages write into."""

    cfg: ExperimentConfig
    trace: RowTrace
    run: RunDir
    progress: bool = True
    warm: str | None = None  # a profile to warm-start every cache tier from, against the cold hierarchy
    first_steps: int = 100  # the cold-start window: the steps `SimResult.first_steps` reports
    executor: LocalExecutor | RayExecutor | None = None  # where sweep points run (None: threads, [sweep] workers)
    summary: dict = field(default_factory=dict)
    _sim_records: list = field(default_factory=list)

    def rows(self, size, where: str) -> int:
        return size_to_rows(size, self.trace.row_bytes, where)

    def run_stages(self, stages, log: Callable[[str], None] = lambda _: None) -> dict:
        for stage in stages:
            if stage not in STAGES:
                raise EngramTierError(f"unknown stage '{stage}'; stages are {', '.join(STAGES)}")
        self.cfg.check_stages(stages, self.trace.n_table_rows, self.trace.row_bytes)  # before the first stage runs
        self.summary.setdefault("trace", trace_summary(self.trace))
        if set(stages) & set(TIMED_STAGES):
            self.summary["timing_assumption"] = timing_assumption(self.cfg.timing)
        for stage in stages:
            log(f"[{stage}]")
            getattr(self, f"stage_{stage}")()
            self.run.write_summary(self.summary)
            self.run.stage_done(stage)
        return self.summary

    # ------------------------------------------------------------------------------------------ stages

    def stage_stats(self) -> None:
        stats = trace_stats(self.trace)
        d = stats.stats_dict()
        per_order = (d.pop("subtables") or {}).get("per_order")
        self.run.append([{"experiment": "trace_stats", **d, "per_order": per_order}])
        alpha = d["zipf_alpha"]
        self.run.save_figure(plots.zipf_figure(stats.counts, alpha), "zipf_rank")
        self.summary["trace"].update(unique_rows=d["unique_rows"], seen_once_fraction=d["seen_once_fraction"],
                                     zipf_alpha=alpha)

    def stage_mrc(self) -> None:
        self.summary["mrc"] = mrc_stage(self.trace, self.run, self.cfg.sweep.shards_rate, self.cfg.sweep.shards_seeds)

    def stage_hit_rate(self) -> None:
        sw = self.cfg.sweep
        if not sw.sizes:
            raise EngramTierError(f"{self.cfg.path}: [sweep] sizes is empty; list the tier sizes to sweep")
        sizes = [self.rows(s, f"{self.cfg.path}: [sweep] sizes[{i}]") for i, s in enumerate(sw.sizes)]
        records = hit_rate_sweep(self.trace, sw.policies, sizes, sw.workers, self.progress, self.executor)
        self.run.append(records)
        write_curves_csv(self.run.path / HIT_RATE_CSV,
                         (curve_row(r["policy"], r["size_rows"], self.trace.row_bytes, r["hit_rate"]) for r in records))
        distinct = self.trace.n_distinct
        self.run.save_figure(plots.hit_rate_figure(records, self.trace.row_bytes, 1 - distinct / self.trace.n_rows),
                             "hit_rate_vs_size")
        table = {}
        for r in records:
            table.setdefault(r["policy"], {})[format_bytes(r["size_bytes"])] = r["hit_rate"]
        self.summary["hit_rate"] = table

    def stage_simulate(self) -> None:
        profile = None if self.warm is None else load_profile(self.warm, self.trace.n_table_rows, "--warm")
        hierarchy = self.cfg.hierarchy if profile is None else self.cfg.hierarchy.with_warm(None)
        result = simulate_point(self.trace, hierarchy, self.cfg.timing, progress=self.progress)
        per_step = result.to_dict()["per_step"]
        names = [t["name"] for t in result.tier_totals]
        columns = getattr(self.trace, "step_columns", {})  # a served workload's per-step load (`trace --arrivals`)
        self.run.append({"experiment": "step", "step": i, **{k: per_step[k][i] for k in
                         ("requests", "unique", "window_s", "compute_s", "fetch_s", "stall_s", "step_s")},
                         "served": {n: per_step["served"][n][i] for n in names},
                         **{name: int(values[i]) for name, values in columns.items()}}
                        for i in range(result.requests.size))
        record = point_record("simulate", " > ".join(names), result)
        self.run.append([record])
        self._sim_records.append(record)
        self.run.save_figure(plots.step_timeline_figure(per_step, names), "step_timeline")
        if "running" in columns:
            self.run.save_figure(plots.load_figure(per_step, columns, names[0]), "load")
        self.summary["simulation"] = {k: v for k, v in record.items() if k not in ("experiment", "label")}
        self.summary["simulation"]["first_steps"] = result.first_steps(self.first_steps)
        if profile is not None:
            self._warm_start(result, profile)

    def _warm_start(self, cold, profile: np.ndarray) -> None:
        """The declared hierarchy warm-started from ``profile`` (read from ``self.warm``), against ``cold``
        (it without warm keys): both cold-start figures, the whole runs' tier-0 share and stall, and whether
        the profile is honest (not the measured trace's own counts, which would make it an upper bound)."""

        warm = simulate_point(self.trace, self.cfg.hierarchy.with_warm(profile), self.cfg.timing,
                              progress=self.progress)
        own = np.array_equal(profile, row_counts(self.trace))
        top = cold.tier_totals[0]["name"]
        whole = {name: {"served_share": r.tier_stats()[0]["served_share"], "stall_seconds": float(r.stall_s.sum())}
                 for name, r in (("cold", cold), ("warm", warm))}
        self.summary["warm_start"] = {
            "profile": str(self.warm),
            "profile_is_the_measured_trace": own,
            "note": ("the profile counts the measured steps themselves: an upper bound, not a deployment"
                     if own else "the profile does not count the measured steps (another trace or a prefix): "
                     "a warm start as a deployment would have it"),
            "first_steps": self.first_steps,
            "cold": cold.first_steps(self.first_steps),
            "warm": warm.first_steps(self.first_steps),
            "whole_run": whole,
            "warm_rows": {t["name"]: t["warm_rows"] for t in warm.tier_totals[:-1]},
        }
        self.run.append([point_record("simulate_warm", f"warm from {self.warm}", warm)])
        self.run.save_figure(plots.warm_start_figure(cold, warm, self.first_steps, top), "warm_start")

    def stage_stall(self) -> None:
        sw = self.cfg.sweep
        if not sw.tier_sizes:
            raise EngramTierError(f"{self.cfg.path}: [sweep] tier_sizes is empty; give sizes per cache tier, "
                                  "e.g. tier_sizes = { gpu = [\"16MiB\", \"64MiB\"] }")
        tier_rows = {name: sorted({self.rows(s, f"{self.cfg.path}: [sweep] tier_sizes.{name}[{i}]")
                                   for i, s in enumerate(sizes)})
                     for name, sizes in sw.tier_sizes.items()}
        records = stall_sweep(self.trace, self.cfg.hierarchy, tier_rows, self.cfg.timing, sw.workers, self.progress,
                              self.executor)
        self.run.append(records)
        self._sim_records += records
        self.run.save_figure(plots.stall_heatmap_figure(records, self.trace.row_bytes), "stall_heatmap")
        lo = min(records, key=lambda r: r["stall_fraction"])
        hi = max(records, key=lambda r: r["stall_fraction"])
        self.summary["stall"] = {"points": len(records),
                                 "least": {"label": lo["label"], "stall_fraction": lo["stall_fraction"]},
                                 "most": {"label": hi["label"], "stall_fraction": hi["stall_fraction"]}}

    def stage_cxl(self) -> None:
        sw = self.cfg.sweep
        if not sw.cxl_latencies_ns:
            raise EngramTierError(f"{self.cfg.path}: [sweep] cxl_latencies_ns is empty; list latencies such as [170, 270, 500]")
        cxl_rows = self.rows(sw.cxl_capacity, f"{self.cfg.path}: [sweep] cxl_capacity")
        records = cxl_sweep(self.trace, self.cfg.hierarchy, cxl_rows, sw.cxl_latencies_ns, self.cfg.timing,
                            sw.cxl_policy, sw.workers, self.progress, self.executor)
        self.run.append(records)
        self._sim_records += records
        self.run.save_figure(plots.cxl_figure(records), "cxl_swap")
        rate = "tokens_per_s" if "tokens_per_s" in records[0] else "requests_per_s"
        self.summary["cxl"] = [{"label": r["label"], "cxl_role": r["cxl_role"], "cxl_latency_ns": r["cxl_latency_ns"],
                                "stall_fraction": r["stall_fraction"], rate: r[rate]} for r in records]

    def stage_cost(self) -> None:
        frontier = cost_frontier(self._sim_records, self.trace.row_bytes, self.cfg.cost.usd_per_gb,
                                 self.cfg.cost.stall_budget)
        self.run.append({"experiment": "cost", **p} for p in frontier["points"])
        self.run.save_figure(plots.cost_figure(frontier, self.trace.row_bytes), "cost_frontier")
        self.summary["cost"] = {"budget": frontier["budget"], "prices_usd_per_gb": frontier["prices_usd_per_gb"],
                                "frontier": sorted((p for p in frontier["points"] if p["on_frontier"]),
                                                   key=lambda p: p["cost_usd"]),
                                **{k: frontier[k] for k in ("budget_met", "cheapest", "equal_cost_choices",
                                                            "least_stall")}}


def mrc_stage(trace: RowTrace | TraceReader, run: RunDir, rate: float, seeds: int, sizes=None, exact: bool = True,
              progress: bool = False) -> dict:
    """Exact LRU curve (unless not ``exact``) and SHARDS at ``rate`` with hash seeds ``0..seeds-1``,
    at ``sizes`` (default 48 sizes spaced evenly in log from one row to every distinct row), each one
    streamed pass over the trace's dense keys; records, figure, headline numbers, and mrc.csv with the
    exact curve as policy ``lru`` and the SHARDS mean over the seeds as ``lru-shards``."""

    stream = KeyStream.of_trace(trace)
    if sizes is None:
        sizes = np.unique(np.geomspace(1, stream.n_distinct, 48).astype(np.int64))
    sizes = np.asarray(sizes, np.int64)
    curve = lru_mrc(stream, sizes, progress=progress) if exact else None
    estimates = [shards_mrc(stream, sizes, rate, seed=s, progress=progress) for s in range(seeds)]
    if curve is not None:
        estimates = [e.with_error(curve) for e in estimates]
    run.append({"experiment": "mrc", "size_rows": int(s),
                "exact_miss_ratio": None if curve is None else float(curve.miss_ratios[i]),
                "shards_miss_ratios": [float(e.miss_ratios[i]) for e in estimates]}
               for i, s in enumerate(sizes))
    shards_mean = np.mean([e.miss_ratios for e in estimates], axis=0)
    curves = [] if curve is None else [("lru", curve.miss_ratios)]
    write_curves_csv(run.path / MRC_CSV, (curve_row(policy, s, trace.row_bytes, 1 - m)
                                          for policy, misses in curves + [("lru-shards", shards_mean)]
                                          for s, m in zip(sizes, misses, strict=True)))
    run.save_figure(plots.mrc_figure(sizes, None if curve is None else curve.miss_ratios,
                                     [e.miss_ratios for e in estimates], rate, trace.row_bytes), "mrc_shards")
    errors = [e.error for e in estimates] if curve is not None else [None]
    return {"sizes": int(sizes.size), "shards_rate": rate, "seeds": seeds, "exact": exact,
            "shards_mean_abs_error": None if curve is None else float(np.mean(errors)),
            "shards_max_abs_error": None if curve is None else float(np.max(errors)),
            "shards_miss_ratio_mean": [float(m) for m in shards_mean]}


def mini_stage(trace: RowTrace | TraceReader, run: RunDir, policy: str, rate: float, seeds: int, sizes=None,
               exact: bool = True, full_sweep: bool = False, workers: int | None = None, progress: bool = False) -> dict:
    """``policy``'s miss-ratio curve by miniature simulation (`engramtier.cache.mrc.mini_mrc`) at ``rate``
    with hash salts ``0..seeds-1``, at ``sizes`` (default 48 sizes spaced evenly in log from ``1 / rate``
    rows, a one-row miniature cache, to every distinct row). The exact curve to compare with: with
    ``full_sweep``, the policy replayed over the whole trace at every size (what the estimate saves);
    else for lru the one-pass curve (unless not ``exact``); else none. Records, figure, the timings and
    errors, and mrc.csv with the exact curve as ``policy`` and the estimates' mean as ``policy-mini``."""


    if sizes is None:
        sizes = np.unique(np.geomspace(max(1, round(1 / rate)), trace.n_distinct, 48).astype(np.int64))
    sizes = np.asarray(sizes, np.int64)
    workers = workers or default_workers()
    start = time.perf_counter()
    samples = spatial_samples(trace, rate, seeds)
    sampling_s = time.perf_counter() - start
    # compiled once outside the timings (a bad name or parameter is refused here), as in a sweep
    compile_replay(policy, int(mini_sizes(sizes, rate).max()), sample_context(samples[0], trace))
    start = time.perf_counter()
    mini = mini_mrc(trace, samples, policy, sizes, workers)
    mini_s = sampling_s + time.perf_counter() - start
    exact_curve, exact_s, exact_label = None, None, None
    if full_sweep:
        start = time.perf_counter()
        ctx = trace_context(trace.read_all() if isinstance(trace, TraceReader) else trace, "mrc --sweep")
        exact_curve = sweep(ctx.keys, policy, sizes, ctx, workers=workers).miss_ratios
        exact_s, exact_label = time.perf_counter() - start, f"exact {policy} (replayed at every size)"
    elif policy == "lru" and exact:
        start = time.perf_counter()
        exact_curve = lru_mrc(KeyStream.of_trace(trace), sizes, progress=progress).miss_ratios
        exact_s, exact_label = time.perf_counter() - start, "exact LRU (Mattson stack distance)"
    run.append({"experiment": "mrc_mini", "policy": policy, "size_rows": int(s), "mini_rows": int(c),
                "exact_miss_ratio": None if exact_curve is None else float(exact_curve[i]),
                "mini_miss_ratios": [None if np.isnan(m) else float(m) for m in mini.miss_ratios[:, i]]}
               for i, (s, c) in enumerate(zip(sizes, mini.scaled, strict=True)))
    estimated = mini.estimated
    curves = ([] if exact_curve is None else [(policy, sizes, exact_curve)]) + [
        (f"{policy}-mini", sizes[estimated], mini.mean[estimated])]
    write_curves_csv(run.path / MRC_CSV, (curve_row(name, s, trace.row_bytes, 1 - m)
                                          for name, at, misses in curves for s, m in zip(at, misses, strict=True)))
    run.save_figure(plots.mrc_figure(sizes, exact_curve, list(mini.miss_ratios), mini.rate, trace.row_bytes, policy,
                                     "miniature simulation", exact_label or ""), "mrc_mini")
    errors = None if exact_curve is None else mini.errors(exact_curve)
    return {"policy": policy, "rate": mini.rate, "seeds": int(seeds), "sizes": int(sizes.size),
            "estimated_sizes": int(estimated.sum()),
            "smallest_estimated_rows": int(sizes[estimated][0]) if estimated.any() else None,
            "sampled_requests_mean": float(mini.sampled.mean()),
            "seed_spread_mean": float(np.mean(mini.spread[estimated])) if estimated.any() else None,
            "mean_abs_error_per_seed": None if errors is None else float(np.mean(errors)),
            "max_abs_error_per_seed": None if errors is None else float(np.max(errors)),
            "mean_curve_abs_error": None if exact_curve is None else float(
                np.mean(np.abs(mini.mean[estimated] - exact_curve[estimated]))),
            "mini_seconds": mini_s, "exact": exact_label, "exact_seconds": exact_s,
            "speedup": None if exact_s is None else exact_s / mini_s}


def trace_summary(trace: RowTrace) -> dict:
    meta = trace.meta
    rows_per_token = meta.get("rows_per_token")
    return {"requests": trace.n_rows, "steps": trace.n_steps,
            "tokens": trace.n_rows // rows_per_token if rows_per_token else None,
            "table_rows": trace.n_table_rows, "row_bytes": trace.row_bytes,
            "table_bytes": trace.n_table_rows * trace.row_bytes, "mode": meta.get("mode"),
            "fingerprint": meta.get("fingerprint"), "preset": meta.get("preset"), "tokenizer": meta.get("tokenizer")}
