"""The row-trace file: chunked, compressed, checksummed, seekable, written and read as a stream.

Layout (all integers little-endian)::

    header    MAGIC (8 bytes) | u32 version | u32 length | u32 crc32 | JSON {n_table_rows, row_bytes, meta}
    chunk*    FRAME: whole steps, their step counts and their rows as *dense keys*
    distinct  FRAME*: the distinct row ids the trace touches, in key order (dense key k is row_ids[k])
    steps     FRAME: every step's row count
    index     per chunk: u64 file offset, u64 first step, u64 first row
    trailer   u64 index, distinct and steps offsets | u64 chunks, steps, rows, distinct | u32 crc32 | END_MAGIC

    FRAME     CHUNK_MAGIC | u32 steps | u64 ids | u64 payload bytes | u8 width | u32 crc32 | payload

A frame's payload is one zstandard frame of its step counts (int64) and then its ids, delta coded
(each id minus the one before it), zigzag mapped to unsigned, narrowed to ``width`` bytes (4 while
the ids stay below 2**31) and byte-shuffled (all first bytes, then all second bytes...). On the
position-major traces of real text this takes 8 bytes per row id to about 1.5 (`bench_trace.py`).
Each crc32 covers its header fields and payload, so a flipped byte anywhere is caught before
anything is decoded, and every count is checked against the file before a compiled kernel sees it.

Chunks hold dense keys (see `engramtier.trace.rowindex`): the simulator, miss-ratio curves and
statistics keep state per key, so they read keys directly and size their state by the trace's
distinct rows, not by the table. Readers asking for global row ids get ``row_ids[keys]``. The
writer collects the distinct rows while it writes, then renumbers its chunks once when it closes.

The meta of a trace built from tokens records its hash config, ``fingerprint``, preset and
tokenizer digest; a reader given ``expect_fingerprint`` refuses a trace built for other addressing.
Version 1 files (before dense keys and DeepSeek's exact tokenizer compression) are refused: rebuild.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.outputs import check_output_file, is_special, replace_with, temporary_beside
from engramtier.trace.rowindex import FirstSeen, RowIndex
from engramtier.trace.rowtrace import RowTrace

MAGIC = b"ENGTRACE"
END_MAGIC = b"ENGTEND\x00"
CHUNK_MAGIC = b"CHNK"
VERSION = 2
_HEAD = struct.Struct("<8sIII")
_CHUNK = struct.Struct("<4sIQQBI")
_TRAILER = struct.Struct("<QQQQQQQI8s")
_INDEX = np.dtype([("offset", "<u8"), ("first_step", "<u8"), ("first_row", "<u8")])


@dataclass
class TraceChunk:
    """Whole steps of a trace: ``rows`` in request order (dense keys when ``dense``, else global row
    ids), ``step_counts`` rows per step."""

    index: int
    first_step: int
    first_row: int
    rows: np.ndarray
    step_counts: np.ndarray
    dense: bool = False

    @property
    def step_starts(self) -> np.ndarray:
        """Offsets of each step in ``rows``, then ``rows.size``."""
        starts = np.zeros(self.step_counts.size + 1, np.int64)
        np.cumsum(self.step_counts, out=starts[1:])
        return starts


@njit(nogil=True, cache=True)
def _encode_into(rows, width, out):
    n = rows.size
    previous = np.int64(0)
    for i in range(n):
        delta = rows[i] - previous
        previous = rows[i]
        zigzag = np.uint64((delta << 1) ^ (delta >> 63))
        for b in range(width):
            out[b * n + i] = np.uint8((zigzag >> np.uint64(8 * b)) & np.uint64(0xFF))


@njit(nogil=True, cache=True)
def _decode_into(data, n, width, out):
    value = np.int64(0)
    for i in range(n):
        zigzag = np.uint64(0)
        for b in range(width):
            zigzag |= np.uint64(data[b * n + i]) << np.uint64(8 * b)
        value += np.int64(zigzag >> np.uint64(1)) ^ -np.int64(zigzag & np.uint64(1))
        out[i] = value


def encode_rows(rows: np.ndarray, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Delta, zigzag, narrow to ``width`` bytes, byte-shuffle (see the module docstring): the first
    ``width * rows.size`` bytes of ``out`` (a reusable uint8 buffer)."""
    rows = np.ascontiguousarray(rows, np.int64)
    if out is None or out.size < width * rows.size:
        out = np.empty(width * rows.size, np.uint8)
    _encode_into(rows, width, out)
    return out[: width * rows.size]


def decode_rows(data, n_rows: int, width: int) -> np.ndarray:
    rows = np.empty(n_rows, np.int64)
    _decode_into(np.frombuffer(data, np.uint8, n_rows * width), n_rows, width, rows)
    return rows


def _width_for(n_table_rows: int) -> int:
    """Bytes per zigzagged delta: deltas lie in (-n, n), so zigzag values stay below 2n."""
    return 4 if 2 * n_table_rows <= 1 << 32 else 8


def _encode_frame(compressor, counts: np.ndarray, ids: np.ndarray, width: int, buf: np.ndarray) -> tuple[bytes, np.ndarray]:
    """One FRAME of ``counts`` (int64) and ``ids`` (see the module docstring), and the (maybe grown) ``buf``."""
    head = 8 * counts.size
    if buf.size < head + width * ids.size:
        buf = np.empty(head + width * ids.size, np.uint8)
    buf[:head] = np.asarray(counts, "<i8").view(np.uint8)
    encode_rows(ids, width, buf[head:])
    payload = compressor.compress(buf[: head + width * ids.size])
    fields = _CHUNK.pack(CHUNK_MAGIC, counts.size, ids.size, len(payload), width, 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields))) + payload, buf


def _decode_frame(raw: bytes, decompressor, most_counts: int, most_ids: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(counts, ids) of one FRAME filling ``raw`` exactly, or None when anything in it does not check
    out, including more than ``most_counts`` counts or ``most_ids`` ids (what the index leaves room
    for): nothing is decompressed into a buffer sized by an unchecked count."""
    if len(raw) < _CHUNK.size:
        return None
    magic, n_counts, n_ids, n_payload, width, crc = _CHUNK.unpack_from(raw)
    payload = raw[_CHUNK.size :]
    if (magic != CHUNK_MAGIC or width not in (4, 8) or n_payload != len(payload)
            or n_counts > most_counts or n_ids > most_ids
            or zlib.crc32(payload, zlib.crc32(raw[: _CHUNK.size - 4])) != crc):
        return None
    size = 8 * n_counts + width * n_ids
    try:
        data = decompressor.decompress(payload, max_output_size=size)
    except zstandard.ZstdError:
        return None
    if len(data) != size:
        return None
    return np.frombuffer(data, "<i8", n_counts).astype(np.int64), decode_rows(data[8 * n_counts :], n_ids, width)


class TraceWriter:
    """Appends steps to a trace file, holding at most about ``chunk_rows`` rows in memory (plus the set
    of distinct rows: a bit per table row, see `RowIndex`).

    Chunks of global row ids go to a scratch file as they fill; `close` renumbers them to dense keys
    into a temporary file beside ``PATH`` and renames that over it (`engramtier.outputs`: unique
    names, a link's target replaced, a device such as /dev/null written in place), so a crash or an
    exception never leaves a half-written file under the real name.
    """

    def __init__(self, path, n_table_rows: int, row_bytes: int, meta: dict | None = None,
                 chunk_rows: int = 1 << 20, level: int = 3):
        if n_table_rows < 1 or row_bytes < 1 or chunk_rows < 1:
            raise EngramTierError(
                f"trace writer: n_table_rows, row_bytes and chunk_rows must be positive, got {n_table_rows}, {row_bytes}, {chunk_rows}"
            )
        self.path = Path(path)
        self.n_table_rows, self.row_bytes, self.chunk_rows = int(n_table_rows), int(row_bytes), int(chunk_rows)
        self.width = _width_for(self.n_table_rows)
        self.n_steps = self.n_rows = self.bytes_written = 0
        self._header = json.dumps({"n_table_rows": self.n_table_rows, "row_bytes": self.row_bytes, "meta": meta or {}}).encode()
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._row_index = RowIndex(self.n_table_rows)
        self._raw_frames: list[tuple[int, int]] = []  # (offset, length) in the raw file
        self._raw_bytes = 0
        self._step_counts: list[np.ndarray] = []
        self._rows = np.empty(min(self.chunk_rows, 1 << 16), np.int64)  # rows of the steps not yet written (grows)
        self._encoded = np.empty(0, np.uint8)  # reused for each frame's payload before compression
        self._n_buffered = 0
        self._counts: list[np.ndarray] = []
        self._final = check_output_file(self.path, "trace file")
        in_place = is_special(self._final)  # a device or FIFO: written as a stream, its folder not ours
        self._part = None if in_place else temporary_beside(self._final)
        self._file = self._raw = self._raw_path = None
        try:
            self._raw_path = temporary_beside(self._final, ".raw", Path(tempfile.gettempdir()) if in_place else None)
            self._raw = open(self._raw_path, "w+b")
        except OSError as err:
            self.abandon()
            raise EngramTierError(f"cannot write trace file {self.path}: {err.strerror}; choose a writable path") from None

    def _failed(self, err: OSError) -> EngramTierError:
        self.abandon()
        return EngramTierError(f"cannot write trace file {self.path}: {err.strerror}; free space or choose another path")

    def append_step(self, rows: np.ndarray) -> None:
        self.append(rows, np.array([np.size(rows)], np.int64))

    def append(self, rows: np.ndarray, step_counts: np.ndarray) -> None:
        """Append whole steps: ``rows`` holds them back to back, ``step_counts`` their sizes."""
        rows = np.asarray(rows).reshape(-1)
        step_counts = np.asarray(step_counts, np.int64)
        if step_counts.size and (step_counts.min() < 0 or step_counts.sum() != rows.size):
            raise EngramTierError(f"trace writer {self.path}: step counts must be >= 0 and add up to the {rows.size} rows given")
        if rows.size:
            lo, hi = int(rows.min()), int(rows.max())
            if lo < 0 or hi >= self.n_table_rows:
                raise EngramTierError(
                    f"trace writer {self.path}: row id {lo if lo < 0 else hi} lies outside the table's {self.n_table_rows} rows"
                )
            self._row_index.add(rows)
        if self._n_buffered + rows.size > self._rows.size:  # grow to what is held (x2), not to chunk_rows at once
            grown = max(self._n_buffered + rows.size, min(2 * self._rows.size, self.chunk_rows))
            self._rows = np.concatenate([self._rows[: self._n_buffered], np.empty(grown - self._n_buffered, np.int64)])
        self._rows[self._n_buffered : self._n_buffered + rows.size] = rows
        self._n_buffered += rows.size
        self._counts.append(step_counts)
        if self._n_buffered >= self.chunk_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write chunks of at most ``chunk_rows`` rows (a larger step gets a chunk of its own) while
        a full chunk is buffered, or everything when ``final``; keep the remainder."""
        counts = np.concatenate(self._counts) if self._counts else np.empty(0, np.int64)
        ends = np.cumsum(counts)
        first, done = 0, 0
        while first < counts.size and (final or ends[-1] - done >= self.chunk_rows):
            last = max(first + 1, int(np.searchsorted(ends, done + self.chunk_rows, side="right")))
            self._write_raw_chunk(self._rows[done : ends[last - 1]], counts[first:last])
            first, done = last, int(ends[last - 1])
        left = self._n_buffered - done
        self._rows[:left] = self._rows[done : self._n_buffered]
        self._n_buffered = left
        self._counts = [counts[first:]]

    def _write_raw_chunk(self, rows: np.ndarray, counts: np.ndarray) -> None:
        frame, self._encoded = _encode_frame(self._compressor, counts, rows, self.width, self._encoded)
        try:
            self._raw.write(frame)
        except OSError as err:
            raise self._failed(err) from None
        self._raw_frames.append((self._raw_bytes, len(frame)))
        self._raw_bytes += len(frame)
        self._step_counts.append(counts.copy())
        self.n_steps += counts.size
        self.n_rows += rows.size

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

    def close(self) -> None:
        if self._raw.closed:
            return
        self._flush(final=True)
        try:
            self._finish()
        except OSError as err:
            raise self._failed(err) from None
        if self._part is not None:
            replace_with(self._part, self._final)

    def _finish(self) -> None:
        """Renumber the raw chunks to dense keys and write the file under ``PATH.part``."""
        sorted_row_ids = self._row_index.finish()
        first_seen = FirstSeen(sorted_row_ids.size)
        key_width = _width_for(max(sorted_row_ids.size, 1))
        self._file = open(self._final if self._part is None else self._part, "wb")
        self._write(_HEAD.pack(MAGIC, VERSION, len(self._header), zlib.crc32(self._header)) + self._header)
        decompressor = zstandard.ZstdDecompressor()
        index, keys = [], np.empty(0, np.int64)
        first_step = first_row = 0
        self._raw.seek(0)
        for _offset, length in self._raw_frames:
            counts, rows = _decode_frame(self._raw.read(length), decompressor, self.n_steps, self.n_rows)
            if keys.size < rows.size:
                keys = np.empty(rows.size, np.int64)
            first_seen.keys(self._row_index.ranks(rows, keys[: rows.size]), keys[: rows.size])
            index.append((self.bytes_written, first_step, first_row))
            frame, self._encoded = _encode_frame(self._compressor, counts, keys[: rows.size], key_width, self._encoded)
            self._write(frame)
            first_step += counts.size
            first_row += rows.size
        self._raw.close()
        self._raw_path.unlink()
        row_ids = first_seen.row_ids(sorted_row_ids)
        distinct_offset = self.bytes_written
        no_counts = np.empty(0, np.int64)
        for lo in range(0, row_ids.size, self.chunk_rows):
            frame, self._encoded = _encode_frame(self._compressor, no_counts, row_ids[lo : lo + self.chunk_rows],
                                                 self.width, self._encoded)
            self._write(frame)
        steps_offset = self.bytes_written
        all_counts = np.concatenate(self._step_counts) if self._step_counts else no_counts
        frame, self._encoded = _encode_frame(self._compressor, all_counts, no_counts, 4, self._encoded)
        self._write(frame)
        index_bytes = np.array(index, _INDEX).tobytes()
        offsets = (self.bytes_written, distinct_offset, steps_offset, len(index), self.n_steps, self.n_rows, row_ids.size)
        fields = _TRAILER.pack(*offsets, 0, END_MAGIC)[: 7 * 8]
        self._write(index_bytes + _TRAILER.pack(*offsets, zlib.crc32(fields, zlib.crc32(index_bytes)), END_MAGIC))
        self._file.close()

    def abandon(self) -> None:
        """Drop the partial files (never a special file written in place)."""
        for f in (self._raw, self._file):
            if f is not None:
                f.close()
        for path in (self._raw_path, self._part):
            if path is not None:
                path.unlink(missing_ok=True)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


class TraceReader:
    """Reads a trace file chunk by chunk; nothing is loaded whole unless `read_all` is asked for.

    Every count in the header, trailer and index is checked against the file when it is opened, and
    every frame against its checksum and the index when it is read.
    """

    def __init__(self, path, expect_fingerprint: str | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            raise EngramTierError(f"{self.path} is a directory, not a trace file; give a file built by `engramtier trace`")
        if not self.path.is_file():
            raise EngramTierError(f"trace file {self.path} does not exist; build one with `engramtier trace`")
        try:
            self._file = open(self.path, "rb")
        except OSError as err:
            raise EngramTierError(f"cannot read trace file {self.path} ({err.strerror}); give a readable path") from None
        self._decompressor = zstandard.ZstdDecompressor()
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._read_header()
            self._read_index()
        except BaseException:
            self._file.close()
            raise
        if expect_fingerprint is not None and self.fingerprint != expect_fingerprint:
            self._file.close()
            raise EngramTierError(
                f"{self.path} was built for hash config fingerprint {self.fingerprint}, but {expect_fingerprint} "
                "is expected; rebuild the trace with the model's tokenizer and table settings"
            )

    def _corrupt(self, what: str) -> EngramTierError:
        return EngramTierError(f"{self.path}: {what} is corrupt (checksum or count mismatch); the file was damaged, rebuild it")

    def _read_header(self) -> None:
        head = self._file.read(_HEAD.size)
        if len(head) < 12 or head[:8] != MAGIC:
            raise EngramTierError(f"{self.path} is not an engramtier trace file (wrong magic bytes); build one with `engramtier trace`")
        version = struct.unpack_from("<I", head, 8)[0]
        if version < VERSION:
            raise EngramTierError(
                f"{self.path} is a version-{version} trace from an older engramtier (other tokenizer compression, "
                "no dense row keys); rebuild it with `engramtier trace`"
            )
        if version > VERSION:
            raise EngramTierError(
                f"{self.path} uses trace format version {version}, newer than the {VERSION} this engramtier reads; upgrade engramtier"
            )
        if len(head) < _HEAD.size:
            raise self._truncated()
        _, _, length, crc = _HEAD.unpack(head)
        if _HEAD.size + length + _TRAILER.size > self._size:
            raise self._corrupt("the header") if length > self._size else self._truncated()
        blob = self._file.read(length)
        if zlib.crc32(blob) != crc:
            raise self._corrupt("the header")
        try:
            header = json.loads(blob)
            self.n_table_rows = int(header["n_table_rows"])
            self.row_bytes = int(header["row_bytes"])
            self.meta = dict(header["meta"])
        except (ValueError, KeyError, TypeError, OverflowError):
            raise self._corrupt("the header") from None
        if self.n_table_rows < 1 or self.row_bytes < 1:
            raise self._corrupt("the header")
        self._data_start = _HEAD.size + length

    def _truncated(self) -> EngramTierError:
        return EngramTierError(
            f"{self.path} is truncated: it ends without its index (the writer did not finish, or the copy was cut short); rebuild it"
        )

    def _read_index(self) -> None:
        self._file.seek(self._size - _TRAILER.size)
        trailer = self._file.read(_TRAILER.size)
        (index_offset, distinct_offset, steps_offset, n_chunks, n_steps, n_rows, n_distinct, crc,
         end) = _TRAILER.unpack(trailer)
        if end != END_MAGIC:
            raise self._truncated()
        index_bytes = n_chunks * _INDEX.itemsize
        ok = (self._data_start <= distinct_offset <= steps_offset < index_offset
              and index_offset + index_bytes == self._size - _TRAILER.size)
        if ok:
            self._file.seek(index_offset)
            index = self._file.read(index_bytes)
            ok = zlib.crc32(trailer[: 7 * 8], zlib.crc32(index)) == crc
        if not ok:
            raise EngramTierError(f"{self.path}: the chunk index is corrupt (checksum mismatch); rebuild the trace")
        self._index = np.frombuffer(index, _INDEX)
        self._index_offset, self._distinct_offset, self._steps_offset = index_offset, distinct_offset, steps_offset
        self.n_chunks, self.n_steps, self.n_rows, self.n_distinct = int(n_chunks), int(n_steps), int(n_rows), int(n_distinct)
        offsets = np.append(self._index["offset"].astype(np.int64), distinct_offset)
        firsts = [np.append(self._index[f].astype(np.int64), total) for f, total in
                  (("first_step", self.n_steps), ("first_row", self.n_rows))]
        if (self.n_chunks and (offsets[0] != self._data_start or np.any(np.diff(offsets) <= 0)
                               or firsts[0][0] != 0 or firsts[1][0] != 0)
                or any(np.any(np.diff(f) < 0) for f in firsts)
                or self.n_distinct > min(self.n_rows, self.n_table_rows) or (self.n_rows > 0) != (self.n_distinct > 0)):
            raise EngramTierError(f"{self.path}: the chunk index is corrupt (its counts contradict the file); rebuild the trace")

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    def _frame_at(self, start: int, end: int, what: str, most_counts: int, most_ids: int) -> tuple[np.ndarray, np.ndarray]:
        self._file.seek(start)
        frame = _decode_frame(self._file.read(end - start), self._decompressor, most_counts, most_ids)
        if frame is None:
            raise self._corrupt(what)
        return frame

    def read_chunk(self, i: int, dense: bool = False) -> TraceChunk:
        """Chunk ``i``: dense keys when ``dense``, else global row ids."""
        if not 0 <= i < self.n_chunks:
            raise EngramTierError(f"{self.path}: no chunk {i}; the trace has {self.n_chunks}")
        offset = int(self._index["offset"][i])
        end = int(self._index["offset"][i + 1]) if i + 1 < self.n_chunks else self._distinct_offset
        what = f"chunk {i} at byte {offset}"
        first_step, first_row = int(self._index["first_step"][i]), int(self._index["first_row"][i])
        next_step = int(self._index["first_step"][i + 1]) if i + 1 < self.n_chunks else self.n_steps
        next_row = int(self._index["first_row"][i + 1]) if i + 1 < self.n_chunks else self.n_rows
        counts, keys = self._frame_at(offset, end, what, next_step - first_step, next_row - first_row)
        if (counts.size != next_step - first_step or keys.size != next_row - first_row
                or (counts.size and counts.min() < 0) or counts.sum() != keys.size
                or (keys.size and (keys.min() < 0 or keys.max() >= self.n_distinct))):
            raise self._corrupt(what)
        return TraceChunk(i, first_step, first_row, keys if dense else self.row_ids()[keys], counts, dense)

    def row_ids(self) -> np.ndarray:
        """The distinct row ids the trace touches, in key order: dense key ``k`` is row ``row_ids()[k]``."""
        return self._row_ids

    @cached_property
    def _row_ids(self) -> np.ndarray:
        parts, at = [], self._distinct_offset
        while at < self._steps_offset:
            self._file.seek(at)
            fields = self._file.read(_CHUNK.size)
            if len(fields) < _CHUNK.size:
                raise self._corrupt("the distinct-row table")
            end = at + _CHUNK.size + _CHUNK.unpack(fields)[3]
            left = self.n_distinct - sum(p.size for p in parts)
            parts.append(self._frame_at(at, min(end, self._steps_offset), "the distinct-row table", 0, left)[1])
            at = end
        ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if ids.size != self.n_distinct or (ids.size and (ids.min() < 0 or ids.max() >= self.n_table_rows)):
            raise self._corrupt("the distinct-row table")
        return ids

    @cached_property
    def step_starts(self) -> np.ndarray:
        """Index of each step's first request, then ``n_rows`` (read from the file's step table)."""
        counts, ids = self._frame_at(self._steps_offset, self._index_offset, "the step table", self.n_steps, 0)
        if counts.size != self.n_steps or ids.size or (counts.size and counts.min() < 0) or counts.sum() != self.n_rows:
            raise self._corrupt("the step table")
        starts = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        return starts

    def chunks(self, reverse: bool = False, dense: bool = False) -> Iterator[TraceChunk]:
        order = range(self.n_chunks - 1, -1, -1) if reverse else range(self.n_chunks)
        for i in order:
            yield self.read_chunk(i, dense)

    def steps(self) -> Iterator[np.ndarray]:
        """Each step's row ids, in order."""
        for chunk in self.chunks():
            yield from np.split(chunk.rows, chunk.step_starts[1:-1])

    def read_steps(self, first: int, stop: int, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows, step_starts) of steps ``first`` to ``stop - 1``, decoding only the chunks holding them."""
        if not 0 <= first <= stop <= self.n_steps:
            raise EngramTierError(f"{self.path}: steps [{first}, {stop}) are not within the trace's {self.n_steps} steps")
        lo = max(0, int(np.searchsorted(self._index["first_step"], first, side="right")) - 1)
        hi = int(np.searchsorted(self._index["first_step"], stop, side="left"))
        rows, counts = [], []
        for i in range(lo, max(lo, hi)):
            chunk = self.read_chunk(i, dense)
            a, b = max(first - chunk.first_step, 0), min(stop - chunk.first_step, chunk.step_counts.size)
            starts = chunk.step_starts
            rows.append(chunk.rows[starts[a] : starts[b]])
            counts.append(chunk.step_counts[a:b])
        counts = np.concatenate(counts) if counts else np.empty(0, np.int64)
        step_starts = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=step_starts[1:])
        return (np.concatenate(rows) if rows else np.empty(0, np.int64)), step_starts

    def dense_keys(self) -> np.ndarray:
        """Every request's dense key, in order (the whole trace in memory: offline policies need it)."""
        return self.read_steps(0, self.n_steps, dense=True)[0]

    def read_all(self) -> RowTrace:
        keys, step_starts = self.read_steps(0, self.n_steps, dense=True)
        row_ids = self.row_ids()
        return RowTrace(row_ids[keys], step_starts, self.n_table_rows, self.row_bytes, dict(self.meta),
                        _dense=(keys, row_ids))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def trace_chunks(trace: "RowTrace | TraceReader", reverse: bool = False, dense: bool = False) -> Iterator[TraceChunk]:
    """The chunks of a trace file, or an in-memory trace as one chunk: consumers (simulator, stats,
    exports) stream both the same way. ``dense``: the rows as dense keys."""
    if isinstance(trace, TraceReader):
        yield from trace.chunks(reverse, dense)
    else:
        rows = trace.dense_keys() if dense else trace.rows
        yield TraceChunk(0, 0, 0, rows, np.diff(trace.step_starts), dense)


def save_trace(trace: RowTrace, path, chunk_rows: int = 1 << 20) -> None:
    """Write an in-memory trace to a trace file."""
    with TraceWriter(path, trace.n_table_rows, trace.row_bytes, trace.meta, chunk_rows=chunk_rows) as writer:
        writer.append(trace.rows, np.diff(trace.step_starts))


def load_trace(path, expect_fingerprint: str | None = None) -> RowTrace:
    with TraceReader(path, expect_fingerprint) as reader:
        return reader.read_all()
