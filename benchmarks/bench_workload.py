"""Hit rate and stall per step against load: served workloads at rising Poisson arrival rates.

For each rate in ``--rates`` (requests/s) `engramtier trace --arrivals poisson:RATE` cuts a workload
trace from the shipped sample text (``--requests`` requests, prompt and output lengths log-normal, vLLM's
scheduler defaults: 2048 tokens and 256 sequences per step) through the quickstart's table, and
`engramtier simulate --hierarchy` replays it through the quickstart's hierarchy (gpu S3-FIFO 32 MiB >
dram LRU 128 MiB > nvme, engramtier/data/experiment.toml). Both run in-process through the command
line's own entry point, on one step time, `TIMING`: the quickstart's 50 us per token and prefetch
window of 3 us per token, plus a fixed 10 ms per step (a decode step reads the weights whatever its
tokens; illustrative, like the quickstart's figures), so that queues build as the rate rises.

Per rate: the gpu tier's hit rate (over all lookups, and per step: mean and the 10th-90th percentile
band), the stall per step (mean and p99), the stall fraction, tokens/s, and the load itself (requests
running and tokens per step, mean). Prints one JSON object and writes the figure
(figures/workload.png and .svg) into ``--out``.

    python benchmarks/bench_workload.py [--rates 0.5 1 2 4 8 16 32] [--requests 150] [--out runs/workload]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from engramtier.analysis.plots import workload_figure
from engramtier.cli import main as engramtier
from engramtier.provenance import machine_info
from engramtier.rundir import RunDir

DATA = Path(__file__).resolve().parents[1] / "engramtier" / "data"
EXPERIMENT = DATA / "experiment.toml"
TIMING = "[timing]\ncompute_s = 0.01\ncompute_per_token_s = 50e-6\nwindow_per_token_s = 3e-6\n"
SHAPE = ["--layers", "1,15", "--heads", "8", "--max-ngram", "3", "--table-size", "100003", "--row-bytes", "160"]


def write_hierarchy(path: Path) -> Path:
    """The quickstart's ``[hierarchy]`` with `TIMING`: the file both the trace's clock and `simulate` read."""
    quickstart_tiers = EXPERIMENT.read_text().split("[hierarchy]", 1)[1].split("[timing]")[0]
    path.write_text("[hierarchy]" + quickstart_tiers + TIMING)
    return path


def run_rate(rate: float, args, hierarchy: Path, tmp: Path) -> dict:
    """One rate: the workload trace, its simulation, and the per-rate record from the run's files."""
    trace, run = tmp / f"{rate}.trace", tmp / f"run-{rate}"
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert engramtier(["trace", "--arrivals", f"poisson:{rate}", "--max-requests", str(args.requests),
                           "--input-len", args.input_len, "--output-len", args.output_len, "--timing", str(hierarchy),
                           *SHAPE, "-o", str(trace), str(DATA / "sample_text"), "--quiet"]) == 0
        assert engramtier(["simulate", "--hierarchy", str(hierarchy), str(trace), "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())["simulation"]
    steps = [r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines()) if r["experiment"] == "step"]
    unique = np.array([s["unique"] for s in steps], dtype=float)
    hit = np.array([s["served"]["gpu"] for s in steps]) / np.maximum(unique, 1)
    stall_ms = np.array([s["stall_s"] for s in steps]) * 1e3
    tokens = np.array([s["prefill_tokens"] + s["decode_tokens"] for s in steps])
    return {
        "rate": rate, "steps": len(steps), "trace_line": said.getvalue().splitlines()[0],
        "gpu_hit_rate": summary["tiers"][0]["hit_rate"],
        "step_hit_rate_mean": float(hit.mean()), "step_hit_rate_p10": float(np.percentile(hit, 10)),
        "step_hit_rate_p90": float(np.percentile(hit, 90)),
        "stall_ms_mean": float(stall_ms.mean()), "stall_ms_p99": float(np.percentile(stall_ms, 99)),
        "stall_fraction": summary["stall_fraction"], "tokens_per_s": summary["tokens_per_s"],
        "running_mean": float(np.mean([s["running"] for s in steps])), "tokens_per_step_mean": float(tokens.mean()),
        "decode_share": float(sum(s["decode_tokens"] for s in steps) / max(tokens.sum(), 1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", nargs="+", type=float, default=[0.5, 1, 2, 4, 8, 16, 32])
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--input-len", default="lognormal:256:1")
    ap.add_argument("--output-len", default="lognormal:128:1")
    ap.add_argument("--out", default="runs/workload", help="run directory for the figure")
    args = ap.parse_args()

    run = RunDir.create(args.out, "bench_workload", vars(args))  # refused now, not after the runs, if it exists
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        hierarchy = write_hierarchy(Path(tmp) / "hierarchy.toml")
        records = [run_rate(rate, args, hierarchy, Path(tmp)) for rate in args.rates]
    run.save_figure(workload_figure(records), "workload")
    print(json.dumps({"hierarchy": "gpu:s3fifo:32MiB > dram:lru:128MiB > nvme (engramtier/data/experiment.toml)",
                      "records": records, "seconds": time.perf_counter() - start, "figure": str(run.path / "figures"),
                      "machine": machine_info()}, indent=2))


if __name__ == "__main__":
    main()
