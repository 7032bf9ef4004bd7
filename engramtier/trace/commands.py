"""`engramtier trace`, `engramtier stats` and `engramtier export`."""

from __future__ import annotations

import argparse
import json
import sys

from engramtier.argtypes import int_list, nonnegative_int, positive_float, positive_int, row_bytes, seed
from engramtier.errors import EngramTierError
from engramtier.model.hashing import uniform_shape_problems
from engramtier.model.presets import SHAPE_KEYS, shape_settings
from engramtier.outputs import atomic_output, check_output_file
from engramtier.trace.build import StepPlan, hasher_for, write_trace
from engramtier.trace.export import export_trace
from engramtier.trace.sources import TextSource, ZipfSource
from engramtier.trace.stats import trace_stats
from engramtier.trace.tracefile import TraceReader

TRACE_EXAMPLES = """examples:
  engramtier trace engramtier/data/sample_text -o docs.trace
  engramtier trace notes/ corpus.jsonl --field body -o decode.trace --mode decode --requests 32 --prompt-len 128
  cat book.txt | engramtier trace - -o book.trace --tokenizer cl100k --layers 2,6 --heads 4
  engramtier trace --synthetic-zipf 1.0 --vocab 100000 --tokens 2000000 -o zipf.trace
  engramtier trace --preset dsv41-flash engramtier/data/sample_text -o flash.trace   # DeepSeek-V4.1-Flash's rows
  engramtier trace --preset dsv41-flash --table-size 20011 notes/ -o small.trace     # its shape, small tables

--preset sets the table shape of a published model (dsv41-flash, engram-27b, engram-40b): tokenizer,
layers, heads, max n-gram, table size, row bytes, Engram pad, seed and image token (none); options given
explicitly override it.
"""

STATS_EXAMPLES = """examples:
  engramtier stats docs.trace
  engramtier stats docs.trace --json docs.stats.json
"""

EXPORT_EXAMPLES = """examples:
  engramtier export docs.trace --format oracle -o docs.oracleGeneral.bin   # libCacheSim
  engramtier export docs.trace --format oracle --stream lookups --object-size 1 -o docs.lookups.bin
  engramtier export docs.trace --format csv -o docs.csv

Identical hit counts in libCacheSim (checked with its Python package 0.3.5):
  reader      lcs.TraceReader(FILE, lcs.TraceType.ORACLE_GENERAL_TRACE); cache.process_trace(reader)
              gives the miss ratio: hits = round((1 - miss_ratio) * records printed by this command)
  stream      --stream lookups: the hits of `engramtier simulate`'s first cache tier (either mode; the
              tiers below see only its misses, which libCacheSim cannot reproduce);
              --stream requests: the hits of `engramtier sweep`'s hit_rate stage (every request)
  size        --object-size 1 and cache size = the tier's rows; or the default object size (row bytes)
              with lcs.ReaderInitParam(ignore_obj_size=True) as the reader's third argument. Row
              bytes with cache size = rows x row bytes match LRU, FIFO, Clock, LFU, Sieve, TwoQ,
              S3-FIFO and Belady too, but ARC and W-TinyLFU then count differently
  policies    lru LRU, fifo FIFO, clock Clock (bits: n_bit_counter), lfu LFU, sieve Sieve, arc ARC,
              twoq TwoQ (in_ratio: a_in_size_ratio, out_ratio: a_out_size_ratio), s3fifo S3FIFO
              (small_ratio: small_size_ratio, ghost_ratio: ghost_size_ratio, move_to_main:
              move_to_main_threshold), wtinylfu WTinyLFU (window_ratio: window_size), belady Belady
              (oracle format only: it reads the next field); lookahead and static have no counterpart
  csv         lcs.TraceType.CSV_TRACE with lcs.ReaderInitParam(has_header=True, has_header_set=True)
              and time_field, obj_id_field, obj_size_field = 1, 2, 3 (no next field: no Belady)
"""


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("trace", help="build a row trace file from text or a synthetic Zipf stream",
                              description="Tokenize text (or draw Zipf token ids), hash every position to the "
                              "Engram table rows it reads, group them into prefill or decode steps and "
                              "write a compressed trace file.", epilog=TRACE_EXAMPLES, formatter_class=fmt)
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="text/Markdown/reST/HTML files, directories (recursive), JSONL files, or - for stdin")
    p.add_argument("-o", "--output", required=True, metavar="FILE.trace")
    p.add_argument("--preset", metavar="NAME", help="the table shape of a published model: dsv41-flash, engram-27b, engram-40b")
    p.add_argument("--tokenizer", help="deepseek (default) | cl100k | qwen | qwen3.6 | path to a tokenizer.json")
    p.add_argument("--field", default="text", help="text field of JSONL records (default: text)")
    p.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    p.add_argument("--batch", type=positive_int, default=8, help="prefill: sequences per step (default 8)")
    p.add_argument("--seq-len", type=positive_int, default=2048, help="max tokens per sequence or request (default 2048)")
    p.add_argument("--requests", type=positive_int, default=32, help="decode: concurrent requests (default 32)")
    p.add_argument("--prompt-len", type=nonnegative_int, default=0,
                   help="decode: tokens of each request read in one prompt step first (default 0: none)")
    p.add_argument("--layers", type=int_list, help="Engram layer ids (default 1,15)")
    p.add_argument("--heads", type=positive_int, help="hash heads per n-gram order (default 8)")
    p.add_argument("--max-ngram", type=positive_int, help="largest n-gram order N (default 3)")
    p.add_argument("--table-size", type=positive_int, help="rows per sub-table, rounded up to a prime (default 1000003)")
    p.add_argument("--seed", type=seed, help="hash seed and the Zipf stream's seed (default 0)")
    p.add_argument("--row-bytes", type=row_bytes, help="bytes per row (default 160: bf16[80])")
    p.add_argument("--engram-pad", type=nonnegative_int, metavar="BASE_ID",
                   help="base token id standing for positions before a sequence's start (default: the "
                   "tokenizer's, 2 for deepseek)")
    p.add_argument("--image-token", type=nonnegative_int, metavar="BASE_ID",
                   help="base token id of the model's image token: it and every n-gram reaching across it hash as "
                   "the pad (docs/design.md's image rule; default: none)")
    p.add_argument("--chunk-rows", type=positive_int, default=1 << 20, help="row ids per file chunk (default 1048576)")
    p.add_argument("--synthetic-zipf", type=positive_float, metavar="ALPHA", help="draw token ids from Zipf(ALPHA) instead of text")
    p.add_argument("--vocab", type=positive_int, default=100_000, help="synthetic vocabulary size (default 100000)")
    p.add_argument("--tokens", type=positive_int, default=1_000_000, help="synthetic token count (default 1000000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_trace)

    p = subparsers.add_parser("stats", help="summarise a row trace file", epilog=STATS_EXAMPLES, formatter_class=fmt,
                              description="Requests, unique rows, Zipf alpha, reuse distances, working sets and "
                              "the per-sub-table breakdown of a trace file, with reuse and Zipf alpha per n-gram order "
                              "(and per head in --json).")
    p.add_argument("trace", metavar="FILE.trace")
    p.add_argument("--json", metavar="OUT.json", help="also write the full statistics as JSON")
    p.set_defaults(run=run_stats)

    p = subparsers.add_parser("export", help="convert a trace file for other cache simulators", epilog=EXPORT_EXAMPLES,
                              formatter_class=fmt, description="oracle: libCacheSim's oracleGeneral binary "
                              "(time = step, id = row, size = object size, position of the id's next record in "
                              "the stream); csv: time,id,size.")
    p.add_argument("trace", metavar="FILE.trace")
    p.add_argument("--format", choices=("oracle", "csv"), required=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--stream", choices=("requests", "lookups"), default="requests",
                   help="requests: every row id (default); lookups: per step its unique rows, what simulate replays")
    p.add_argument("--object-size", type=positive_int, metavar="N",
                   help="size field of every record (default: the trace's row bytes; 1: cache sizes count rows)")
    p.set_defaults(run=run_export)


def run_trace(args) -> None:
    check_output_file(args.output, "-o", inputs=[s for s in args.sources if s != "-"])
    shape = shape_settings(args.preset, {k: getattr(args, k) for k in SHAPE_KEYS})
    problems = uniform_shape_problems(shape["table_size"], shape["max_ngram"], shape["layers"], shape["heads"])
    if problems:
        raise EngramTierError("table shape: " + "; ".join(problems) + "; see engramtier trace --help")
    if args.synthetic_zipf is not None:
        if args.sources:
            raise EngramTierError("give either SOURCE paths or --synthetic-zipf, not both")
        source = ZipfSource(args.synthetic_zipf, args.vocab, args.tokens, shape["seed"], doc_len=args.seq_len)
    elif not args.sources:
        raise EngramTierError("no input: name text files, directories, JSONL files or '-', or use --synthetic-zipf")
    else:
        source = TextSource(args.sources, shape["tokenizer"], args.field, shape["engram_pad"], shape["image_token"])
    plan = StepPlan(args.mode, args.batch, args.seq_len, args.requests, args.prompt_len)
    hasher = hasher_for(source, shape["table_size"], shape["layers"], shape["heads"], shape["max_ngram"], shape["seed"])
    summary = write_trace(source, hasher, plan, args.output, shape["row_bytes"], args.chunk_rows,
                          progress=not args.quiet, preset=args.preset)
    print(f"{args.output}: {summary['tokens']:,} tokens, {summary['steps']:,} steps, {summary['rows']:,} row ids "
          f"({summary['bytes'] / summary['rows']:.2f} bytes each), table of {hasher.n_rows:,} rows, "
          f"fingerprint {hasher.config.fingerprint}" + (f", preset {args.preset}" if args.preset else ""))


def run_stats(args) -> None:
    if args.json:
        check_output_file(args.json, "--json", inputs=[args.trace])
    with TraceReader(args.trace) as reader:
        stats = trace_stats(reader).stats_dict()
    if args.json:
        with atomic_output(args.json, "--json", inputs=[args.trace]) as part, open(part, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
    alpha = stats["zipf_alpha"]
    lines = [
        f"trace           {args.trace} (fingerprint {stats['fingerprint']})",
        f"requests        {stats['requests']} in {stats['steps']} steps",
        f"unique rows     {stats['unique_rows']} of {stats['table_rows']} ({stats['seen_once_fraction']:.1%} requested once)",
        f"zipf alpha      {'n/a' if alpha is None else f'{alpha:.3f}'}",
    ]
    for w, ws in stats["working_set"].items():
        lines.append(f"working set     {w:>5} steps: mean {ws['mean_unique_rows']:.0f} unique rows "
                     f"({ws['mean_unique_fraction']:.1%} of requests), max {ws['max_unique_rows']}")
    for o in (stats["subtables"] or {}).get("per_order", []):
        lines.append(f"layer {o['layer']:>3} n={o['order']}  {o['requests']} requests, {o['unique_rows']} unique rows of {o['rows']}")
    by_order = (stats["subtables"] or {}).get("by_order", [])
    if by_order:
        lines.append("order  requests  unique rows  reuse  zipf alpha  (all layers; per head: --json)")
        for o in by_order:
            alpha = "n/a" if o["zipf_alpha"] is None else f"{o['zipf_alpha']:.3f}"
            reuse = "n/a" if o["reuse"] is None else f"{o['reuse']:.2f}"
            lines.append(f"n={o['order']:<4} {o['requests']:>9} {o['unique_rows']:>12} {reuse:>6} {alpha:>11}")
    print("\n".join(lines), file=sys.stdout)


def run_export(args) -> None:
    # the oracle format places its records out of order (it seeks): only CSV streams into a device or FIFO
    with TraceReader(args.trace) as reader, \
            atomic_output(args.output, "-o", inputs=[args.trace], stream_ok=args.format == "csv") as part:
        n = export_trace(reader, part, args.format, args.stream, args.object_size)
    print(f"{args.output}: {n} records ({args.format}, {args.stream})")
