"""Miss-ratio curves: one-pass exact LRU curve vs one libCacheSim LRU run per size, and SHARDS.

Trace: Zipf(alpha) over ``--ids`` row ids (ids permuted, so popularity is not id order; seeded),
``--requests`` requests. Sizes: ``--sizes`` log-spaced from 0.1% to 20% of the ids. In the same run:
- our exact LRU curve (Mattson stack distances, one pass) against ``libcachesim.LRU.process_trace``
  once per size on the same trace written as an oracleGeneral file; hit counts must be equal;
- our LRU replayed once per size (`sweep`, all cores) for scale;
- SHARDS fixed-rate at R = 0.01 and 0.001, and fixed-size (s_max = 8192): time and mean absolute
  error (MAE) of the miss ratio against the exact curve, over several hash seeds.
Our one-pass time is the best of ``--repeats`` runs after compilation; libCacheSim's is one run of
every size. Prints one JSON object.

    python benchmarks/bench_mrc.py [--quick]
"""

import argparse
import json
import math
import os
import tempfile
import time
from importlib.metadata import version

import libcachesim as lcs
import numpy as np

from engramtier.cache.mrc import lru_mrc, shards_mrc, sweep
from engramtier.cache.policy import PolicyContext
from engramtier.provenance import machine_info
from engramtier.trace.export import export_oracle_general
from engramtier.trace.rowtrace import RowTrace


def zipf_trace(n_ids: int, n_requests: int, alpha: float, seed: int) -> np.ndarray:
    """Row ids drawn from a Zipf(alpha) popularity over ``n_ids`` ids, ranks mapped to permuted ids."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_ids + 1) ** alpha)
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n_requests) * cdf[-1]), n_ids - 1)
    return rng.permutation(n_ids)[ranks]


def write_oracle_general(path: str, keys: np.ndarray, n_ids: int) -> None:
    """``keys`` as libCacheSim's oracleGeneral file, by the package's own exporter (one request per
    step, so each record's time is its position; size 1)."""
    export_oracle_general(RowTrace(keys, np.arange(keys.size + 1, dtype=np.int64), n_ids, 1, {}), path, object_size=1)

def libcachesim_lru_hits(path: str, size: int) -> int:
    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    cache = lcs.LRU(size, hashpower=max(4, math.ceil(math.log2(size)) + 1))
    miss_ratio, _ = cache.process_trace(reader)
    return round((1.0 - miss_ratio) * reader.get_num_of_req())


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5_000_000)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--sizes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of the trace")
    parser.add_argument("--shards-seeds", type=int, default=5, help="hash seeds per SHARDS configuration")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many one-pass runs")
    parser.add_argument("--quick", action="store_true", help="500k requests over 100k ids")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.ids = 500_000, 100_000

    keys = zipf_trace(args.ids, args.requests, args.alpha, args.seed)
    sizes = np.unique(np.geomspace(0.001 * args.ids, 0.2 * args.ids, args.sizes).astype(np.int64))

    lru_mrc(keys[:1000], sizes[:2])  # compile (cached on disk after the first run)
    shards_mrc(keys[:1000], sizes[:2], rate=0.5)
    shards_mrc(keys[:1000], sizes[:2], rate=0.5, s_max=8)
    exact_runs = [timed(lru_mrc, keys, sizes) for _ in range(args.repeats)]
    exact, exact_s = exact_runs[0][0], min(seconds for _, seconds in exact_runs)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.oracleGeneral.bin")
        write_oracle_general(path, keys, args.ids)
        lcs_hits, lcs_s = timed(lambda: np.array([libcachesim_lru_hits(path, int(s)) for s in sizes]))
    mismatches = int(np.count_nonzero(lcs_hits != exact.hits))

    ctx = PolicyContext(n_keys=args.ids)
    replayed, sweep_s = timed(sweep, keys, "lru", sizes, ctx, workers=os.cpu_count())

    result = {
        "benchmark": "mrc",
        "requests": args.requests,
        "ids": args.ids,
        "alpha": args.alpha,
        "n_sizes": int(sizes.size),
        "sizes": [int(sizes[0]), int(sizes[-1])],
        "exact_lru_one_pass_s": exact_s,
        "exact_lru_one_pass_runs_s": [seconds for _, seconds in exact_runs],
        "libcachesim_lru_per_size_s": lcs_s,
        "speedup_vs_libcachesim": lcs_s / exact_s,
        "hits_equal_libcachesim": mismatches == 0,
        "sizes_with_different_hits": mismatches,
        "our_lru_sweep_s": sweep_s,
        "our_lru_sweep_workers": os.cpu_count(),
        "hits_equal_our_sweep": bool(np.array_equal(replayed.hits, exact.hits)),
        "miss_ratio_range": [float(exact.miss_ratios[-1]), float(exact.miss_ratios[0])],
        "shards": [],
    }
    for rate, s_max in ((0.01, None), (0.001, None), (1.0, 8192)):
        curves, seconds = [], []
        for seed in range(args.shards_seeds):  # which keys the hash picks decides much of the error
            curve, elapsed = timed(shards_mrc, keys, sizes, rate=rate, s_max=s_max, seed=seed)
            curves.append(curve.with_error(exact))
            seconds.append(elapsed)
        errors = [c.error for c in curves]
        result["shards"].append({
            "method": curves[0].method, "seconds_best": min(seconds), "seeds": len(curves),
            "mae_miss_ratio_mean": float(np.mean(errors)), "mae_miss_ratio_min": min(errors),
            "mae_miss_ratio_max": max(errors),
            "max_abs_error_seed0": float(np.max(np.abs(curves[0].miss_ratios - exact.miss_ratios))),
        })
    result["libcachesim"] = version("libcachesim")
    result["machine"] = machine_info()
    print(json.dumps(result, indent=2))
    assert mismatches == 0, "exact LRU curve differs from libCacheSim"


if __name__ == "__main__":
    main()
