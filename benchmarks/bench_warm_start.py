"""Cold start against warm start on the shipped sample text, with an honest profile.

The quickstart experiment's trace (the shipped sample text through its 3.2M-row table, 512-token
prefill steps) is cut in two: the first ``--profile-fraction`` of its steps is the profiling run (a
training prefix), counted into requests per table row; the rest is the measured trace, which the
profile never saw. The quickstart hierarchy (gpu s3fifo 32 MiB -> dram LRU 128 MiB -> nvme, inclusive)
simulates the measured trace cold and warm-started from the profile. Prints one JSON object: per run,
the first ``--first-steps`` steps' gpu hit rate (its share of their lookups), stall and stall fraction,
and the whole run's. ``--out DIR`` also writes DIR/profile.npy and DIR/measured.trace, so that

    engramtier simulate --hierarchy engramtier/data/experiment.toml DIR/measured.trace --warm DIR/profile.npy

draws the same comparison (figures/warm_start.png). Progress on stderr.

    python benchmarks/bench_warm_start.py [--first-steps 20] [--profile-fraction 0.3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from engramtier.analysis.config import load_config
from engramtier.analysis.experiment import build_trace
from engramtier.analysis.sweep import simulate_point
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.stats import row_counts
from engramtier.trace.tracefile import save_trace

EXPERIMENT = Path(__file__).resolve().parents[1] / "engramtier" / "data" / "experiment.toml"


def steps(trace: RowTrace, lo: int, hi: int) -> RowTrace:
    """Steps ``lo:hi`` of ``trace`` as a trace of their own."""
    starts = trace.step_starts[lo : hi + 1]
    return RowTrace(trace.rows[starts[0] : starts[-1]], starts - starts[0], trace.n_table_rows, trace.row_bytes,
                    trace.meta)


def figures(result, n: int) -> dict:
    first, gpu = result.first_steps(n), result.tier_totals[0]["name"]
    tiers = result.tier_stats()
    return {"first_steps_gpu_hit_rate": first["served_share"][gpu], "first_steps_stall_s": first["stall_seconds"],
            "first_steps_stall_fraction": first["stall_fraction"], "run_gpu_hit_rate": tiers[0]["served_share"],
            "run_stall_s": float(result.stall_s.sum()), "warm_rows": [t["warm_rows"] for t in tiers[:-1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-steps", type=int, default=20, help="the cold-start window in steps (default 20)")
    parser.add_argument("--profile-fraction", type=float, default=0.3,
                        help="share of the steps that profile, and are not measured (default 0.3)")
    parser.add_argument("--out", help="also write DIR/profile.npy and DIR/measured.trace")
    args = parser.parse_args()
    cfg = load_config(EXPERIMENT)
    with tempfile.TemporaryDirectory() as tmp:
        trace = build_trace(cfg.trace, Path(tmp) / "sample.trace", progress=False)
    cut = int(trace.n_steps * args.profile_fraction)
    profile, measured = row_counts(steps(trace, 0, cut)), steps(trace, cut, trace.n_steps)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        np.save(Path(args.out) / "profile.npy", profile)
        save_trace(measured, Path(args.out) / "measured.trace")
    runs = {}
    for name, hierarchy in (("cold", cfg.hierarchy), ("warm", cfg.hierarchy.with_warm(profile))):
        start = time.perf_counter()
        result = simulate_point(measured, hierarchy, cfg.timing)
        runs[name] = {**figures(result, args.first_steps), "simulate_s": time.perf_counter() - start}
    print(json.dumps({
        "trace": {"steps": trace.n_steps, "profile_steps": cut, "measured_steps": measured.n_steps,
                  "measured_requests": measured.n_rows, "table_rows": trace.n_table_rows},
        "hierarchy": " > ".join(f"{t.name}:{t.policy or 'store'}:{t.capacity or 'all'}" for t in cfg.hierarchy.tiers),
        "first_steps": args.first_steps, **runs,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }, indent=2))


if __name__ == "__main__":
    main()
