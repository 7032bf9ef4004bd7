"""`engramtier replay` and `engramtier generate`: the Engram model served from a tiered table.

Both take a run directory of `engramtier train`; its table's LMDB copy (the nvme tier) is built into
``RUN/table.lmdb`` on first use unless ``--table`` names one. The hierarchy comes from ``--hierarchy``
(a TOML of ``[[tier]]`` tables, or an experiment file's ``[hierarchy]``) or is the default gpu (LRU,
1/64 of the rows) -> dram (S3-FIFO, 1/8) -> nvme.
"""

from __future__ import annotations

import argparse
import json
import sys

from engramtier.argtypes import nonnegative_int, positive_float, positive_int, seed
from engramtier.errors import EngramTierError

_REPLAY_EXAMPLES = """\
examples:
  # a trained run, its table tiered by the default hierarchy, the shipped sample text as prefill batches
  engramtier replay --run runs/train-1 --mode prefill --batch 4 --seq-len 128 --out runs/replay-1

  # no trained run: a random-initialised model (written to OUT/model) replayed as decode steps
  engramtier replay --mode decode --requests 8 --seq-len 64 --prompt-len 16 --hierarchy tiers.toml

A hierarchy file (the same format simulate --hierarchy reads; [[hierarchy.tier]] tables work too):
  mode = "exclusive"
  [[tier]]
  name = "gpu"
  capacity = "4MiB"
  policy = "lru"
  model = "hbm"
  [[tier]]
  name = "dram"
  capacity = 200000
  policy = "s3fifo"
  model = "dram"
  [[tier]]
  name = "nvme"
  model = "nvme"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay text through the Engram model with a tiered and a flat table; outputs must match bitwise",
        description="Run text (as prefill or decode steps) through an Engram model twice: with its table flat in "
        "memory and served by a TieredTable (gpu -> dram -> nvme). Checks the outputs are bitwise equal and that "
        "the simulator predicts the runtime's hit counts exactly; times both paths after untimed warm-up steps, "
        "alternating them step by step (median step, p10/p90, time to first token, stall per step); writes per-step "
        "JSON lines, a summary and a per-step stall figure (engramtier report RUN renders them).",
        epilog=_REPLAY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", dest="run_dir", help="run directory of `engramtier train` (default: a random-initialised model)")
    p.add_argument("--text", help="text file or directory to replay (default: the shipped sample text)")
    _serving_options(p)
    p.add_argument("--mode", choices=["prefill", "decode"], default="prefill", help="how tokens form steps")
    p.add_argument("--batch", type=positive_int, default=4, help="sequences per prefill step (default 4)")
    p.add_argument("--requests", type=positive_int, default=4, help="sequences decoded together (default 4)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence window (default 128)")
    p.add_argument("--prompt-len", type=nonnegative_int, default=0, help="decode: tokens of the first step (default 0: one)")
    p.add_argument("--max-tokens", type=positive_int, default=8192, help="tokens of text to replay at most (default 8192)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=3,
                   help="untimed steps on each path before the measured ones (default 3; not in any result)")
    p.add_argument("--out", help="run directory for the results (default: runs/replay-<time>)")
    random_init = p.add_argument_group("random-initialised model (without --run)")
    random_init.add_argument("--tokenizer", default="bpe:512", help="base tokenizer; bpe:N learns one from --text")
    random_init.add_argument("--d-model", type=positive_int, default=64)
    random_init.add_argument("--layers", type=positive_int, default=4)
    random_init.add_argument("--heads", type=positive_int, default=4)
    random_init.add_argument("--engram-layers", type=nonnegative_int, nargs="+", default=[1, 3])
    random_init.add_argument("--table-size", type=positive_int, default=20011, help="rows per sub-table")
    random_init.add_argument("--hash-heads", type=positive_int, default=4)
    random_init.add_argument("--row-dim", type=positive_int, default=32)
    random_init.add_argument("--seed", type=seed, default=0)
    p.set_defaults(run=_run_replay)

    g = subparsers.add_parser(
        "generate",
        help="generate text from a trained Engram model whose table is served from tiers",
        description="Batched greedy or top-k generation with the KV cache; the Engram table is served by a "
        "TieredTable (prefetch at forward entry). Prints each prompt's continuation, then a tier report.",
        epilog="""examples:
  echo "The tutorial explains" | engramtier generate --run runs/train-1 --max-new-tokens 40
  engramtier generate --run runs/train-1 --prompts prompts.txt --batch 8 --top-k 20 --hierarchy tiers.toml
  engramtier generate --run runs/train-1 --prompts prompts.txt --json > out.json
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--run", dest="run_dir", required=True, help="run directory of `engramtier train`")
    g.add_argument("--prompts", default="-", help="file with one prompt per line, or - for stdin (default)")
    _serving_options(g)
    g.add_argument("--max-new-tokens", type=positive_int, default=32)
    g.add_argument("--top-k", type=nonnegative_int, default=0, help="0 or 1: greedy (default); k > 1: sample from the top k")
    g.add_argument("--temperature", type=positive_float, default=1.0)
    g.add_argument("--seed", type=seed, default=0)
    g.add_argument("--batch", type=positive_int, default=8, help="prompts generated together (default 8)")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text and a table")
    g.set_defaults(run=_run_generate)


def _serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="the LMDB table (default: RUN/table.lmdb, built from RUN/table on first use)")
    p.add_argument("--hierarchy", help="hierarchy TOML (default: gpu LRU 1/64 -> dram S3-FIFO 1/8 -> nvme)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="compute device (default: cuda if present)")
    p.add_argument("--readers", type=positive_int, default=4, help="NVMe reader threads (default 4)")


def _checked_hierarchy(args: argparse.Namespace):
    """The --hierarchy file's hierarchy (None for the default), and --run's directory checked: both
    before torch is imported, so that a wrong path is refused at once."""
    from pathlib import Path

    from engramtier.cache.hierarchy import load_hierarchy

    if args.run_dir is not None:
        for name in ("config.json", "model.safetensors"):
            if not (Path(args.run_dir) / name).is_file():
                raise EngramTierError(f"--run {args.run_dir}: {name} is missing; give a directory written by "
                                      "'engramtier train'")
    return load_hierarchy(args.hierarchy) if args.hierarchy else None


def _device(args: argparse.Namespace) -> str:
    """The compute device the serving options say: --device, or cuda where there is one."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngramTierError("--device cuda: CUDA is not available here; use --device cpu")
    return device


def _load(args: argparse.Namespace, run_dir):
    """The run at ``run_dir`` loaded on the compute device (`_device`)."""
    from engramtier.model.train import load_model

    loaded = load_model(run_dir, device=_device(args))
    if loaded.model.config.engram is None:
        raise EngramTierError(f"run {run_dir}: the model has no Engram layers, so it has no table to tier")
    return loaded


def _table_opener(args: argparse.Namespace, run_dir, hierarchy, loaded):
    """A function of ``record_trace`` opening a fresh TieredTable for ``loaded``'s model over ``hierarchy``."""
    from engramtier.tiers.open import lmdb_table_for, open_for_model

    table_path = args.table or lmdb_table_for(run_dir)
    device = _device(args)
    return lambda record_trace: open_for_model(loaded.model, table_path, hierarchy, device=device,
                                               readers=args.readers, record_trace=record_trace)


def _run_replay(args: argparse.Namespace) -> None:
    from pathlib import Path

    hierarchy = _checked_hierarchy(args)
    if args.text is not None and not Path(args.text).exists():
        raise EngramTierError(f"--text {args.text}: no such file or directory; give text files (or leave it out "
                              "for the shipped sample)")
    from engramtier.rundir import RunDir
    from engramtier.tiers.replay import random_run, text_batches, warm_replay
    from engramtier.trace.build import StepPlan
    from engramtier.trace.sources import sample_text_dir

    text = args.text or str(sample_text_dir())
    plan = StepPlan(mode=args.mode, batch=args.batch, seq_len=args.seq_len, requests=args.requests,
                    prompt_len=args.prompt_len)
    out = RunDir.create(args.out, "replay", {k: v for k, v in vars(args).items() if not callable(v)})
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = random_run(out.path / "model", text, tokenizer=args.tokenizer, seed=args.seed,
                             d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                             engram_layers=tuple(args.engram_layers), table_size=args.table_size,
                             hash_heads=args.hash_heads, row_dim=args.row_dim)
    loaded = _load(args, run_dir)
    open_table = _table_opener(args, run_dir, hierarchy, loaded)
    batches = text_batches(loaded.tokenizer, text, plan, args.max_tokens)
    summary, records = warm_replay(loaded.model, loaded.rows, open_table, batches, plan, args.warmup_steps)
    summary["run"] = str(run_dir)
    out.update_config(config={"hierarchy": summary["table"]["hierarchy"], "plan": summary["plan"]},
                      fingerprint=summary["table"]["fingerprint"])
    out.append(records)
    out.write_summary(summary)
    from engramtier.analysis.plots import replay_stall_figure

    out.save_figure(replay_stall_figure(records), "replay_stall")
    print(_replay_report(summary, out.path))
    if not summary["bitwise_equal"]:
        raise EngramTierError(
            f"replay: the tiered table's outputs differ from the flat table's from step {summary['first_unequal_step']} "
            f"on; the rows it served are wrong (details in {out.path})"
        )
    if not summary["simulated"]["hits_equal"]:
        raise EngramTierError(f"replay: the simulator's hit counts differ from the runtime's (details in {out.path})")


def _replay_report(summary: dict, path) -> str:
    """The printed report: the checks, each path's step-time distribution, the stall per step, the tiers."""
    flat, tiered = summary["flat"], summary["tiered"]
    stall = tiered["stall_per_step_s"]
    lines = [
        f"replay of {summary['steps']} steps ({summary['plan']['mode']}, after {summary['warmup_steps']} untimed "
        f"warm-up steps per path; flat and tiered alternate): outputs bitwise equal: "
        f"{'yes' if summary['bitwise_equal'] else 'NO'}; simulator hit counts equal: "
        f"{'yes' if summary['simulated']['hits_equal'] else 'NO'}",
        f"{'':12} {'median step':>11} {'p10..p90':>17} {'first step':>10} {'tokens/s':>10} {'(median)':>10}",
        *(_path_line(name, p) for name, p in (("flat table", flat), ("tiered table", tiered))),
        "tokens/s: tokens / total measured step time; (median): tokens / (steps x median step time)",
        f"stall per step: mean {_ms(stall['mean'])}, p50 {_ms(stall['p50'])}, p99 {_ms(stall['p99'])}; "
        f"total {tiered['stall_seconds']:.4f} s ({100 * tiered['stall_fraction']:.2f}% of the tiered steps)",
        _tier_table(summary["tiers"]),
        f"results in {path}",
    ]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _path_line(name: str, p: dict) -> str:
    step = p["step_s"]
    spread = f"{step['p10'] * 1e3:.3f}..{step['p90'] * 1e3:.3f} ms"
    return (f"{name:12} {_ms(step['p50']):>11} {spread:>17} "
            f"{_ms(p['time_to_first_token_s']):>10} {p['tokens_per_s']:10.1f} {p['median_tokens_per_s']:10.1f}")


def _tier_table(tiers: list[dict]) -> str:
    """Per tier: size, counts, and bytes read against served bytes, with the line saying why they differ."""
    from engramtier.analysis.sweep import format_bytes
    from engramtier.tiers.replay import BYTES_READ_NOTE

    rows = [f"{'tier':8} {'policy':8} {'rows':>9} {'size':>10} {'lookups':>9} {'hits':>9} {'hit rate':>8} "
            f"{'bytes read':>11} {'served B':>11} {'promoted':>9} {'evicted':>9}"]
    for t in tiers:
        name = t["name"] + (" (emulated)" if t.get("emulated") else "")
        rows.append(f"{name:8} {str(t['policy'] or '-'):8} {t['capacity_rows']:9d} "
                    f"{format_bytes(t['capacity_bytes']):>10} {t['lookups']:9d} {t['hits']:9d} {t['hit_rate']:8.3f} "
                    f"{t['bytes_read']:11d} {t['served_bytes']:11d} {t['promoted']:9d} {t['evicted']:9d}")
    rows.append(BYTES_READ_NOTE.replace("served bytes", "served B", 1))
    return "\n".join(rows)


def _run_generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from engramtier.trace.sources import decode_text


    if args.prompts == "-":
        text = decode_text(sys.stdin.buffer.read(), "standard input")
    else:
        path = Path(args.prompts)
        if not path.is_file():
            raise EngramTierError(f"--prompts {path}: no such file; give a file with one prompt per line, or -")
        text = decode_text(path.read_bytes(), f"--prompts {path}")
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise EngramTierError("generate: no prompts; give a file with one prompt per line, or pipe them in")
    hierarchy = _checked_hierarchy(args)
    from engramtier.tiers.generate import generate
    from engramtier.tiers.replay import distribution, sized_tiers

    loaded = _load(args, args.run_dir)
    with _table_opener(args, args.run_dir, hierarchy, loaded)(False) as table:
        texts, totals = generate(loaded.model, loaded.tokenizer, table, prompts, max_new_tokens=args.max_new_tokens,
                                 top_k=args.top_k, temperature=args.temperature, seed=args.seed,
                                 batch_size=args.batch, device=table.device)
        table.finish()
        stats = table.stats()
        stall = distribution([r["stall_s"] for r in table.step_records()])
    tiers = sized_tiers(stats["tiers"], stats["row_bytes"])
    if args.json:
        print(json.dumps({"outputs": [{"prompt": p, "continuation": t} for p, t in zip(prompts, texts)],
                          **totals, "stall_per_step_s": stall, "table": {**stats, "tiers": tiers}}))
        return
    for prompt, text in zip(prompts, texts):
        print(f"{prompt}{text}\n")
    print(f"{totals['generated_tokens']} tokens in {totals['seconds']:.2f} s ({totals['tokens_per_s']:.1f} tokens/s); "
          f"time to first token {_ms(totals['time_to_first_token_s'])}; median step {_ms(totals['step_s']['p50'])}")
    print(f"stall per step: mean {_ms(stall['mean'])}, p50 {_ms(stall['p50'])}, p99 {_ms(stall['p99'])}; total "
          f"{stats['stall_seconds']:.4f} s ({100 * stats['stall_fraction']:.2f}% of step time)")
    print(_tier_table(tiers))
