"""Order-aware placement on real text: one shared LRU vs LRU partitioned by n-gram order, at equal rows.

Trace: the experiment file's [trace] (default the shipped sample, engramtier/data/experiment.toml:
DeepSeek tokenizer, 2 layers x 8 heads, table_size 100,003), optionally with ``--max-ngram``. At each
size, over every request of the trace (the single-tier hit-rate stage of `engramtier sweep`):

- shared       one LRU of ``size`` rows (exact one-pass curve, `lru_mrc`)
- fixed        `partitioned` with fixed shares proportional to each order's distinct rows
- profile      `partitioned` with ``shares = "profile"`` (greedy on the per-order exact LRU curves)

Both partitioned caches are replayed through the policy itself (a plain Python policy: its speed is
reported), and each hit count is checked against the sum of the per-order LRU curves at its shares.
Writes a run directory with the per-order hit-rate figure; prints one JSON object.

    python benchmarks/bench_order_aware.py [--max-ngram 4] [--out runs/order_aware]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from engramtier.analysis.config import load_config, size_to_rows
from engramtier.analysis.experiment import build_trace
from engramtier.analysis.plots import order_hit_rate_figure
from engramtier.cache.mrc import lru_mrc
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.provenance import machine_info
from engramtier.rundir import RunDir
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.stats import trace_stats

DEFAULT_SIZES = ["256KiB", "1MiB", "4MiB", "16MiB", "64MiB"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "engramtier/data/experiment.toml"))
    ap.add_argument("--max-ngram", type=int, help="override the file's max_ngram (orders 2..N)")
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--out", default="runs/order_aware", help="run directory for the figure and results")
    args = ap.parse_args()

    overrides = {"trace": {"max_ngram": args.max_ngram}} if args.max_ngram else None
    cfg = load_config(args.config, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trace = build_trace(cfg.trace, Path(tmp) / "t.trace", progress=False)
    layout = SubtableLayout.from_meta(trace.meta, trace.n_table_rows, "bench")
    keys = trace.dense_keys()
    ctx = PolicyContext(n_keys=trace.n_distinct, keys=keys, step_starts=trace.step_starts,
                        n_table_rows=trace.n_table_rows, row_ids=trace.row_ids(), layout=layout)
    by_order = trace_stats(trace).stats_dict()["subtables"]["by_order"]
    order = layout.order_of(trace.row_ids())[keys]
    curves = {o: lru_mrc(keys[order == o]).hits for o in layout.orders}  # hits at 1, 2, ... rows

    def order_hits(o: int, rows: int) -> int:
        return 0 if rows == 0 else int(curves[o][min(rows, curves[o].size) - 1])

    distinct = {o["order"]: o["unique_rows"] for o in by_order}
    fixed = {str(o): d / sum(distinct.values()) for o, d in distinct.items()}
    sizes = [size_to_rows(s, trace.row_bytes, "--sizes", trace.n_table_rows) for s in args.sizes]
    shared = lru_mrc(keys, sizes).hits
    results, records = [], []
    replay(make_policy("lru", sizes[0], ctx), keys[:1000])  # compile first: time the replay alone
    lru_t = time.perf_counter()
    replay(make_policy("lru", sizes[0], ctx), keys)
    lru_s = time.perf_counter() - lru_t
    for size, shared_hits in zip(sizes, shared, strict=True):
        row = {"size_rows": size, "size_bytes": size * trace.row_bytes, "shared_lru": int(shared_hits) / keys.size}
        for name, shares in (("fixed", fixed), ("profile", "profile")):
            policy = make_policy("partitioned", size, ctx, shares=shares)
            start = time.perf_counter()
            hits = replay(policy, keys)
            seconds = time.perf_counter() - start
            assert hits == sum(order_hits(o, r) for o, r in policy.rows.items()), "partitioned != per-order LRU"
            row[f"partitioned_{name}"] = hits / keys.size
            row[f"{name}_rows"] = policy.rows
            row[f"{name}_ns_per_request"] = seconds / keys.size * 1e9
        results.append(row)
        records += [{"curve": "shared lru", "size_rows": size, "hit_rate": row["shared_lru"]},
                    {"curve": "partitioned, fixed shares (by distinct rows)", "size_rows": size,
                     "hit_rate": row["partitioned_fixed"]},
                    {"curve": "partitioned, profile shares", "size_rows": size, "hit_rate": row["partitioned_profile"]}]
        for o in layout.orders:
            requests = int((order == o).sum())
            records.append({"curve": f"order {o}", "size_rows": size, "hit_rate": order_hits(o, size) / requests})
    summary = {
        "trace": {"requests": int(keys.size), "unique_rows": trace.n_distinct, "row_bytes": trace.row_bytes,
                  "orders": list(layout.orders), "layers": list(layout.layer_ids), "heads": layout.n_heads,
                  "tokenizer": trace.meta.get("tokenizer")},
        "by_order": [{k: o[k] for k in ("order", "requests", "unique_rows", "reuse", "zipf_alpha")} for o in by_order],
        "fixed_shares": fixed,
        "results": results,
        "compiled_lru_ns_per_request": lru_s / keys.size * 1e9,
        "machine": machine_info(),
    }
    run = RunDir.create(args.out, "bench_order_aware", vars(args))
    run.append(records)
    run.write_summary(summary)
    summary["figures"] = [str(p) for p in run.save_figure(order_hit_rate_figure(records, trace.row_bytes), "order_hit_rate")]
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
