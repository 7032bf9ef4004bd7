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
from contextlib import ExitStack
from pathlib import Path

from engramtier.argtypes import nonnegative_int, page_kib, positive_int, row_dim, seed
from engramtier.cache.hierarchy import parse_size
from engramtier.errors import EngramTierError
from engramtier.model.checkpoint import Checkpoint, import_checkpoint
from engramtier.model.hashing import NgramHasher
from engramtier.model.presets import get_preset, preset_hash_config
from engramtier.rundir import claim
from engramtier.tiers.lmdb_table import FlatTableRows, RandomRows, build_lmdb_table, load_profile
from engramtier.tiers.open import LMDB_TABLE

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


def run_build_table(args: argparse.Namespace) -> None:
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

    for option in ("rows", "format", "dim"):
        if getattr(args, option) is not None:
            raise EngramTierError(f"--{option} shapes a --random table; a checkpoint's rows are fp8_e4m3[256] and "
                                  "their count follows from --preset (and --table-size)")
    preset = args.preset or "dsv41-flash"
    config = preset_hash_config(preset, args.table_size, args.image_token)
    checkpoint = opened.enter_context(Checkpoint(args.from_checkpoint))
    arguments = {k: v for k, v in vars(args).items() if not callable(v) and k not in ("quiet", "progress")}
    opened.enter_context(claim(args.out_dir, "build-table", arguments, force=None, option="OUT_DIR"))
    return import_checkpoint(checkpoint, args.out_dir, config, preset), Path(args.out_dir) / LMDB_TABLE


def _random_rows(args: argparse.Namespace):
    """The --random row source: --rows plain rows, or every row of a preset's hash config."""

    if not args.preset:
        if args.rows is None:
            raise EngramTierError("--random needs --rows N or --preset NAME (and optionally --format, --dim, --seed)")
        if args.table_size is not None or args.image_token is not None:
            raise EngramTierError("--table-size and --image-token shape a --preset's hash config; without --preset give --rows")
        return RandomRows(args.rows, args.format or "bf16", args.dim or 80, args.seed)
    if args.rows is not None:
        raise EngramTierError(f"--rows conflicts with --preset: preset {args.preset}'s row count follows from its "
                              "hash config; shrink it with --table-size")

    preset = get_preset(args.preset)
    config = preset_hash_config(args.preset, args.table_size, args.image_token)
    return RandomRows.for_hasher(NgramHasher(config), args.format or preset.row_format, args.dim or preset.row_dim,
                                 args.seed, preset=args.preset)


def _map_size(text: str) -> int:
    try:
        return parse_size(text)
    except EngramTierError as err:
        raise EngramTierError(f"--map-size: {err}") from None
