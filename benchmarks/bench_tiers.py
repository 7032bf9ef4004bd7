"""Storage-tier read throughput for the Engram access pattern, every tier side by side in one run.

Each step reads ``tokens x rows_per_token`` row ids drawn Zipf(1.0) over the table and scattered by a
fixed random permutation (hashing scatters hot n-grams across the table); the ids are deduplicated,
as the runtime does, and read from each tier:

    gpu-emulated   GpuTier on the CPU (no CUDA here), the whole table resident
    dram           DramTier, gathers threaded from `parallel_min_rows`; dram-serial forces one thread
    cxl-modeled    CxlTier with the default cxl TierModel: each read held to the modeled time
    nvme           LMDB table, warm (page cache and page-address cache filled) and cold (page cache
                   dropped with posix_fadvise, a fresh tier), readers 1 and 2, compression none / zstd /
                   zstd-dict at 16 KiB pages and zstd at 64 KiB, with and without the frequency-ordered
                   layout. Warm uncompressed reads never call LMDB (page addresses are cached), so
                   ``readers`` matters for cold reads and compressed pages only.

Two row formats: bf16[80] (160 B, 16 rows per token) and fp8_e4m3[256] + scales (264 B, 24 rows per
token). rows/s counts unique rows delivered; GB/s their bytes. Tables are built once into --dir and
reused (the build is resumable; delete the directory to rebuild).

With --device cuda a "gather" section compares the two ways rows of a pinned DramTier reach the GPU,
on a table of --gather-rows random rows (far larger than the GPU's L2, which could otherwise serve
repeated reads of host memory) and batches of 512, 4096 and 32768 tokens' unique rows:

    copy   a CPU gather into pinned staging, then one async copy (`DramTier`'s default)
    uva    the GPU gathers from the pinned slab over UVA (`gather="uva"`, `engramtier.tiers.uva`)

each timed end to end (from `read_async` to the device holding every batch), as rows/s, GB/s and a
fraction of the pinned host-to-device bandwidth measured by one large pinned ``copy_`` timed with CUDA
events. Without --device cuda the section says it was skipped. Prints one JSON object.

    python benchmarks/bench_tiers.py [--quick] [--device cuda] [--dir /tmp/engramtier-bench-tiers]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from engramtier.model.rows import RowFormat
from engramtier.provenance import machine_info
from engramtier.tiers.cxl import CxlTier
from engramtier.tiers.dram import DramTier
from engramtier.tiers.gpu import GpuTier
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import DATA_FILE, NvmeTier, drop_page_cache

FORMATS = {  # name: (format, dim, rows per token)
    "bf16x80": ("bf16", 80, 16),
    "fp8x256": ("fp8_e4m3", 256, 24),
}
NVME_TARGET_ROWS_PER_S = 500_000
GATHER_TOKENS = (512, 4096, 32768)
H2D_PROBE_BYTES = 1 << 30


def zipf_sampler(n_rows: int, seed: int):
    """Draw row ids whose popularity ranks follow Zipf(1.0), hot rows scattered over the table."""
    weights = 1.0 / np.arange(1, n_rows + 1)
    cdf = np.cumsum(weights / weights.sum())
    scatter = np.random.default_rng(seed).permutation(n_rows)
    rng = np.random.default_rng(seed + 1)

    def draw(n: int) -> np.ndarray:
        return scatter[np.minimum(np.searchsorted(cdf, rng.random(n)), n_rows - 1)]

    return draw


def resident_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache (mincore), to show a cold run really starts cold."""
    size = path.stat().st_size
    resident = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
        start = np.frombuffer(mapped, np.uint8).ctypes.data
        failed = libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(size), resident)
    return float("nan") if failed else float(np.mean(np.frombuffer(resident, np.uint8) & 1))


def timed_batches(read, batches, out, repeats):
    """Median over ``repeats`` passes of the seconds to read every batch (rows already deduplicated)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for ids in batches:
            read(ids, out[: ids.size])
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def rate(rows: int, seconds: float, row_bytes: int) -> dict:
    return {"seconds": seconds, "rows_per_s": rows / seconds, "GB_per_s": rows * row_bytes / seconds / 1e9}


def build_tables(root: Path, fmt_name: str, n_rows: int, variants: list[dict], profile: np.ndarray) -> list[dict]:
    kind, dim, _ = FORMATS[fmt_name]
    source = RandomRows(n_rows, kind, dim, seed=0)
    tables = []
    for compression, page_kib, profiled in variants:
        name = f"{fmt_name}-{n_rows}-{compression}-{page_kib}k{'-profiled' if profiled else ''}"
        path = root / name
        existed = (path / DATA_FILE).exists()
        start = time.perf_counter()
        summary = build_lmdb_table(source, path, profile=profile if profiled else None, compression=compression,
                                   page_kib=page_kib, progress=False)
        tables.append({
            "name": name, "path": str(path), "format": fmt_name, "rows": n_rows, "row_bytes": source.row_bytes,
            "compression": summary["compression"], "page_kib": page_kib, "profiled": profiled,
            "pages": summary["pages"], "page_rows": summary["page_rows"], "raw_bytes": summary["raw_bytes"],
            "disk_bytes": (path / DATA_FILE).stat().st_blocks * 512,
            "build_s": None if existed else time.perf_counter() - start,
        })
    return tables


def bench_cache_tiers(table: dict, batches, repeats: int, device: str) -> list[dict]:
    """gpu (emulated in host memory on --device cpu), dram, dram-serial and cxl-modeled, each holding the
    whole table; a gpu read delivers rows to host memory like the others."""
    n, rb = table["rows"], table["row_bytes"]
    everything = np.empty((n, rb), np.uint8)
    with NvmeTier(table["path"]) as nvme:
        for lo in range(0, n, 1 << 18):
            ids = np.arange(lo, min(lo + (1 << 18), n))
            nvme.read(ids, everything[lo : lo + ids.size])
    rows = sum(b.size for b in batches)
    out = np.empty((max(b.size for b in batches), rb), np.uint8)
    results = []
    makers = {
        "gpu" if device == "cuda" else "gpu-emulated": lambda: GpuTier(n, n, rb, device=device),
        "dram": lambda: DramTier(n, n, rb),
        "dram-serial": lambda: DramTier(n, n, rb, parallel_min_rows=1 << 62),
        "cxl-modeled": lambda: CxlTier(n, n, rb, binding="modeled"),
    }
    for name, make in makers.items():
        tier = make()
        tier.write_slots(np.arange(n), np.arange(n), everything)
        timed_batches(tier.read, batches[:2], out, 1)  # compile, touch
        seconds = timed_batches(tier.read, batches, out, repeats)
        entry = {"tier": name, "table": table["name"], **rate(rows, seconds, rb)}
        if name == "cxl-modeled":  # a read takes max(real gather, modeled time)
            modeled = sum(tier.model.fetch_seconds(b.size, rb) for b in batches)
            entry["modeled_rows_per_s"] = rows / modeled
            entry["binding"] = tier.stats()["binding"]
        results.append(entry)
        tier.close()
        del tier
    return results


def bench_nvme(table: dict, batches, repeats: int, readers_list, cold: bool) -> list[dict]:
    rows = sum(b.size for b in batches)
    rb = table["row_bytes"]
    out = np.empty((max(b.size for b in batches), rb), np.uint8)
    results = []
    for readers in readers_list:
        if cold:
            drop_page_cache(table["path"])
            before = resident_fraction(Path(table["path"]) / DATA_FILE)
            with NvmeTier(table["path"], readers=readers) as tier:
                seconds = timed_batches(tier.read, batches, out, 1)
                pages = tier.stats()["pages_read"]
            results.append({"tier": "nvme", "variant": "cold", "table": table["name"], "readers": readers,
                            "resident_before": before, "pages_per_batch": pages / len(batches),
                            **rate(rows, seconds, rb)})
        with NvmeTier(table["path"], readers=readers) as tier:
            timed_batches(tier.read, batches, out, 1)  # warm: page cache and page addresses
            p0 = tier.stats()["pages_read"]
            seconds = timed_batches(tier.read, batches, out, repeats)
            pages = (tier.stats()["pages_read"] - p0) / repeats
        results.append({"tier": "nvme", "variant": "warm", "table": table["name"], "readers": readers,
                        "pages_per_batch": pages / len(batches), **rate(rows, seconds, rb)})
    return results


def pinned_h2d_GB_per_s(repeats: int) -> float:
    """Bandwidth of one large pinned host -> device ``copy_`` (median of ``repeats``, CUDA events)."""
    host = torch.empty(H2D_PROBE_BYTES, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(H2D_PROBE_BYTES, dtype=torch.uint8, device="cuda")
    device.copy_(host, non_blocking=True)  # warm-up
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        device.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    return H2D_PROBE_BYTES / statistics.median(seconds) / 1e9


def to_device_seconds(tier: DramTier, batches, out, repeats: int) -> float:
    """Median over ``repeats`` passes of the seconds from the first `read_async` until every batch is on
    the device (reads queue on the tier's stream; the copy path's two staging buffers overlap gathers and
    copies)."""
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for ids in batches:
            tier.read_async(ids, out[: ids.size])
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def bench_gather(n_rows: int, n_batches: int, repeats: int) -> dict:
    """Rows of a pinned DramTier to the GPU, copy vs uva, against the pinned host-to-device bandwidth."""
    h2d = pinned_h2d_GB_per_s(max(repeats, 5))
    results = []
    for fmt_name, (kind, dim, per_token) in FORMATS.items():
        rb = RowFormat(kind, dim).row_bytes
        rows = torch.randint(0, 256, (n_rows, rb), dtype=torch.uint8).numpy()
        draw = zipf_sampler(n_rows, seed=2)
        batches_of = {tokens: [np.unique(draw(tokens * per_token)) for _ in range(n_batches)] for tokens in GATHER_TOKENS}
        for gather in ("copy", "uva"):  # the same batches through both
            tier = DramTier(n_rows, n_rows, rb, device="cuda", gather=gather)
            tier.write_slots(np.arange(n_rows), np.arange(n_rows), rows)
            for tokens, batches in batches_of.items():
                out = torch.empty((max(b.size for b in batches), rb), dtype=torch.uint8, device="cuda")
                to_device_seconds(tier, batches, out, 1)  # warm-up: kernels, staging buffers at full size
                seconds = to_device_seconds(tier, batches, out, repeats)
                last = batches[-1]
                entry = rate(sum(b.size for b in batches), seconds, rb)
                results.append({"format": fmt_name, "tokens": tokens, "gather": gather,
                                "unique_rows_per_batch": float(np.mean([b.size for b in batches])), **entry,
                                "fraction_of_pinned_h2d": entry["GB_per_s"] / h2d,
                                "equal": bool(np.array_equal(out[: last.size].cpu().numpy(), rows[last]))})
            tier.close()
            del tier
    return {"rows": n_rows, "pinned_h2d_GB_per_s": h2d, "h2d_probe_bytes": H2D_PROBE_BYTES, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small tables and few batches (about a minute)")
    parser.add_argument("--dir", default="/tmp/engramtier-bench-tiers", help="where the LMDB tables are built")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the gpu tier lives; cuda adds the copy vs uva gather comparison")
    parser.add_argument("--rows", type=int, default=None,
                        help="rows of every LMDB table (default 4M bf16 / 2M fp8, quick 200k / 100k)")
    parser.add_argument("--gather-rows", type=int, default=8_000_000, help="rows of the gather comparison's table")
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"bf16x80": 200_000, "fp8x256": 100_000} if args.quick else {"bf16x80": 4_000_000, "fp8x256": 2_000_000}
    if args.rows:
        sizes = dict.fromkeys(sizes, args.rows)
    token_counts = [512] if args.quick else [512, 4096]
    n_batches = 4 if args.quick else 12
    report = {"benchmark": "tiers", "quick": args.quick, "device": args.device, "zipf": 1.0, "batches": n_batches,
              "token_counts": token_counts, "tables": [], "results": []}
    for fmt_name, n_rows in sizes.items():
        draw = zipf_sampler(n_rows, seed=1)
        profile = np.bincount(draw(n_rows), minlength=n_rows).astype(np.float64)  # a separate profiling trace
        variants = [("none", 16, True), ("zstd:3", 16, True)]  # (compression, page KiB, frequency-ordered)
        if fmt_name == "bf16x80":
            variants += [("zstd-dict:3", 16, True), ("zstd:3", 64, True), ("none", 16, False)]
        tables = build_tables(root, fmt_name, n_rows, variants, profile)
        report["tables"] += tables
        per_token = FORMATS[fmt_name][2]
        for tokens in token_counts:
            lookups = tokens * per_token
            batches = [np.unique(draw(lookups)) for _ in range(n_batches)]
            shape = {"format": fmt_name, "tokens": tokens, "lookups_per_batch": lookups,
                     "unique_rows_per_batch": float(np.mean([b.size for b in batches]))}
            for entry in bench_cache_tiers(tables[0], batches, args.repeats, args.device):
                report["results"].append({**shape, **entry})
            for table in tables:
                readers_list = (1, 2) if table is tables[0] else (1,)
                for entry in bench_nvme(table, batches, args.repeats, readers_list, cold=True):
                    report["results"].append({**shape, **entry})
    warm = [r["rows_per_s"] for r in report["results"] if r["tier"] == "nvme" and r["variant"] == "warm"
            and r["table"].endswith("none-16k-profiled")]
    report["nvme_target"] = {"rows_per_s": NVME_TARGET_ROWS_PER_S, "warm_uncompressed_profiled_min": min(warm),
                             "met": min(warm) >= NVME_TARGET_ROWS_PER_S}
    report["gather"] = bench_gather(args.gather_rows, n_batches, args.repeats) if args.device == "cuda" \
        else "skipped: no CUDA (run with --device cuda on a GPU machine)"
    report["machine"] = machine_info()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
