"""DeepSeek-V4.1-Flash's Engram layer (dsv41) vs the paper demo's, alone over one tiered table of 264-byte rows.

One random LMDB table of dsv41-flash's shape (fp8_e4m3[256] + ue8m0 scales, 48 rows per token over layers
1 and 14; sub-tables of --table-size rows, built into --dir once and reused) is read by two random stand-in
models (`replay --engram-only`'s: a seeded token embedding feeds the two Engram layers, nothing runs between
them, no output head): one of dsv41 layers, one of demo layers, --d-model wide with --hc-mult copies. Both
replay the same steps of the shipped sample text (prefill: --batch windows of --seq-len tokens per step;
decode: --requests sequences, one token per step after a --prompt-len prompt) through the default hierarchy
(gpu LRU 1/64 of the rows, emulated on a CPU -> dram S3-FIFO 1/8 -> nvme), each after untimed warm-up steps
on a scratch table, from a fresh (cold) table each time; --repeats rounds alternate which variant goes first.
Reported per variant and mode, the median over the rounds: tokens/s (tokens / total step time), stall (the
time the step waited for its rows) in total, as a fraction of the step time and per step (p50, p99); and the
bytes each tier read, which must be equal for both variants and every round: the layers differ, the rows
they read do not. The simulator's hit counts must equal the runtime's.

With a stand-in backbone nothing hides the fetch: stall is all of the fetch a step waits for, an upper bound
for a model whose blocks before the first Engram layer run while the rows arrive. Prints one JSON object.

    python benchmarks/bench_engram_only.py [--table-size 50021] [--d-model 1024] [--hc-mult 4] [--threads 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from engramtier.model.run import load_model
from engramtier.serve.replay import engram_only_replay, random_stand_in_run, text_batches
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.open import open_for_model
from engramtier.trace.build import StepPlan
from engramtier.trace.sources import sample_text_dir

VARIANTS = ("dsv41", "demo")


def build_table(directory: Path, table_size: int, seed: int) -> Path:
    from engramtier.model.hashing import NgramHasher
    from engramtier.model.presets import get_preset, preset_hash_config

    path = directory / f"flash-{table_size}.lmdb"
    preset = get_preset("dsv41-flash")
    rows = RandomRows.for_hasher(NgramHasher(preset_hash_config(preset.name, table_size)), preset.row_format,
                                 preset.row_dim, seed, preset=preset.name)
    start = time.perf_counter()
    build_lmdb_table(rows, path, progress=False)  # resumes, or finds it complete
    print(f"table {path}: {rows.n_rows:,} rows ready in {time.perf_counter() - start:.1f} s", flush=True)
    return path


LAST: dict = {}  # the last replay's summary, for what all of them share (the layers, the backbone note)


@torch.no_grad()
def measure(model, table: Path, batches, plan: StepPlan, warmup_steps: int) -> dict:
    """One engram-only replay of ``model`` over a fresh TieredTable on ``table``."""
    opener = lambda record: open_for_model(model, table, record_trace=record)  # noqa: E731
    summary, _ = engram_only_replay(model, opener, batches, plan, warmup_steps)
    LAST.update(summary)
    tiered, stall = summary["tiered"], summary["tiered"]["stall_per_step_s"]
    return {"tokens_per_s": tiered["tokens_per_s"], "stall_seconds": tiered["stall_seconds"],
            "stall_fraction": tiered["stall_fraction"], "stall_p50_s": stall["p50"], "stall_p99_s": stall["p99"],
            "step_p50_s": tiered["step_s"]["p50"], "steps": summary["steps"], "tokens": tiered["tokens"],
            "bytes_read": {t["name"]: t["bytes_read"] for t in summary["tiers"]},
            "hit_rate": {t["name"]: t["hit_rate"] for t in summary["tiers"]},
            "simulator_hits_equal": summary["simulated"]["hits_equal"]}


def median_of(runs: list[dict]) -> dict:
    """The rounds' medians of every timing, and what every round shares (counts, bytes, hit rates)."""
    timed = ("tokens_per_s", "stall_seconds", "stall_fraction", "stall_p50_s", "stall_p99_s", "step_p50_s")
    return {**runs[0], **{k: float(np.median([r[k] for r in runs])) for k in timed},
            "simulator_hits_equal": all(r["simulator_hits_equal"] for r in runs),
            "tokens_per_s_rounds": [r["tokens_per_s"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-size", type=int, default=50_021, help="rows per sub-table (dsv41-flash: 16,000,000)")
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--hc-mult", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens of sample text per mode")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both variants per mode (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the layers (default 1: on a small shared machine a second one waits "
                        "for a core far longer than its share of a decode step's work; the fetch has a thread of its own)")
    parser.add_argument("--dir", default="/tmp/engramtier-bench-engram-only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    table = build_table(directory, args.table_size, args.seed)
    models = {}
    for variant in VARIANTS:
        run = directory / f"{variant}-d{args.d_model}-hc{args.hc_mult}"
        if not (run / "config.json").is_file():
            random_stand_in_run(run, variant=variant, d_model=args.d_model, hc_mult=args.hc_mult, seed=args.seed,
                                table=table)
        models[variant] = load_model(run)
    plans = {"prefill": StepPlan(mode="prefill", batch=args.batch, seq_len=args.seq_len),
             "decode": StepPlan(mode="decode", requests=args.requests, seq_len=args.seq_len, prompt_len=args.prompt_len)}
    results = {}
    for mode, plan in plans.items():
        batches = text_batches(models["dsv41"].tokenizer, sample_text_dir(), plan, args.max_tokens)
        rounds = {variant: [] for variant in VARIANTS}
        for round_ in range(args.repeats):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                rounds[variant].append(measure(models[variant].model, table, batches, plan, args.warmup_steps))
                print(f"{mode} {variant} round {round_}: {rounds[variant][-1]['tokens_per_s']:.0f} tokens/s, "
                      f"stall {rounds[variant][-1]['stall_fraction']:.3f}", flush=True)
        results[mode] = {variant: median_of(runs) for variant, runs in rounds.items()}
        results[mode]["dsv41_over_demo_tokens_per_s"] = \
            results[mode]["dsv41"]["tokens_per_s"] / results[mode]["demo"]["tokens_per_s"]
        results[mode]["same_bytes_read"] = len({json.dumps(r["bytes_read"]) for runs in rounds.values() for r in runs}) == 1
    layers = LAST["layers"]
    print(json.dumps({
        "benchmark": "engram_only", "table": str(table), "table_size": args.table_size,
        "rows": models["dsv41"].model.hasher.n_rows, "row_bytes": layers["row_bytes"],
        "rows_per_token": layers["rows_per_token"], "d_model": args.d_model, "hc_mult": args.hc_mult,
        "hierarchy": "default: gpu (LRU, 1/64 of the rows) -> dram (S3-FIFO, 1/8) -> nvme, inclusive",
        "backbone": LAST["backbone"], "repeats": args.repeats, "results": results,
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "python": platform.python_version()},
    }, indent=2))


if __name__ == "__main__":
    main()
