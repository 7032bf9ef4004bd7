"""Miniature simulation against full sweeps: each policy's miss-ratio curve estimated from a spatial
sample of the rows, its error and its speed-up, on the shipped sample and on a DeepSeek-V4.1-shaped trace.

Traces: the experiment file's [trace] (the shipped sample text, 2 layers x orders 2-3 x 8 heads, 3.9M
requests), and the same text through ``engramtier trace --preset dsv41-flash --table-size 1000003``
(layers 1 and 14, orders 2-4, 8 heads: 48 rows per token), 512-token steps. Sizes: ``--sizes`` sizes
spaced evenly in log from ``1 / R`` rows (a one-row miniature cache) to every distinct row.

Per trace and policy: the exact curve is `engramtier.cache.mrc.sweep`, the policy replayed over the
whole trace at every size; the estimate is `mini_mrc` over ``--seeds`` spatial samples at rate ``R``
(`spatial_samples`, one pass for all salts), both on every core, the policy compiled beforehand.
Reported: seconds of each and their ratio, for all salts and for one salt alone; the mean absolute
error (over the sizes estimated) of each salt's curve and of the salts' mean; the spread over salts.
``partitioned`` (a plain-Python policy) runs on the sample at ``--python-sizes`` sizes only: its full
sweep takes ~10 s per size. Prints one JSON object; figures into ``--out``.

    python benchmarks/bench_mini_mrc.py [--rate 0.01] [--seeds 5] [--sizes 24] [--out runs/mini_mrc]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engramtier.analysis.config import load_config
from engramtier.analysis.executors import default_workers
from engramtier.analysis.experiment import build_trace
from engramtier.analysis.plots import mini_mrc_grid_figure
from engramtier.analysis.sweep import trace_context
from engramtier.cache.mrc import compile_replay, lru_mrc, mini_mrc, mini_sizes, sample_context, spatial_samples, sweep
from engramtier.cli import main as engramtier
from engramtier.provenance import machine_info
from engramtier.rundir import RunDir
from engramtier.trace.sources import sample_text_dir
from engramtier.trace.tracefile import load_trace

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["lru", "fifo", "clock", "sieve", "lfu", "arc", "twoq", "s3fifo", "wtinylfu", "belady"]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(trace, policy: str, sizes: np.ndarray, rate: float, seeds: int, workers: int) -> tuple[dict, dict]:
    """(record, figure panel) of one policy on one trace."""
    ctx = trace_context(trace, "bench")
    compile_replay(policy, int(sizes[-1]), ctx)
    exact, exact_s = timed(lambda: sweep(ctx.keys, policy, sizes, ctx, workers=workers).miss_ratios)
    samples, sampling_s = timed(lambda: spatial_samples(trace, rate, seeds))
    compile_replay(policy, int(mini_sizes(sizes, rate).max()), sample_context(samples[0], trace))
    mini, mini_s = timed(lambda: mini_mrc(trace, samples, policy, sizes, workers))
    one_samples, one_sampling_s = timed(lambda: spatial_samples(trace, rate, 1))
    one, one_s = timed(lambda: mini_mrc(trace, one_samples, policy, sizes, workers))
    errors, kept = mini.errors(exact), mini.estimated
    record = {
        "policy": policy, "sizes": int(sizes.size), "estimated_sizes": int(kept.sum()),
        "smallest_estimated_rows": int(sizes[kept][0]) if kept.any() else None,
        "exact_s": exact_s, "mini_s": sampling_s + mini_s, "speedup": exact_s / (sampling_s + mini_s),
        "one_salt_s": one_sampling_s + one_s, "one_salt_speedup": exact_s / (one_sampling_s + one_s),
        "mae_per_salt": errors.tolist(), "mae_per_salt_mean": float(errors.mean()),
        "mae_of_salt_mean": float(np.mean(np.abs(mini.mean[kept] - exact[kept]))),
        "spread_mean": float(mini.spread[kept].mean()), "sampled_requests": mini.sampled.tolist(),
    }
    if policy == "lru":
        record["one_pass_lru_s"] = timed(lambda: lru_mrc(ctx.keys, sizes))[1]
    return record, {"policy": policy, "sizes": sizes, "exact": exact, "estimates": mini.miss_ratios}


def dsv41_trace(tmp: Path):
    path = tmp / "dsv41.trace"
    with contextlib.redirect_stdout(sys.stderr):  # the command's summary line: stdout is this script's JSON
        engramtier(["trace", str(sample_text_dir()), "-o", str(path), "--preset", "dsv41-flash", "--table-size",
                    "1000003", "--batch", "1", "--seq-len", "512", "--quiet"])
    return load_trace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sizes", type=int, default=24, help="sizes per curve")
    ap.add_argument("--python-sizes", type=int, default=8, help="sizes for the plain-Python policy")
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    ap.add_argument("--traces", nargs="+", default=["sample", "dsv41"], choices=["sample", "dsv41"])
    ap.add_argument("--out", default="runs/mini_mrc")
    args = ap.parse_args()
    workers = default_workers()
    run = RunDir.create(args.out, "bench_mini_mrc", vars(args))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.traces:
            trace = (build_trace(load_config(ROOT / "engramtier/data/experiment.toml").trace, Path(tmp) / "s.trace",
                                 progress=False) if name == "sample" else dsv41_trace(Path(tmp)))
            def sizes(n: int, trace=trace) -> np.ndarray:
                return np.unique(np.geomspace(round(1 / args.rate), trace.n_distinct, n).astype(np.int64))
            records, panels = [], []
            plans = [(p, sizes(args.sizes)) for p in args.policies]
            plans += [("partitioned", sizes(args.python_sizes))] if name == "sample" else []
            for policy, at in plans:
                record, panel = measure(trace, policy, at, args.rate, args.seeds, workers)
                records.append(record)
                panels.append(panel)
                print(json.dumps({"trace": name, **{k: v for k, v in record.items() if not isinstance(v, list)}}),
                      flush=True, file=sys.stderr)
            run.save_figure(mini_mrc_grid_figure(panels, args.rate, f"{name} trace"), f"mini_mrc_{name}")
            results[name] = {"requests": trace.n_rows, "distinct_rows": trace.n_distinct, "records": records}
    print(json.dumps({"rate": args.rate, "seeds": args.seeds, "workers": workers, "traces": results,
                      "figures": str(run.path / "figures"), "machine": machine_info()}, indent=1))


if __name__ == "__main__":
    main()
