"""HBM budget planner on the shipped sample: how many 512-token sequences a 7B GQA backbone should batch
when the KV cache and the Engram gpu tier share 4 GiB of HBM.

The experiment is engramtier/data/experiment.toml (the sample text, 3.2M-row table of 160-B rows, gpu
S3-FIFO > dram LRU 128 MiB > nvme, its [timing] of 50 us compute and 3 us prefetch window per token)
with a [plan]: a Mistral-7B-shaped backbone (32 layers, 8 KV heads, head_dim 128, bf16), so
kv_bytes_per_token = 2 (K, V) x 32 x 8 x 128 x 2 B = 131,072 (a 512-token sequence reserves 64 MiB);
4 GiB of HBM left to KV and Engram after weights and activations (a 24 GB card); a fixed 4 ms per
forward pass (reading ~14 GB of weights at ~3.5 TB/s) added to the per-token compute; batches 1..63.
Then the best split's DRAM and CXL sizes are priced ([sweep] tier_sizes.dram, cxl_latencies_ns, [cost]).
Prints one JSON object (progress on stderr); the run directory is kept at --out.

    python benchmarks/bench_plan.py [--out runs/bench-plan] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from engramtier.analysis.config import load_config
from engramtier.analysis.plan import run_plan
from engramtier.rundir import RunDir
from engramtier.trace.sources import sample_text_dir

KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
PLAN = {"hbm_budget": "4GiB", "kv_bytes_per_token": KV_BYTES_PER_TOKEN, "context_len": 512,
        "batches": [1, 4, 16, 32, 48, 56, 58, 60, 62, 63]}
STEP_COMPUTE_S = 4e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run directory (default: a temporary folder, removed)")
    parser.add_argument("--quick", action="store_true", help="four batches, no pricing")
    args = parser.parse_args()
    plan = {**PLAN, "batches": [1, 32, 56, 62]} if args.quick else PLAN
    experiment = Path(sample_text_dir()).parent / "experiment.toml"
    cfg = load_config(experiment, overrides={"plan": plan, "timing": {"compute_s": STEP_COMPUTE_S}})
    with tempfile.TemporaryDirectory() as scratch:
        run = RunDir.create(args.out or Path(scratch) / "plan", "bench-plan", vars(args), cfg.to_dict())
        start = time.perf_counter()
        summary = run_plan(cfg, run, progress=True, cost=not args.quick)
        seconds = time.perf_counter() - start
        splits = [{k: r.get(k) for k in ("batch", "kv_bytes", "tier_bytes", "tokens_per_s", "stall_fraction")}
                  for r in run.results() if r["experiment"] == "plan"]
    cost = summary.get("cost")
    print(json.dumps({
        "experiment": str(experiment), "plan": plan, "step_compute_s": STEP_COMPUTE_S,
        "best": summary["plan"]["best"], "splits": splits,
        "cheapest_within_budget": None if cost is None else cost["cheapest"],
        "stall_budget": None if cost is None else cost["budget"],
        "seconds": round(seconds, 1), "machine": platform.processor() or platform.machine(),
        "run_dir": args.out,
    }, indent=2))


if __name__ == "__main__":
    main()
