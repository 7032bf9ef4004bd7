"""`engramtier simulate | sweep | plan | mrc | report | quickstart`: experiments into run directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engramtier.analysis.config import load_config, size_to_rows
from engramtier.analysis.cost import budget_line
from engramtier.analysis.executors import make_executor, parse_executor
from engramtier.analysis.experiment import TRACE_FILE, Experiment, build_trace, mini_stage, mrc_stage, trace_summary
from engramtier.analysis.plan import check_plan
from engramtier.analysis.plan import run_plan as plan
from engramtier.analysis.quickstart import quickstart
from engramtier.analysis.report import write_report
from engramtier.analysis.tables import HIT_RATE_CSV, MRC_CSV, hit_rate_table, read_curves_csv
from engramtier.argtypes import fraction, int_list, name_list, nonnegative_float, positive_int, size_list
from engramtier.cache.policy import check_policy
from engramtier.errors import EngramTierError
from engramtier.rundir import RunDir, add_out_options
from engramtier.trace.tracefile import TraceReader

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
  engramtier sweep my.toml --executor ray:auto   # the points as tasks on a running Ray cluster

Stages: hit_rate ([sweep] policies x sizes), stall ([sweep] tier_sizes), cxl ([sweep] cxl_latencies_ns),
cost (the stall and cxl points priced with [cost]); the default runs those the config defines.
The hit_rate stage prints a table of hit rates (policy x size) and writes RUN/hit_rate.csv beside
results.jsonl: columns policy,size_rows,size_bytes,hit_rate,miss_ratio.
Each point (a policy at a size, LRU's whole curve, a hierarchy) runs on a thread of every core
(--workers), or with --executor ray[:ADDRESS] as a Ray task (pip install 'engramtier[ray]'): the same
results, a task whose worker dies run again.
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
  engramtier mrc docs.trace --mini 0.01 --policy arc              # any policy, by miniature simulation
  engramtier mrc docs.trace --mini 0.01 --policy s3fifo --sweep   # and its exact curve, error and speed-up

Each curve is one streamed pass over the trace's dense keys: exact LRU keeps 8 bytes per distinct row
and 1.5 bits per request, SHARDS only its sample. Prints a table of hit rates and writes RUN/mrc.csv
(columns policy,size_rows,size_bytes,hit_rate,miss_ratio): policy lru is the exact curve, lru-shards
the mean of the SHARDS estimates over the seeds. --mini R --policy NAME: the rows whose global id hashes
below R form a sample, and the policy itself replays it at R x each size, once per salt (--seeds);
policy NAME-mini is the mean over the salts, NAME the exact curve (one pass for lru, --sweep for any).
A size whose miniature cache the policy refuses as too small (W-TinyLFU needs 100 rows) is left out.
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
            add_out_options(p)
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
    p.add_argument("--executor", default="local", metavar="WHERE",
                   help="where the sweep points run: local (threads, the default), ray (a Ray cluster on this "
                        "machine, or the one joined), ray:ADDRESS (a running cluster, e.g. ray:auto); needs "
                        "pip install 'engramtier[ray]'")
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

    p = add("mrc", "miss-ratio curve of a trace: exact LRU and SHARDS, or any policy by miniature simulation",
            "The exact LRU miss-ratio curve (one pass, all sizes) against SHARDS sampled estimates over several "
            "hash seeds, with their error; or, with --mini R --policy NAME, any policy's curve by miniature "
            "simulation over spatial samples of the rows.", MRC_EXAMPLES, run_mrc)
    p.add_argument("trace", metavar="TRACE")
    p.add_argument("--shards", type=fraction, metavar="R", help="SHARDS sampling rate (default 0.01)")
    p.add_argument("--mini", type=fraction, metavar="R",
                   help="miniature simulation at sampling rate R (e.g. 0.01) of --policy, instead of SHARDS")
    p.add_argument("--policy", metavar="NAME",
                   help="with --mini: the policy, a built-in or module:attribute (default lru)")
    p.add_argument("--sweep", action="store_true",
                   help="with --mini: also replay the whole trace at every size, the exact curve, for the "
                        "estimate's error and speed-up (as slow as sweep's hit-rate stage)")
    p.add_argument("--seeds", type=positive_int, default=5, metavar="N", help="hash seeds (salts) (default 5)")
    p.add_argument("--sizes", type=size_list, metavar="LIST",
                   help="comma-separated sizes, rows or bytes such as 16MiB (default: 48 log-spaced sizes)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="threads for --mini (default: every core)")
    p.add_argument("--no-exact", action="store_true",
                   help="skip the exact one-pass LRU curve (and the error against it), for traces too long for it")
    common(p)

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
    if args.hierarchy:
        if args.preset:
            raise EngramTierError("--preset shapes the trace an experiment file builds; with --hierarchy the "
                                  "trace file already has its shape: drop --preset or give an experiment file")
        cfg = load_config(args.hierarchy, need_trace=False, overrides=_timing_overrides(args))
        reader = TraceReader(args.path)  # streamed chunk by chunk: a trace larger than memory is fine
    else:
        cfg = load_config(args.path, overrides=_timing_overrides(args), preset=args.preset)
    if args.hierarchy:
        with reader as trace, RunDir.create(args.out, "simulate", _arguments(args), cfg.to_dict(),
                                            trace.meta.get("fingerprint"), force=args.force, stages=["simulate"]) as run:
            summary = _simulate_experiment(args, cfg, trace, run)
            html, _ = write_report(run.path)
    else:
        with RunDir.create(args.out, "simulate", _arguments(args), cfg.to_dict(), force=args.force,
                           stages=["trace", "simulate"]) as run:
            trace = build_trace(cfg.trace, run.path / TRACE_FILE, not args.quiet)
            run.update_config(fingerprint=trace.meta.get("fingerprint"))
            run.stage_done("trace")
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
    cfg.check_stages(stages)  # an empty list a stage sweeps is refused before any folder or trace is made


    if parse_executor(args.executor)[0] == "ray" and args.workers:  # a typo is refused before the trace is built
        raise EngramTierError("--workers counts this machine's threads; a Ray cluster runs the points on its own CPUs: "
                              "leave --workers out with --executor ray")
    with RunDir.create(args.out, "sweep", _arguments(args), cfg.to_dict(), force=args.force,
                       stages=["trace", *stages]) as run:
        trace = build_trace(cfg.trace, run.path / TRACE_FILE, not args.quiet)
        run.update_config(fingerprint=trace.meta.get("fingerprint"))
        run.stage_done("trace")
        executor = make_executor(args.executor, cfg.sweep.workers)
        try:
            print(f"sweep points on {executor.describe()}")
            summary = Experiment(cfg, trace, run, not args.quiet, executor=executor).run_stages(stages, log=print)
        finally:
            executor.close()
        _say_assumptions(summary)
        html, _ = write_report(run.path)
    curves = ""
    if "hit_rate" in stages:
        curves = _print_curves(run.path / HIT_RATE_CSV)
    print(f"{run.path}: stages {', '.join(stages)}; {curves}report {html}")
    if "cost" in summary:

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
    cfg = load_config(args.config, overrides=_plan_overrides(args), preset=args.preset)

    check_plan(cfg)  # a plan no batch fits in is refused before any folder or trace is made

    with RunDir.create(args.out, "plan", _arguments(args), cfg.to_dict(), force=args.force, stages=["plan"]) as run:
        summary = plan(cfg, run, not args.quiet, cost=not args.no_cost, log=print)
        run.stage_done("plan")
        _say_assumptions(summary)
        html, _ = write_report(run.path)
    print(f"{run.path}: report {html}")
    if "cost" in summary:

        print(budget_line(summary["cost"]))


def _mrc_mode(args) -> str:
    """'mini' or 'shards', refusing options that belong to the other mode."""
    if args.mini is None:
        for given, option in ((args.policy, "--policy"), (args.sweep, "--sweep"), (args.workers, "--workers")):
            if given:
                raise EngramTierError(f"{option} needs --mini R (a policy's curve by miniature simulation); "
                                      "SHARDS and the exact one-pass curve are LRU's")
        return "shards"
    if args.shards is not None:
        raise EngramTierError("--shards and --mini are two ways to estimate the curve; give one of them")
    if args.sweep and args.no_exact:
        raise EngramTierError("--sweep computes the exact curve and --no-exact skips it; give one of them")

    check_policy(args.policy or "lru", "--policy", search=(Path.cwd(),))
    return "mini"


def run_mrc(args) -> None:
    mode = _mrc_mode(args)
    with TraceReader(args.trace) as trace:  # each curve is one streamed pass over the trace file
        sizes = None
        if args.sizes:
            sizes = sorted({size_to_rows(s, trace.row_bytes, f"--sizes item {s!r}") for s in args.sizes})

        with RunDir.create(args.out, "mrc", _arguments(args), None, trace.meta.get("fingerprint"), force=args.force,
                           stages=[mode if mode == "mini" else "mrc"]) as run:
            summary = {"trace": trace_summary(trace)}
            if mode == "mini":
                summary["mini"] = mini_stage(trace, run, args.policy or "lru", args.mini, args.seeds, sizes,
                                             exact=not args.no_exact, full_sweep=args.sweep, workers=args.workers,
                                             progress=not args.quiet)
            else:
                rate = 0.01 if args.shards is None else args.shards
                summary["mrc"] = mrc_stage(trace, run, rate, args.seeds, sizes, exact=not args.no_exact,
                                           progress=not args.quiet)
            run.write_summary(summary)
            run.stage_done(mode if mode == "mini" else "mrc")
            html, _ = write_report(run.path)
    curves = _print_curves(run.path / MRC_CSV)
    if mode == "mini":
        m = summary["mini"]
        error = ("no exact curve (give --sweep)" if m["mean_abs_error_per_seed"] is None else
                 f"mean abs. error {m['mean_abs_error_per_seed']:.4f} per salt (max {m['max_abs_error_per_seed']:.4f}), "
                 f"{m['mean_curve_abs_error']:.4f} for their mean")
        speed = "" if m["speedup"] is None else f" ({m['exact']}: {m['exact_seconds']:.2f} s, {m['speedup']:.1f}x)"
        print(f"{run.path}: {m['policy']} by miniature simulation, R={m['rate']:g}, {args.seeds} salts, "
              f"{m['estimated_sizes']} of {m['sizes']} sizes estimated; {error}; {m['mini_seconds']:.2f} s{speed}; "
              f"{curves}report {html}")
        return
    m = summary["mrc"]
    error = ("no exact curve (--no-exact)" if m["shards_mean_abs_error"] is None else
             f"mean abs. error {m['shards_mean_abs_error']:.4f} (max {m['shards_max_abs_error']:.4f} over {args.seeds} seeds)")
    print(f"{run.path}: {m['sizes']} sizes, SHARDS R={m['shards_rate']:g} {error}; {curves}report {html}")


def _print_curves(csv_path) -> str:
    """Print the hit-rate table of the curves in ``csv_path`` (read back, so the screen shows what the
    file holds) and return the summary line's mention of the file."""

    print(hit_rate_table(read_curves_csv(csv_path)))
    return f"curves {csv_path}; "


def run_report(args) -> None:
    missing = RunDir.open(args.run_dir).missing_stages()
    html, md = write_report(args.run_dir)
    if missing:
        print(f"engramtier report: {args.run_dir} is incomplete: its command did not finish stage(s) "
              f"{', '.join(missing)}; the report shows what it holds; run the same command again to finish it",
              file=sys.stderr)
    print(f"{html}\n{md}")


def run_quickstart(args) -> None:
    quickstart(args.out, tiny=args.tiny, progress=not args.quiet, force=args.force)
