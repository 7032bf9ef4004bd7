"""`engramtier generate | replay`: serving a model with its Engram table in a hierarchy of tiers.

`generate` prints a trained (or imported) model's continuations of prompts; `replay` serves text through
the model twice, its table flat and tiered, checks the outputs are bitwise equal and the hits are the
simulator's, and writes a run directory (per-step results, a summary, a figure, a report). Both take
the same serving options (`serving_options`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from engramtier.analysis.plots import replay_stall_figure
from engramtier.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int, row_dim, seed
from engramtier.cache.hierarchy import format_bytes, load_hierarchy
from engramtier.documents import decode_text
from engramtier.errors import EngramTierError
from engramtier.model.run import load_model
from engramtier.model.speculation import Speculation
from engramtier.model.trainconfig import VARIANTS
from engramtier.rundir import RunDir, add_out_options
from engramtier.serve.generate import generate
from engramtier.serve.replay import engram_only_replay, random_run, random_stand_in_run, text_batches, warm_replay
from engramtier.tiers.open import lmdb_table_for, open_for_model
from engramtier.tiers.records import BYTES_READ_NOTE, distribution, served_above_store, sized_tiers
from engramtier.trace.build import StepPlan
from engramtier.trace.sources import sample_text_dir

_REPLAY_EXAMPLES = """\
examples:
  # a trained run, its table tiered by the default hierarchy, the shipped sample text as prefill batches
  engramtier replay --run runs/train-1 --mode prefill --batch 4 --seq-len 128 --out runs/replay-1

  # no trained run: a random-initialised model (written to OUT/model) replayed as decode steps
  engramtier replay --mode decode --requests 8 --seq-len 64 --prompt-len 16 --hierarchy tiers.toml

  # DeepSeek-V4.1-Flash's two Engram layers alone (a stand-in backbone): an imported checkpoint, or random
  # layers over a random table of its shape with small sub-tables, or over a table built before
  engramtier replay --engram-only --run runs/flash
  engramtier replay --engram-only --table-size 20011 --d-model 1024 --hc-mult 4
  engramtier replay --engram-only --table tables/flash-small --variant demo

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
    g = subparsers.add_parser(
        "generate",
        help="generate text from a trained Engram model whose table is served from tiers",
        description="Batched greedy or top-k generation with the KV cache; the Engram table is served by a "
        "TieredTable (prefetch at forward entry). Prints each prompt's continuation, then a tier report.",
        epilog="""examples:
  echo "The tutorial explains" | engramtier generate --run runs/train-1 --max-new-tokens 40
  engramtier generate --run runs/train-1 --prompts prompts.txt --batch 8 --top-k 20 --hierarchy tiers.toml
  engramtier generate --run runs/train-1 --prompts prompts.txt --json > out.json
  engramtier generate --run runs/train-1 --prompts prompts.txt --speculate 4 --speculate-after 2
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--run", dest="run_dir", required=True, help="run directory of `engramtier train` or `build-table --from-checkpoint`")
    g.add_argument("--prompts", default="-", help="file with one prompt per line, or - for stdin (default)")
    serving_options(g)
    g.add_argument("--max-new-tokens", type=positive_int, default=32)
    g.add_argument("--top-k", type=nonnegative_int, default=0, help="0 or 1: greedy (default); k > 1: sample from the top k")
    g.add_argument("--temperature", type=positive_float, default=1.0)
    g.add_argument("--seed", type=seed, default=0)
    g.add_argument("--batch", type=positive_int, default=8, help="prompts generated together (default 8)")
    g.add_argument("--speculate", type=nonnegative_int, default=0, metavar="K",
                   help="each step also prefetches the rows of its K likeliest next tokens (default 0: off)")
    g.add_argument("--speculate-after", type=nonnegative_int, metavar="BLOCK",
                   help="the block whose output names the candidates, 0-based (default: the second-to-last block)")
    g.add_argument("--window-s", type=nonnegative_float, metavar="S",
                   help="each step's prefetch window in seconds, for a tier with on_late = 'drop' (its late rows are "
                   "zero rows); required with such a tier")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text and a table")
    g.set_defaults(run=_run_generate)
    _register_replay(subparsers)


def serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="the LMDB table (default: RUN/table.lmdb, built from RUN/table on first use)")
    p.add_argument("--hierarchy", help="hierarchy TOML (default: gpu LRU 1/64 -> dram S3-FIFO 1/8 -> nvme)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="compute device (default: cuda if present)")
    p.add_argument("--readers", type=positive_int, default=4, help="NVMe reader threads (default 4)")


def checked_hierarchy(args: argparse.Namespace):
    """The --hierarchy file's hierarchy (None for the default), and --run's directory checked: both
    before torch is imported, so that a wrong path is refused at once."""

    if args.run_dir is not None:
        for name in ("config.json", "model.safetensors"):
            if not (Path(args.run_dir) / name).is_file():
                raise EngramTierError(f"--run {args.run_dir}: {name} is missing; give a directory written by "
                                      "'engramtier train'")
    return load_hierarchy(args.hierarchy) if args.hierarchy else None


def compute_device(args: argparse.Namespace) -> str:
    """The compute device the serving options say: --device, or cuda where there is one."""

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngramTierError("--device cuda: CUDA is not available here; use --device cpu")
    return device


def load_served_run(args: argparse.Namespace, run_dir):
    """The run at ``run_dir`` loaded on the compute device (`compute_device`)."""

    loaded = load_model(run_dir, device=compute_device(args))
    if loaded.model.config.engram is None:
        raise EngramTierError(f"run {run_dir}: the model has no Engram layers, so it has no table to tier")
    return loaded


def table_opener(args: argparse.Namespace, run_dir, hierarchy, loaded, compute_window_s: float | None = None):
    """A function of ``record_trace`` opening a fresh TieredTable for ``loaded``'s model over ``hierarchy``."""

    table_path = args.table or lmdb_table_for(run_dir)
    device = compute_device(args)
    return lambda record_trace: open_for_model(loaded.model, table_path, hierarchy, device=device,
                                               readers=args.readers, record_trace=record_trace,
                                               compute_window_s=compute_window_s)


def format_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def tier_table(tiers: list[dict]) -> str:
    """Per tier: size, counts, and bytes read against served bytes, with the line saying why they differ."""
    names = [t["name"] + (" (emulated)" if t.get("emulated") else "") for t in tiers]
    width = max(8, *map(len, names))
    rows = [f"{'tier':{width}} {'policy':8} {'rows':>9} {'size':>10} {'lookups':>9} {'hits':>9} {'hit rate':>8} "
            f"{'bytes read':>11} {'served B':>11} {'promoted':>9} {'evicted':>9}"]
    for name, t in zip(names, tiers, strict=True):
        rows.append(f"{name:{width}} {str(t['policy'] or '-'):8} {t['capacity_rows']:9d} "
                    f"{format_bytes(t['capacity_bytes']):>10} {t['lookups']:9d} {t['hits']:9d} {t['hit_rate']:8.3f} "
                    f"{t['bytes_read']:11d} {t['served_bytes']:11d} {t['promoted']:9d} {t['evicted']:9d}")
    rows.append(BYTES_READ_NOTE.replace("served bytes", "served B", 1))
    return "\n".join(rows)


def _run_generate(args: argparse.Namespace) -> None:
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
    hierarchy = checked_hierarchy(args)
    lossy = hierarchy is not None and hierarchy.lossy
    if lossy and args.window_s is None:
        raise EngramTierError(f"--hierarchy: tier '{hierarchy.lossy_tier}' drops late rows (on_late = 'drop'); give --window-s, the "
                              "step's prefetch window in seconds that those rows miss")
    if args.window_s is not None and not lossy:
        raise EngramTierError("--window-s applies to a tier with on_late = 'drop', and no tier of the hierarchy drops "
                              "late rows; leave it out, or set on_late = 'drop' on a tier")
    loaded = load_served_run(args, args.run_dir)
    speculate = _speculation(args, loaded.model.config)
    with table_opener(args, args.run_dir, hierarchy, loaded, args.window_s)(False) as table:
        texts, totals = generate(loaded.model, loaded.tokenizer, table, prompts, max_new_tokens=args.max_new_tokens,
                                 top_k=args.top_k, temperature=args.temperature, seed=args.seed,
                                 batch_size=args.batch, device=table.device, speculate=speculate)
        table.finish()
        stats = table.stats()
        demand = [r for r in table.step_records() if not r["speculative"]]
        stall = distribution([r["stall_s"] for r in demand])
    tiers = sized_tiers(stats["tiers"], stats["row_bytes"])
    if args.json:
        print(json.dumps({"outputs": [{"prompt": p, "continuation": t} for p, t in zip(prompts, texts, strict=True)],
                          **totals, "stall_per_step_s": stall, "table": {**stats, "tiers": tiers}}))
        return
    for prompt, text in zip(prompts, texts, strict=True):
        print(f"{prompt}{text}\n")
    print(f"{totals['generated_tokens']} tokens in {totals['seconds']:.2f} s ({totals['tokens_per_s']:.1f} tokens/s); "
          f"time to first token {format_ms(totals['time_to_first_token_s'])}; median step {format_ms(totals['step_s']['p50'])}")
    print(f"stall per step: mean {format_ms(stall['mean'])}, p50 {format_ms(stall['p50'])}, p99 {format_ms(stall['p99'])}; total "
          f"{stats['stall_seconds']:.4f} s ({100 * stats['stall_fraction']:.2f}% of step time)")
    if lossy:
        print(f"dropped rows (late for the {format_ms(args.window_s)} window, read as zero rows): {stats['dropped_rows']}")
    if speculate is not None:
        print(f"speculation: top {speculate.k} after block {speculate.after_block}, {stats['speculative_steps']} speculative "
              f"steps; {served_above_store(demand):.3f} of the steps' rows were served above the store (counts below include them)")
    print(tier_table(tiers))


def _speculation(args: argparse.Namespace, config):
    """The --speculate/--speculate-after `Speculation`, None when off; refused for a block the model lacks."""

    if not args.speculate:
        if args.speculate_after is not None:
            raise EngramTierError("--speculate-after names where the candidates come from; give --speculate K too")
        return None
    after = max(0, config.n_layers - 2) if args.speculate_after is None else args.speculate_after
    speculation = Speculation(args.speculate, after)
    try:
        speculation.check(config.n_layers, config.vocab_size)
    except EngramTierError as err:
        raise EngramTierError(f"--speculate/--speculate-after: {err}") from None
    return speculation


# The random model's options that shape a transformer model (which --engram-only's stand-in does not
# have), and their defaults.
_TRANSFORMER_SHAPE = {"tokenizer": "bpe:512", "layers": 4, "heads": 4, "engram_layers": [1, 3], "hash_heads": 4,
                      "row_dim": 32}


def _register_replay(subparsers) -> None:
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
    p.add_argument("--run", dest="run_dir", help="run directory of `engramtier train`, or with --engram-only of "
                   "`build-table --from-checkpoint` (default: a random-initialised model)")
    p.add_argument("--text", help="text file or directory to replay (default: the shipped sample text)")
    serving_options(p)
    p.add_argument("--mode", choices=["prefill", "decode"], default="prefill", help="how tokens form steps")
    p.add_argument("--batch", type=positive_int, default=4, help="sequences per prefill step (default 4)")
    p.add_argument("--requests", type=positive_int, default=4, help="sequences decoded together (default 4)")
    p.add_argument("--seq-len", type=positive_int, default=128, help="tokens per sequence window (default 128)")
    p.add_argument("--prompt-len", type=nonnegative_int, default=0, help="decode: tokens of the first step (default 0: one)")
    p.add_argument("--max-tokens", type=positive_int, default=8192, help="tokens of text to replay at most (default 8192)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=3,
                   help="untimed steps on each path before the measured ones (default 3; not in any result)")
    add_out_options(p, "runs/replay-<time>")
    p.add_argument("--engram-only", action="store_true",
                   help="only the Engram layers, their inputs from a seeded stand-in backbone, over the tiered table "
                   "alone (no flat pass): an imported checkpoint's --run, or random layers (--variant, --d-model, "
                   "--hc-mult) over --table or a random table of dsv41-flash's shape (--table-size)")
    random_init = p.add_argument_group("random-initialised model (without --run)")
    shape = _TRANSFORMER_SHAPE
    random_init.add_argument("--tokenizer", default=shape["tokenizer"], help="base tokenizer; bpe:N learns one from --text")
    random_init.add_argument("--d-model", type=positive_int, default=64)
    random_init.add_argument("--layers", type=positive_int, default=shape["layers"])
    random_init.add_argument("--heads", type=positive_int, default=shape["heads"])
    random_init.add_argument("--engram-layers", type=nonnegative_int, nargs="+", default=shape["engram_layers"])
    random_init.add_argument("--table-size", type=positive_int, default=20011, help="rows per sub-table")
    random_init.add_argument("--hash-heads", type=positive_int, default=shape["hash_heads"])
    random_init.add_argument("--row-dim", type=row_dim, default=shape["row_dim"])
    random_init.add_argument("--seed", type=seed, default=0)
    random_init.add_argument("--variant", choices=VARIANTS,
                             help="the Engram layer: classic, demo or dsv41 (default classic; with --engram-only dsv41)")
    random_init.add_argument("--hc-mult", type=positive_int, default=1, help="copies of the residual stream (default 1)")
    random_init.add_argument("--image-token", type=nonnegative_int, metavar="BASE_ID",
                             help="with --engram-only and no --table: the image token hashing blocks (default none)")
    p.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> None:
    hierarchy = checked_hierarchy(args)
    if hierarchy is not None and hierarchy.lossy:
        raise EngramTierError(f"--hierarchy: tier '{hierarchy.lossy_tier}' drops late rows (on_late = 'drop'), which changes the outputs "
                              "that replay checks are bitwise equal; replay it without on_late, or generate with "
                              "--window-s")
    if args.text is not None and not Path(args.text).exists():
        raise EngramTierError(f"--text {args.text}: no such file or directory; give text files (or leave it out "
                              "for the shipped sample)")
    if args.engram_only:
        _check_engram_only(args)
    elif args.image_token is not None:
        raise EngramTierError("--image-token shapes --engram-only's random table; a random transformer model's hashing "
                              "has no image token")
    elif args.run_dir is not None and (Path(args.run_dir) / "config.json").is_file() \
            and not (Path(args.run_dir) / "table").is_dir():
        raise EngramTierError(f"--run {args.run_dir}: holds no flat table (RUN/table) to compare the tiered one with: a "
                              "model without Engram has none, an imported checkpoint only its LMDB table (replay that "
                              "with --engram-only)")

    text = args.text or str(sample_text_dir())
    plan = StepPlan(mode=args.mode, batch=args.batch, seq_len=args.seq_len, requests=args.requests,
                    prompt_len=args.prompt_len)
    with RunDir.create(args.out, "replay", {k: v for k, v in vars(args).items() if not callable(v)}, force=args.force,
                       stages=["replay"]) as out:
        _replay_into(args, out, hierarchy, text, plan)


def _replay_into(args: argparse.Namespace, out, hierarchy, text: str, plan) -> None:
    run_dir = args.run_dir
    if run_dir is None and args.engram_only:
        run_dir = random_stand_in_run(out.path / "model", variant=args.variant or "dsv41", d_model=args.d_model,
                                      hc_mult=args.hc_mult, seed=args.seed, table=args.table, table_size=args.table_size,
                                      image_token=args.image_token)
    elif run_dir is None:
        run_dir = random_run(out.path / "model", text, tokenizer=args.tokenizer, seed=args.seed,
                             d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                             engram_layers=tuple(args.engram_layers), table_size=args.table_size,
                             hash_heads=args.hash_heads, row_dim=args.row_dim, hc_mult=args.hc_mult,
                             variant=args.variant or "classic")
    loaded = load_served_run(args, run_dir)
    if args.engram_only:
        return _finish_engram_only(args, loaded, run_dir, hierarchy, text, plan, out)
    open_table = table_opener(args, run_dir, hierarchy, loaded)
    batches = text_batches(loaded.tokenizer, text, plan, args.max_tokens)
    summary, records = warm_replay(loaded.model, loaded.rows, open_table, batches, plan, args.warmup_steps)
    summary["run"] = str(run_dir)
    out.update_config(config={"hierarchy": summary["table"]["hierarchy"], "plan": summary["plan"]},
                      fingerprint=summary["table"]["fingerprint"])
    out.append(records)
    out.write_summary(summary)

    out.save_figure(replay_stall_figure(records), "replay_stall")
    out.stage_done("replay")
    print(_replay_report(summary, out.path))
    if not summary["bitwise_equal"]:
        raise EngramTierError(
            f"replay: the tiered table's outputs differ from the flat table's from step {summary['first_unequal_step']} "
            f"on; the rows it served are wrong (details in {out.path})"
        )
    if not summary["simulated"]["hits_equal"]:
        raise EngramTierError(f"replay: the simulator's hit counts differ from the runtime's (details in {out.path})")


def _check_engram_only(args: argparse.Namespace) -> None:
    """--engram-only's options, refused in one line where they contradict it."""
    given = [name for name, default in _TRANSFORMER_SHAPE.items() if getattr(args, name) != default]
    if given:
        raise EngramTierError(f"--engram-only: {', '.join('--' + g.replace('_', '-') for g in given)} shape a random "
                              "transformer model; the stand-in's table is dsv41-flash's (--table-size) or --table's")
    if args.run_dir is not None and (args.variant is not None or args.image_token is not None):
        raise EngramTierError("--engram-only --run: the run's model has its own --variant and --image-token; leave them out")
    if args.table is not None and args.image_token is not None:
        raise EngramTierError("--engram-only --table: the table's hash config says whether it has an image token; leave "
                              "--image-token out")


def _finish_engram_only(args, loaded, run_dir, hierarchy, text, plan, out) -> None:
    """Replay the stand-in's Engram layers over the tiered table and write the run directory."""
    if loaded.model.config.backbone != "stand-in":
        raise EngramTierError(f"--run {run_dir}: a trained model's Engram layers run inside its transformer; --engram-only "
                              "replays a stand-in (an imported checkpoint, or the random one without --run)")
    batches = text_batches(loaded.tokenizer, text, plan, args.max_tokens)
    summary, records = engram_only_replay(loaded.model, table_opener(args, run_dir, hierarchy, loaded), batches, plan,
                                          args.warmup_steps)
    summary["run"] = str(run_dir)
    out.update_config(config={"hierarchy": summary["table"]["hierarchy"], "plan": summary["plan"]},
                      fingerprint=summary["table"]["fingerprint"])
    out.append(records)
    out.write_summary(summary)
    out.save_figure(replay_stall_figure(records), "replay_stall")
    out.stage_done("replay")
    layers, tiered, stall = summary["layers"], summary["tiered"], summary["tiered"]["stall_per_step_s"]
    print("\n".join([
        f"engram-only replay of {summary['steps']} steps ({summary['plan']['mode']}, after {summary['warmup_steps']} "
        f"untimed warm-up steps): {layers['variant']} layers {layers['layer_ids']} (d_model {layers['d_model']}, hc_mult "
        f"{layers['hc_mult']}), {layers['rows_per_token']} rows of {layers['row_bytes']} B per token; simulator hit "
        f"counts equal: {'yes' if summary['simulated']['hits_equal'] else 'NO'}",
        _path_line("tiered table", tiered),
        f"stall per step: mean {format_ms(stall['mean'])}, p50 {format_ms(stall['p50'])}, p99 {format_ms(stall['p99'])}; "
        f"total {tiered['stall_seconds']:.4f} s ({100 * tiered['stall_fraction']:.2f}% of the steps)",
        f"backbone: {summary['backbone']}",
        tier_table(summary["tiers"]),
        f"results in {out.path}",
    ]))
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
        f"stall per step: mean {format_ms(stall['mean'])}, p50 {format_ms(stall['p50'])}, p99 {format_ms(stall['p99'])}; "
        f"total {tiered['stall_seconds']:.4f} s ({100 * tiered['stall_fraction']:.2f}% of the tiered steps)",
        tier_table(summary["tiers"]),
        f"results in {path}",
    ]
    return "\n".join(lines)


def _path_line(name: str, p: dict) -> str:
    step = p["step_s"]
    spread = f"{step['p10'] * 1e3:.3f}..{step['p90'] * 1e3:.3f} ms"
    return (f"{name:12} {format_ms(step['p50']):>11} {spread:>17} "
            f"{format_ms(p['time_to_first_token_s']):>10} {p['tokens_per_s']:10.1f} {p['median_tokens_per_s']:10.1f}")
