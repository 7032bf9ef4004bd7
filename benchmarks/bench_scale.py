"""Simulation at production scale: memory and speed against table rows, up to DeepSeek-V4.1-Flash's table.

One real-text trace (the Python 3.11 docs from Debian's python3.11-doc, DeepSeek's tokenizer; ~3M tokens
x 48 rows = ~140M requests) is hashed with the DeepSeek-V4.1-Flash layout (layers 1 and 14, orders 2..4,
8 heads, fp8[256] + scales rows of 264 B) at three table sizes: ~1M, ~100M and the real 768,022,850 rows.
Each is simulated through a 3-tier inclusive hierarchy (gpu S3-FIFO -> dram LRU -> nvme), streamed from
the trace file on dense keys (`engramtier simulate --hierarchy`'s path), and, side by side, on global
row ids with policy state over the whole table (what engramtier did before dense keys). Each run is its
own child process, so peak RSS is that run's alone (`wait4`).

Then a synthetic trace of 1B requests (Zipf(1.0) tokens over DeepSeek's 99,092 compressed ids through
the same 768M-row layout) goes through `engramtier mrc --shards 0.001 --no-exact`, streamed.

    python benchmarks/bench_scale.py [--quick] [--workdir DIR] [--skip-billion] [--skip-global]

``--quick`` hashes a tenth of the text and 50M synthetic requests. Prints one JSON object; progress on
stderr. Trace files are built once into the work directory and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TEXT = Path("/usr/share/doc/python3.11/html/_sources")
LAYOUT = ["--layers", "1,14", "--max-ngram", "4", "--heads", "8", "--row-bytes", "264"]
TABLES = {"1M": 20_834, "100M": 2_083_334, "768M": 16_000_000}  # rows per order: x 48 sub-tables
HIERARCHY = """[hierarchy]
mode = "inclusive"
[[hierarchy.tier]]
name = "gpu"
capacity = {gpu}
policy = "s3fifo"
model = "hbm"
[[hierarchy.tier]]
name = "dram"
capacity = {dram}
policy = "lru"
model = "dram"
[[hierarchy.tier]]
name = "nvme"
model = "nvme"
[timing]
window_per_token_s = 3e-6
compute_per_token_s = 50e-6
"""


def log(msg: str) -> None:
    print(f"[bench_scale] {msg}", file=sys.stderr, flush=True)


def run_child(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_scale: {' '.join(args[:4])} ... failed with status {status}")
    return seconds, usage.ru_maxrss * 1024, out


def engramtier(*args: str) -> list[str]:
    return [sys.executable, "-m", "engramtier.cli", *args]


def build_trace(path: Path, source: list[str], table_size: int) -> dict:
    if not path.exists():
        log(f"building {path.name}")
        seconds, rss, _ = run_child(engramtier("trace", *source, "-o", str(path), *LAYOUT,
                                               "--table-size", str(table_size), "--quiet"))
        path.with_suffix(".build.json").write_text(json.dumps({"seconds": seconds, "peak_rss_bytes": rss}))
    return json.loads(path.with_suffix(".build.json").read_text())


def tier_sizes(table_rows: int) -> dict:
    """gpu 256 MiB and dram 4 GiB of 264-byte rows, or an eighth and a half of a smaller table."""
    return {"gpu": min(256 * 2**20 // 264, table_rows // 8), "dram": min(4 * 2**30 // 264, table_rows // 2)}


def child_simulate(trace_path: str, hierarchy_path: str, ids: str) -> None:
    """Simulate in this process and print {seconds, requests, hits}: dense keys streamed from the file,
    or global row ids with every policy sized by the table (the path before dense keys)."""
    import numpy as np

    from engramtier.analysis.config import load_config
    from engramtier.analysis.sweep import step_seconds
    from engramtier.cache.engine import Engine, unique_per_step
    from engramtier.cache.policy import PolicyContext
    from engramtier.cache.simulator import simulate
    from engramtier.trace.tracefile import TraceReader

    cfg = load_config(hierarchy_path, need_trace=False)
    with TraceReader(trace_path) as reader:
        window, compute = step_seconds(reader, cfg.timing)
        start = time.perf_counter()
        if ids == "dense":
            result = simulate(reader, cfg.hierarchy, compute_window_s=window, step_compute_s=compute, progress=False)
            hits = [t["hits"] for t in result.tier_totals]
        else:
            n = reader.n_table_rows
            ctx = PolicyContext(n_keys=n)
            engine = Engine(cfg.hierarchy.build_policies(ctx, reader.row_bytes), cfg.hierarchy.mode, n,
                            cfg.hierarchy.build_admissions(ctx, reader.row_bytes))
            stamp, done = np.full(n, -1, np.int64), 0
            for chunk in reader.chunks():
                keys, ts = np.empty(chunk.rows.size, np.int64), np.empty(chunk.rows.size, np.int64)
                starts = np.empty(chunk.step_counts.size + 1, np.int64)
                m = unique_per_step(chunk.rows, chunk.step_starts, chunk.first_row, stamp, done, keys, ts, starts)
                done += m
                engine.feed(keys[:m], ts[:m], starts)
            hits = engine.counters[:, 1].tolist() + [engine.store_lookups]
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "requests": reader.n_rows, "hits": hits}))


def simulate_both(trace: Path, table: str, skip_global: bool, workdir: Path) -> dict:
    from engramtier.trace.tracefile import TraceReader

    with TraceReader(trace) as reader:
        n_rows, n_requests, n_distinct = reader.n_table_rows, reader.n_rows, reader.n_distinct
    sizes = tier_sizes(n_rows)
    hierarchy = workdir / f"hierarchy-{table}.toml"
    hierarchy.write_text(HIERARCHY.format(**sizes))
    record = {"table_rows": n_rows, "requests": n_requests, "distinct_rows": n_distinct, "tier_rows": sizes}
    for ids in ("dense",) if skip_global else ("dense", "global"):
        log(f"simulate {table} table, {ids} ids")
        wall, rss, out = run_child([sys.executable, __file__, "child-simulate", str(trace), str(hierarchy), ids])
        child = json.loads(out)
        record[ids] = {"peak_rss_bytes": rss, "process_seconds": wall, "simulate_seconds": child["seconds"],
                       "requests_per_s": n_requests / child["seconds"], "hits": child["hits"]}
    if not skip_global:
        record["hits_equal"] = record["dense"]["hits"] == record["global"]["hits"]
        record["rss_ratio_global_over_dense"] = record["global"]["peak_rss_bytes"] / record["dense"]["peak_rss_bytes"]
        record["speedup_dense_over_global"] = record["dense"]["requests_per_s"] / record["global"]["requests_per_s"]
    return record


def billion(workdir: Path, n_requests: int) -> dict:
    trace = workdir / f"zipf-{n_requests}.trace"
    tokens = n_requests // 48
    build = build_trace(trace, ["--synthetic-zipf", "1.0", "--vocab", "99092", "--tokens", str(tokens),
                                "--seq-len", "4096", "--batch", "4"], TABLES["768M"])
    log(f"mrc --shards on {trace.name}")
    wall, rss, out = run_child(engramtier("mrc", str(trace), "--shards", "0.001", "--seeds", "1", "--no-exact",
                                          "--out", str(workdir / "mrc-run"), "--quiet"))
    from engramtier.trace.tracefile import TraceReader

    with TraceReader(trace) as reader:
        counts = {"requests": reader.n_rows, "table_rows": reader.n_table_rows, "distinct_rows": reader.n_distinct}
    return {**counts, "file_bytes": trace.stat().st_size, "trace_build": build,
            "mrc": {"seconds": wall, "peak_rss_bytes": rss, "requests_per_s": counts["requests"] / wall,
                    "output": out.strip()}}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child-simulate":
        child_simulate(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default="/tmp/engramtier-bench-scale")
    parser.add_argument("--skip-billion", action="store_true")
    parser.add_argument("--skip-global", action="store_true", help="no global-id comparison runs")
    args = parser.parse_args()
    if not TEXT.is_dir():
        raise SystemExit(f"bench_scale: {TEXT} is missing; install Debian's python3.11-doc (apt-get install python3.11-doc)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    text = [str(TEXT / "library")] if args.quick else [str(TEXT)]
    results = {}
    for table, per_order in TABLES.items():
        trace = workdir / f"docs-{'quick-' if args.quick else ''}{table}.trace"
        build = build_trace(trace, text, per_order)
        results[table] = {"trace_build": build, **simulate_both(trace, table, args.skip_global, workdir)}
    out = {
        "benchmark": "scale",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "text": text,
        "hierarchy": "gpu s3fifo -> dram lru -> nvme, inclusive (tier rows per table below)",
        "tables": results,
    }
    if not args.skip_billion:
        out["billion"] = billion(workdir, 50_000_000 if args.quick else 1_000_000_000)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
