"""Row traces in other simulators' formats: libCacheSim's oracleGeneral binary, and CSV.

Two streams can be written. ``requests`` is every row id the trace holds, in order. ``lookups`` is
what `engramtier.cache.simulator` replays: per step the unique rows in first-occurrence order
(`engramtier.trace.lookups.unique_per_step`), since one forward pass fetches a row once however often
its tokens ask for it; another simulator fed this stream counts the hits of our first cache tier.

oracleGeneral records are 24 bytes, ``<I Q I q``: the time (here the step index), the id (the global
row id), the size (``row_bytes`` unless told otherwise) and the position in the stream of the next
record for the same id, or -1. The next positions come from one backward pass holding, per row,
the earliest record seen so far. That pass walks the trace's chunks last to first, writing each
chunk's records at their own offset in the output file, so a trace larger than memory exports in the
memory of one chunk, its distinct-row table and 8 bytes per distinct row; lookups take 8 more (the
unique-per-step state) and a forward pass first, counting each chunk's lookups to know those offsets.
Steps never span chunks. All state is indexed by the trace's dense keys (`engramtier.trace.rowindex`),
not by the table; records carry the global row ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.trace.lookups import unique_per_step
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import TraceChunk, TraceReader, trace_chunks

ORACLE_RECORD = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
FORMATS = ("oracle", "csv")
STREAMS = ("requests", "lookups")
_UINT32_MAX = np.iinfo(np.uint32).max


@dataclass
class Block:
    """Whole steps of an exported stream: ``keys`` (dense keys) in stream order, ``step_counts``
    records per step, the index of the first step and the stream position of ``keys[0]``."""

    first_step: int
    first: int
    keys: np.ndarray
    step_counts: np.ndarray


@njit(nogil=True, cache=True)
def next_positions(rows, first_row, following):
    """Position of the next record of each row's key, or -1; ``following[k]`` holds the earliest
    position of ``k`` among the records after this block (-1 if none) and is updated in place."""
    out = np.empty(rows.size, np.int64)
    for i in range(rows.size - 1, -1, -1):
        k = rows[i]
        out[i] = following[k]
        following[k] = first_row + i
    return out


def chunk_lookups(chunk: TraceChunk, stamp: np.ndarray, done: int) -> tuple[np.ndarray, np.ndarray]:
    """The lookups of a chunk of dense keys and their count per step, by the simulator's own
    `unique_per_step`; ``stamp`` (per key, -1 at first) is its state across calls, ``done`` the
    lookups it made."""
    keys = np.empty(chunk.rows.size, np.int64)
    last_ts = np.empty(chunk.rows.size, np.int64)
    starts = np.empty(chunk.step_counts.size + 1, np.int64)
    n = unique_per_step(chunk.rows, chunk.step_starts, chunk.first_row, stamp, done, keys, last_ts, starts)
    return keys[:n], np.diff(starts)


def _lookup_offsets(trace: RowTrace | TraceReader) -> np.ndarray:
    """Stream position of each chunk's first lookup, then the total: what a backward walk needs."""
    sizes = [block.keys.size for block in stream_blocks(trace, "lookups")]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def stream_blocks(trace: RowTrace | TraceReader, stream: str, reverse: bool = False) -> Iterator[Block]:
    """One block per trace chunk of the ``stream`` (see the module docstring), last first if ``reverse``."""
    _check_stream(stream)
    return (_lookup_blocks if stream == "lookups" else _request_blocks)(trace, reverse)


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise EngramTierError(f"unknown export stream '{stream}'; use one of {', '.join(STREAMS)}")


def _request_blocks(trace: RowTrace | TraceReader, reverse: bool) -> Iterator[Block]:
    for chunk in trace_chunks(trace, reverse, dense=True):
        yield Block(chunk.first_step, chunk.first_row, chunk.rows, chunk.step_counts)


def _lookup_blocks(trace: RowTrace | TraceReader, reverse: bool) -> Iterator[Block]:
    offsets = _lookup_offsets(trace) if reverse else None
    stamp = np.full(trace.n_distinct, -1, np.int64)
    done = 0
    for chunk in trace_chunks(trace, reverse, dense=True):
        keys, counts = chunk_lookups(chunk, stamp, done)
        yield Block(chunk.first_step, int(offsets[chunk.index]) if reverse else done, keys, counts)
        done += keys.size


def _step_of_rows(first_step: int, step_counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(first_step, first_step + step_counts.size, dtype=np.int64), step_counts)


def _checked_size(trace, path: Path, stream: str, object_size: int | None) -> int:
    """The size field of every record (default: the row's bytes), once stream, steps and size are
    checked (against the formats' 32-bit fields), before the output file is touched."""
    _check_stream(stream)
    size = trace.row_bytes if object_size is None else object_size
    if trace.n_steps - 1 > _UINT32_MAX:
        raise EngramTierError(f"export {path}: {trace.n_steps} steps do not fit the format's 32-bit time field")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= _UINT32_MAX:
        raise EngramTierError(
            f"export {path}: object size {size!r} must be a whole number of 1 to {_UINT32_MAX} (the format's "
            "32-bit size field); pass --object-size 1 to count rows"
        )
    return int(size)


def export_oracle_general(trace: RowTrace | TraceReader, path, stream: str = "requests",
                          object_size: int | None = None) -> int:
    """Write libCacheSim's oracleGeneral binary trace of ``stream``; returns the number of records.

    Blocks land at their own offsets, the stream's last first, so the file ends where the stream does."""
    path = Path(path)
    size = _checked_size(trace, path, stream, object_size)
    row_ids = trace.row_ids()
    following = np.full(row_ids.size, -1, np.int64)
    n = 0
    with open(path, "wb") as f:
        for block in stream_blocks(trace, stream, reverse=True):
            records = np.empty(block.keys.size, ORACLE_RECORD)
            records["time"] = _step_of_rows(block.first_step, block.step_counts)
            records["id"] = row_ids[block.keys]
            records["size"] = size
            records["next"] = next_positions(block.keys, block.first, following)
            f.seek(block.first * ORACLE_RECORD.itemsize)
            records.tofile(f)
            n += block.keys.size
    return n


@njit(nogil=True, cache=True)
def _write_decimal(buf, at, value):
    """Write the non-negative ``value`` in decimal at ``buf[at:]``; returns the end."""
    if value == 0:
        buf[at] = 48
        return at + 1
    end = at
    v = value
    while v > 0:
        end += 1
        v //= 10
    i = end
    while value > 0:
        i -= 1
        buf[i] = 48 + value % 10
        value //= 10
    return end


@njit(nogil=True, cache=True)
def _csv_lines(times, ids, size, buf):
    """``time,id,size`` lines into ``buf`` (large enough for 3 * 20 digits + 3 bytes per line); returns the length."""
    at = 0
    for i in range(ids.size):
        at = _write_decimal(buf, at, times[i])
        buf[at] = 44  # ','
        at = _write_decimal(buf, at + 1, ids[i])
        buf[at] = 44
        at = _write_decimal(buf, at + 1, size)
        buf[at] = 10  # '\n'
        at += 1
    return at


def export_csv(trace: RowTrace | TraceReader, path, stream: str = "requests", object_size: int | None = None) -> int:
    """Write ``time,id,size`` lines of ``stream`` (time = step index) under that header; returns the number of lines."""
    path = Path(path)
    size = _checked_size(trace, path, stream, object_size)
    row_ids = trace.row_ids()
    buf = np.empty(0, np.uint8)
    n = 0
    with open(path, "wb") as f:
        f.write(b"time,id,size\n")
        for block in stream_blocks(trace, stream):
            if buf.size < block.keys.size * 63:
                buf = np.empty(block.keys.size * 63, np.uint8)
            end = _csv_lines(_step_of_rows(block.first_step, block.step_counts), row_ids[block.keys], size, buf)
            f.write(buf[:end].tobytes())
            n += block.keys.size
    return n


def export_trace(trace: RowTrace | TraceReader, path, fmt: str, stream: str = "requests",
                 object_size: int | None = None) -> int:
    exporters = {"oracle": export_oracle_general, "csv": export_csv}
    if fmt not in exporters:
        raise EngramTierError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    return exporters[fmt](trace, path, stream, object_size)
