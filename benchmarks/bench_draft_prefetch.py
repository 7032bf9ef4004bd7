"""Speculative decoding's verify steps: what hashing only the real draft slots saves, and what fetching
the drafts' rows during drafting hides.

Held-out sample text is decoded teacher-forced in lockstep batches under a prompt-lookup drafter
(`engramtier.analysis.drafts`: the last ``--match`` tokens looked up in the sequence so far, up to
gamma tokens after their latest occurrence proposed, accepted while they match the text), for gamma =
1, 2, 4, 8. Drafts are ragged, so a batched verify pads them; per verify step this benchmark reports
the real and pad slots, the rows of the real slots against the rows of every padded slot (the pad
id hashed as a token, as a row source that cannot tell slots apart would), and four fetch schedules
over a dram cache (LRU, ``--cache-fraction`` of the rows the real verify steps touch) and an nvme store:

* simulated (the trace-driven simulator, published default tier models): the rows fetched when the
  verify starts (window ``--window-us``), or during drafting first (window ``--lead-us``, a draft
  model's time), real slots or padded;
* measured: the same schedules replayed through a `TieredTable` over the run's LMDB table, the
  drafting emulated by sleeping ``--lead-us`` between `speculate` and the verify step's prefetch; stall
  is the wall-clock wait for the verify step's rows (LMDB pages in the OS page cache: store reads cost
  CPU time, not device latency), the median of ``--repeats`` runs; every replay's recorded trace is
  simulated too and its tier counts must equal the runtime's.

Without ``--run`` a small model is trained on the shipped sample text first (minutes on two cores).

    python benchmarks/bench_draft_prefetch.py [--run TRAINED_RUN] [--out DIR]
"""

import argparse
import json
import time

import numpy as np
import torch
from sample_model import add_model_options, dram_over_nvme, model_for, simulator_agrees  # benchmarks/, the script's own folder

from engramtier.analysis.drafts import SCHEDULES, draft_decoding_study, verify_traces
from engramtier.model.train import held_out_windows
from engramtier.rundir import RunDir
from engramtier.tiers.open import lmdb_table_for, open_table

GAMMAS = (1, 2, 4, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences decoded in lockstep")
    parser.add_argument("--seq-len", type=int, default=512, help="positions decoded per sequence")
    parser.add_argument("--match", type=int, default=2, help="tokens the prompt-lookup drafter matches")
    parser.add_argument("--window-us", type=float, default=20.0, help="compute before the Engram layer (µs)")
    parser.add_argument("--lead-us", type=float, default=1000.0, help="drafting time the prefetch overlaps (µs)")
    parser.add_argument("--cache-fraction", type=float, default=0.1, help="dram rows, as a share of the rows touched")
    parser.add_argument("--repeats", type=int, default=3, help="measured replays per schedule (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the benchmark's run directory (default: runs/bench_draft_prefetch-*)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    run = RunDir.create(args.out, "bench_draft_prefetch", vars(args))

    model_dir, loaded, val = model_for(args, run, 64)
    model = loaded.model
    windows = held_out_windows(val, args.seq_len, args.batch_size * args.seq_len)
    traces = {g: verify_traces(model, windows.numpy(), g, args.match) for g in GAMMAS}
    touched = int(np.unique(np.concatenate(traces[GAMMAS[0]]["real"])).size)
    hierarchy = dram_over_nvme(int(touched * args.cache_fraction))
    window_s, lead_s = args.window_us * 1e-6, args.lead_us * 1e-6
    points = draft_decoding_study(model, windows, GAMMAS, hierarchy, window_s=window_s, lead_s=lead_s, match=args.match,
                                  traces=traces)
    table_path = lmdb_table_for(model_dir)
    for point in points:
        point["measured"] = {name: _replay(table_path, hierarchy, traces[point["gamma"]][kind], ahead, lead_s,
                                           args.repeats)
                             for name, kind, ahead in SCHEDULES}
    run.append(points)
    summary = {
        "benchmark": "draft_prefetch",
        "model_run": str(model_dir), "train_steps": loaded.summary["steps"],
        "sequences": int(windows.shape[0]), "positions": int(windows.shape[1]),
        "rows_per_token": int(model.hasher.rows_per_token), "row_bytes": int(model.config.format.row_bytes),
        "drafter": f"prompt lookup: last {args.match} tokens, up to gamma tokens after their latest earlier occurrence",
        "acceptance": "teacher-forced: drafts accepted while they match the held-out text; the verify also yields the text's next token",
        "rows_touched": touched, "window_s": window_s, "lead_s": lead_s, "hierarchy": hierarchy.to_dict(),
        "simulator_counts_equal": all(m["simulator_counts_equal"] for p in points for m in p["measured"].values()),
        "points": points,
        "machine": json.loads(run.path.joinpath("config.json").read_text())["machine"],
    }
    run.write_summary(summary)
    run.save_figure(_figure(points), "draft_prefetch")
    print(json.dumps(summary, indent=2))


def _replay(table_path, hierarchy, steps, ahead, lead_s, repeats) -> dict:
    """The verify steps through a TieredTable (after a `speculate` of the same rows and a sleep of
    ``lead_s``, the drafting, when ``ahead``): median stall per verify step over ``repeats`` replays."""
    stalls, equal = [], True
    for _ in range(repeats):
        with open_table(hierarchy, table_path, device="cpu", record_trace=True) as table:
            for rows in steps:
                ids = torch.from_numpy(rows)
                if ahead:
                    table.speculate(ids)
                    time.sleep(lead_s)
                table.prefetch(ids).wait()
            table.finish()
            records, stats, trace = table.step_records(), table.stats(), table.recorded_trace()
        equal &= simulator_agrees(stats, trace, hierarchy)
        stalls.append(float(np.mean([r["stall_s"] for r in records if not r["speculative"]])))
    return {"stall_s_per_step": float(np.median(stalls)), "stall_s_per_step_runs": stalls,
            "store_bytes_per_step": stats["tiers"][-1]["bytes_read"] / len(steps), "simulator_counts_equal": equal}


def _figure(points):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = np.arange(len(points))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 3.9))
    left.plot(g, [p["schedules"]["at_verify"]["store_bytes_per_step"] / 1024 for p in points], "o-", label="real slots only")
    left.plot(g, [p["schedules"]["padded_at_verify"]["store_bytes_per_step"] / 1024 for p in points], "s--",
              label="every padded slot hashed")
    left.set_ylabel("KiB per verify step from the store (simulated)")
    styles = {"at_verify": ("o-", "C0"), "padded_at_verify": ("s--", "C1"), "drafts_ahead": ("^-", "C2"),
              "padded_ahead": ("v--", "C3")}
    for name, (style, color) in styles.items():
        right.plot(g, [p["measured"][name]["stall_s_per_step"] * 1e6 for p in points], style, color=color,
                   label=f"{name.replace('_', ' ')} (measured)")
        right.plot(g, [p["schedules"][name]["verify_stall_s_per_step"] * 1e6 for p in points], style, color=color,
                   alpha=0.35)
    right.set_ylabel("verify-step stall (µs); faint: simulated")
    for ax in (left, right):
        ax.set_xticks(g, [f"{p['gamma']}\n{p['tokens_per_sequence_step']:.2f} tok" for p in points])
        ax.set_xlabel("draft width gamma (tokens per sequence and step)")
        ax.legend(fontsize=7)
    fig.suptitle("Speculative decoding: rows of real draft slots only, and fetched during drafting", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
