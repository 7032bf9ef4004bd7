"""Decode-time speculative prefetch: how much of the next step's rows do the top-k candidates cover?

At decode the next position's rows hash the token not yet sampled. Speculation fetches the rows of the
model's top-k candidate next tokens during the current step (`engramtier.analysis.speculative`). This
benchmark measures it for k = 0 (none), 1, 2, 4, 8 on held-out sample text through a trained model,
teacher-forced (the true next token is the text's):

* coverage: the fraction of the true step's unique rows in the candidates' union; extra rows and
  bytes: the union's rows the true step does not read;
* resident fraction and stall per decode step: the trace-driven simulator over a dram cache (LRU,
  ``--cache-fraction`` of the rows the true decode touches, default 10%) and an nvme store (published default models), on a trace that
  puts each step's speculative fetch (window ``--lead-us``: the part of the step it overlaps) before
  its demand fetch (window ``--window-us``: the compute before the Engram layer).

The candidates are the final logits' top-k, assumed known ``--lead-us`` before the next step needs its
rows (what a draft model or an early-exit head would provide): coverage is an upper bound for such a
predictor. A decode step is one position of ``--batch-size`` held-out sequences decoded in lockstep.
Without ``--run`` a small model is trained on the shipped sample text first (minutes on two cores).

    python benchmarks/bench_speculative.py [--run TRAINED_RUN] [--out DIR]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from engramtier.analysis.speculative import speculative_prefetch_study
from engramtier.cache.hierarchy import Hierarchy
from engramtier.model.train import _eval_starts, _windows
from engramtier.rundir import RunDir
from sample_model import sample_model  # benchmarks/, the script's own folder

K_VALUES = (0, 1, 2, 4, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run directory written by 'engramtier train' (default: train one)")
    parser.add_argument("--steps", type=int, default=300, help="training steps when no --run is given")
    parser.add_argument("--vocab", type=int, default=2048, help="BPE tokens of the trained model")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences decoded in lockstep")
    parser.add_argument("--seq-len", type=int, default=64, help="positions decoded per sequence")
    parser.add_argument("--window-us", type=float, default=20.0, help="compute before the Engram layer (µs)")
    parser.add_argument("--lead-us", type=float, default=1000.0, help="time the speculative fetch overlaps (µs)")
    parser.add_argument("--cache-fraction", type=float, default=0.1, help="dram rows, as a share of the rows touched")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the benchmark's run directory (default: runs/bench_speculative-*)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run = RunDir.create(args.out, "bench_speculative", vars(args))

    model_dir = Path(args.run) if args.run else run.path / "model"  # kept, so a rerun can pass --run
    loaded, val = sample_model(model_dir, trained_here=not args.run, steps=args.steps, vocab=args.vocab, seq_len=args.seq_len,
                               seed=args.seed)
    model = loaded.model
    starts = _eval_starts(val, args.seq_len, args.batch_size * args.seq_len)
    windows = _windows(val, starts, args.seq_len, "cpu")[0]

    touched = int(torch.unique(model.row_ids(windows)).numel())
    hierarchy = Hierarchy.from_dict({"tier": [
        {"name": "dram", "capacity": max(1, int(touched * args.cache_fraction)), "policy": "lru", "model": "dram"},
        {"name": "nvme", "model": "nvme"}]})
    records = speculative_prefetch_study(model, windows, K_VALUES, hierarchy, window_s=args.window_us * 1e-6,
                                         lead_s=args.lead_us * 1e-6, rows=loaded.rows)
    base = records[0]
    for r in records:
        r["stall_vs_none"] = r["stall_s_per_step"] / base["stall_s_per_step"] if base["stall_s_per_step"] else None
        r["store_bytes_extra_per_step"] = r["store_bytes_per_step"] - base["store_bytes_per_step"]
    run.append(records)
    summary = {
        "benchmark": "speculative_prefetch",
        "model_run": str(model_dir),
        "train_steps": loaded.summary["steps"],
        "sequences": int(windows.shape[0]), "decode_steps": int(windows.shape[1] - 1),
        "rows_per_token": int(model.hasher.rows_per_token), "row_bytes": int(model.config.format.row_bytes),
        "rows_touched": touched,
        "candidates": "top-k of the final next-token logits, teacher-forced on held-out text",
        "residency_and_stall_model": (
            "trace-driven simulator; per decode step a speculative fetch of the candidates' union (window lead_s) "
            "then the demand fetch of the true rows (window window_s); stall = sum of max(0, fetch - window); "
            "resident fraction = demand rows served above the store"),
        "window_s": args.window_us * 1e-6, "lead_s": args.lead_us * 1e-6,
        "hierarchy": hierarchy.to_dict(),
        "points": records,
        "machine": json.loads(run.path.joinpath("config.json").read_text())["machine"],
    }
    run.write_summary(summary)
    run.save_figure(_figure(records), "speculative_prefetch")
    print(json.dumps(summary, indent=2))


def _figure(records):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.arange(len(records))
    labels = [str(r["k"]) if r["k"] else "none" for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    left.plot(k, [r["coverage"] for r in records], "o-", label="coverage (true rows in the candidates' union)")
    left.plot(k, [r["resident_fraction"] for r in records], "s--", label="true rows resident above the store")
    left.set_ylim(0, 1.02)
    left.set_ylabel("fraction of the next step's rows")
    left.legend(fontsize=7, loc="lower right")
    right.plot(k, [r["stall_s_per_step"] * 1e6 for r in records], "o-", color="C2", label="stall per decode step")
    right.set_ylabel("stall per decode step (µs, simulated)", color="C2")
    twin = right.twinx()
    twin.plot(k, [r["store_bytes_extra_per_step"] / 1024 for r in records], "^:", color="C3",
              label="extra bytes read from the store")
    twin.set_ylabel("extra KiB per step from the store", color="C3")
    for ax in (left, right):
        ax.set_xticks(k, labels)
        ax.set_xlabel("speculated candidates k")
    fig.suptitle("Decode-time speculative prefetch of the top-k candidates' rows", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
