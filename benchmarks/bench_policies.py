"""Throughput of the online policies against libCacheSim 0.3.5, on the same Zipf trace.

A Zipf(alpha = 1.0) trace of 5M requests over 1M ids (popularity ranks shuffled over the ids, seeded)
is replayed at 1%, 5% and 10% of the ids by each policy here (`replay`, compiled beforehand) and by
libCacheSim's ``process_trace`` over the same trace written as an oracleGeneral file (hash table
sized to the cache); best of 3 each, alternating. Hit counts must be equal; the speedup is their
time over ours. ``--quick`` replays 500k requests. Prints one JSON object (progress on stderr).

    python benchmarks/bench_policies.py [--quick] [--policies lru,arc]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import libcachesim as lcs
import numba
import numpy as np

from engramtier.cache.policy import PolicyContext, make_policy, replay

N_IDS = 1_000_000
SIZES = (0.01, 0.05, 0.10)
LIBCACHESIM = {
    "lru": lcs.LRU, "fifo": lcs.FIFO, "clock": lcs.Clock, "lfu": lcs.LFU, "sieve": lcs.Sieve,
    "arc": lcs.ARC, "twoq": lcs.TwoQ, "s3fifo": lcs.S3FIFO, "wtinylfu": lcs.WTinyLFU,
}


def zipf_trace(n_req: int, n_ids: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_ids + 1) ** alpha)
    ranks = np.searchsorted(cdf / cdf[-1], rng.random(n_req))
    return rng.permutation(n_ids)[np.minimum(ranks, n_ids - 1)].astype(np.int64)


def write_oracle_general(keys: np.ndarray, path: str) -> None:
    """24-byte records <I Q I q: time, id, size 1, next access (-1: no policy here reads it)."""
    rec = np.empty(keys.size, np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")]))
    rec["time"], rec["id"], rec["size"], rec["next"] = np.arange(keys.size), keys, 1, -1
    rec.tofile(path)


def measure(name: str, capacity: int, keys: np.ndarray, hits: np.ndarray, path: str) -> dict:
    """Best of 3 runs each, ours and libCacheSim's alternating so that a change in machine load
    (other processes) weighs on both alike; each run starts from an empty cache."""
    ctx = PolicyContext(n_keys=N_IDS)
    replay(make_policy(name, capacity, ctx), keys[:1000], hits[:1000])  # compile outside the timing
    hashpower = max(1, math.ceil(math.log2(capacity)) + 1)
    ours_s = theirs_s = math.inf
    for _ in range(3):
        policy = make_policy(name, capacity, ctx)
        start = time.perf_counter()
        our_hits = replay(policy, keys, hits)
        ours_s = min(ours_s, time.perf_counter() - start)

        cache = LIBCACHESIM[name](capacity, hashpower=hashpower)
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
        start = time.perf_counter()
        miss_ratio, _ = cache.process_trace(reader)
        theirs_s = min(theirs_s, time.perf_counter() - start)
        their_hits = round((1.0 - miss_ratio) * keys.size)
    return {
        "policy": name, "capacity": capacity,
        "hits": our_hits, "libcachesim_hits": their_hits, "hits_equal": our_hits == their_hits,
        "requests_per_s": round(keys.size / ours_s), "libcachesim_requests_per_s": round(keys.size / theirs_s),
        "speedup": round(theirs_s / ours_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500k requests instead of 5M")
    parser.add_argument("--policies", default=",".join(LIBCACHESIM), help="comma-separated policy names")
    args = parser.parse_args()

    n_req = 500_000 if args.quick else 5_000_000
    load_before = os.getloadavg()
    keys = zipf_trace(n_req, N_IDS, 1.0, seed=2601_07372)
    hits = np.empty(n_req, np.bool_)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "zipf.oracleGeneral.bin")
        write_oracle_general(keys, path)
        for name in args.policies.split(","):
            for fraction in SIZES:
                r = measure(name, int(N_IDS * fraction), keys, hits, path)
                results.append(r)
                print(f"{name:9s} {r['capacity']:7d}  {r['requests_per_s'] / 1e6:6.1f} vs "
                      f"{r['libcachesim_requests_per_s'] / 1e6:5.1f} Mreq/s x{r['speedup']:4.1f}  hits {r['hits']} "
                      f"{'==' if r['hits_equal'] else '!='} {r['libcachesim_hits']}", file=sys.stderr)

    print(json.dumps({
        "benchmark": "policies",
        "trace": {"kind": "zipf", "alpha": 1.0, "requests": n_req, "ids": N_IDS, "seed": 2601_07372},
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "libcachesim": lcs.__version__,
            # other processes on the machine slow both sides; the runs alternate so the ratio is fairer
            "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "results": results,
        "all_hits_equal": all(r["hits_equal"] for r in results),
        "min_speedup": min(r["speedup"] for r in results),
    }, indent=1))


if __name__ == "__main__":
    main()
