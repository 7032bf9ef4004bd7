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

A page is `PAGE_HEADER` (checksum of the row-checksum list, rows on the page, 1 if compressed), then
one u32 checksum per row (the low half of XXH64 of the row, seeded with its position), then the rows,
raw or as one zstd frame. Every read verifies the page's checksum list (seeded with the page number,
so a page stored under the wrong key fails too) and the checksum of every row it returns, so a flipped
bit on disk is an error naming the page and file, never a silently wrong embedding. Verifying rows
rather than whole pages is what keeps reads fast: a tail lookup takes one 160-byte row from a 16 KiB
page, and hashing the whole page would cost more than finding it. Uncompressed pages are read in place
from LMDB's memory map (no copy); the numba kernel gets their addresses.

Pages are fetched by ``readers`` threads, each in its own read transaction; the environment is opened
read-only without a lock file, so any number of serving processes can share one table.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import zstandard
import numba
from numba import njit, types
from numba.extending import intrinsic

from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier, default_model

TABLE_FORMAT = b"engramtier-lmdb-table/1"
DATA_FILE = "data.mdb"
PAGE_HEADER = struct.Struct("<QII")  # xxh64 of the row-checksum list, rows on the page, 1 if zstd-compressed
HEADER_BYTES = PAGE_HEADER.size
ROW_SUM_BYTES = 4
PAGE_KEY = struct.Struct(">Q")
COUNT = struct.Struct(">Q")
LAYOUT_CHUNK = 1 << 20  # permutation entries per LMDB value
DATABASES = (b"meta", b"pages", b"layout")

# --- XXH64 (Yann Collet's xxHash, 64-bit variant), written from the published algorithm. ---------

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


@njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always")
def _round(acc, lane):
    return _rotl(acc + lane * _P2, 31) * _P1


@njit(inline="always")
def _merge(h, v):
    return (h ^ _round(np.uint64(0), v)) * _P1 + _P4


@njit(nogil=True, cache=True)
def xxh64(data, seed):
    """XXH64 of the uint8 array ``data``; 8-byte words are read unaligned (fine on x86-64 and ARMv8)."""
    n = data.size
    words = data[: n - n % 8].view(np.uint64)
    i = 0
    if n >= 32:
        v1, v2, v3, v4 = seed + _P1 + _P2, seed + _P2, seed, seed - _P1
        while i < n // 32 * 4:
            v1 = _round(v1, words[i])
            v2 = _round(v2, words[i + 1])
            v3 = _round(v3, words[i + 2])
            v4 = _round(v4, words[i + 3])
            i += 4
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(_merge(_merge(_merge(h, v1), v2), v3), v4)
    else:
        h = seed + _P5
    h += np.uint64(n)
    while i < words.size:
        h = _rotl(h ^ _round(np.uint64(0), words[i]), 27) * _P1 + _P4
        i += 1
    p = i * 8
    if p + 4 <= n:
        w = np.uint64(0)
        for b in range(4):
            w |= np.uint64(data[p + b]) << np.uint64(8 * b)
        h = _rotl(h ^ (w * _P1), 23) * _P2 + _P3
        p += 4
    while p < n:
        h = _rotl(h ^ (np.uint64(data[p]) * _P5), 11) * _P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@njit(nogil=True, cache=True)
def row_checksums(rows, positions, out):
    """``out[i]`` = low 32 bits of XXH64(rows[i]) seeded with the row's position."""
    for i in range(rows.shape[0]):
        out[i] = np.uint32(xxh64(rows[i], np.uint64(positions[i])) & np.uint64(0xFFFFFFFF))


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` as a uint8 pointer, for `numba.carray` views of memory numpy does not own."""
    sig = types.CPointer(types.uint8)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint8)))

    return sig, codegen


@njit(nogil=True, cache=True)
def _read_rows(positions, page_rows, n_rows, value_at, rows_at, value_len, compressed, checked, epoch, row_bytes,
               out):
    """Copy the row at ``positions[i]`` into ``out[i]``, verifying each page's header and checksum list
    the first time this read touches it and every row's checksum.

    Per page: ``value_at`` is the address of its stored value (header and checksum list), ``rows_at``
    that of its row bytes (inside the value, or a decompressed copy), both bounds-checked by the
    caller; ``checked[page] == epoch`` marks pages already verified by this read, so requests need no
    grouping by page (no sort). Returns (bad page or -1, 1 for a bad header or checksum list and 2 for
    a bad row, distinct pages touched, their stored bytes).
    """
    pages = 0
    stored = 0
    for i in range(positions.size):
        position = positions[i]
        page = position // page_rows
        k = position - page * page_rows
        if checked[page] != epoch:
            checked[page] = epoch
            pages += 1
            stored += value_len[page]
            n = min(page_rows, n_rows - page * page_rows)
            value = numba.carray(_pointer(value_at[page]), HEADER_BYTES + ROW_SUM_BYTES * n)
            header = value[:HEADER_BYTES]
            if header[8:12].view(np.uint32)[0] != n or header[12:16].view(np.uint32)[0] != compressed:
                return page, 1, pages, stored
            if xxh64(value[HEADER_BYTES:], np.uint64(page)) != header[:8].view(np.uint64)[0]:
                return page, 1, pages, stored
        row = numba.carray(_pointer(rows_at[page] + k * row_bytes), row_bytes)
        for b in range(row_bytes):
            out[i, b] = row[b]
        stored_sum = numba.carray(_pointer(value_at[page] + HEADER_BYTES + ROW_SUM_BYTES * k), 4).view(np.uint32)[0]
        if np.uint32(xxh64(out[i], np.uint64(position)) & np.uint64(0xFFFFFFFF)) != stored_sum:
            return page, 2, pages, stored
    return -1, 0, pages, stored


# --- Layout and compression, shared with the builder. --------------------------------------------


@dataclass(frozen=True)
class Compression:
    """How page payloads are stored: "none", "zstd[:LEVEL]" or "zstd-dict[:LEVEL]" (level 3 by default)."""

    kind: str
    level: int = 3

    @classmethod
    def parse(cls, spec: str) -> "Compression":
        kind, _, level = spec.partition(":")
        if kind not in ("none", "zstd", "zstd-dict") or (kind == "none" and level):
            raise EngramTierError(f"compression '{spec}' is not one of: none, zstd[:LEVEL], zstd-dict[:LEVEL]")
        if not level:
            return cls(kind)
        if not level.lstrip("-").isdigit() or not -7 <= int(level) <= 22:
            raise EngramTierError(f"compression '{spec}': the zstd level must be an integer in -7..22")
        return cls(kind, int(level))

    def __str__(self) -> str:
        return self.kind if self.kind == "none" else f"{self.kind}:{self.level}"


@dataclass(frozen=True)
class Layout:
    """How rows map to pages; stored as JSON under meta b"layout"."""

    n_rows: int
    row_bytes: int
    page_rows: int
    compression: str
    permuted: bool
    checksum: str = "xxh64"

    @property
    def n_pages(self) -> int:
        return -(-self.n_rows // self.page_rows)

    @property
    def page_bytes(self) -> int:
        """Row bytes of a full page."""
        return self.page_rows * self.row_bytes

    def value_bytes(self, n_rows: int) -> int:
        """Size of an uncompressed stored page of ``n_rows`` rows."""
        return HEADER_BYTES + n_rows * (ROW_SUM_BYTES + self.row_bytes)

    def rows_on_page(self, page: int) -> int:
        return min(self.page_rows, self.n_rows - page * self.page_rows)

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "n_pages": self.n_pages}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Layout":
        """The stored layout, refused (ValueError) unless each field has its type and range: the page
        arithmetic of every read trusts them."""
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError(f"layout {fields!r} is not a JSON object")
        n_pages = fields.pop("n_pages")
        layout = cls(**fields)
        counts = (layout.n_rows, layout.row_bytes, layout.page_rows, n_pages)
        if (not all(type(c) is int and c >= 1 for c in counts) or n_pages != layout.n_pages
                or type(layout.permuted) is not bool or layout.checksum != "xxh64"
                or not isinstance(layout.compression, str)):
            raise ValueError(f"layout {fields} does not hold together")
        try:
            Compression.parse(layout.compression)
        except EngramTierError as err:
            raise ValueError(str(err)) from None
        return layout


def layout_chunk_keys(kind: bytes, n: int) -> list[bytes]:
    """Keys of the chunks holding an ``n``-entry permutation array (``kind`` is b"pos" or b"row")."""
    return [kind + struct.pack(">I", c) for c in range(-(-n // LAYOUT_CHUNK))]


def open_environment(path: Path, *, readonly: bool, map_size: int = 1 << 30) -> lmdb.Environment:
    """The LMDB environment of a table directory; read-only opens take no lock (shared serving)."""
    return lmdb.open(str(path), subdir=True, readonly=readonly, lock=not readonly, max_dbs=len(DATABASES),
                     map_size=map_size, readahead=False, meminit=False)


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
    """Read-only tier over a table built by `engramtier.tiers.build.build_lmdb_table`.

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
                self._in_readers(self._locate, np.unique(unknown))
        self._epoch += 1
        bad, why, pages, stored = _read_rows(positions, lay.page_rows, lay.n_rows, self._page_at, self._rows_at,
                                             self._page_len, self._compressed, self._checked, self._epoch,
                                             self.row_bytes, out)
        del keep  # the decompressed pages `_rows_at` pointed into
        if bad >= 0:
            raise self._corrupt(bad, "checksum list or header mismatch" if why == 1 else "row checksum mismatch")
        self._count_read(ids.size)
        self.pages_read += pages
        self.stored_bytes_read += stored

    def _in_readers(self, work: Any, pages: np.ndarray) -> list:
        """Run ``work(pages[start:stop])`` over slices of ``pages`` in the reader threads."""
        if self._pool is None or pages.size < 4 * self.readers:
            return [work(pages)]
        bounds = np.linspace(0, pages.size, self.readers + 1).astype(np.int64)
        return list(self._pool.map(work, [pages[a:b] for a, b in zip(bounds[:-1], bounds[1:])]))

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
                if len(value) < HEADER_BYTES + ROW_SUM_BYTES * n:
                    raise self._corrupt(page, f"{len(value)} bytes for {n} rows")
                self._page_at[page] = _address(value)
                self._page_len[page] = len(value)
                yield page, n, value

    def _locate(self, pages: np.ndarray) -> None:
        """Look up uncompressed pages, check each holds exactly its rows, and note where they start."""
        for page, n, value in self._lookup(pages):
            if len(value) != HEADER_BYTES + n * (ROW_SUM_BYTES + self.row_bytes):
                self._page_at[page] = 0
                raise self._corrupt(page, f"{len(value)} bytes for {n} rows")
            self._rows_at[page] = self._page_at[page] + HEADER_BYTES + ROW_SUM_BYTES * n

    def _decompress(self, pages: np.ndarray) -> list:
        """Decompress ``pages``, pointing `_rows_at` at the copies; returns them (keep them alive)."""

        def work(pages: np.ndarray) -> list:
            decompress, keep = self._decompressor(), []
            for page, n, value in self._lookup(pages):
                try:
                    rows = decompress(value[HEADER_BYTES + ROW_SUM_BYTES * n :])
                except zstandard.ZstdError as err:
                    raise self._corrupt(page, f"zstd: {err}") from None
                if len(rows) != n * self.row_bytes:
                    raise self._corrupt(page, f"{len(rows)} decompressed bytes for {n} rows")
                self._rows_at[page] = _address(rows)
                keep.append(rows)
            return keep

        return self._in_readers(work, pages)

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
        from engramtier.model.table import check_manifest

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
