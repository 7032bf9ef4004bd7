"""The runtime at DeepSeek-V4.1-Flash's scale: what opening costs, what a step costs, what the store reads.

The parts of `bench_runtime.py` that need no model (``--parts state,steps,store``):

state   memory and time to open a `TieredTable` over a computed store (`engramtier.tiers.computed`:
        rows computed from their ids, so no disk) of 1M..768M rows, with the same caches: each in a
        fresh process, RSS after imports and a warm-up open of a tiny table (the one-time cost of
        loading kernels), then after opening the table; slabs are allocated untouched, so the RSS
        growth is the bookkeeping. First, ``fresh_memory``: seconds to write 1 GiB of memory new
        to a process (see `fresh_memory`).
steps   the time from `prefetch` to `wait` of a step whose rows are all cached (in gpu (emulated) and
        dram tiers), by step size, side by side with the same number of rows gathered from a flat
        in-memory table through `FlatRowSource` (the flat model's own row source, torch's
        `index_select`) and with numpy's `take`; and the step's rows per second as a fraction of one
        thread's memcpy bandwidth. The sides alternate in rounds; in each round a side runs once
        (``first_step``: its caches as the other sides left them, a 64k-row step's policy and slot maps
        mostly evicted; the runtime's first `RECOVERY_SHOWN` steps are reported one by one) and then at
        least `STEADY_REPEATS` times, whose median is its time (its own working set in the CPU caches,
        as between the forward passes of a GPU server, where the CPU runs little else); medians over
        rounds. Both sides use the threads they use by default (the runtime's largest steps copy on a
        helper thread while they decide, torch shares its gather among its threads); the JSON says how
        many cores the machine has. Steps of distinct random rows are the worst case (every row is a
        lookup); ``text-prefill`` is a real prefill step: DeepSeek-V4.1-Flash's rows (its preset's
        hashing, 48 per token) of 1,365 tokens of the shipped sample text, 65,520 requests of which the
        repeated n-grams make fewer unique rows.
store   rows per second of the LMDB store reading a step's rows (uniformly random: no two on one page
        by design), warm (in the page cache) and cold (dropped from it before every read), for 1 and
        several reader threads, side by side with a plain loop over the same pages in sorted order
        (one LMDB get and one copy per page, the simplest correct reader).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path

import numba
import numpy as np
import torch

from engramtier.model.rowsource import FlatRowSource
from engramtier.tiers.computed import ComputedStore
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import DATA_FILE, NvmeTier, drop_page_cache, open_environment
from engramtier.tiers.open import tiered_table
from engramtier.tiers.pages import PAGE_KEY, rows_offset

ROW_BYTES = 264  # DeepSeek-V4.1-Flash's fp8 rows
# Steps of a side per round after its first: on the 2-core VM a 64k-row step whose maps and rows another
# side has pushed out of the CPU caches takes ~10 steps to come back to its steady time
# (``tiered_first_steps_us``; by hand, the same after a 256 MiB memcpy or 20 ms asleep, not after 20 ms
# of arithmetic), so fewer would time the way back rather than the step.
STEADY_REPEATS = 20
RECOVERY_SHOWN = 12  # a round's first steps of the runtime, reported one by one (``tiered_first_steps_us``)
V41_ROWS = 768_022_850


def caches(gpu: str, dram: str) -> dict:
    return {"mode": "inclusive", "tier": [{"name": "gpu", "capacity": gpu, "policy": "s3fifo", "model": "hbm"},
                                          {"name": "dram", "capacity": dram, "policy": "lru", "model": "dram"},
                                          {"name": "store", "model": "nvme"}]}


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _open_cost(n_rows: int, gpu: str, dram: str) -> dict:
    """In a fresh process: RSS and seconds to open a table of ``n_rows`` computed rows."""
    start = time.perf_counter()
    tiered_table(caches("64KiB", "256KiB"), ComputedStore(10_000, ROW_BYTES), device="cpu").close()
    first_open_s = time.perf_counter() - start  # what the first table of a process pays: loading kernels
    before = _rss()
    start = time.perf_counter()
    table = tiered_table(caches(gpu, dram), ComputedStore(n_rows, ROW_BYTES), device="cpu")
    seconds = time.perf_counter() - start
    after = _rss()
    capacity = [tier.capacity_rows for tier in table.caches]
    table.close()
    return {"table_rows": n_rows, "open_s": round(seconds, 3), "first_open_in_process_s": round(first_open_s, 2),
            "rss_before_mib": round(before / 2**20),
            "rss_after_mib": round(after / 2**20), "rss_growth_mib": round((after - before) / 2**20),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
            "cache_rows": capacity}


def _write_fresh_memory() -> dict:
    """Seconds to write 1 GiB of memory new to the process, then 1 GiB again once that is freed."""
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        block = np.ones(1 << 30, np.uint8)
        seconds.append(round(time.perf_counter() - start, 3))
        del block
    return {"first_GiB_s": seconds[0], "again_GiB_s": seconds[1]}


def fresh_memory() -> dict:
    """`_write_fresh_memory` in a fresh process. Run before the opens: on a VM whose hypervisor backs
    guest memory only when first written (the 2-core VM: 3.5-9 s per GiB, then 0.16), a table's open
    writing its maps would otherwise time the hypervisor; the figure says what it was."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_write_fresh_memory)


def state(rows: list[int], configs: list[tuple[str, str]]) -> list[dict]:
    spawn = multiprocessing.get_context("spawn")
    out = []
    for gpu, dram in configs:
        for n in rows:
            if n * ROW_BYTES <= _bytes(gpu) + _bytes(dram):
                continue  # caches this size need a larger table
            with spawn.Pool(1) as pool:
                out.append({"gpu": gpu, "dram": dram, **pool.apply(_open_cost, (n, gpu, dram))})
    return out


def _bytes(size: str) -> int:
    from engramtier.cache.hierarchy import parse_size

    return parse_size(size)


def _timed_us(fn, calls: int) -> np.ndarray:
    """µs of each of ``calls`` calls in a row."""
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1e6
    return times


def memcpy_bandwidth() -> float:
    """One thread's copy bandwidth (bytes copied per second) on a 256 MiB buffer."""
    src = np.ones(1 << 28, np.uint8)
    dst = np.empty_like(src)
    return src.nbytes / (np.median(_timed_us(lambda: np.copyto(dst, src), 6)[1:]) / 1e6)


def text_prefill_rows(tokens: int = 1365) -> np.ndarray:
    """DeepSeek-V4.1-Flash's row ids for the first ``tokens`` tokens of the shipped sample text."""
    from engramtier.model.hashing import NgramHasher
    from engramtier.model.presets import preset_hash_config
    from engramtier.model.tokenizer import load_compressed_tokenizer
    from engramtier.trace.sources import sample_text_dir
    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(sample_text_dir().glob("*.txt")))
    ids = load_compressed_tokenizer("deepseek").encode(text[: 20 * tokens])[:tokens]
    return NgramHasher(preset_hash_config("dsv41-flash")).hash(ids).reshape(-1)


def steps(sizes: list[int], n_rows: int, rounds: int, seed: int = 0) -> dict:
    """Steps of cached rows vs a flat gather of as many rows, by step size; then a real prefill step."""
    rng = np.random.default_rng(seed)
    table = tiered_table(caches("256MiB", "2GiB"), ComputedStore(n_rows, ROW_BYTES), device="cpu")
    flat_rows = 1 << 21  # 528 MiB: larger than any CPU cache, like the slabs
    flat = FlatRowSource(torch.from_numpy(rng.integers(0, 256, (flat_rows, ROW_BYTES), dtype=np.uint8)))
    bandwidth = memcpy_bandwidth()
    prefill = text_prefill_rows()
    cases = [("distinct", rng.choice(table.caches[0].capacity_rows * 4, n, replace=False)) for n in sizes]
    out = []
    for case, ids in [*cases, ("text-prefill", prefill)]:
        cached = torch.from_numpy(ids)
        n = ids.size
        flat_ids = torch.from_numpy(rng.integers(0, flat_rows, ids.size))
        for _ in range(3):  # into the caches (and the slabs' pages), and every kernel warm
            table.prefetch(cached).wait()
        assert table.stats()["tiers"][0]["hit_rate"] > 0
        repeats = max(STEADY_REPEATS, min(200, (1 << 16) // n))
        runs = {"tiered": [], "flat": [], "take": []}
        slab = flat.rows.numpy()
        for _ in range(rounds):  # alternated, so both see the same machine
            runs["tiered"].append(_timed_us(lambda cached=cached: table.prefetch(cached).wait(), repeats + 1))
            runs["flat"].append(_timed_us(lambda flat_ids=flat_ids: flat.prefetch(flat_ids).wait(), repeats + 1))
            runs["take"].append(_timed_us(lambda flat_ids=flat_ids, slab=slab: np.take(slab, flat_ids.numpy(), axis=0),
                                          repeats + 1))
        by_step = {side: np.median(np.array(r), axis=0) for side, r in runs.items()}  # each call's median over rounds
        first = {side: float(times[0]) for side, times in by_step.items()}
        t, f, k = (float(np.median(np.median(np.array(runs[side])[:, 1:], axis=1))) for side in ("tiered", "flat", "take"))
        out.append({"case": case, "rows": n, "unique_rows": int(np.unique(ids).size), "tiered_us": round(t, 2),
                    "flat_index_select_us": round(f, 2),
                    "numpy_take_us": round(k, 2), "tiered_vs_flat": round(t / f, 2),
                    "tiered_GBps": round(n * ROW_BYTES / t / 1e3, 3),
                    "of_memcpy": round(n * ROW_BYTES / (t / 1e6) / bandwidth, 3),
                    "first_step": {"tiered_us": round(first["tiered"], 2), "flat_index_select_us": round(first["flat"], 2),
                                   "numpy_take_us": round(first["take"], 2),
                                   "of_memcpy": round(n * ROW_BYTES / (first["tiered"] / 1e6) / bandwidth, 3)},
                    # the way back to the steady time, step by step after the other sides ran
                    "tiered_first_steps_us": [round(float(x), 1) for x in by_step["tiered"][:RECOVERY_SHOWN]]})
    served = table.stats()["tiers"]
    table.close()
    return {"table_rows": n_rows, "row_bytes": ROW_BYTES, "memcpy_GBps": round(bandwidth / 1e9, 2),
            "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "hit_rate": {t["name"]: round(t["hit_rate"], 4) for t in served}, "sizes": out}


def _plain_sorted_read(path: Path, ids: np.ndarray, out: np.ndarray, page_rows: int, n_rows: int) -> None:
    """The simplest correct reader of an unpermuted, uncompressed table: per page in sorted order, one
    LMDB get and a copy of the rows wanted on it (no checksums: a floor for any real reader)."""
    env = open_environment(path, readonly=True)
    try:
        pages_db = env.open_db(b"pages", create=False)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        page_of = sorted_ids // page_rows
        cuts = (np.flatnonzero(np.diff(page_of)) + 1).tolist()
        with env.begin(db=pages_db, buffers=True) as txn:
            for lo, hi in zip([0, *cuts], [*cuts, ids.size], strict=True):
                page = int(page_of[lo])
                on_page = min(page_rows, n_rows - page * page_rows)
                value = np.frombuffer(txn.get(PAGE_KEY.pack(page)), np.uint8)
                rows = value[rows_offset(on_page):].reshape(on_page, ROW_BYTES)
                out[order[lo:hi]] = rows[sorted_ids[lo:hi] - page * page_rows]
    finally:
        env.close()


def store(sizes: list[int], n_rows: int, readers: list[int], folder: Path, seed: int = 0) -> dict:
    """Rows per second of step-sized reads from an LMDB table, warm and cold."""
    path = folder / f"store-{n_rows}.lmdb"
    source = RandomRows(n_rows, "fp8_e4m3", 256, seed=1)  # 256 values + 8 scale bytes: 264-byte rows
    build_lmdb_table(source, path, progress=False)
    rng = np.random.default_rng(seed)
    with NvmeTier(path) as tier:
        page_rows = tier.layout.page_rows
    file_bytes = (path / DATA_FILE).stat().st_size
    out = []
    for n in sizes:
        ids = rng.choice(n_rows, n, replace=False)
        expected = np.empty((n, ROW_BYTES), np.uint8)
        source.rows(ids, expected)
        row = {"rows": n}
        for cold in (False, True):
            kind = "cold" if cold else "warm"
            got = np.empty_like(expected)
            if cold:
                drop_page_cache(path)
            else:
                _plain_sorted_read(path, ids, got, page_rows, n_rows)  # its pages into the page cache
            start = time.perf_counter()
            _plain_sorted_read(path, ids, got, page_rows, n_rows)
            row[f"{kind}_plain_rows_per_s"] = round(n / (time.perf_counter() - start))
            assert np.array_equal(got, expected)
            for r in readers:
                if cold:
                    drop_page_cache(path)
                with NvmeTier(path, readers=r) as tier:
                    if not cold:
                        tier.read(ids, got)  # page addresses and the page cache warm
                    start = time.perf_counter()
                    tier.read(ids, got)
                    row[f"{kind}_readers{r}_rows_per_s"] = round(n / (time.perf_counter() - start))
                assert np.array_equal(got, expected)
        out.append(row)
    return {"table_rows": n_rows, "row_bytes": ROW_BYTES, "file_bytes": file_bytes, "page_rows": page_rows,
            "sizes": out}
