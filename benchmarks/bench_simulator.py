"""Throughput of the multi-tier simulator, inclusive against exclusive, on one Engram-shaped Zipf trace.

A Zipf(alpha = 1.0) trace of 5M row requests over an 8M-row table of 160-B rows (bf16[80]; popularity
ranks shuffled over the ids, seeded), cut into steps of 512 tokens x 16 rows, is simulated through
gpu (LRU, 32 MiB, hbm) -> dram (LRU, 128 MiB, dram) -> nvme (the store) in both modes, compiled
beforehand on a prefix; best of 3 each, alternating. For scale, the same trace's tier 0 alone through
`replay` (no dedup, no lower tiers) is timed too. ``--quick`` uses 500k requests. Prints one JSON
object (progress on stderr).

    python benchmarks/bench_simulator.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numba
import numpy as np

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.cache.simulator import simulate
from engramtier.trace.rowtrace import RowTrace

N_ROWS = 8_000_000
ROW_BYTES = 160
ROWS_PER_TOKEN = 16
TOKENS_PER_STEP = 512
WINDOW_S = 1e-3


def zipf_trace(n_req: int, seed: int = 0) -> RowTrace:
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, N_ROWS + 1))
    ranks = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n_req)), N_ROWS - 1)
    rows = rng.permutation(N_ROWS)[ranks].astype(np.int64)
    starts = np.append(np.arange(0, n_req, ROWS_PER_TOKEN * TOKENS_PER_STEP), n_req).astype(np.int64)
    return RowTrace(rows, starts, N_ROWS, ROW_BYTES, {"rows_per_token": ROWS_PER_TOKEN, "source": "zipf(1.0)"})


def hierarchy(mode: str) -> Hierarchy:
    return Hierarchy.from_dict({"mode": mode, "tier": [
        {"name": "gpu", "capacity": "32MiB", "policy": "lru", "model": "hbm"},
        {"name": "dram", "capacity": "128MiB", "policy": "lru", "model": "dram"},
        {"name": "nvme", "model": "nvme"},
    ]})


def prefix(trace: RowTrace, n_steps: int) -> RowTrace:
    starts = trace.step_starts[: n_steps + 1]
    return RowTrace(trace.rows[: starts[-1]], starts, trace.n_table_rows, trace.row_bytes, trace.meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500k requests instead of 5M")
    args = parser.parse_args()
    n_req = 500_000 if args.quick else 5_000_000
    trace = zipf_trace(n_req)
    modes = ("inclusive", "exclusive")
    for mode in modes:  # compile the drivers outside the timing
        simulate(prefix(trace, 2), hierarchy(mode), compute_window_s=WINDOW_S, progress=False)
    best = dict.fromkeys(modes, math.inf)
    results = {}
    for _ in range(3):
        for mode in modes:
            start = time.perf_counter()
            results[mode] = simulate(trace, hierarchy(mode), compute_window_s=WINDOW_S, progress=False)
            best[mode] = min(best[mode], time.perf_counter() - start)

    ctx = PolicyContext(n_keys=N_ROWS)
    tier0_rows = hierarchy("inclusive").capacities(N_ROWS, ROW_BYTES)[0]
    replay(make_policy("lru", tier0_rows, ctx), trace.rows[:1000])
    replay_s = math.inf
    for _ in range(3):
        policy = make_policy("lru", tier0_rows, ctx)
        start = time.perf_counter()
        replay(policy, trace.rows)
        replay_s = min(replay_s, time.perf_counter() - start)

    out = {
        "benchmark": "simulator",
        "machine": {
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
        },
        "trace": {"requests": n_req, "table_rows": N_ROWS, "row_bytes": ROW_BYTES, "steps": trace.n_steps,
                  "zipf_alpha": 1.0, "rows_per_step": ROWS_PER_TOKEN * TOKENS_PER_STEP},
        "window_s": WINDOW_S,
        "tier0_replay_requests_per_s": round(n_req / replay_s),
    }
    for mode in modes:
        summary = results[mode].summary()
        out[mode] = {
            "seconds": round(best[mode], 4),
            "requests_per_s": round(n_req / best[mode]),
            "lookups": summary["lookups"],
            "hit_rate": {t["name"]: round(t["hit_rate"], 4) for t in summary["tiers"]},
            "served_share": {t["name"]: round(t["served_share"], 4) for t in summary["tiers"]},
            "stall_fraction": round(summary["stall_fraction"], 4),
            "simulated_tokens_per_s": round(summary["tokens_per_s"]),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
