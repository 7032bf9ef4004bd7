"""Row traces in other simulators' formats: libCacheSim's oracleGeneral binary, and CSV.

oracleGeneral records are 24 bytes, ``<I Q I q``: the time (here the step index), the id (the global
row id), the size (``row_bytes``) and the position of the next request for the same id, or -1. The
next positions come from one backward pass holding, per table row, the earliest request seen so far.
That pass walks the trace's chunks last to first, so a trace larger than memory exports in the memory
of one chunk plus 8 bytes per table row: each chunk's records are written at their own offset in the
output file, whose size is known from the start.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import TraceReader, trace_chunks

ORACLE_RECORD = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
FORMATS = ("oracle", "csv")
_UINT32_MAX = np.iinfo(np.uint32).max


@njit(nogil=True, cache=True)
def next_positions(rows, first_row, following):
    """Position of the next request for each row's id, or -1; ``following[k]`` holds the earliest
    position of ``k`` among the requests after this block (-1 if none) and is updated in place."""
    out = np.empty(rows.size, np.int64)
    for i in range(rows.size - 1, -1, -1):
        k = rows[i]
        out[i] = following[k]
        following[k] = first_row + i
    return out


def _step_of_rows(first_step: int, step_counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(first_step, first_step + step_counts.size, dtype=np.int64), step_counts)


def _check_fits(trace, path: Path) -> None:
    if trace.n_steps - 1 > _UINT32_MAX:
        raise EngramTierError(f"export {path}: {trace.n_steps} steps do not fit the format's 32-bit time field")
    if trace.row_bytes > _UINT32_MAX:
        raise EngramTierError(f"export {path}: row size {trace.row_bytes} does not fit the format's 32-bit size field")


def export_oracle_general(trace: RowTrace | TraceReader, path) -> int:
    """Write libCacheSim's oracleGeneral binary trace; returns the number of records."""
    path = Path(path)
    _check_fits(trace, path)
    following = np.full(trace.n_table_rows, -1, np.int64)
    with open(path, "wb") as f:
        f.truncate(trace.n_rows * ORACLE_RECORD.itemsize)
        for chunk in trace_chunks(trace, reverse=True):
            records = np.empty(chunk.rows.size, ORACLE_RECORD)
            records["time"] = _step_of_rows(chunk.first_step, chunk.step_counts)
            records["id"] = chunk.rows
            records["size"] = trace.row_bytes
            records["next"] = next_positions(chunk.rows, chunk.first_row, following)
            f.seek(chunk.first_row * ORACLE_RECORD.itemsize)
            records.tofile(f)
    return trace.n_rows


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


def export_csv(trace: RowTrace | TraceReader, path) -> int:
    """Write ``time,id,size`` lines (time = step index) under that header; returns the number of lines."""
    path = Path(path)
    _check_fits(trace, path)
    buf = np.empty(0, np.uint8)
    with open(path, "wb") as f:
        f.write(b"time,id,size\n")
        for chunk in trace_chunks(trace):
            if buf.size < chunk.rows.size * 63:
                buf = np.empty(chunk.rows.size * 63, np.uint8)
            n = _csv_lines(_step_of_rows(chunk.first_step, chunk.step_counts), chunk.rows, trace.row_bytes, buf)
            f.write(buf[:n].tobytes())
    return trace.n_rows


def export_trace(trace: RowTrace | TraceReader, path, fmt: str) -> int:
    exporters = {"oracle": export_oracle_general, "csv": export_csv}
    if fmt not in exporters:
        raise EngramTierError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    return exporters[fmt](trace, path)
