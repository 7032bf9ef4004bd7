"""What does a deadline-bounded (lossy) fetch cost in quality, and what does it save in stall?

A tier with ``on_late = "drop"`` lets a step go on when its window ends with rows still missing; those
rows are zero rows (`engramtier.cache.deadline`). This benchmark puts the two sides of that trade on
one curve, for a trained Engram model:

* quality: held-out loss and perplexity when a fraction f of each step's unique rows are zero rows,
  for f in 0, 0.01, 0.05, 0.1, 0.25, 0.5, 1. The dropped rows are drawn **uniformly at random** per
  step (seeded), not by the deadline rule, which drops the rows the slowest tier serves last: which
  rows those are depends on the cache state, and a uniform draw keeps the quality side independent of
  one hierarchy. At f = 1 every row is zero, which must equal the loss with an all-zero table (checked).
* time: the held-out evaluation's steps as a row trace, simulated over a dram cache (LRU, 10% of the
  rows the trace touches) and an nvme store with ``on_late = "drop"`` (published default models). For
  each f the deadline (the compute window) is found by bisection at which the rule drops that fraction
  of the lookups, and the stall saved is the stall of the same run waiting for every row at that
  window. Only the store drops, so fractions beyond its share of the lookups cannot be reached (null).

A step is one evaluation batch (``--batch-size`` sequences of ``--seq-len`` tokens, prefill). Without
``--run`` a small model is trained on the sample text shipped with engramtier first (a few minutes
on two cores) and kept in RUN/model. Writes a run directory (summary.json, results.jsonl,
figures/lossy_fetch.png/.svg) and prints the summary as JSON.

    python benchmarks/bench_lossy_fetch.py [--run TRAINED_RUN] [--steps 300] [--out DIR]
"""

import argparse
import json
import math

import numpy as np
import torch
from sample_model import add_model_options, dram_over_nvme, model_for  # benchmarks/, the script's own folder

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.model.rowsource import ReadyRows
from engramtier.model.train import evaluate, held_out_windows
from engramtier.rundir import RunDir
from engramtier.trace.rowtrace import RowTrace

FRACTIONS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


class DroppingRows:
    """A row source that zeroes a fraction of each step's unique rows, drawn uniformly at random."""

    def __init__(self, rows, fraction: float, seed: int):
        self.rows, self.fraction = rows, fraction
        self.n_rows, self.row_bytes = rows.n_rows, rows.row_bytes
        self.generator = torch.Generator().manual_seed(seed)

    def prefetch(self, row_ids: torch.Tensor) -> ReadyRows:
        rows = self.rows.prefetch(row_ids).wait().clone()
        unique, inverse = torch.unique(row_ids, return_inverse=True)
        late = torch.zeros(unique.numel(), dtype=torch.bool)
        late[torch.randperm(unique.numel(), generator=self.generator)[: round(self.fraction * unique.numel())]] = True
        rows[late[inverse]] = 0
        return ReadyRows(rows)


class ZeroRows:
    """Every row zero: the model with its Engram memory emptied."""

    def __init__(self, rows):
        self.n_rows, self.row_bytes = rows.n_rows, rows.row_bytes

    def prefetch(self, row_ids: torch.Tensor) -> ReadyRows:
        return ReadyRows(torch.zeros((*row_ids.shape, self.row_bytes), dtype=torch.uint8))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the benchmark's run directory (default: runs/bench_lossy_fetch-*)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run = RunDir.create(args.out, "bench_lossy_fetch", vars(args))

    model_dir, loaded, val = model_for(args, run, args.seq_len, batch_size=args.batch_size, eval_tokens=args.eval_tokens)
    model, flat = loaded.model, loaded.rows

    def loss(rows) -> float:
        return evaluate(model, val, args.seq_len, args.eval_tokens, args.batch_size, "cpu", rows=rows)

    zero_loss = loss(ZeroRows(flat))
    quality = [{"fraction": f, "val_loss": loss(DroppingRows(flat, f, args.seed))} for f in FRACTIONS]
    trace = _eval_trace(model, val, args)
    assert quality[-1]["val_loss"] == zero_loss, "f = 1 must be the all-zero table's loss"

    timing = _deadlines(trace, FRACTIONS)
    records = [{**q, "val_perplexity": math.exp(q["val_loss"]), **t} for q, t in zip(quality, timing, strict=True)]
    run.append(records)
    summary = {
        "benchmark": "lossy_fetch",
        "model_run": str(model_dir),
        "train_steps": loaded.summary["steps"],
        "held_out_tokens": int(held_out_windows(val, args.seq_len, args.eval_tokens).numel()),
        "steps": int(trace.n_steps), "lookups_per_step": float(np.mean(np.diff(trace.step_starts))),
        "val_loss_flat_table": quality[0]["val_loss"],
        "val_loss_all_rows_zero": zero_loss,
        "drop_rule": "quality: uniform random per step; time: the deadline rule on the nvme store",
        "hierarchy": _hierarchy(trace, "drop").to_dict(),
        "points": records,
        "machine": json.loads(run.path.joinpath("config.json").read_text())["machine"],
    }
    run.write_summary(summary)
    run.save_figure(_figure(records), "lossy_fetch")
    print(json.dumps(summary, indent=2))


def _eval_trace(model, val: np.ndarray, args) -> RowTrace:
    """The row ids of the held-out evaluation, one step per evaluation batch, as a trace."""
    windows = held_out_windows(val, args.seq_len, args.eval_tokens)
    steps = [model.row_ids(windows[lo : lo + args.batch_size]).reshape(-1).numpy()
             for lo in range(0, windows.shape[0], args.batch_size)]
    step_starts = np.zeros(len(steps) + 1, np.int64)
    np.cumsum([s.size for s in steps], out=step_starts[1:])
    return RowTrace(np.concatenate(steps), step_starts, model.hasher.n_rows, model.config.format.row_bytes, {})


def _hierarchy(trace: RowTrace, on_late: str) -> Hierarchy:
    return dram_over_nvme(int(np.unique(trace.rows).size) // 10, on_late)


def _deadlines(trace: RowTrace, fractions) -> list[dict]:
    """Per fraction: the window at which the store's deadline rule drops that fraction of the lookups
    (the smallest such window, by bisection), and the stall the waiting run has there (what is saved)."""
    lossy = _hierarchy(trace, "drop")

    def at(window: float):
        return simulate(trace, lossy, compute_window_s=window, progress=False)

    waiting = simulate(trace, _hierarchy(trace, "wait"), compute_window_s=0.0, progress=False)
    longest = float(waiting.step_fetch_s.max())  # no row is late once every step's whole fetch fits
    reachable = at(0.0).deadline_summary()["dropped_fraction"]
    out = []
    for f in fractions:
        if f > reachable:
            out.append({"deadline_s": None, "simulated_fraction": None, "stall_saved_s_per_step": None,
                        "stall_saved_fraction": None})
            continue
        lo, hi = 0.0, longest  # dropped(hi) = 0 <= f
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if at(mid).deadline_summary()["dropped_fraction"] <= f else (mid, hi)
        result = at(hi)
        deadline = result.deadline_summary()
        out.append({"deadline_s": hi, "simulated_fraction": deadline["dropped_fraction"],
                    "stall_saved_s_per_step": deadline["stall_saved_seconds"] / trace.n_steps,
                    "stall_saved_fraction": deadline["stall_saved_fraction"],
                    "stall_s_per_step": float(result.stall_s.mean())})
    return out


def _figure(records):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    f = [r["fraction"] for r in records]
    ax.plot(f, [r["val_perplexity"] for r in records], "o-", color="C0", label="held-out perplexity")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("fraction of each step's rows dropped (zero rows)")
    ax.set_ylabel("held-out perplexity", color="C0")
    twin = ax.twinx()
    saved = [(r["fraction"], r["stall_saved_s_per_step"] * 1e6) for r in records if r["stall_saved_s_per_step"] is not None]
    twin.plot(*zip(*saved, strict=True), "s--", color="C1", label="stall saved at the matching deadline")
    twin.set_ylabel("stall saved per step (µs, simulated)", color="C1")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title("Deadline-bounded fetch: quality cost vs stall saved", fontsize=10)
    return fig


if __name__ == "__main__":
    main()
