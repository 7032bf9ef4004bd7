"""The row-trace file: chunked, compressed, checksummed, seekable, written and read as a stream.

Layout (all integers little-endian)::

    header   MAGIC (8 bytes) | u32 version | u32 length | JSON {n_table_rows, row_bytes, meta}
    chunk*   CHUNK_MAGIC | u32 steps | u64 rows | u64 payload bytes | u8 width | u32 crc32 | payload
    index    per chunk: u64 file offset, u64 first step, u64 first row
    trailer  u64 index offset | u64 chunks | u64 steps | u64 rows | u32 crc32 | END_MAGIC

A chunk holds whole steps: its payload is one zstandard frame of the step row counts (int64) and
then the row ids, delta coded (each id minus the one before it), zigzag mapped to unsigned, narrowed
to ``width`` bytes (4 while the table has fewer than 2**31 rows) and byte-shuffled (all first bytes,
then all second bytes...). On the position-major traces of real text this takes the size from 8
bytes per row id to about 1.5, against about 1.9 for zstd on narrowed ids alone and 2.0 on raw int64
(level 3; `benchmarks/bench_trace.py` measures it). The crc32 covers the chunk's header fields and
payload, so a flipped byte anywhere is caught before decoding. The index at the end lets a reader
seek to any step, and walk the chunks backwards, without decoding the ones before it.

The meta of a trace built from tokens records its hash config and ``fingerprint``; a reader given
``expect_fingerprint`` refuses a trace built for other addressing.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import zstandard
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

MAGIC = b"ENGTRACE"
END_MAGIC = b"ENGTEND\x00"
CHUNK_MAGIC = b"CHNK"
VERSION = 1
_HEAD = struct.Struct("<8sII")
_CHUNK = struct.Struct("<4sIQQBI")
_TRAILER = struct.Struct("<QQQQI8s")
_INDEX = np.dtype([("offset", "<u8"), ("first_step", "<u8"), ("first_row", "<u8")])


@dataclass
class TraceChunk:
    """Whole steps of a trace: ``rows`` in request order, ``step_counts`` rows per step."""

    index: int
    first_step: int
    first_row: int
    rows: np.ndarray
    step_counts: np.ndarray

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


class TraceWriter:
    """Appends steps to a trace file, holding at most about ``chunk_rows`` rows in memory.

    The file is written under ``PATH.part`` and renamed when the writer closes cleanly, so a crash or
    an exception never leaves a half-written file under the real name.
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
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._index: list[tuple[int, int, int]] = []
        self._rows = np.empty(self.chunk_rows, np.int64)  # rows of the steps not yet written
        self._encoded = np.empty(0, np.uint8)  # reused for each chunk's payload before compression
        self._n_buffered = 0
        self._counts: list[np.ndarray] = []
        self._part = self.path.with_name(self.path.name + ".part")
        header = json.dumps({"n_table_rows": self.n_table_rows, "row_bytes": self.row_bytes, "meta": meta or {}}).encode()
        try:
            self._file = open(self._part, "wb")
        except OSError as err:
            raise EngramTierError(f"cannot write trace file {self.path}: {err.strerror}; choose a writable path") from None
        self._write(_HEAD.pack(MAGIC, VERSION, len(header)) + header)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.bytes_written += len(data)

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
        if self._n_buffered + rows.size > self._rows.size:
            self._rows = np.concatenate([self._rows[: self._n_buffered], np.empty(rows.size, np.int64)])
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
            self._write_chunk(self._rows[done : ends[last - 1]], counts[first:last])
            first, done = last, int(ends[last - 1])
        left = self._n_buffered - done
        self._rows[:left] = self._rows[done : self._n_buffered]
        self._n_buffered = left
        self._counts = [counts[first:]]

    def _write_chunk(self, rows: np.ndarray, counts: np.ndarray) -> None:
        head = 8 * counts.size  # the payload is the step counts, then the encoded rows
        if self._encoded.size < head + self.width * rows.size:
            self._encoded = np.empty(head + self.width * rows.size, np.uint8)
        self._encoded[:head] = counts.astype("<i8").view(np.uint8)
        encode_rows(rows, self.width, self._encoded[head:])
        payload = self._compressor.compress(self._encoded[: head + self.width * rows.size])
        fields = _CHUNK.pack(CHUNK_MAGIC, counts.size, rows.size, len(payload), self.width, 0)[:-4]
        crc = zlib.crc32(payload, zlib.crc32(fields))
        self._index.append((self.bytes_written, self.n_steps, self.n_rows))
        self._write(fields + struct.pack("<I", crc) + payload)
        self.n_steps += counts.size
        self.n_rows += rows.size

    def close(self) -> None:
        if self._file.closed:
            return
        self._flush(final=True)
        index = np.array(self._index, _INDEX).tobytes()
        offset = self.bytes_written
        fields = _TRAILER.pack(offset, len(self._index), self.n_steps, self.n_rows, 0, END_MAGIC)
        crc = zlib.crc32(fields[:32], zlib.crc32(index))
        self._write(index + _TRAILER.pack(offset, len(self._index), self.n_steps, self.n_rows, crc, END_MAGIC))
        self._file.close()
        os.replace(self._part, self.path)

    def abandon(self) -> None:
        """Drop the partial file."""
        self._file.close()
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


class TraceReader:
    """Reads a trace file chunk by chunk; nothing is loaded whole unless `read_all` is asked for."""

    def __init__(self, path, expect_fingerprint: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise EngramTierError(f"trace file {self.path} does not exist; build one with `engramtier trace`")
        self._file = open(self.path, "rb")
        self._decompressor = zstandard.ZstdDecompressor()
        try:
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

    def _read_header(self) -> None:
        head = self._file.read(_HEAD.size)
        if len(head) < _HEAD.size or head[:8] != MAGIC:
            raise EngramTierError(f"{self.path} is not an engramtier trace file (wrong magic bytes); build one with `engramtier trace`")
        _, version, length = _HEAD.unpack(head)
        if version > VERSION:
            raise EngramTierError(
                f"{self.path} uses trace format version {version}, newer than the {VERSION} this engramtier reads; upgrade engramtier"
            )
        blob = self._file.read(length)
        if len(blob) < length:
            raise self._truncated()
        try:
            header = json.loads(blob)
            self.n_table_rows = int(header["n_table_rows"])
            self.row_bytes = int(header["row_bytes"])
            self.meta = dict(header["meta"])
        except (ValueError, KeyError, TypeError):
            raise EngramTierError(f"{self.path}: the header is corrupt (not the expected JSON); rebuild the trace") from None
        self._data_start = _HEAD.size + length

    def _truncated(self) -> EngramTierError:
        return EngramTierError(
            f"{self.path} is truncated: it ends without its index (the writer did not finish, or the copy was cut short); rebuild it"
        )

    def _read_index(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size < self._data_start + _TRAILER.size:
            raise self._truncated()
        self._file.seek(size - _TRAILER.size)
        trailer = self._file.read(_TRAILER.size)
        offset, n_chunks, n_steps, n_rows, crc, end = _TRAILER.unpack(trailer)
        if end != END_MAGIC:
            raise self._truncated()
        index_bytes = n_chunks * _INDEX.itemsize
        ok = self._data_start <= offset and offset + index_bytes == size - _TRAILER.size
        if ok:
            self._file.seek(offset)
            index = self._file.read(index_bytes)
            ok = zlib.crc32(trailer[:32], zlib.crc32(index)) == crc
        if not ok:
            raise EngramTierError(f"{self.path}: the chunk index is corrupt (checksum mismatch); rebuild the trace")
        self._index = np.frombuffer(index, _INDEX)
        self._index_offset = offset
        self.n_chunks, self.n_steps, self.n_rows = int(n_chunks), int(n_steps), int(n_rows)

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    def read_chunk(self, i: int) -> TraceChunk:
        offset = int(self._index["offset"][i])
        end = int(self._index["offset"][i + 1]) if i + 1 < self.n_chunks else self._index_offset
        self._file.seek(offset)
        raw = self._file.read(end - offset)
        corrupt = EngramTierError(
            f"{self.path}: chunk {i} at byte {offset} is corrupt (checksum mismatch); the file was damaged, rebuild it"
        )
        if len(raw) < _CHUNK.size:
            raise corrupt
        magic, n_steps, n_rows, n_payload, width, crc = _CHUNK.unpack_from(raw)
        payload = raw[_CHUNK.size :]
        if magic != CHUNK_MAGIC or n_payload != len(payload) or zlib.crc32(payload, zlib.crc32(raw[: _CHUNK.size - 4])) != crc:
            raise corrupt
        data = self._decompressor.decompress(payload, max_output_size=8 * n_steps + width * n_rows)
        counts = np.frombuffer(data, "<i8", n_steps).astype(np.int64)
        rows = decode_rows(data[8 * n_steps :], n_rows, width)
        return TraceChunk(i, int(self._index["first_step"][i]), int(self._index["first_row"][i]), rows, counts)

    def chunks(self, reverse: bool = False) -> Iterator[TraceChunk]:
        order = range(self.n_chunks - 1, -1, -1) if reverse else range(self.n_chunks)
        for i in order:
            yield self.read_chunk(i)

    def steps(self) -> Iterator[np.ndarray]:
        """Each step's row ids, in order."""
        for chunk in self.chunks():
            yield from np.split(chunk.rows, chunk.step_starts[1:-1])

    def read_steps(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, step_starts) of steps ``first`` to ``stop - 1``, decoding only the chunks holding them."""
        if not 0 <= first <= stop <= self.n_steps:
            raise EngramTierError(f"{self.path}: steps [{first}, {stop}) are not within the trace's {self.n_steps} steps")
        lo = max(0, int(np.searchsorted(self._index["first_step"], first, side="right")) - 1)
        hi = int(np.searchsorted(self._index["first_step"], stop, side="left"))
        rows, counts = [], []
        for i in range(lo, max(lo, hi)):
            chunk = self.read_chunk(i)
            a, b = max(first - chunk.first_step, 0), min(stop - chunk.first_step, chunk.step_counts.size)
            starts = chunk.step_starts
            rows.append(chunk.rows[starts[a] : starts[b]])
            counts.append(chunk.step_counts[a:b])
        counts = np.concatenate(counts) if counts else np.empty(0, np.int64)
        step_starts = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=step_starts[1:])
        return (np.concatenate(rows) if rows else np.empty(0, np.int64)), step_starts

    def read_all(self) -> RowTrace:
        rows, step_starts = self.read_steps(0, self.n_steps)
        return RowTrace(rows, step_starts, self.n_table_rows, self.row_bytes, dict(self.meta))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def trace_chunks(trace: "RowTrace | TraceReader", reverse: bool = False) -> Iterator[TraceChunk]:
    """The chunks of a trace file, or an in-memory trace as one chunk: consumers (stats, exports)
    stream both the same way."""
    if isinstance(trace, TraceReader):
        yield from trace.chunks(reverse)
    else:
        yield TraceChunk(0, 0, 0, trace.rows, np.diff(trace.step_starts))


def save_trace(trace: RowTrace, path, chunk_rows: int = 1 << 20) -> None:
    """Write an in-memory trace to a trace file."""
    with TraceWriter(path, trace.n_table_rows, trace.row_bytes, trace.meta, chunk_rows=chunk_rows) as writer:
        writer.append(trace.rows, np.diff(trace.step_starts))


def load_trace(path, expect_fingerprint: str | None = None) -> RowTrace:
    with TraceReader(path, expect_fingerprint) as reader:
        return reader.read_all()
