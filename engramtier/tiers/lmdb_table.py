"""Building the nvme tier's LMDB table, resumably, from a flat table or from seeded random rows.

The build streams: it asks its row source for one batch of pages' worth of rows at a time, packs them
into pages (`engramtier.tiers.nvme` has the on-disk layout, `engramtier.tiers.pages` the page format),
and commits each batch in one write transaction that also records how many pages are done. LMDB
commits are atomic, so after a crash (even kill -9) the table holds exactly the committed pages and
the counter that says so; running the same build again continues from there, with no row lost or
written twice. The first transaction stores the manifest, the layout, the permutation and the zstd
dictionary, and a record of what was asked (source, compression, page size, profile digest) so a
rerun with other settings is refused instead of mixing two tables.

A row source is any object with ``n_rows``, ``row_bytes``, ``manifest`` (the table manifest to store),
``identity`` (JSON-able: what makes its rows what they are) and ``rows(ids, out)``, which fills uint8
``out[i]`` with row ``ids[i]`` for any subset of ids; `FlatTableRows` and `RandomRows` are the two
built-in ones.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lmdb
import numpy as np
import torch
import zstandard
from numba import njit
from tqdm import tqdm

from engramtier.errors import EngramTierError
from engramtier.memory import check_memory
from engramtier.model.rows import RowFormat
from engramtier.model.table import MANIFEST_FILE, open_table
from engramtier.tiers.nvme import (
    COUNT,
    DATA_FILE,
    LAYOUT_CHUNK,
    TABLE_FORMAT,
    layout_chunk_keys,
    open_environment,
    permutation_dtype,
)
from engramtier.tiers.pages import (
    PAGE_HEADER,
    PAGE_KEY,
    ROW_SUM_BYTES,
    Compression,
    Layout,
    encode_page,
    row_checksums,
)
from engramtier.trace.stats import row_counts
from engramtier.trace.tracefile import TraceReader

# An LMDB value larger than a page lives in whole 4 KiB overflow pages after a 16-byte page header;
# sizing pages to fit that exactly keeps a "16 KiB" page in 16 KiB of disk instead of 20.
_LMDB_PAGE, _LMDB_OVERFLOW_HEADER = 4096, 16
_DICT_SAMPLE_PAGES = 512
_LOCK_FILE = "lock.mdb"  # LMDB's, beside DATA_FILE


class FlatTableRows:
    """Rows of a flat table directory (`engramtier.model.table`), memory-mapped."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.table = open_table(path)
        self.n_rows, self.row_bytes = self.table.n_rows, self.table.row_bytes
        self.manifest = json.loads((self.table.path / MANIFEST_FILE).read_text(encoding="utf-8"))
        self.manifest.setdefault("preset", None)  # a trained table's shape is its model's, not a preset's
        self.identity = {"table": self.table.checksum, "fingerprint": self.table.fingerprint}

    def rows(self, ids: np.ndarray, out: np.ndarray) -> None:
        np.take(self.table.rows, ids, axis=0, out=out)


@njit(nogil=True, cache=True)
def _normal_values(ids, dim, seed, out):
    """N(0, 1) values that depend only on (seed, row id, column): any rows can be regenerated alone.

    Each value hashes its counter with splitmix64 and turns the two 32-bit halves into a Box-Muller
    normal, so the table needs no stored state and a resumed build writes the very same bytes.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    for i in range(ids.size):
        base = (np.uint64(seed) * golden) ^ (np.uint64(ids[i]) * np.uint64(dim))
        for j in range(dim):
            z = base + np.uint64(j + 1) * golden
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            u1 = (np.float64(z >> np.uint64(32)) + 0.5) / 4294967296.0
            u2 = np.float64(z & np.uint64(0xFFFFFFFF)) / 4294967296.0
            out[i, j] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


class RandomRows:
    """Seeded N(0, 1) rows in ``row_format`` ("bf16", "fp8_e4m3") of ``dim`` values, for tables with no model
    (`for_hasher`: a table of a model's shape, which that model's hash config opens)."""

    def __init__(self, n_rows: int, row_format: str, dim: int, seed: int) -> None:
        if n_rows < 1:
            raise EngramTierError(f"random table: --rows must be positive, got {n_rows}")
        self.format = RowFormat(row_format, dim)
        self.n_rows, self.row_bytes, self.seed = int(n_rows), self.format.row_bytes, int(seed)
        self.manifest = {
            "format": row_format, "dim": dim, "row_bytes": self.row_bytes, "n_rows": self.n_rows,
            "subtable_sizes": [self.n_rows], "hash_config": None, "fingerprint": None, "preset": None,
            "source": f"random normal rows, seed {self.seed}",
        }
        self.identity = {"random": {"n_rows": self.n_rows, "format": row_format, "dim": dim, "seed": self.seed}}

    @classmethod
    def for_hasher(cls, hasher, row_format: str, dim: int, seed: int, preset: str | None = None) -> "RandomRows":
        """Random rows for every row ``hasher`` addresses; the manifest records its sub-tables, hash config
        (with the tokenizer and its compression digest) and ``preset``, the name of the shape it came from."""
        rows = cls(hasher.n_rows, row_format, dim, seed)
        config = hasher.config
        rows.manifest.update(subtable_sizes=hasher.subtable_sizes.tolist(), hash_config=config.to_dict(),
                             fingerprint=config.fingerprint, preset=preset)
        rows.identity["random"]["fingerprint"] = config.fingerprint
        return rows

    def rows(self, ids: np.ndarray, out: np.ndarray) -> None:
        values = np.empty((ids.size, self.format.dim), np.float32)
        _normal_values(np.ascontiguousarray(ids, np.int64), self.format.dim, self.seed, values)
        out[:] = self.format.encode(torch.from_numpy(values)).numpy()


def load_profile(path: str | os.PathLike, n_rows: int) -> np.ndarray:
    """Per-row access counts for laying out a table of ``n_rows`` rows, from one of:

    a trace file (`engramtier.trace.tracefile`)   its row ids are counted, chunk by chunk
    a .npy of per-row counts                       non-negative numbers, exactly ``n_rows`` of them
    a .npy of row ids                              integers of any other length, counted here
    """
    path = Path(path)
    if path.suffix != ".npy":

        with TraceReader(path) as trace:
            if trace.n_table_rows != n_rows:
                raise EngramTierError(
                    f"profile {path}: the trace addresses {trace.n_table_rows} rows, the table has {n_rows}"
                )
            return row_counts(trace).astype(np.float64)
    try:
        data = np.load(path, allow_pickle=False).reshape(-1)
    except (OSError, ValueError) as err:
        raise EngramTierError(f"profile {path}: cannot read it as a .npy array ({err})") from None
    if data.size == n_rows and np.issubdtype(data.dtype, np.number) and (data >= 0).all():
        return data.astype(np.float64)
    if not np.issubdtype(data.dtype, np.integer) or data.size == 0:
        raise EngramTierError(
            f"profile {path}: expected per-row counts or integer row ids, got {data.dtype}[{data.size}]"
        )
    if data.min() < 0 or data.max() >= n_rows:
        raise EngramTierError(f"profile {path}: row ids reach {int(data.max())}, outside the table's {n_rows} rows")
    return np.bincount(data, minlength=n_rows).astype(np.float64)


def page_rows_for(page_kib: int, row_bytes: int) -> int:
    """Rows per page such that an uncompressed page fills whole 4 KiB LMDB pages without spilling into one more."""
    if page_kib < 1:
        raise EngramTierError(f"page size must be at least 1 KiB, got {page_kib}")
    budget = page_kib * 1024 - _LMDB_OVERFLOW_HEADER - PAGE_HEADER.size
    if budget < row_bytes + ROW_SUM_BYTES:
        raise EngramTierError(f"a {page_kib} KiB page cannot hold one {row_bytes}-byte row; use a larger --page-kib")
    return budget // (row_bytes + ROW_SUM_BYTES)


def build_lmdb_table(source: Any, path: str | os.PathLike, profile: np.ndarray | None = None,
                     compression: str = "none", page_kib: int = 16, progress: bool = True,
                     map_size: int | None = None, batch_pages: int | None = None) -> dict:
    """Write (or finish writing) the LMDB table for ``source`` at ``path``; returns its summary.

    ``profile``: per-row access counts (`load_profile`); rows are laid out hottest first.
    ``map_size``: the LMDB map (bytes); by default twice the uncompressed table plus room for the layout.
    ``batch_pages``: pages per write transaction, the most a crash can lose (default: 32 MiB of rows).
    """
    path = Path(path)
    comp = Compression.parse(compression)
    layout = Layout(n_rows=source.n_rows, row_bytes=source.row_bytes,
                    page_rows=page_rows_for(page_kib, source.row_bytes), compression=str(comp),
                    permuted=profile is not None)
    order = None
    if profile is not None:
        profile = np.asarray(profile, dtype=np.float64).reshape(-1)
        if profile.size != source.n_rows:
            raise EngramTierError(f"profile has {profile.size} counts for a table of {source.n_rows} rows")
        order = np.argsort(-profile, kind="stable")  # hottest first, ties by row id
    request = {
        "source": source.identity, "compression": str(comp), "page_rows": layout.page_rows,
        "profile_sha256": None if profile is None else hashlib.sha256(profile.tobytes()).hexdigest(),
    }
    batch_pages = batch_pages or max(1, (32 << 20) // layout.page_bytes)
    batch_rows = min(batch_pages * layout.page_rows, layout.n_rows)
    check_memory(f"building table {path}", {
        "lower --batch-pages or --page-kib (rows packed per write)": 4 * batch_rows * (layout.row_bytes + ROW_SUM_BYTES),
        "build a smaller table (its profile order)": 0 if profile is None else 40 * layout.n_rows,
    })
    if map_size is None:
        map_size = 2 * layout.n_pages * _page_on_disk(layout) + (64 << 20)
        map_size += 2 * source.n_rows * permutation_dtype(source.n_rows).itemsize
    _check_free_disk(path, layout.n_pages * _page_on_disk(layout))
    _check_output_dir(path)
    env = open_environment(path, readonly=False, map_size=map_size)
    try:
        meta, pages_db = env.open_db(b"meta"), env.open_db(b"pages")
        writer = _PageWriter(env, meta, pages_db, layout, comp, path)
        done, summary = writer.resume_or_start(request, source, order)
        if summary is not None:
            return summary  # complete already
        with tqdm(total=layout.n_pages, initial=done, unit="page", disable=not progress,
                  desc=f"build {path.name}") as bar:
            for first in range(done, layout.n_pages, batch_pages):
                last = min(first + batch_pages, layout.n_pages)
                writer.write_pages(source, order, first, last)
                bar.update(last - first)
        return writer.finish()
    finally:
        env.close()


def _page_on_disk(layout: Layout) -> int:
    """Disk bytes of one uncompressed page: its LMDB overflow pages."""
    return -(-(layout.value_bytes(layout.page_rows) + _LMDB_OVERFLOW_HEADER) // _LMDB_PAGE) * _LMDB_PAGE


def _check_free_disk(path: Path, need: int) -> None:
    """Refuse, before anything is written, a build whose uncompressed pages would not fit the free disk.

    Uncompressed is the bound: zstd gains little on trained or random rows. A resumed build already
    holds part of it in the data file, which counts as written.
    """
    data = path / DATA_FILE
    need -= data.stat().st_size if data.is_file() else 0
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise EngramTierError(
            f"table {path}: needs about {need / 2**30:.1f} GiB of disk but {existing} has {free / 2**30:.1f} GiB "
            "free; free space, choose a directory on a larger disk, or build a smaller table (--table-size with a "
            "preset, --rows without)"
        )


def _check_output_dir(path: Path) -> None:
    """A new or empty directory, or one holding a table (finished or not) to resume; LMDB creates its
    lock file before the data file, so a build killed between the two left only the lock file."""
    if path.exists() and not path.is_dir():
        raise EngramTierError(f"table output {path} exists and is not a directory; choose a new directory")
    if path.is_dir() and not (path / DATA_FILE).is_file() and {p.name for p in path.iterdir()} - {_LOCK_FILE}:
        raise EngramTierError(f"table output {path} is not empty and holds no engramtier table; choose a new directory")
    path.mkdir(parents=True, exist_ok=True)


class _PageWriter:
    """Packs, checksums, compresses and commits pages; turns a full map or disk into one clear error."""

    def __init__(self, env: lmdb.Environment, meta: Any, pages_db: Any, layout: Layout, comp: Compression,
                 path: Path) -> None:
        self.env, self.meta, self.pages_db, self.layout, self.comp, self.path = env, meta, pages_db, layout, comp, path
        self.compress = None
        self._raw = np.empty((0, layout.page_bytes), np.uint8)

    def resume_or_start(self, request: dict, source: Any, order: np.ndarray | None) -> tuple[int, dict | None]:
        """(pages already written, the summary if the build is complete), once the stored request is
        known to match this one; a new table gets its manifest, layout and dictionary first."""
        with self.env.begin(db=self.meta) as txn:
            stored_format = txn.get(b"format")
            stored = txn.get(b"build")
            done = txn.get(b"done_pages")
            complete = txn.get(b"complete")
            zdict = txn.get(b"zdict")
        if stored_format is not None and stored_format != TABLE_FORMAT:
            raise EngramTierError(
                f"table output {self.path} holds an LMDB database that is not an engramtier table; "
                "choose a new directory"
            )
        if stored is not None:
            previous = json.loads(stored)
            differ = [k for k in request if previous.get(k) != request[k]]
            if differ:
                raise EngramTierError(
                    f"table output {self.path} holds a table built with other settings ({', '.join(differ)} differ); "
                    "rerun with the original arguments or choose a new directory"
                )
            if complete is not None:
                return self.layout.n_pages, json.loads(complete)
            self._set_compressor(zdict)
            return COUNT.unpack(done)[0], None
        zdict = self._train_dictionary(source, order) if self.comp.kind == "zstd-dict" else None
        with self._writing("the table header") as txn:
            txn.put(b"format", TABLE_FORMAT, db=self.meta)
            txn.put(b"manifest", json.dumps(source.manifest, sort_keys=True).encode(), db=self.meta)
            txn.put(b"layout", self.layout.to_json(), db=self.meta)
            txn.put(b"build", json.dumps(request, sort_keys=True).encode(), db=self.meta)
            txn.put(b"done_pages", COUNT.pack(0), db=self.meta)
            if zdict is not None:
                txn.put(b"zdict", zdict, db=self.meta)
            if order is not None:
                self._put_permutation(txn, order)
        self._set_compressor(zdict)
        return 0, None

    def _put_permutation(self, txn: lmdb.Transaction, order: np.ndarray) -> None:
        n = order.size
        dtype = permutation_dtype(n)
        positions = np.empty(n, dtype)
        positions[order] = np.arange(n, dtype=dtype)
        layout_db = self.env.open_db(b"layout", txn=txn)
        for kind, values in ((b"pos", positions), (b"row", order.astype(dtype))):
            for c, key in enumerate(layout_chunk_keys(kind, n)):
                txn.put(key, values[c * LAYOUT_CHUNK : (c + 1) * LAYOUT_CHUNK].tobytes(), db=layout_db)

    def _set_compressor(self, zdict: bytes | None) -> None:
        if self.comp.kind == "none":
            return
        dict_data = zstandard.ZstdCompressionDict(zdict) if zdict else None
        self.compress = zstandard.ZstdCompressor(level=self.comp.level, dict_data=dict_data).compress

    def _train_dictionary(self, source: Any, order: np.ndarray | None) -> bytes:
        lay = self.layout
        picks = np.unique(np.linspace(0, lay.n_pages - 1, min(lay.n_pages, _DICT_SAMPLE_PAGES)).astype(np.int64))
        samples = []
        for page in picks.tolist():
            rows = self._page_rows(source, order, page, page + 1)
            samples.append(rows[: lay.rows_on_page(page)].tobytes())
        sample_bytes = sum(map(len, samples))
        dict_size = int(min(64 << 10, max(1 << 10, sample_bytes // 16)))
        try:
            trained = zstandard.train_dictionary(dict_size, samples, level=self.comp.level)
        except zstandard.ZstdError as err:
            raise EngramTierError(
                f"table {self.path}: cannot train a zstd dictionary from {len(samples)} sampled pages ({err}); "
                "use --compression zstd:LEVEL for a table this small"
            ) from None
        return trained.as_bytes()

    def _page_rows(self, source: Any, order: np.ndarray | None, first: int, last: int) -> np.ndarray:
        """Rows at positions of pages ``first:last``, as uint8 [rows, row_bytes] in a reused buffer."""
        lay = self.layout
        lo, hi = first * lay.page_rows, min(last * lay.page_rows, lay.n_rows)
        ids = np.arange(lo, hi, dtype=np.int64) if order is None else order[lo:hi]
        if self._raw.shape[0] < last - first:
            self._raw = np.zeros((last - first, lay.page_bytes), np.uint8)
        rows = self._raw.reshape(-1, lay.row_bytes)[: hi - lo]
        source.rows(ids, rows)
        return rows

    def write_pages(self, source: Any, order: np.ndarray | None, first: int, last: int) -> None:
        lay = self.layout
        rows = self._page_rows(source, order, first, last)
        sums = np.empty(rows.shape[0], np.uint32)
        row_checksums(rows, np.arange(first * lay.page_rows, first * lay.page_rows + rows.shape[0]), sums)
        items = []
        for page in range(first, last):
            n, lo = lay.rows_on_page(page), (page - first) * lay.page_rows
            sum_list = sums[lo : lo + n]
            payload = rows[lo : lo + n].tobytes()
            if self.compress is not None:
                payload = self.compress(payload)
            items.append((PAGE_KEY.pack(page), encode_page(page, sum_list, payload, self.compress is not None)))
        with self._writing(f"pages {first}..{last - 1}") as txn:
            txn.cursor(db=self.pages_db).putmulti(items, append=True)
            txn.put(b"done_pages", COUNT.pack(last), db=self.meta)

    def finish(self) -> dict:
        summary = {
            "path": str(self.path), "rows": self.layout.n_rows, "pages": self.layout.n_pages,
            "page_rows": self.layout.page_rows, "compression": self.layout.compression,
            "permuted": self.layout.permuted, "raw_bytes": self.layout.n_rows * self.layout.row_bytes,
        }
        with self._writing("the completion mark") as txn:
            txn.put(b"complete", json.dumps(summary, sort_keys=True).encode(), db=self.meta)
        return summary

    @contextmanager
    def _writing(self, what: str) -> Iterator[lmdb.Transaction]:
        """One write transaction; running out of map or disk becomes one line saying how to resume."""
        kept = "the pages committed so far are kept"
        try:
            with self.env.begin(write=True) as txn:  # commits on success, aborts on any exception
                yield txn
        except lmdb.MapFullError:
            size = self.env.info()["map_size"]
            raise EngramTierError(
                f"table {self.path}: the LMDB map ({size / 2**20:.0f} MiB) filled up writing {what}; "
                f"rerun the same command with a larger --map-size to resume ({kept})"
            ) from None
        except (lmdb.Error, OSError) as err:
            if not _out_of_space(err):
                raise
            raise EngramTierError(
                f"table {self.path}: writing {what} failed ({err}): the disk is full, a file-size "
                f"limit was reached or the device failed; free space and rerun the same command to resume ({kept})"
            ) from None


def _out_of_space(err: BaseException) -> bool:
    """LMDB reports a short write (ENOSPC, EFBIG) as EIO, so all three mean the write did not land."""
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EIO):
        return True
    return any(os.strerror(code) in str(err) for code in (errno.ENOSPC, errno.EFBIG, errno.EIO))
