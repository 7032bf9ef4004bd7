"""`engramtier build-table` (write the nvme tier's LMDB table) and `engramtier generate` (a trained
model's text, its table served from tiers), and the serving options both `generate` and `replay`
(`engramtier.analysis.commands`) take.

A served run is a directory of `engramtier train`; its table's LMDB copy (the nvme tier) is built into
``RUN/table.lmdb`` on first use unless ``--table`` names one. The hierarchy comes from ``--hierarchy``
(a TOML of ``[[tier]]`` tables, or an experiment file's ``[hierarchy]``) or is the default gpu (LRU,
1/64 of the rows) -> dram (S3-FIFO, 1/8) -> nvme.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engramtier.argtypes import nonnegative_float, nonnegative_int, page_kib, positive_float, positive_int, row_dim, seed
from engramtier.errors import EngramTierError

_EXAMPLES = """\
examples:
  # a random bf16[80] table of 4M rows, hot rows first by a profile, pages compressed with zstd
  engramtier build-table tables/rand4m --random --rows 4000000 --format bf16 --dim 80 --seed 0 \\
      --profile profile.npy --compression zstd:3

  # random rows in DeepSeek-V4.1-Flash's shape (768,022,850 fp8 rows, ~189 GiB; refused if the disk is smaller),
  # or the same shape with small sub-tables; the manifest holds the preset's hash config
  engramtier build-table tables/flash --random --preset dsv41-flash
  engramtier build-table tables/flash-small --random --preset dsv41-flash --table-size 20011

  # the LMDB copy of a trained flat table (the manifest and its hash fingerprint come along)
  engramtier build-table tables/engram.lmdb --from-table tables/engram --compression zstd-dict

  # DeepSeek-V4.1-Flash's own checkpoint: its Engram tables into RUN/table.lmdb, its Engram layers' weights
  # into RUN as a stand-in model (replay --engram-only --run RUN, generate --run RUN)
  engramtier build-table runs/flash --from-checkpoint /models/DeepSeek-V4.1-Flash --preset dsv41-flash

  # interrupted (Ctrl-C, kill -9, a full disk)? run the same command again: it resumes

--profile takes a trace file (engramtier trace), or a .npy of per-row access counts (one per table
row) or of row ids.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-table",
        help="build the LMDB (nvme tier) table from a flat table, random rows or a DeepSeek-V4.1 checkpoint; resumable",
        description="Build the nvme tier's LMDB table: rows packed into checksummed, optionally "
        "compressed pages, hottest rows first when a profile is given. Rerunning an interrupted "
        "build resumes it. --from-checkpoint also writes the checkpoint's Engram layers as a stand-in "
        "model beside the table (OUT_DIR/table.lmdb), which replay --engram-only and generate serve.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory of the LMDB table (created); with --from-checkpoint "
                   "the run directory that gets the model and its table.lmdb")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-table", metavar="TABLE_DIR", help="a flat table directory (table.bin + manifest.json)")
    source.add_argument("--from-checkpoint", metavar="CKPT_DIR",
                        help="a DeepSeek-V4.1 safetensors checkpoint: its layers.L.engram.* tensors, checked against "
                        "--preset (default dsv41-flash; --table-size and --image-token as the checkpoint was made)")
    source.add_argument("--random", action="store_true", help="seeded random N(0,1) rows (needs --rows or --preset)")
    p.add_argument("--rows", type=positive_int, help="rows of a --random table without --preset")
    p.add_argument("--preset", metavar="NAME", help="a --random table of a published model's shape and row format "
                   "(dsv41-flash, engram-27b, engram-40b); its rows follow from the preset's hash config")
    p.add_argument("--table-size", type=positive_int, help="with --preset: rows per sub-table instead of the preset's")
    p.add_argument("--image-token", type=nonnegative_int, metavar="BASE_ID",
                   help="with --preset: the model's image token, which hashing blocks (its tables' fingerprint has it)")
    p.add_argument("--format", help="row format of a --random table: bf16 or fp8_e4m3 (default bf16, or the preset's)")
    p.add_argument("--dim", type=row_dim, help="values per row of a --random table (default 80, or the preset's)")
    p.add_argument("--seed", type=seed, default=0, help="seed of a --random table's values (default 0)")
    p.add_argument("--profile", metavar="TRACE_OR_NPY",
                   help="a trace file, or per-row access counts or row ids (.npy): rows are laid out hottest first")
    p.add_argument("--compression", default="none", help="none, zstd[:LEVEL] or zstd-dict[:LEVEL] (default none)")
    p.add_argument("--page-kib", type=page_kib, default=16, help="page size in KiB (default 16)")
    p.add_argument("--map-size", metavar="SIZE", help="LMDB map size, e.g. 64GiB (default: twice the raw table)")
    p.add_argument("--batch-pages", type=positive_int, metavar="N",
                   help="pages per write transaction, the most a crash loses (default: 32 MiB of rows)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_build_table)

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


def run_build_table(args: argparse.Namespace) -> None:
    from contextlib import ExitStack

    from engramtier.tiers.lmdb_table import FlatTableRows, build_lmdb_table, load_profile

    out = Path(args.out_dir)
    with ExitStack() as opened:
        if args.random:
            source = _random_rows(args)
        elif args.from_checkpoint:
            source, out = _checkpoint_rows(args, opened)
        elif args.preset or args.table_size is not None or args.image_token is not None:
            raise EngramTierError("--preset, --table-size and --image-token shape a --random or --from-checkpoint table; "
                                  "a --from-table table keeps its own shape")
        else:
            source = FlatTableRows(args.from_table)
        profile = load_profile(args.profile, source.n_rows) if args.profile else None
        summary = build_lmdb_table(
            source, out, profile=profile, compression=args.compression, page_kib=args.page_kib,
            progress=not args.quiet, map_size=_map_size(args.map_size) if args.map_size else None,
            batch_pages=args.batch_pages,
        )
    print(json.dumps(summary), file=sys.stdout)


def _checkpoint_rows(args: argparse.Namespace, opened):
    """The --from-checkpoint rows and where their LMDB table goes (OUT_DIR/table.lmdb), once the
    checkpoint (kept open by ``opened``, an ExitStack) is checked and its stand-in model written to OUT_DIR."""
    from engramtier.model.checkpoint import Checkpoint, import_checkpoint
    from engramtier.model.presets import preset_hash_config
    from engramtier.tiers.open import LMDB_TABLE

    for option in ("rows", "format", "dim"):
        if getattr(args, option) is not None:
            raise EngramTierError(f"--{option} shapes a --random table; a checkpoint's rows are fp8_e4m3[256] and "
                                  "their count follows from --preset (and --table-size)")
    preset = args.preset or "dsv41-flash"
    config = preset_hash_config(preset, args.table_size, args.image_token)
    checkpoint = opened.enter_context(Checkpoint(args.from_checkpoint))
    return import_checkpoint(checkpoint, args.out_dir, config, preset), Path(args.out_dir) / LMDB_TABLE


def _random_rows(args: argparse.Namespace):
    """The --random row source: --rows plain rows, or every row of a preset's hash config."""
    from engramtier.tiers.lmdb_table import RandomRows

    if not args.preset:
        if args.rows is None:
            raise EngramTierError("--random needs --rows N or --preset NAME (and optionally --format, --dim, --seed)")
        if args.table_size is not None or args.image_token is not None:
            raise EngramTierError("--table-size and --image-token shape a --preset's hash config; without --preset give --rows")
        return RandomRows(args.rows, args.format or "bf16", args.dim or 80, args.seed)
    if args.rows is not None:
        raise EngramTierError(f"--rows conflicts with --preset: preset {args.preset}'s row count follows from its "
                              "hash config; shrink it with --table-size")
    from engramtier.model.hashing import NgramHasher
    from engramtier.model.presets import get_preset, preset_hash_config

    preset = get_preset(args.preset)
    config = preset_hash_config(args.preset, args.table_size, args.image_token)
    return RandomRows.for_hasher(NgramHasher(config), args.format or preset.row_format, args.dim or preset.row_dim,
                                 args.seed, preset=args.preset)


def _map_size(text: str) -> int:
    from engramtier.cache.hierarchy import parse_size

    try:
        return parse_size(text)
    except EngramTierError as err:
        raise EngramTierError(f"--map-size: {err}") from None


def serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="the LMDB table (default: RUN/table.lmdb, built from RUN/table on first use)")
    p.add_argument("--hierarchy", help="hierarchy TOML (default: gpu LRU 1/64 -> dram S3-FIFO 1/8 -> nvme)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="compute device (default: cuda if present)")
    p.add_argument("--readers", type=positive_int, default=4, help="NVMe reader threads (default 4)")


def checked_hierarchy(args: argparse.Namespace):
    """The --hierarchy file's hierarchy (None for the default), and --run's directory checked: both
    before torch is imported, so that a wrong path is refused at once."""
    from engramtier.cache.hierarchy import load_hierarchy

    if args.run_dir is not None:
        for name in ("config.json", "model.safetensors"):
            if not (Path(args.run_dir) / name).is_file():
                raise EngramTierError(f"--run {args.run_dir}: {name} is missing; give a directory written by "
                                      "'engramtier train'")
    return load_hierarchy(args.hierarchy) if args.hierarchy else None


def compute_device(args: argparse.Namespace) -> str:
    """The compute device the serving options say: --device, or cuda where there is one."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EngramTierError("--device cuda: CUDA is not available here; use --device cpu")
    return device


def load_served_run(args: argparse.Namespace, run_dir):
    """The run at ``run_dir`` loaded on the compute device (`compute_device`)."""
    from engramtier.model.train import load_model

    loaded = load_model(run_dir, device=compute_device(args))
    if loaded.model.config.engram is None:
        raise EngramTierError(f"run {run_dir}: the model has no Engram layers, so it has no table to tier")
    return loaded


def table_opener(args: argparse.Namespace, run_dir, hierarchy, loaded, compute_window_s: float | None = None):
    """A function of ``record_trace`` opening a fresh TieredTable for ``loaded``'s model over ``hierarchy``."""
    from engramtier.tiers.open import lmdb_table_for, open_for_model

    table_path = args.table or lmdb_table_for(run_dir)
    device = compute_device(args)
    return lambda record_trace: open_for_model(loaded.model, table_path, hierarchy, device=device,
                                               readers=args.readers, record_trace=record_trace,
                                               compute_window_s=compute_window_s)


def format_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def tier_table(tiers: list[dict]) -> str:
    """Per tier: size, counts, and bytes read against served bytes, with the line saying why they differ."""
    from engramtier.cache.hierarchy import format_bytes
    from engramtier.tiers.replay import BYTES_READ_NOTE

    names = [t["name"] + (" (emulated)" if t.get("emulated") else "") for t in tiers]
    width = max(8, *map(len, names))
    rows = [f"{'tier':{width}} {'policy':8} {'rows':>9} {'size':>10} {'lookups':>9} {'hits':>9} {'hit rate':>8} "
            f"{'bytes read':>11} {'served B':>11} {'promoted':>9} {'evicted':>9}"]
    for name, t in zip(names, tiers):
        rows.append(f"{name:{width}} {str(t['policy'] or '-'):8} {t['capacity_rows']:9d} "
                    f"{format_bytes(t['capacity_bytes']):>10} {t['lookups']:9d} {t['hits']:9d} {t['hit_rate']:8.3f} "
                    f"{t['bytes_read']:11d} {t['served_bytes']:11d} {t['promoted']:9d} {t['evicted']:9d}")
    rows.append(BYTES_READ_NOTE.replace("served bytes", "served B", 1))
    return "\n".join(rows)


def _run_generate(args: argparse.Namespace) -> None:
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
    hierarchy = checked_hierarchy(args)
    lossy = hierarchy is not None and hierarchy.lossy
    if lossy and args.window_s is None:
        raise EngramTierError(f"--hierarchy: tier '{hierarchy.lossy_tier}' drops late rows (on_late = 'drop'); give --window-s, the "
                              "step's prefetch window in seconds that those rows miss")
    if args.window_s is not None and not lossy:
        raise EngramTierError("--window-s applies to a tier with on_late = 'drop', and no tier of the hierarchy drops "
                              "late rows; leave it out, or set on_late = 'drop' on a tier")
    from engramtier.tiers.generate import generate
    from engramtier.tiers.replay import distribution, served_above_store, sized_tiers

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
        print(json.dumps({"outputs": [{"prompt": p, "continuation": t} for p, t in zip(prompts, texts)],
                          **totals, "stall_per_step_s": stall, "table": {**stats, "tiers": tiers}}))
        return
    for prompt, text in zip(prompts, texts):
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
    from engramtier.model.speculation import Speculation

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

