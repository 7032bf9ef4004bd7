"""Remote tier vs the local nvme tier (LMDB, warm) for the Engram access pattern, side by side in one run.

Each step reads ``tokens x 16`` row ids of 160 B (bf16[80]) drawn Zipf(1.0) over the table and scattered
by a fixed permutation, deduplicated as the runtime does; every store serves the same batches in the
same run: warm LMDB; one redis-server; a 3-shard Redis Cluster (one pipeline per shard); Mooncake
Store (a master and one store process, TCP) when its package is installed. Stores are throwaway processes on loopback ports, populated from
the LMDB table with `populate_remote`; `calibrate_remote` fits the Redis TierModel, shown next to the
default (RDMA-class) one. Loopback measures the client and server software path, not a network.
Prints one JSON object.

    python benchmarks/bench_remote.py [--quick] [--dir /tmp/engramtier-bench-remote]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
from bench_tiers import rate, timed_batches, zipf_sampler

from engramtier.provenance import machine_info
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import calibrate_remote, open_remote, populate_remote
from engramtier.tiers.remote.redis import RedisTier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mooncake_fixture import MooncakeStore, mooncake_missing  # noqa: E402 (the tests' throwaway stores)
from redis_servers import Cluster, Server  # noqa: E402

ROWS_PER_TOKEN = 16


def redis_stores(url: str, cluster_url: str, n_rows: int, row_bytes: int, fingerprint: str) -> list[tuple[str, Any]]:
    """(name, tier) for the single server and for the cluster."""
    single = RedisTier(url, n_table_rows=n_rows, row_bytes=row_bytes, fingerprint=fingerprint, key_prefix="bench")
    sharded = RedisTier(cluster_url, cluster=True, n_table_rows=n_rows, row_bytes=row_bytes, fingerprint=fingerprint,
                        key_prefix="bench")
    return [("redis", single), ("redis-cluster-3-shards", sharded)]


def mooncake_store(workdir: Path, n_rows: int, row_bytes: int, fingerprint: str) -> tuple[Any, list]:
    """A throwaway Mooncake Store (master + one store client, TCP) and a tier on it; none when the
    package is not installed (the result says why)."""
    missing = mooncake_missing()
    if missing:
        return missing, []
    store = MooncakeStore(workdir / "mooncake", segment_bytes=max(64 << 20, 2 * n_rows * row_bytes))
    tier = open_remote(store.storage(key_prefix="bench"), n_table_rows=n_rows, row_bytes=row_bytes,
                       fingerprint=fingerprint)
    return store, [("mooncake-tcp", tier)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small table, few batches")
    parser.add_argument("--dir", default="/tmp/engramtier-bench-remote", help="where the LMDB table is built")
    args = parser.parse_args()
    n_rows = 1 << 17 if args.quick else 1 << 20
    token_counts = (256, 4096) if args.quick else (256, 4096, 16384)
    steps, repeats = (4, 2) if args.quick else (16, 3)

    source = RandomRows(n_rows, "bf16", 80, seed=0)
    path = Path(args.dir) / f"bf16x80-{n_rows}"
    build_lmdb_table(source, path, progress=False)
    draw = zipf_sampler(n_rows, seed=1)
    result = {"benchmark": "remote", "machine": machine_info(), "rows": n_rows, "row_bytes": source.row_bytes,
              "rows_per_token": ROWS_PER_TOKEN, "steps": steps, "repeats": repeats, "results": []}

    workdir = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    (workdir / "cluster").mkdir()
    server, cluster = Server(workdir), Cluster(workdir / "cluster")
    stores: list[tuple[str, Any]] = []
    mooncake = None
    try:
        with NvmeTier(path) as nvme:
            fingerprint = nvme.manifest["fingerprint"]
            stores = redis_stores(server.url, cluster.url, n_rows, source.row_bytes, fingerprint)
            mooncake, tiers = mooncake_store(workdir, n_rows, source.row_bytes, fingerprint)
            stores += tiers
            if isinstance(mooncake, str):
                result["mooncake_skipped"] = mooncake
            result["stores"] = {}
            for name, tier in stores:
                start = time.perf_counter()
                written = populate_remote(nvme, tier, progress=False)
                result["stores"][name] = {"populate_rows_per_s": written / (time.perf_counter() - start) if written
                                          else None, **{k: v for k, v in tier.stats().items() if k.endswith("_bytes")}}
            result["redis"] = {"server_version": redis.Redis.from_url(server.url).info("server")["redis_version"],
                               "client_version": redis.__version__}
            for tokens in token_counts:
                batches = [np.unique(draw(tokens * ROWS_PER_TOKEN)) for _ in range(steps)]
                rows = sum(b.size for b in batches)
                out = np.empty((max(b.size for b in batches), source.row_bytes), np.uint8)
                check = np.empty_like(out)
                nvme.read(batches[0], check[: batches[0].size])
                for name, tier in [("nvme-warm", nvme), *stores]:
                    tier.read(batches[0], out[: batches[0].size])
                    assert np.array_equal(out[: batches[0].size], check[: batches[0].size]), f"{name}: rows differ"
                    timed_batches(tier.read, batches, out, 1)  # warm the page cache / connections
                    seconds = timed_batches(tier.read, batches, out, repeats)
                    result["results"].append({"tier": name, "tokens": tokens, "unique_rows_per_step": rows / steps,
                                              **rate(rows, seconds, source.row_bytes)})
            model = calibrate_remote(stores[0][1], sizes=(1, 64, 1024, 4096, 16384), repeats=repeats)
            result["remote_model"] = {"calibrated": model.to_dict(), "default": stores[0][1].model.to_dict()}
        nvme_rate = {r["tokens"]: r["rows_per_s"] for r in result["results"] if r["tier"] == "nvme-warm"}
        for r in result["results"]:
            r["vs_nvme_warm"] = r["rows_per_s"] / nvme_rate[r["tokens"]]
    finally:
        for _, tier in stores:
            tier.close()
        server.kill()
        cluster.kill()
        if isinstance(mooncake, MooncakeStore):
            mooncake.stop()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
