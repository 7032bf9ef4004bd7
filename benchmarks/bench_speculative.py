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

Then the same decode runs for real ("measured"): teacher-forced through the KV cache, its table a
`TieredTable` (the same dram LRU over the run's LMDB table), the model speculating during each step
from the hidden state after ``--after-block`` (an early exit through the final norm and head;
`engramtier.model.speculation`). Coverage, resident fraction and extra rows are counted off the
table's own steps, and the stall is the wall-clock time each step's Engram layer waited for its rows,
the median of ``--repeats`` runs per k, the k values alternating in order; every run's recorded trace is
simulated too and its tier counts must equal the runtime's. Then k = 4 from every block, to show what
an earlier exit costs in coverage.

    python benchmarks/bench_speculative.py [--run TRAINED_RUN] [--out DIR]
"""

import argparse
import json

import numpy as np
import torch
from sample_model import add_model_options, dram_over_nvme, model_for, simulator_agrees  # benchmarks/, the script's own folder

from engramtier.analysis.speculative import measured_speculation, speculative_prefetch_study
from engramtier.model.speculation import Speculation
from engramtier.model.train import held_out_windows
from engramtier.rundir import RunDir
from engramtier.serve.generate import decode_teacher_forced
from engramtier.tiers.open import lmdb_table_for, open_for_model

K_VALUES = (0, 1, 2, 4, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences decoded in lockstep")
    parser.add_argument("--seq-len", type=int, default=64, help="positions decoded per sequence")
    parser.add_argument("--window-us", type=float, default=20.0, help="compute before the Engram layer (µs)")
    parser.add_argument("--lead-us", type=float, default=1000.0, help="time the speculative fetch overlaps (µs)")
    parser.add_argument("--cache-fraction", type=float, default=0.1, help="dram rows, as a share of the rows touched")
    parser.add_argument("--after-block", type=int, default=None,
                        help="measured runs: the block whose output names the candidates (default: second-to-last)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per k (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the benchmark's run directory (default: runs/bench_speculative-*)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run = RunDir.create(args.out, "bench_speculative", vars(args))

    model_dir, loaded, val = model_for(args, run, args.seq_len)
    model = loaded.model
    windows = held_out_windows(val, args.seq_len, args.batch_size * args.seq_len)

    touched = int(torch.unique(model.row_ids(windows)).numel())
    hierarchy = dram_over_nvme(int(touched * args.cache_fraction))
    records = speculative_prefetch_study(model, windows, K_VALUES, hierarchy, window_s=args.window_us * 1e-6,
                                         lead_s=args.lead_us * 1e-6, rows=loaded.rows)
    base = records[0]
    for r in records:
        r["stall_vs_none"] = r["stall_s_per_step"] / base["stall_s_per_step"] if base["stall_s_per_step"] else None
        r["store_bytes_extra_per_step"] = r["store_bytes_per_step"] - base["store_bytes_per_step"]
    after = args.after_block if args.after_block is not None else max(0, model.config.n_layers - 2)
    table_path = lmdb_table_for(model_dir)
    measured = _measured(model, table_path, windows, hierarchy, [(k, after) for k in K_VALUES], args.repeats)
    exits = _measured(model, table_path, windows, hierarchy, [(4, b) for b in range(model.config.n_layers)], 1)
    base_measured = measured[0]
    for r in measured:
        r["stall_vs_none"] = r["stall_s_per_step"] / base_measured["stall_s_per_step"]
        r["store_bytes_extra_per_step"] = r["store_bytes_per_step"] - base_measured["store_bytes_per_step"]
        r["tokens_per_s_vs_none"] = r["tokens_per_s"] / base_measured["tokens_per_s"]
    run.append([{"kind": "simulated", **r} for r in records] + [{"kind": "measured", **r} for r in measured]
               + [{"kind": "measured_exit", **r} for r in exits])
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
        "measured": {
            "after_block": after, "repeats": args.repeats,
            "how": ("teacher-forced decode through a TieredTable over the run's LMDB table (pages in the OS page "
                    "cache, so store reads cost CPU time, not device latency); the model speculates its top-k "
                    "from the hidden state after after_block during each step; stall = wall-clock wait of the "
                    "step's Engram layer, median over repeats of the mean per decode step"),
            "simulator_counts_equal": all(r["simulator_counts_equal"] for r in measured + exits),
            "points": measured, "exits_k4": exits,
        },
        "machine": json.loads(run.path.joinpath("config.json").read_text())["machine"],
    }
    run.write_summary(summary)
    run.save_figure(_figure(records), "speculative_prefetch")
    run.save_figure(_measured_figure(measured, exits, after), "speculative_measured")
    print(json.dumps(summary, indent=2))


def _measured(model, table_path, windows, hierarchy, settings, repeats):
    """Per (k, after block): the measured decode's counts (`measured_speculation`), its stall the median
    of ``repeats`` runs with the settings' order alternating, and whether the simulator agreed."""
    runs = {s: [] for s in settings}
    for r in range(repeats):
        for k, after in settings if r % 2 == 0 else settings[::-1]:
            speculate = Speculation(k, after) if k else None
            with open_for_model(model, table_path, hierarchy, device="cpu", record_trace=True) as table:
                step_s = decode_teacher_forced(model, table, windows, speculate=speculate)
                table.finish()
                records, stats, trace = table.step_records(), table.stats(), table.recorded_trace()
            runs[(k, after)].append({
                **measured_speculation(records, trace), "step_s_p50": float(np.median(step_s[1:])),
                "tokens_per_s": windows.shape[0] * (len(step_s) - 1) / sum(step_s[1:]),
                "store_bytes_per_step": stats["tiers"][-1]["bytes_read"] / (len(step_s) - 1),
                "simulator_counts_equal": simulator_agrees(stats, trace, hierarchy)})
    out = []
    for (k, after), results in runs.items():
        stall = [r["stall_s_per_step"] for r in results]
        middle = results[int(np.argsort(stall)[len(stall) // 2])]
        out.append({"k": k, "after_block": after, **middle, "stall_s_per_step_runs": stall,
                    "simulator_counts_equal": all(r["simulator_counts_equal"] for r in results)})
    return out


def _measured_figure(measured, exits, after):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12.8, 3.8))
    k = np.arange(len(measured))
    labels = [str(r["k"]) if r["k"] else "none" for r in measured]
    left.plot(k, [r["coverage"] for r in measured], "o-", label="coverage")
    left.plot(k, [r["resident_fraction"] for r in measured], "s--", label="rows served above the store")
    left.set_ylim(0, 1.02)
    left.set_ylabel("fraction of the step's rows")
    middle.plot(k, [r["stall_s_per_step"] * 1e6 for r in measured], "o-", color="C2", label="stall per step")
    middle.plot(k, [r["speculative_fetch_s_per_step"] * 1e6 for r in measured], "^:", color="C3",
                label="speculative fetch per step (overlapped)")
    middle.set_ylabel("µs per decode step (measured)")
    for ax in (left, middle):
        ax.set_xticks(k, labels)
        ax.set_xlabel(f"speculated candidates k (after block {after})")
        ax.legend(fontsize=7)
    blocks = [r["after_block"] for r in exits]
    right.plot(blocks, [r["coverage"] for r in exits], "o-", label="coverage, k = 4")
    right.set_xticks(blocks)
    right.set_xlabel("block whose output names the candidates")
    right.set_ylim(0, 1.02)
    right.legend(fontsize=7)
    fig.suptitle("Speculative prefetch through the runtime (TieredTable), teacher-forced decode", fontsize=10)
    fig.tight_layout()
    return fig


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
