"""Admission filters on real text: the gpu tier's hit rate and the hierarchy's stall, with and without.

Trace: the experiment file's [trace] (default the shipped sample through the quickstart's table,
engramtier/data/experiment.toml), whose distinct rows are mostly read once. Hierarchy: the file's
(gpu -> dram LRU 128 MiB -> nvme, inclusive), with the gpu tier resized to each of ``--sizes`` under
each of ``--policies``, its admission each of ``--admissions`` ("none": every miss is admitted); the
other tiers admit every row. Each point is one `simulate` run with the file's timing (stall = fetch
beyond the prefetch window). Prints one JSON object (a record per point, the trace's one-read fraction,
the machine) and writes the figure (figures/admission.png and .svg) into ``--out``.

    python benchmarks/bench_admission.py [--sizes 2MiB 8MiB 32MiB] [--mode exclusive] [--out runs/admission]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from engramtier.analysis.config import load_config, size_to_rows
from engramtier.analysis.experiment import build_trace
from engramtier.analysis.plots import admission_figure
from engramtier.analysis.sweep import simulate_many
from engramtier.cache.hierarchy import Hierarchy
from engramtier.provenance import machine_info
from engramtier.rundir import RunDir
from engramtier.trace.stats import trace_stats

EXPERIMENT = Path(__file__).resolve().parents[1] / "engramtier" / "data" / "experiment.toml"


def gpu_variant(hierarchy: Hierarchy, mode: str, rows: int, policy: str, filter_text: str | None) -> Hierarchy:
    """``hierarchy`` in ``mode`` with its first tier holding ``rows`` under ``policy`` and ``filter_text``."""
    gpu = dataclasses.replace(hierarchy.tiers[0], capacity=rows, policy=policy, params={}, admission=filter_text)
    return Hierarchy((gpu, *hierarchy.tiers[1:]), mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(EXPERIMENT))
    ap.add_argument("--sizes", nargs="+", default=["1MiB", "2MiB", "4MiB", "8MiB", "16MiB", "32MiB", "64MiB"])
    ap.add_argument("--policies", nargs="+", default=["lru", "s3fifo"])
    ap.add_argument("--admissions", nargs="+", default=["none", "bloom", "tinylfu", "prob:0.25"])
    ap.add_argument("--mode", choices=("inclusive", "exclusive"), default="inclusive")
    ap.add_argument("--out", default="runs/admission", help="run directory for the figure")
    args = ap.parse_args()

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        trace = build_trace(cfg.trace, Path(tmp) / "t.trace", progress=False)
    stats = trace_stats(trace).stats_dict()
    sizes = [size_to_rows(s, trace.row_bytes, "--sizes", trace.n_table_rows) for s in args.sizes]
    points = [({"policy": p, "admission": a, "gpu_rows": rows},
               gpu_variant(cfg.hierarchy, args.mode, rows, p, None if a == "none" else a))
              for p in args.policies for a in args.admissions for rows in sizes]
    start = time.perf_counter()
    results = simulate_many(trace, points, cfg.timing, desc="admission")
    seconds = time.perf_counter() - start
    records = []
    for (label, _), result in zip(points, results, strict=True):
        summary = result.summary()
        gpu, dram = summary["tiers"][0], summary["tiers"][1]
        records.append({**label, "gpu_bytes": label["gpu_rows"] * trace.row_bytes, "gpu_hit_rate": gpu["hit_rate"],
                        "gpu_declined": gpu["declined"], "gpu_promoted": gpu["promoted"],
                        "dram_served_share": dram["served_share"], "store_served_share": summary["tiers"][-1]["served_share"],
                        "stall_s": summary["stall_seconds"], "stall_fraction": summary["stall_fraction"],
                        "tokens_per_s": summary.get("tokens_per_s")})
    run = RunDir.create(args.out, "bench_admission", vars(args))
    run.save_figure(admission_figure(records, trace.row_bytes), "admission")
    print(json.dumps({
        "trace": {"steps": trace.n_steps, "requests": trace.n_rows, "distinct_rows": stats["unique_rows"],
                  "seen_once_fraction": stats["seen_once_fraction"], "table_rows": trace.n_table_rows},
        "hierarchy": " > ".join(f"{t.name}:{t.policy or 'store'}:{t.capacity or 'all'}" for t in cfg.hierarchy.tiers),
        "mode": args.mode, "records": records, "simulate_s": seconds, "figure": str(run.path / "figures"),
        "machine": machine_info(),
    }, indent=2))


if __name__ == "__main__":
    main()
