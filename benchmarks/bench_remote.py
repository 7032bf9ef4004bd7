"""Remote tier (Redis on loopback) vs the local nvme tier (LMDB, warm) for the Engram access pattern.

Each step reads ``tokens x 16`` row ids of 160 B (bf16[80]) drawn Zipf(1.0) over the table and scattered
by a fixed permutation, deduplicated as the runtime does; both tiers serve the same batches in the same
run. A throwaway redis-server (no persistence) is started on a free loopback port and populated from
the LMDB table with `populate_remote`; `calibrate_remote` fits the remote TierModel, shown next to the
default (RDMA-class) one. Loopback Redis measures the client and server software path, not a network.
Prints one JSON object.

    python benchmarks/bench_remote.py [--quick] [--dir /tmp/engramtier-bench-remote]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from bench_tiers import rate, timed_batches, zipf_sampler
from engramtier.provenance import machine_info
from engramtier.tiers.build import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.redis_store import RedisTier
from engramtier.tiers.remote import calibrate_remote, populate_remote

ROWS_PER_TOKEN = 16


def start_redis(workdir: str) -> tuple[subprocess.Popen, str, str]:
    """A throwaway redis-server (no persistence) on a free loopback port: (process, url, server version)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                               "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    for _ in range(250):
        try:
            version = client.info("server")["redis_version"]
            return server, url, version
        except redis.ConnectionError:
            time.sleep(0.02)
    server.kill()
    raise SystemExit(f"redis-server did not start on {url}")


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

    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server, url, version = start_redis(workdir)
    try:
        with NvmeTier(path) as nvme, RedisTier(url, n_table_rows=n_rows, row_bytes=source.row_bytes,
                                              fingerprint=nvme.manifest["fingerprint"], key_prefix="bench") as remote:
            start = time.perf_counter()
            populate_remote(nvme, remote, progress=False)
            populate_s = time.perf_counter() - start
            result["redis"] = {"server_version": version, "client_version": redis.__version__,
                               "populate_rows_per_s": n_rows / populate_s,
                               "server_used_memory_bytes": remote.stats()["server_used_memory_bytes"]}
            for tokens in token_counts:
                batches = [np.unique(draw(tokens * ROWS_PER_TOKEN)) for _ in range(steps)]
                rows = sum(b.size for b in batches)
                out = np.empty((max(b.size for b in batches), source.row_bytes), np.uint8)
                check = np.empty_like(out)
                nvme.read(batches[0], check[: batches[0].size])
                remote.read(batches[0], out[: batches[0].size])
                assert np.array_equal(out[: batches[0].size], check[: batches[0].size]), "remote rows differ"
                for name, tier in (("nvme-warm", nvme), ("remote-redis-loopback", remote)):
                    timed_batches(tier.read, batches, out, 1)  # warm the page cache / connection
                    seconds = timed_batches(tier.read, batches, out, repeats)
                    result["results"].append({"tier": name, "tokens": tokens,
                                              "unique_rows_per_step": rows / steps,
                                              **rate(rows, seconds, source.row_bytes)})
            model = calibrate_remote(remote, sizes=(1, 64, 1024, 4096, 16384), repeats=repeats)
            result["remote_model"] = {"calibrated": model.to_dict(), "default": remote.model.to_dict()}
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
