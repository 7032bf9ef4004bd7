"""`engramtier simulate | sweep | plan | mrc | replay | report | quickstart`: experiments into run directories.

`replay` is here, not in `tiers/`, because it is an experiment like the others: a run directory with
per-step results, a summary and a figure; it serves the model with `engramtier.tiers.commands`'s
serving options.
"""

from __future__ import annotations

import argparse
import sys

from engramtier.argtypes import (fraction, int_list, name_list, nonnegative_float, nonnegative_int, positive_int, row_dim, seed,
                                 size_list)
from engramtier.errors import EngramTierError
from engramtier.model.trainconfig import VARIANTS
from engramtier.tiers.commands import checked_hierarchy, format_ms, load_served_run, serving_options, table_opener, tier_table

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

SIMULATE_EXAMPLES = """examples:
  engramtier simulate engramtier/data/experiment.toml
  engramtier simulate my.toml --out runs/gpu32m --window-per-token-s 5e-6
  engramtier simulate --hierarchy tiers.toml docs.trace --window-s 0.002
  engramtier simulate engramtier/data/experiment.toml --preset dsv41-flash   # DeepSeek-V4.1-Flash's table
  engramtier simulate --hierarchy tiers.toml docs.trace --warm profile.npy --first-steps 20   # cold vs warm

The run directory gets config.json, results.jsonl (one line per step, then the run's totals),
summary.json, figures/step_timeline.png|svg (with --warm, figures/warm_start.png|svg) and report.html.
A --hierarchy file is replay's (mode and [[tier]] tables at the top) or an experiment file's
[hierarchy]; it takes [timing] (or --window-s / --window-per-token-s) but no [trace].
"""

SWEEP_EXAMPLES = """examples:
  engramtier sweep engramtier/data/experiment.toml
  engramtier sweep my.toml --stages hit_rate --workers 2
  engramtier sweep my.toml --stages stall,cxl,cost --out runs/planning
  engramtier sweep my.toml --preset engram-27b

Stages: hit_rate ([sweep] policies x sizes), stall ([sweep] tier_sizes), cxl ([sweep] cxl_latencies_ns),
cost (the stall and cxl points priced with [cost]); the default runs those the config defines.
The hit_rate stage prints a table of hit rates (policy x size) and writes RUN/hit_rate.csv beside
results.jsonl: columns policy,size_rows,size_bytes,hit_rate,miss_ratio.
"""

PLAN_EXAMPLES = """examples:
  engramtier plan my.toml                          # the file's [plan]
  engramtier plan engramtier/data/experiment.toml --hbm-budget 4GiB --kv-bytes-per-token 128KiB \\
      --batches 1,2,4,8,16,24,32,48 --compute-s 0.004

[plan] (every key also an option):
  hbm_budget = "4GiB"            # HBM the KV cache and the Engram gpu tier share (after the weights)
  kv_bytes_per_token = 131072    # 2 (K,V) x layers x kv_heads x head_dim x bytes: 2*32*8*128*2 for a 7B GQA model
  context_len = 512              # tokens of KV each sequence reserves (default [trace] seq_len);
                                 # or mix = [[4096, 0.25], [512, 0.75]] (context_len, share): the mean is reserved
  batches = [1, 8, 32]           # or kv_fractions = [0.1, 0.5, 0.9] (of the budget, as whole batches)
  tier = "gpu"                   # the cache tier HBM is left to (default: the first)

Each batch re-cuts the trace's tokens into steps of that batch and simulates the hierarchy with the
tier at the budget minus the KV cache; step compute is [timing] compute_s + compute_per_token_s x
tokens, so a batch pays off only with a fixed per-step compute_s. Writes one record per split,
figures/plan_tokens_per_s.png|svg and summary.json; with [sweep] tier_sizes for the other tiers (or
cxl_latencies_ns) it prices the best split's DRAM/CXL/NVMe sizes with [cost] (--no-cost skips it).
"""

MRC_EXAMPLES = """examples:
  engramtier mrc docs.trace
  engramtier mrc docs.trace --shards 0.001 --seeds 8 --sizes 1MiB,16MiB,256MiB
  engramtier mrc huge.trace --shards 0.001 --seeds 1 --no-exact   # a trace larger than memory, streamed

Each curve is one streamed pass over the trace's dense keys: exact LRU keeps 8 bytes per distinct row
and 1.5 bits per request, SHARDS only its sample. Prints a table of hit rates and writes RUN/mrc.csv
(columns policy,size_rows,size_bytes,hit_rate,miss_ratio): policy lru is the exact curve, lru-shards
the mean of the SHARDS estimates over the seeds.
"""

REPORT_EXAMPLES = """examples:
  engramtier report runs/quickstart-20250101-120000
  open runs/quickstart-20250101-120000/report.html
"""

QUICKSTART_EXAMPLES = """examples:
  engramtier quickstart
  engramtier quickstart --out runs/first --quiet
  engramtier quickstart --tiny          # a few KB of text, seconds instead of minutes

Runs engramtier/data/experiment.toml: the shipped sample text through the DeepSeek tokenizer into a
row trace, trace statistics, SHARDS vs exact miss-ratio curve, a policy sweep, a GPU > DRAM > NVMe
simulation, a stall sweep over the GPU and DRAM sizes, the same with a CXL tier, a cost frontier, and
the report. Copy the TOML to run your own.
"""

SWEEP_STAGES = ("hit_rate", "stall", "cxl", "cost")


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    def add(name, help, description, epilog, run):
        p = subparsers.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=fmt)
        p.set_defaults(run=run)
        return p

    def common(p, out=True):
        if out:
            p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<command>-<time>)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("simulate", "replay a trace through a tier hierarchy, step by step",
            "Simulate the hierarchy of an experiment file (building its trace) or of a --hierarchy file over "
            "a trace file, charging each step its fetch time and the stall beyond the compute window.",
            SIMULATE_EXAMPLES, run_simulate)
    p.add_argument("path", metavar="CONFIG.toml|TRACE", help="an experiment TOML, or with --hierarchy a trace file")
    p.add_argument("--hierarchy", metavar="H.toml", help="take the hierarchy ([[tier]] tables, or [hierarchy]) and "
                   "[timing] from this file and replay the trace file given as the positional argument")
    p.add_argument("--window-s", type=nonnegative_float, metavar="S", help="compute window per step (seconds); overrides [timing]")
    p.add_argument("--window-per-token-s", type=nonnegative_float, metavar="S",
                   help="compute window per token (seconds); overrides [timing]")
    p.add_argument("--compute-s", type=nonnegative_float, metavar="S",
                   help="compute per step without stalls (seconds); overrides [timing] (default: the window)")
    p.add_argument("--compute-per-token-s", type=nonnegative_float, metavar="S",
                   help="compute per token without stalls (seconds); overrides [timing]")
    p.add_argument("--warm", metavar="PROFILE", help="also simulate every cache tier warm-started from this profile "
                   "(a .npy of requests per table row, or a trace file; not the measured trace, for an honest figure) "
                   "and report both cold-start figures and figures/warm_start.png|svg")
    p.add_argument("--first-steps", type=positive_int, default=100, metavar="N",
                   help="the cold-start window: steps whose hit rate and stall the summary reports (default 100)")
    _preset_option(p)
    common(p)

    p = add("sweep", "sweep policies x tier sizes (hit rate) and hierarchies (stall, CXL, cost)",
            "Run the [sweep] of an experiment file: hit rate per policy and size, stall per combination of "
            "tier sizes, a CXL tier at several latencies, and the cost frontier; parallel over cores.",
            SWEEP_EXAMPLES, run_sweep)
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--stages", type=name_list(SWEEP_STAGES), metavar="LIST", help=f"comma-separated subset of {','.join(SWEEP_STAGES)}")
    p.add_argument("--workers", type=positive_int, metavar="N", help="threads (default: [sweep] workers or every core)")
    _preset_option(p)
    common(p)

    p = add("plan", "split an HBM budget between KV cache and the Engram gpu tier for the most tokens/s",
            "For each batch of an experiment file's [plan] (or the options), reserve its KV cache from the HBM "
            "budget, give the rest to the Engram gpu tier, simulate the trace re-cut into steps of that batch, and "
            "report the split with the most tokens per second; then the cheapest other tiers within the stall budget.",
            PLAN_EXAMPLES, run_plan)
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--hbm-budget", metavar="SIZE", help="HBM shared by KV cache and Engram tier, e.g. 80GiB")
    p.add_argument("--kv-bytes-per-token", metavar="BYTES", help="the backbone's KV bytes per token (or a size)")
    p.add_argument("--context-len", type=positive_int, metavar="N", help="tokens of KV per sequence")
    p.add_argument("--batches", type=int_list, metavar="LIST", help="comma-separated batches to try")
    p.add_argument("--compute-s", type=nonnegative_float, metavar="S",
                   help="fixed compute per step (seconds), added to [timing] compute_per_token_s x tokens")
    p.add_argument("--no-cost", action="store_true", help="skip pricing the best split's other tiers")
    _preset_option(p)
    common(p)

    p = add("mrc", "miss-ratio curve of a trace: exact LRU and SHARDS",
            "The exact LRU miss-ratio curve (one pass, all sizes) against SHARDS sampled estimates over several "
            "hash seeds, with their error.", MRC_EXAMPLES, run_mrc)
    p.add_argument("trace", metavar="TRACE")
    p.add_argument("--shards", type=fraction, default=0.01, metavar="R", help="SHARDS sampling rate (default 0.01)")
    p.add_argument("--seeds", type=positive_int, default=5, metavar="N", help="SHARDS hash seeds (default 5)")
    p.add_argument("--sizes", type=size_list, metavar="LIST",
                   help="comma-separated sizes, rows or bytes such as 16MiB (default: 48 log-spaced sizes)")
    p.add_argument("--no-exact", action="store_true",
                   help="SHARDS only: skip the exact curve (and its error), for traces too long for an exact pass")
    common(p)

    _register_replay(subparsers)
    p = add("report", "write report.html and report.md for a run directory",
            "One self-contained HTML page (figures inlined as SVG, summary tables, configuration and "
            "machine) and a Markdown page, from a run directory.", REPORT_EXAMPLES, run_report)
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = add("quickstart", "the whole pipeline on the shipped sample text, with a report",
            "Text -> tokens -> row trace -> stats -> policy sweep -> hierarchy simulation with and without "
            "CXL -> cost frontier -> report, in a few minutes on two CPU cores.", QUICKSTART_EXAMPLES, run_quickstart)
    p.add_argument("--tiny", action="store_true", help="a few KB of text and a few sweep points (seconds)")
    common(p)


def _preset_option(p) -> None:
    p.add_argument("--preset", metavar="NAME", help="trace a published model's table (dsv41-flash, engram-27b, "
                   "engram-40b): replaces [trace]'s preset and table-shape keys (tokenizer, layers, heads, "
                   "max_ngram, table_size, row_bytes, engram_pad, seed, image_token)")


def _timing_overrides(args) -> dict:
    """[timing] keys the options replace: a window option replaces both window keys, a compute
    option both compute keys (one of each pair at most)."""
    timing = {}
    for per_step, per_token in (("window_s", "window_per_token_s"), ("compute_s", "compute_per_token_s")):
        given = [getattr(args, per_step), getattr(args, per_token)]
        if None not in given:
            raise EngramTierError(f"give --{per_step.replace('_', '-')} or --{per_token.replace('_', '-')}, not both")
        if given != [None, None]:
            timing.update({per_step: given[0], per_token: given[1]})
    return {"timing": timing} if timing else {}


def _say_assumptions(summary: dict) -> None:
    """Print what the numbers assume but the user did not say (one line each, on stderr)."""
    if summary.get("timing_assumption"):
        print(f"note: {summary['timing_assumption']}", file=sys.stderr)


def _arguments(args) -> dict:
    return {k: v for k, v in vars(args).items() if k != "run"}


def run_simulate(args) -> None:
    from engramtier.analysis.config import load_config
    from engramtier.trace.tracefile import TraceReader

    if args.hierarchy:
        if args.preset:
            raise EngramTierError("--preset shapes the trace an experiment file builds; with --hierarchy the "
                                  "trace file already has its shape: drop --preset or give an experiment file")
        cfg = load_config(args.hierarchy, need_trace=False, overrides=_timing_overrides(args))
        reader = TraceReader(args.path)  # streamed chunk by chunk: a trace larger than memory is fine
    else:
        cfg = load_config(args.path, overrides=_timing_overrides(args), preset=args.preset)
    # Imported once the inputs are read, so a bad file is refused before matplotlib loads.
    from engramtier.analysis.experiment import TRACE_FILE, build_trace
    from engramtier.analysis.report import write_report
    from engramtier.rundir import RunDir

    if args.hierarchy:
        with reader as trace:
            run = RunDir.create(args.out, "simulate", _arguments(args), cfg.to_dict(), trace.meta.get("fingerprint"))
            summary = _simulate_experiment(args, cfg, trace, run)
    else:
        run = RunDir.create(args.out, "simulate", _arguments(args), cfg.to_dict())
        trace = build_trace(cfg.trace, run.path / TRACE_FILE, not args.quiet)
        run.update_config(fingerprint=trace.meta.get("fingerprint"))
        summary = _simulate_experiment(args, cfg, trace, run)
    html, _ = write_report(run.path)
    sim = summary["simulation"]
    rate = sim.get("tokens_per_s")
    print(f"{run.path}: {sim['steps']} steps, stall fraction {sim['stall_fraction']:.4f}"
          + (f", {rate:,.0f} tokens/s" if rate else "") + "; served "
          + ", ".join(f"{t['name']} {t['served_share']:.1%}" for t in sim["tiers"]) + f"; report {html}")
    if "warm_start" in summary:
        print(_warm_line(summary["warm_start"], sim["tiers"][0]["name"]))
    if sim.get("deadline"):
        late = sim["deadline"]
        print(f"deadline-bounded fetch: {late['dropped_rows']:,} rows dropped ({late['dropped_fraction']:.2%} of lookups, "
              f"read as zero rows), stall {late['waiting_stall_seconds']:.4g} s -> "
              f"{late['waiting_stall_seconds'] - late['stall_saved_seconds']:.4g} s")


def _simulate_experiment(args, cfg, trace, run) -> dict:
    from engramtier.analysis.experiment import Experiment

    summary = Experiment(cfg, trace, run, not args.quiet, warm=args.warm, first_steps=args.first_steps) \
        .run_stages(["simulate"])
    _say_assumptions(summary)
    return summary


def _warm_line(warm: dict, top: str) -> str:
    """The cold-start figure, cold against warm, in one line."""
    cold, hot = warm["cold"], warm["warm"]
    return (f"first {cold['steps']} steps: {top} hit rate {cold['served_share'][top]:.1%} cold, "
            f"{hot['served_share'][top]:.1%} warm; stall {cold['stall_seconds'] * 1e3:.3g} ms cold, "
            f"{hot['stall_seconds'] * 1e3:.3g} ms warm ({warm['note']})")


def run_sweep(args) -> None:
    from engramtier.analysis.config import load_config

    cfg = load_config(args.config, overrides={"sweep": {"workers": args.workers}} if args.workers else None,
                      preset=args.preset)
    sw = cfg.sweep
    configured = {"hit_rate": bool(sw.sizes), "stall": bool(sw.tier_sizes), "cxl": bool(sw.cxl_latencies_ns)}
    configured["cost"] = configured["stall"] or configured["cxl"]
    stages = [s for s in SWEEP_STAGES if (s in args.stages if args.stages else configured[s])]  # cost goes last
    if "cost" in stages and not ({"stall", "cxl"} & set(stages)):
        raise EngramTierError("--stages cost prices the stall and cxl points: add stall or cxl to --stages")
    if not stages:
        raise EngramTierError(f"{args.config}: [sweep] defines nothing to sweep; give sizes, tier_sizes or cxl_latencies_ns")
    from engramtier.analysis.experiment import TRACE_FILE, Experiment, build_trace  # after the checks: see simulate
    from engramtier.analysis.tables import HIT_RATE_CSV
    from engramtier.analysis.report import write_report
    from engramtier.rundir import RunDir

    run = RunDir.create(args.out, "sweep", _arguments(args), cfg.to_dict())
    trace = build_trace(cfg.trace, run.path / TRACE_FILE, not args.quiet)
    run.update_config(fingerprint=trace.meta.get("fingerprint"))
    summary = Experiment(cfg, trace, run, not args.quiet).run_stages(stages, log=print)
    _say_assumptions(summary)
    html, _ = write_report(run.path)
    curves = ""
    if "hit_rate" in stages:
        curves = _print_curves(run.path / HIT_RATE_CSV)
    print(f"{run.path}: stages {', '.join(stages)}; {curves}report {html}")
    if "cost" in summary:
        from engramtier.analysis.cost import budget_line

        print(budget_line(summary["cost"]))


def _plan_overrides(args) -> dict:
    """[plan] and [timing] keys the plan options replace."""
    plan = {key: value for key, value in (("hbm_budget", args.hbm_budget), ("context_len", args.context_len),
                                          ("kv_bytes_per_token", args.kv_bytes_per_token), ("batches", args.batches))
            if value is not None}
    for key in ("hbm_budget", "kv_bytes_per_token"):  # bytes as an integer, or a size such as "80GiB"
        if isinstance(plan.get(key), str) and plan[key].strip().isdigit():
            plan[key] = int(plan[key])
    if args.batches is not None:
        plan["kv_fractions"] = []
    overrides = {"plan": plan} if plan else {}
    return overrides | ({"timing": {"compute_s": args.compute_s}} if args.compute_s is not None else {})


def run_plan(args) -> None:
    from engramtier.analysis.config import load_config

    cfg = load_config(args.config, overrides=_plan_overrides(args), preset=args.preset)
    from engramtier.analysis.plan import check_plan, run_plan as plan

    check_plan(cfg)  # a plan no batch fits in is refused before any folder or trace is made
    from engramtier.analysis.report import write_report  # after the checks: see simulate
    from engramtier.rundir import RunDir

    run = RunDir.create(args.out, "plan", _arguments(args), cfg.to_dict())
    summary = plan(cfg, run, not args.quiet, cost=not args.no_cost, log=print)
    _say_assumptions(summary)
    html, _ = write_report(run.path)
    print(f"{run.path}: report {html}")
    if "cost" in summary:
        from engramtier.analysis.cost import budget_line

        print(budget_line(summary["cost"]))


def run_mrc(args) -> None:
    from engramtier.analysis.config import size_to_rows
    from engramtier.trace.tracefile import TraceReader

    with TraceReader(args.trace) as trace:  # each curve is one streamed pass over the trace file
        sizes = None
        if args.sizes:
            sizes = sorted({size_to_rows(s, trace.row_bytes, f"--sizes item {s!r}") for s in args.sizes})
        from engramtier.analysis.experiment import mrc_stage, trace_summary  # after the checks: see simulate
        from engramtier.analysis.tables import MRC_CSV
        from engramtier.analysis.report import write_report
        from engramtier.rundir import RunDir

        run = RunDir.create(args.out, "mrc", _arguments(args), None, trace.meta.get("fingerprint"))
        summary = {"trace": trace_summary(trace),
                   "mrc": mrc_stage(trace, run, args.shards, args.seeds, sizes, exact=not args.no_exact,
                                    progress=not args.quiet)}
    run.write_summary(summary)
    html, _ = write_report(run.path)
    curves = _print_curves(run.path / MRC_CSV)
    m = summary["mrc"]
    error = ("no exact curve (--no-exact)" if m["shards_mean_abs_error"] is None else
             f"mean abs. error {m['shards_mean_abs_error']:.4f} (max {m['shards_max_abs_error']:.4f} over {args.seeds} seeds)")
    print(f"{run.path}: {m['sizes']} sizes, SHARDS R={args.shards:g} {error}; {curves}report {html}")


def _print_curves(csv_path) -> str:
    """Print the hit-rate table of the curves in ``csv_path`` (read back, so the screen shows what the
    file holds) and return the summary line's mention of the file."""
    from engramtier.analysis.tables import hit_rate_table, read_curves_csv

    print(hit_rate_table(read_curves_csv(csv_path)))
    return f"curves {csv_path}; "


def run_report(args) -> None:
    from engramtier.analysis.report import write_report

    html, md = write_report(args.run_dir)
    print(f"{html}\n{md}")


def run_quickstart(args) -> None:
    from engramtier.analysis.quickstart import quickstart

    quickstart(args.out, tiny=args.tiny, progress=not args.quiet)


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
    p.add_argument("--out", help="run directory for the results (default: runs/replay-<time>)")
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
    from pathlib import Path

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
    from engramtier.rundir import RunDir
    from engramtier.tiers.replay import random_run, random_stand_in_run, text_batches, warm_replay
    from engramtier.trace.build import StepPlan
    from engramtier.trace.sources import sample_text_dir

    text = args.text or str(sample_text_dir())
    plan = StepPlan(mode=args.mode, batch=args.batch, seq_len=args.seq_len, requests=args.requests,
                    prompt_len=args.prompt_len)
    out = RunDir.create(args.out, "replay", {k: v for k, v in vars(args).items() if not callable(v)})
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
    from engramtier.analysis.plots import replay_stall_figure
    from engramtier.tiers.replay import engram_only_replay, text_batches

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
