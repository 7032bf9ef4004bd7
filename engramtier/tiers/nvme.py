"""The nvme tier: the whole table in LMDB on local disk, the source of truth every other tier copies.

On-disk layout (one LMDB environment, three named databases):

    meta    b"format"      `TABLE_FORMAT`, so anything else is refused at open
            b"manifest"    the table manifest (JSON: format, dim, row_bytes, n_rows, sub-table sizes,
                           hash fingerprint), checked against the model at open
            b"layout"      JSON: page_rows, n_pages, compression, checksum, whether rows are permuted
            b"build"       what the build was asked to do (source, profile digest...), for resuming
            b"zdict"       the zstandard dictionary, for compression "zstd-dict"
            b"done_pages"  pages written so far (u64), committed in the same transaction as the pages
            b"complete"    present once the build has finished
    pages   8-byte big-endian page number -> page (below)
    layout  b"pos"/b"row" + 4-byte chunk number -> int array chunks of the row permutation

A page holds ``page_rows`` consecutive *positions*. With a frequency profile, position k holds the
k-th most requested row, so the hot rows share a few pages that stay in the page cache and a batch of
lookups touches far fewer pages than rows; ``pos`` maps row id -> position and ``row`` is its inverse.
Big-endian keys keep LMDB's key order equal to page order, so a build appends and a read of sorted
pages walks the B-tree forward.

A page (`engramtier.tiers.pages`) is a header, one checksum per row and the rows, raw or zstd; every
read verifies the checksums of the pages and rows it touches, so a flipped bit on disk is an error
naming the page and file. Uncompressed pages are read in place from LMDB's memory map (no copy).

Pages are fetched by ``readers`` threads, each in its own read transaction; the environment is opened
read-only without a lock file, so any number of serving processes can share one table. A read of a
step's rows is one batch: sorted by position and cut at page boundaries into one group per reader,
each thread copying (and faulting in from disk) its own pages, so a cold read keeps ``readers`` disk
requests in flight and each page is touched once.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import zstandard

from engramtier.errors import EngramTierError
from engramtier.model.table import check_manifest
from engramtier.tiers.base import Tier, default_model
from engramtier.tiers.pages import PAGE_KEY, Layout, read_rows, rows_offset

TABLE_FORMAT = b"engramtier-lmdb-table/1"
DATA_FILE = "data.mdb"
COUNT = struct.Struct(">Q")
LAYOUT_CHUNK = 1 << 20  # permutation entries per LMDB value
SHARED_READ_ROWS = 256  # reads of at least this many rows are shared by the reader threads, page by page
DATABASES = (b"meta", b"pages", b"layout")

# --- The table's environment, shared with the builder. -------------------------------------------


def layout_chunk_keys(kind: bytes, n: int) -> list[bytes]:
    """Keys of the chunks holding an ``n``-entry permutation array (``kind`` is b"pos" or b"row")."""
    return [kind + struct.pack(">I", c) for c in range(-(-n // LAYOUT_CHUNK))]


def open_environment(path: Path, *, readonly: bool, map_size: int = 1 << 30) -> lmdb.Environment:
    """The LMDB environment of a table directory; read-only opens take no lock (shared serving). A map
    the process cannot address (a map size beyond the address space or the vm limits) is one line."""
    try:
        return lmdb.open(str(path), subdir=True, readonly=readonly, lock=not readonly, max_dbs=len(DATABASES),
                         map_size=map_size, readahead=False, meminit=False)
    except (lmdb.MemoryError, OverflowError) as err:
        raise EngramTierError(f"table {path}: LMDB cannot map {map_size:,} bytes ({err}); give a smaller --map-size "
                              "(the table's size with room to spare)") from None


def drop_page_cache(path: str | os.PathLike) -> None:
    """Evict a table's file from the OS page cache so the next read comes from the device (a cold run).

    Pages still mapped by an open environment stay cached: close the tier first, drop, then reopen.
    """
    data = Path(path) / DATA_FILE
    fd = os.open(data, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- The tier. -----------------------------------------------------------------------------------


class NvmeTier(Tier):
    """Read-only tier over a table built by `engramtier.tiers.lmdb_table.build_lmdb_table`.

    ``readers``: threads fetching pages (each with its own LMDB read transaction and zstd context).
    ``expect_fingerprint``: refuse a table built for another model's hash configuration.
    """

    name = "nvme"

    def __init__(self, path: str | os.PathLike, *, readers: int = 1, expect_fingerprint: str | None = None,
                 model: Any = None) -> None:
        if readers < 1:
            raise EngramTierError(f"nvme tier: readers must be at least 1, got {readers}")
        self.path = Path(path)
        self.env = _open_table(self.path)
        try:
            self.manifest, self.layout, self._zdict, self._pos_of_row = self._load(expect_fingerprint)
        except BaseException:
            self.env.close()
            raise
        lay = self.layout
        super().__init__(lay.n_rows, lay.n_rows, lay.row_bytes, model or default_model(self.name))
        self.readers = int(readers)
        self._pages_db = self.env.open_db(b"pages", create=False)
        self._pool = ThreadPoolExecutor(self.readers, thread_name_prefix="nvme-reader") if readers > 1 else None
        self._local = threading.local()
        self._compressed = int(self.layout.compression != "none")
        # Per page: where its value and its rows are (0 = not looked up), its stored size, and the last
        # read that verified it. 32 bytes per page, 0.2% of a table of 16 KiB pages.
        self._page_at = np.zeros(lay.n_pages, np.int64)
        self._rows_at = np.zeros(lay.n_pages, np.int64)
        self._page_len = np.zeros(lay.n_pages, np.int64)
        self._checked = np.zeros(lay.n_pages, np.int64)
        self._epoch = 0
        self.pages_read = self.stored_bytes_read = 0
        self._closed = False

    def _load(self, expect_fingerprint: str | None) -> tuple[dict, Layout, bytes | None, np.ndarray | None]:
        try:
            return self._load_meta(expect_fingerprint)
        except (lmdb.Error, ValueError, KeyError, TypeError, struct.error) as err:  # damaged metadata
            raise EngramTierError(f"nvme tier: {self.path} is corrupt ({type(err).__name__}: {err}); "
                                  "rebuild the table with build-table") from None

    def _load_meta(self, expect_fingerprint: str | None) -> tuple[dict, Layout, bytes | None, np.ndarray | None]:
        where = f"nvme tier: {self.path}"
        try:
            meta_db = self.env.open_db(b"meta", create=False)
        except lmdb.Error:
            raise EngramTierError(f"{where} is not an engramtier table (no meta database)") from None
        with self.env.begin(db=meta_db) as txn:
            if txn.get(b"format") != TABLE_FORMAT or txn.get(b"layout") is None:
                raise EngramTierError(f"{where} is not an engramtier table (format {txn.get(b'format')!r})")
            layout = Layout.from_json(txn.get(b"layout"))
            done = COUNT.unpack(txn.get(b"done_pages"))[0]
            complete = txn.get(b"complete")
            if complete is None:
                raise EngramTierError(
                    f"{where} is an unfinished build ({done} of {layout.n_pages} pages written); "
                    "rerun the same build-table command to finish it"
                )
            manifest = json.loads(txn.get(b"manifest"))
            zdict = txn.get(b"zdict")
        _check_meta(where, layout, done, json.loads(complete), manifest, zdict)
        found = manifest.get("fingerprint")
        if expect_fingerprint is not None and found != expect_fingerprint:
            raise EngramTierError(
                f"{where} was built for hash fingerprint {found}, but the model's is {expect_fingerprint}; "
                "rebuild the table from this model's table (build-table --from-table)"
            )
        pos_of_row = checked_permutation(self.env, layout.n_rows, where) if layout.permuted else None
        return manifest, layout, zdict, pos_of_row

    def contains(self, ids: Any) -> np.ndarray:
        return np.ones(self._ids(ids).size, dtype=bool)

    def write(self, ids: Any, rows: Any) -> None:
        raise EngramTierError(
            f"nvme tier: {self.path} is the table's source of truth and read-only; rebuild it with build-table"
        )

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where rows ``ids`` sit: position = page * page_rows + slot on the page."""
        return ids if self._pos_of_row is None else self._pos_of_row[ids].astype(np.int64)

    def read(self, ids: Any, out: Any) -> None:
        """Copy rows ``ids`` into ``out``; one read at a time per tier (its reader threads are its own)."""
        if self._closed:
            raise EngramTierError(f"nvme tier: {self.path} was closed; open a new NvmeTier to read it")
        ids = self._ids(ids)
        out = self._host_rows(out, ids.size, "out")
        positions = self.positions(ids)
        lay = self.layout
        keep = None
        if self._compressed:
            keep = self._decompress(np.unique(positions // lay.page_rows))
        else:
            page_of = positions // lay.page_rows
            unknown = page_of[self._page_at[page_of] == 0]
            if unknown.size:
                self._for_pages(self._locate, np.unique(unknown))
        self._epoch += 1
        results = self._in_readers(lambda order, lo, hi: read_rows(
            positions, order, lo, hi, lay.page_rows, lay.n_rows, self._page_at, self._rows_at, self._page_len,
            self._compressed, self._checked, self._epoch, self.row_bytes, out), *self._page_groups(positions))
        del keep  # the decompressed pages `_rows_at` pointed into
        for bad, why, _, _ in results:
            if bad >= 0:
                raise self._corrupt(bad, "checksum list or header mismatch" if why == 1 else "row checksum mismatch")
        self._count_read(ids.size)
        self.pages_read += sum(r[2] for r in results)
        self.stored_bytes_read += sum(r[3] for r in results)

    def _page_groups(self, positions: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The read's rows cut into one group per reader thread, each its own pages: (the rows in position
        order, the groups' bounds in it). A read too small to share stays one group in request order."""
        if self._pool is None or positions.size < SHARED_READ_ROWS:
            return np.empty(0, np.int64), [0, positions.size]
        order = np.argsort(positions, kind="stable")
        page_of = positions[order] // self.layout.page_rows
        cuts = np.searchsorted(page_of, page_of[np.linspace(0, page_of.size - 1, self.readers + 1).astype(np.int64)[1:-1]])
        return order, [0, *sorted({c for c in cuts.tolist() if 0 < c < positions.size}), positions.size]

    def _in_readers(self, read: Any, order: np.ndarray, bounds: list[int]) -> list:
        """``read(order, lo, hi)`` for each group ``bounds[g]:bounds[g + 1]``, the groups in the reader threads."""
        if len(bounds) == 2:
            return [read(order, bounds[0], bounds[1])]
        return list(self._pool.map(lambda g: read(order, bounds[g], bounds[g + 1]), range(len(bounds) - 1)))

    def _for_pages(self, work: Any, pages: np.ndarray) -> list:
        """Run ``work(pages[start:stop])`` over slices of ``pages`` in the reader threads."""
        if self._pool is None or pages.size < 4 * self.readers:
            return [work(pages)]
        bounds = np.linspace(0, pages.size, self.readers + 1).astype(np.int64)
        return list(self._pool.map(work, [pages[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]))

    def _lookup(self, pages: np.ndarray) -> Any:
        """Yield (page, rows on it, stored value) for ``pages``, recording where each value lives.

        A complete table is never written again and the map stays put while the environment is open,
        so a page's address, once looked up, is cached (`_page_at`) and later reads of an uncompressed
        table skip LMDB altogether; the checksums are still verified on every read.
        """
        lay = self.layout
        with self.env.begin(db=self._pages_db, buffers=True) as txn:
            get, key = txn.get, PAGE_KEY.pack
            for page in pages.tolist():
                n = min(lay.page_rows, lay.n_rows - page * lay.page_rows)
                try:
                    value = get(key(page))
                except lmdb.Error as err:  # a damaged B-tree page on the way to this one
                    raise self._corrupt(page, f"LMDB: {err}") from None
                if value is None:
                    raise self._corrupt(page, "page missing")
                if len(value) < rows_offset(n):
                    raise self._corrupt(page, f"{len(value)} bytes for {n} rows")
                self._page_at[page] = _address(value)
                self._page_len[page] = len(value)
                yield page, n, value

    def _locate(self, pages: np.ndarray) -> None:
        """Look up uncompressed pages, check each holds exactly its rows, and note where they start."""
        for page, n, value in self._lookup(pages):
            if len(value) != self.layout.value_bytes(n):
                self._page_at[page] = 0
                raise self._corrupt(page, f"{len(value)} bytes for {n} rows")
            self._rows_at[page] = self._page_at[page] + rows_offset(n)

    def _decompress(self, pages: np.ndarray) -> list:
        """Decompress ``pages``, pointing `_rows_at` at the copies; returns them (keep them alive)."""

        def work(pages: np.ndarray) -> list:
            decompress, keep = self._decompressor(), []
            for page, n, value in self._lookup(pages):
                try:
                    rows = decompress(value[rows_offset(n) :])
                except zstandard.ZstdError as err:
                    raise self._corrupt(page, f"zstd: {err}") from None
                if len(rows) != n * self.row_bytes:
                    raise self._corrupt(page, f"{len(rows)} decompressed bytes for {n} rows")
                self._rows_at[page] = _address(rows)
                keep.append(rows)
            return keep

        return self._for_pages(work, pages)

    def _decompressor(self) -> Any:
        """This thread's zstd decompress function (contexts are not thread-safe)."""
        decompress = getattr(self._local, "decompress", None)
        if decompress is None:
            zdict = zstandard.ZstdCompressionDict(self._zdict) if self._zdict else None
            try:
                dctx = zstandard.ZstdDecompressor(dict_data=zdict)
            except zstandard.ZstdError as err:
                raise EngramTierError(f"nvme tier: the zstd dictionary of {self.path} is corrupt ({err}); "
                                      "rebuild the table with build-table") from None
            decompress = self._local.decompress = dctx.decompress
        return decompress

    def _corrupt(self, page: int, why: str) -> EngramTierError:
        return EngramTierError(
            f"nvme tier: page {page} of {self.path / DATA_FILE} is corrupt ({why}); "
            "rebuild the table with build-table"
        )

    def stats(self) -> dict:
        data = self.path / DATA_FILE
        return {
            **super().stats(),
            "pages_read": self.pages_read,
            "stored_bytes_read": self.stored_bytes_read,
            "page_rows": self.layout.page_rows,
            "compression": self.layout.compression,
            "permuted": self.layout.permuted,
            "readers": self.readers,
            "file_bytes": data.stat().st_size,
        }

    def close(self) -> None:
        """Unmap the table; cached page addresses die with the map, so reads are refused from now on."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._closed = True
        self.env.close()


def _open_table(path: Path) -> lmdb.Environment:
    if not path.exists():
        raise EngramTierError(f"nvme tier: no table at {path}; build one with `engramtier build-table {path} ...`")
    if not (path / DATA_FILE).is_file():
        raise EngramTierError(f"nvme tier: {path} is not an engramtier table (no {DATA_FILE} in it)")
    try:
        env = open_environment(path, readonly=True)
    except lmdb.Error as err:
        raise EngramTierError(f"nvme tier: {path} is not an engramtier table ({err})") from None
    # LMDB maps the file and trusts it: a page past a truncated file's end is a SIGBUS, not an error.
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    except lmdb.Error as err:
        env.close()
        raise EngramTierError(f"nvme tier: {path / DATA_FILE} is corrupt ({err}); rebuild the table with build-table") from None
    size = (path / DATA_FILE).stat().st_size
    if size < needed:
        env.close()
        raise EngramTierError(f"nvme tier: {path / DATA_FILE} is truncated ({size:,} of {needed:,} bytes); "
                              "rebuild the table with build-table")
    return env


def _check_meta(where: str, layout: Layout, done: int, summary: dict, manifest: Any, zdict: bytes | None) -> None:
    """Refuse metadata whose copies disagree. LMDB keeps no checksums, so a damaged byte in the layout,
    the completion record or the manifest is caught by comparing what each says about the table (a
    changed digit in one of them no longer matches the others); pages carry their own checksums."""
    said = {"rows": layout.n_rows, "pages": layout.n_pages, "page_rows": layout.page_rows,
            "compression": layout.compression, "permuted": layout.permuted}
    ok = (done == layout.n_pages and isinstance(summary, dict) and all(summary.get(k) == v for k, v in said.items())
          and isinstance(manifest, dict) and manifest.get("n_rows") == layout.n_rows
          and manifest.get("row_bytes") == layout.row_bytes
          and (zdict is not None) == layout.compression.startswith("zstd-dict"))
    if ok and manifest.get("hash_config") is None:  # random rows: one sub-table, no addressing
        ok = manifest.get("fingerprint") is None and manifest.get("subtable_sizes") == [layout.n_rows]
    elif ok:  # a table for a model: the model's modules are loaded by whoever opens it

        check_manifest(manifest, f"{where}: the manifest")
    if not ok:
        raise EngramTierError(f"{where} is corrupt (its layout, completion record and manifest disagree); "
                              "rebuild the table with build-table")


def checked_permutation(env: lmdb.Environment, n: int, where: str) -> np.ndarray:
    """The row -> position array of a permuted table, checked against its stored inverse (position ->
    row) one chunk at a time: a damaged entry would send a row's reads to another row's position, and
    that row's checksum, seeded with the position, would pass."""
    pos = load_permutation(env, b"pos", n)
    db = env.open_db(b"layout", create=False)
    with env.begin(db=db, buffers=True) as txn:
        for c, key in enumerate(layout_chunk_keys(b"row", n)):
            row = _permutation_chunk(txn.get(key), env, b"row", n)
            lo = c * LAYOUT_CHUNK
            if (row.size != min(LAYOUT_CHUNK, n - lo) or row.min() < 0 or row.max() >= n
                    or not np.array_equal(pos[row], np.arange(lo, lo + row.size))):
                raise EngramTierError(f"{where} is corrupt (its row permutation is damaged); "
                                      "rebuild the table with build-table")
    return pos


def load_permutation(env: lmdb.Environment, kind: bytes, n: int) -> np.ndarray:
    """The ``kind`` (b"pos" or b"row") permutation array of a table, read back from its chunks."""
    db = env.open_db(b"layout", create=False)
    with env.begin(db=db) as txn:
        chunks = [_permutation_chunk(txn.get(key), env, kind, n) for key in layout_chunk_keys(kind, n)]
    values = np.concatenate(chunks) if chunks else np.empty(0, permutation_dtype(n))
    if values.size != n:
        raise EngramTierError(f"nvme tier: {env.path()} has a damaged {kind.decode()} layout; rebuild the table")
    return values


def _permutation_chunk(raw: Any, env: lmdb.Environment, kind: bytes, n: int) -> np.ndarray:
    dtype = permutation_dtype(n)
    if raw is None or len(raw) % dtype.itemsize:
        raise EngramTierError(f"nvme tier: {env.path()} lacks its {kind.decode()} layout; rebuild the table")
    return np.frombuffer(raw, dtype)


def permutation_dtype(n: int) -> np.dtype:
    """int32 positions while they fit: half the memory for tables under 2**31 rows."""
    return np.dtype("<i4") if n < 2**31 else np.dtype("<i8")


def _address(buffer: Any) -> int:
    """Where a bytes-like object's memory starts (LMDB values are views into the map: no copy)."""
    return np.frombuffer(buffer, np.uint8).ctypes.data
