"""`engramtier trace`, `engramtier stats` and `engramtier export`."""

from __future__ import annotations

import argparse
import json
import sys

from engramtier.errors import EngramTierError

TRACE_EXAMPLES = """examples:
  engramtier trace engramtier/data/sample_text -o docs.trace
  engramtier trace notes/ corpus.jsonl --field body -o decode.trace --mode decode --requests 32 --prompt-len 128
  cat book.txt | engramtier trace - -o book.trace --tokenizer cl100k --layers 2,6 --heads 4
  engramtier trace --synthetic-zipf 1.0 --vocab 100000 --tokens 2000000 -o zipf.trace
"""

STATS_EXAMPLES = """examples:
  engramtier stats docs.trace
  engramtier stats docs.trace --json docs.stats.json
"""

EXPORT_EXAMPLES = """examples:
  engramtier export docs.trace --format oracle -o docs.oracleGeneral.bin   # libCacheSim
  engramtier export docs.trace --format csv -o docs.csv
"""


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("trace", help="build a row trace file from text or a synthetic Zipf stream",
                              description="Tokenize text (or draw Zipf token ids), hash every position to the "
                              "Engram table rows it reads, group them into prefill or decode steps and "
                              "write a compressed trace file.", epilog=TRACE_EXAMPLES, formatter_class=fmt)
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="text/Markdown/reST/HTML files, directories (recursive), JSONL files, or - for stdin")
    p.add_argument("-o", "--output", required=True, metavar="FILE.trace")
    p.add_argument("--tokenizer", default="deepseek", help="deepseek | cl100k | qwen | qwen3.6 | path to a tokenizer.json")
    p.add_argument("--field", default="text", help="text field of JSONL records (default: text)")
    p.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    p.add_argument("--batch", type=int, default=8, help="prefill: sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=2048, help="max tokens per sequence or request (default 2048)")
    p.add_argument("--requests", type=int, default=32, help="decode: concurrent requests (default 32)")
    p.add_argument("--prompt-len", type=int, default=0,
                   help="decode: tokens of each request read in one prompt step first (default 0: none)")
    p.add_argument("--layers", type=_int_list, default=[1, 15], help="Engram layer ids (default 1,15)")
    p.add_argument("--heads", type=int, default=8, help="hash heads per n-gram order (default 8)")
    p.add_argument("--max-ngram", type=int, default=3, help="largest n-gram order N (default 3)")
    p.add_argument("--table-size", type=int, default=1_000_003, help="rows per sub-table, rounded up to a prime (default 1000003)")
    p.add_argument("--seed", type=int, default=0, help="hash seed (and the Zipf stream's seed)")
    p.add_argument("--row-bytes", type=int, default=160, help="bytes per row (default 160: bf16[80])")
    p.add_argument("--chunk-rows", type=int, default=1 << 20, help="row ids per file chunk (default 1048576)")
    p.add_argument("--synthetic-zipf", type=float, metavar="ALPHA", help="draw token ids from Zipf(ALPHA) instead of text")
    p.add_argument("--vocab", type=int, default=100_000, help="synthetic vocabulary size (default 100000)")
    p.add_argument("--tokens", type=int, default=1_000_000, help="synthetic token count (default 1000000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_trace)

    p = subparsers.add_parser("stats", help="summarise a row trace file", epilog=STATS_EXAMPLES, formatter_class=fmt,
                              description="Requests, unique rows, Zipf alpha, reuse distances, working sets and "
                              "the per-sub-table breakdown of a trace file.")
    p.add_argument("trace", metavar="FILE.trace")
    p.add_argument("--json", metavar="OUT.json", help="also write the full statistics as JSON")
    p.set_defaults(run=run_stats)

    p = subparsers.add_parser("export", help="convert a trace file for other cache simulators", epilog=EXPORT_EXAMPLES,
                              formatter_class=fmt, description="oracle: libCacheSim's oracleGeneral binary "
                              "(time = step, id = row, size = row bytes, next request position); csv: time,id,size.")
    p.add_argument("trace", metavar="FILE.trace")
    p.add_argument("--format", choices=("oracle", "csv"), required=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.set_defaults(run=run_export)


def run_trace(args) -> None:
    from engramtier.trace.build import StepPlan, hasher_for, write_trace
    from engramtier.trace.sources import TextSource, ZipfSource

    if args.synthetic_zipf is not None:
        if args.sources:
            raise EngramTierError("give either SOURCE paths or --synthetic-zipf, not both")
        source = ZipfSource(args.synthetic_zipf, args.vocab, args.tokens, args.seed, doc_len=args.seq_len)
    elif not args.sources:
        raise EngramTierError("no input: name text files, directories, JSONL files or '-', or use --synthetic-zipf")
    else:
        source = TextSource(args.sources, args.tokenizer, args.field)
    plan = StepPlan(args.mode, args.batch, args.seq_len, args.requests, args.prompt_len)
    hasher = hasher_for(source, args.table_size, args.layers, args.heads, args.max_ngram, args.seed)
    summary = write_trace(source, hasher, plan, args.output, args.row_bytes, args.chunk_rows, progress=not args.quiet)
    print(f"{args.output}: {summary['tokens']} tokens, {summary['steps']} steps, {summary['rows']} row ids "
          f"({summary['bytes'] / summary['rows']:.2f} bytes each), table of {hasher.n_rows} rows, "
          f"fingerprint {hasher.config.fingerprint}")


def run_stats(args) -> None:
    from engramtier.trace.stats import trace_stats
    from engramtier.trace.tracefile import TraceReader

    with TraceReader(args.trace) as reader:
        stats = trace_stats(reader).stats_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
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
    print("\n".join(lines), file=sys.stdout)


def run_export(args) -> None:
    from engramtier.trace.export import export_trace
    from engramtier.trace.tracefile import TraceReader

    with TraceReader(args.trace) as reader:
        n = export_trace(reader, args.output, args.format)
    print(f"{args.output}: {n} records ({args.format})")
