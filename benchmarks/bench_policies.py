"""Throughput of the policies against libCacheSim 0.3.5, on the same Zipf trace.

A Zipf(alpha = 1.0) trace of 5M requests over 1M ids (popularity ranks shuffled over the ids, seeded)
is replayed at 1%, 5% and 10% of the ids by each policy here (`replay`, compiled beforehand) and by
libCacheSim's ``process_trace`` over the same trace written as an oracleGeneral file (hash table
sized to the cache); best of 3 each, alternating. Hit counts must be equal (randomised policies, `RANDOMISED`:
the gap in hit ratio is reported); the speedup is their
time over ours. CLOCK-Pro has no libCacheSim policy to time against (`UNREFERENCED`): it is timed alone.

Belady needs the future. libCacheSim reads it from the file's next-access field (the position of the
next request for the same id, -1 for none, written by our own exporter,
`engramtier.trace.export.export_oracle_general`), so its timing excludes computing it. Ours computes next uses (and the occurrence
index for demoted rows) once per trace, in `PolicyContext.derived`, and every size reuses them: the
replay is timed like ``process_trace``, the one-off pass separately (``next_use_s``, best of 3 on a
fresh context), and ``end_to_end_speedup`` charges that whole pass to each size.

``--quick`` replays 500k requests. Prints one JSON object (progress on stderr); ``--merge FILE``
also writes it into a results file, replacing that file's rows for the policies run and keeping the
others (each with the load average of the run that measured it), so one policy can be rerun alone.

    python benchmarks/bench_policies.py [--quick] [--policies lru,arc] [--merge results/policies.json]
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
from engramtier.trace.export import export_oracle_general
from engramtier.trace.rowtrace import RowTrace

N_IDS = 1_000_000
SIZES = (0.01, 0.05, 0.10)
LIBCACHESIM = {
    "lru": lcs.LRU, "fifo": lcs.FIFO, "clock": lcs.Clock, "lfu": lcs.LFU, "sieve": lcs.Sieve,
    "arc": lcs.ARC, "twoq": lcs.TwoQ, "s3fifo": lcs.S3FIFO, "wtinylfu": lcs.WTinyLFU, "belady": lcs.Belady,
    "slru": lcs.SLRU, "random": lcs.Random, "lruprob": lcs.LRUProb, "hyperbolic": lcs.Hyperbolic, "lecar": lcs.LeCaR,
    "lhd": lcs.LHD, "lfuda": lcs.LFUDA,
    "clock2qplus": lcs.Clock2QPlus, "lirs": lcs.LIRS, "lruk": lcs.LRUK, "mq": lcs.MQ, "cacheus": lcs.Cacheus,
}
# built-ins with no libCacheSim policy to time against, and why: timed alone (no speed-up, no hits compared)
UNREFERENCED = {"clockpro": "libCacheSim 0.3.5's ClockPro never evicts (tests/test_policies_vs_libcachesim.py)"}
ORDER = [*LIBCACHESIM, *UNREFERENCED]
OFFLINE = {"belady"}  # policies that read the future from the context's trace
# policies that draw random numbers: their hits agree with libCacheSim's in distribution, not exactly
# (tests/test_policies_vs_libcachesim.py bounds the difference over seeds); reported as a hit-ratio gap
RANDOMISED = {"random", "lruprob", "hyperbolic", "lecar", "lhd", "cacheus"}


def zipf_trace(n_req: int, n_ids: int, alpha: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_ids + 1) ** alpha)
    ranks = np.searchsorted(cdf / cdf[-1], rng.random(n_req))
    return rng.permutation(n_ids)[np.minimum(ranks, n_ids - 1)].astype(np.int64)


def write_oracle_general(path: str, keys: np.ndarray, n_ids: int) -> None:
    """``keys`` as libCacheSim's oracleGeneral file, by the package's own exporter (one request per
    step, so each record's time is its position; size 1)."""
    export_oracle_general(RowTrace(keys, np.arange(keys.size + 1, dtype=np.int64), n_ids, 1, {}), path, object_size=1)

def prepared_context(name: str, keys: np.ndarray) -> tuple[PolicyContext, float]:
    """The context every size of ``name`` is built from, and the seconds its one-off passes over the
    trace take (0 for an online policy, which needs none): best of 3, each on a fresh context."""
    sample = keys[:1000]
    # 200 rows: the least LIRS accepts (a 2-row HIR queue)
    replay(make_policy(name, 200, PolicyContext(n_keys=N_IDS, keys=sample)), sample, np.empty(sample.size, np.bool_))
    if name not in OFFLINE:
        return PolicyContext(n_keys=N_IDS), 0.0
    best = math.inf
    for _ in range(3):
        ctx = PolicyContext(n_keys=N_IDS, keys=keys)
        start = time.perf_counter()
        make_policy(name, 1, ctx)  # fills ctx.derived: next uses, occurrence index
        best = min(best, time.perf_counter() - start)
    return ctx, best


def measure(name: str, capacity: int, ctx: PolicyContext, keys: np.ndarray, hits: np.ndarray, path: str) -> dict:
    """Best of 3 runs each, ours and libCacheSim's alternating so that a change in machine load
    (other processes) weighs on both alike; each run starts from an empty cache. A policy without a
    libCacheSim reference (`UNREFERENCED`) is timed alone."""
    hashpower = max(1, math.ceil(math.log2(capacity)) + 1)
    ours_s = theirs_s = math.inf
    for _ in range(3):
        policy = make_policy(name, capacity, ctx)
        start = time.perf_counter()
        our_hits = replay(policy, keys, hits)
        ours_s = min(ours_s, time.perf_counter() - start)
        if name in UNREFERENCED:
            continue

        cache = LIBCACHESIM[name](capacity, hashpower=hashpower)
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
        start = time.perf_counter()
        miss_ratio, _ = cache.process_trace(reader)
        theirs_s = min(theirs_s, time.perf_counter() - start)
        their_hits = round((1.0 - miss_ratio) * keys.size)
    if name in UNREFERENCED:
        return {"policy": name, "capacity": capacity, "hits": our_hits, "seconds": round(ours_s, 4),
                "requests_per_s": round(keys.size / ours_s), "no_reference": UNREFERENCED[name]}
    agreement = ({"hit_ratio_gap": round(abs(our_hits - their_hits) / keys.size, 4)} if name in RANDOMISED
                 else {"hits_equal": our_hits == their_hits})
    return {
        "policy": name, "capacity": capacity,
        "hits": our_hits, "libcachesim_hits": their_hits, **agreement,
        "seconds": round(ours_s, 4), "libcachesim_seconds": round(theirs_s, 4),
        "requests_per_s": round(keys.size / ours_s), "libcachesim_requests_per_s": round(keys.size / theirs_s),
        "speedup": round(theirs_s / ours_s, 2),
    }


def progress(r: dict) -> str:
    if "no_reference" in r:
        return f"{r['policy']:9s} {r['capacity']:7d}  {r['requests_per_s'] / 1e6:6.1f} Mreq/s  hits {r['hits']} (no reference)"
    line = (f"{r['policy']:9s} {r['capacity']:7d}  {r['requests_per_s'] / 1e6:6.1f} vs "
            f"{r['libcachesim_requests_per_s'] / 1e6:5.1f} Mreq/s x{r['speedup']:4.1f}  hits {r['hits']} "
            + (f"vs {r['libcachesim_hits']} (randomised: gap {r['hit_ratio_gap']:.4f})" if "hit_ratio_gap" in r
               else f"{'==' if r['hits_equal'] else '!='} {r['libcachesim_hits']}"))
    if "next_use_s" in r:
        line += f"  (+{r['next_use_s']:.3f} s next uses: x{r['end_to_end_speedup']:.1f} end to end)"
    return line


def merged(run: dict, path: str) -> dict:
    """``run`` plus the rows of results file ``path`` for the policies it did not measure; each kept
    row carries the load average of the run that measured it."""
    with open(path) as f:
        earlier = json.load(f)
    if earlier["trace"] != run["trace"]:
        sys.exit(f"--merge {path}: that file measured trace {earlier['trace']}, this run {run['trace']}")
    ran = {r["policy"] for r in run["results"]}
    load = earlier["machine"]["load_average_1m_before_after"]
    kept = [dict(r, load_average_1m_before_after=r.get("load_average_1m_before_after", load))
            for r in earlier["results"] if r["policy"] not in ran]
    results = sorted(kept + run["results"], key=lambda r: ORDER.index(r["policy"]))
    return dict(run, results=results, all_hits_equal=all(r.get("hits_equal", True) for r in results),
                min_speedup=min(r["speedup"] for r in results if "speedup" in r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500k requests instead of 5M")
    parser.add_argument("--policies", default=",".join(ORDER), help="comma-separated policy names")
    parser.add_argument("--merge", metavar="FILE", help="also write the results into this results file")
    args = parser.parse_args()

    n_req = 500_000 if args.quick else 5_000_000
    load_before = os.getloadavg()
    keys = zipf_trace(n_req, N_IDS, 1.0, seed=2601_07372)
    hits = np.empty(n_req, np.bool_)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "zipf.oracleGeneral.bin")
        write_oracle_general(path, keys, N_IDS)
        for name in args.policies.split(","):
            ctx, next_use_s = prepared_context(name, keys)
            for fraction in SIZES:
                r = measure(name, int(N_IDS * fraction), ctx, keys, hits, path)
                if name in OFFLINE:
                    r["next_use_s"] = round(next_use_s, 4)
                    r["end_to_end_speedup"] = round(r["libcachesim_seconds"] / (next_use_s + r["seconds"]), 2)
                results.append(r)
                print(progress(r), file=sys.stderr)

    run = {
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
        "all_hits_equal": all(r.get("hits_equal", True) for r in results),  # the deterministic policies
        "min_speedup": min((r["speedup"] for r in results if "speedup" in r), default=None),
    }
    if args.merge:
        run = merged(run, args.merge)
        with open(args.merge, "w") as f:
            f.write(json.dumps(run, indent=1) + "\n")
    print(json.dumps(run, indent=1))


if __name__ == "__main__":
    main()
