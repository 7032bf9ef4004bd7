"""`engramtier quickstart`: the whole pipeline on the shipped sample text in a few minutes on a laptop.

text -> DeepSeek tokenizer -> row trace -> trace stats -> SHARDS vs exact miss-ratio curve -> policy
sweep -> GPU > DRAM > NVMe simulation -> stall sweep -> with and without CXL -> cost frontier -> report.
Everything comes from ``engramtier/data/experiment.toml``, so the quickstart is also the example of an
experiment file. ``tiny`` cuts the text to a few KB and the sweeps to a few points (for the test).
"""

from __future__ import annotations

import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from engramtier.analysis.config import ExperimentConfig, load_config
from engramtier.analysis.experiment import STAGES, TRACE_FILE, Experiment, build_trace
from engramtier.analysis.report import write_report
from engramtier.analysis.sweep import with_capacities
from engramtier.cache.hierarchy import format_bytes
from engramtier.rundir import RunDir
from engramtier.trace.sources import sample_text_dir

TINY_TEXT_CHARS = 4000


def shipped_config_path() -> Path:
    return Path(str(resources.files("engramtier") / "data" / "experiment.toml"))


def tiny_config(cfg: ExperimentConfig, text_path: Path) -> ExperimentConfig:
    """``cfg`` cut down to a few KB of text (already written to ``text_path``) and a few sweep points."""

    source = sorted(sample_text_dir().glob("tutorial-introduction*"))[0]
    text_path.parent.mkdir(parents=True, exist_ok=True)
    text_path.write_text(source.read_text(encoding="utf-8")[:TINY_TEXT_CHARS], encoding="utf-8")
    rows = lambda size: int(size) // cfg.trace.row_bytes  # noqa: E731
    hierarchy = with_capacities(cfg.hierarchy, {"gpu": rows(256 << 10), "dram": rows(1 << 20)})
    sweep = replace(cfg.sweep, policies=("lru", "s3fifo", "belady", "static"), sizes=("64KiB", "256KiB", "1MiB", "4MiB"),
                    tier_sizes={"gpu": ("64KiB", "256KiB"), "dram": ("1MiB", "4MiB")}, cxl_capacity="4MiB",
                    cxl_latencies_ns=(170, 600), shards_rate=0.1, shards_seeds=3)
    trace = replace(cfg.trace, source="text", paths=(str(text_path),), seq_len=128)
    return replace(cfg, trace=trace, hierarchy=hierarchy, sweep=sweep)


def quickstart(out: str | None = None, tiny: bool = False, progress: bool = True, log=print, force: bool = False) -> RunDir:
    """Run every stage of the shipped experiment into ``out`` (default ``runs/quickstart-TIME``; ``force``:
    replace another run there), write the report and log a short summary; returns the run directory."""
    start = time.perf_counter()
    cfg = load_config(shipped_config_path())
    with RunDir.create(out, "quickstart", {"out": out, "tiny": tiny}, None, force=force,
                       stages=["trace", *STAGES]) as run:
        if tiny:
            cfg = tiny_config(cfg, run.path / "inputs" / "sample_excerpt.txt")
        run.update_config(config=cfg.to_dict())
        log(f"quickstart: building the row trace of {'a few KB of ' if tiny else ''}the sample text -> "
            f"{run.path / TRACE_FILE}")
        trace = build_trace(cfg.trace, run.path / TRACE_FILE, progress)
        run.update_config(fingerprint=trace.meta.get("fingerprint"))
        run.stage_done("trace")
        experiment = Experiment(cfg, trace, run, progress)
        summary = experiment.run_stages(STAGES, log=lambda stage: log(f"quickstart: {stage}"))
        html, _ = write_report(run.path)
    for line in summary_lines(summary, cfg):
        log(line)
    log(f"report        {html}  ({time.perf_counter() - start:.0f} s)")
    return run


def summary_lines(summary: dict, cfg: ExperimentConfig) -> list[str]:
    """The few numbers worth printing: trace size, hit rates at the GPU size, stall, CXL, cost."""
    t = summary["trace"]
    lines = [f"trace         {t['tokens']:,} tokens -> {t['requests']:,} row reads in {t['steps']} steps; "
             f"{t['unique_rows']:,} distinct of {t['table_rows']:,} rows ({format_bytes(t['table_bytes'])}), "
             f"zipf alpha {t['zipf_alpha']:.2f}"]
    hit = summary.get("hit_rate", {})
    if hit:
        sizes = list(next(iter(hit.values())))
        size = sizes[len(sizes) // 2]
        lines.append(f"hit rate      one tier of {size}: " + ", ".join(f"{p} {row[size]:.3f}" for p, row in hit.items()))
    sim = summary.get("simulation")
    if sim:
        tiers = ", ".join(f"{x['name']} {x['served_share']:.1%}" for x in sim["tiers"])
        rate = sim.get("tokens_per_s")
        lines.append(f"hierarchy     rows served by {tiers}; stall fraction {sim['stall_fraction']:.3f}"
                     + (f", {rate:,.0f} tokens/s" if rate else ""))
    for role in ("cache", "store"):
        points = [r for r in summary.get("cxl", []) if r["cxl_role"] == role]
        if points:
            lo, hi = points[0], points[-1]
            lines.append(f"cxl {role:<9} {lo['label'].split(' @ ')[0]}: stall fraction {lo['stall_fraction']:.3f} at "
                         f"{lo['cxl_latency_ns']:g} ns, {hi['stall_fraction']:.3f} at {hi['cxl_latency_ns']:g} ns")
    cost = summary.get("cost")
    if cost:
        best = cost["cheapest"]
        lines.append(f"cost          within {cost['budget']:.0%} stall: " +
                     (f"{best['label']} (${best['cost_usd']:,.2f}, stall {best['stall_fraction']:.3f})"
                      if best else "no simulated hierarchy meets the budget"))
    return lines
