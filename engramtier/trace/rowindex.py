"""The rows a trace touches, and each row's *dense key*: the order of its first request.

A production Engram table has hundreds of millions of rows (DeepSeek-V4.1-Flash: 768,022,850), of
which a trace touches a fraction. Policies, miss-ratio curves and statistics keep state per key, so
they index dense keys ``0 .. n_distinct - 1`` instead of global row ids: their memory follows the
trace, not the table. Keys are numbered by first request, so hot rows (requested early and often)
get small keys that share cache lines: the simulator's per-key arrays are read at random on every
lookup, and in row order a hot row's entry is as far from the next hot row's as any. Nothing a policy decides depends on key
values, except what it hashes or ranks by row: those read ``row_ids[key]`` (W-TinyLFU's sketch,
static placement's ties), so every result equals the result on global row ids.

`RowIndex` collects the distinct rows while a trace is written and then maps row ids to their rank
in row order, which `FirstSeen` turns into first-request order. Two representations, chosen by
table size, give the same ranks:

bitmap   one bit per table row plus a running popcount (int64) per 64-bit word: 2 bits per table row
         (192 MB for 768M rows), and a rank is two memory reads and a popcount, no search
sorted   the distinct rows themselves, merged from sorted runs as they arrive (like an LSM tree, each
         row is merged O(log n) times); a key is a binary search. For tables too large for a bitmap.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

# Tables up to this many rows use the bitmap (at most 2 GiB with its ranks); larger ones the sorted runs.
BITMAP_MAX_ROWS = 1 << 33


@njit(nogil=True, cache=True)
def _mark(bits, rows):
    for i in range(rows.size):
        k = rows[i]
        bits[k >> 6] |= uint64(1) << uint64(k & 63)


@njit(inline="always")
def popcount(x):
    """Set bits of a uint64 (SWAR), as int64: the rank bitmap here and the miss-ratio curves' marks."""
    x = x - ((x >> uint64(1)) & uint64(0x5555555555555555))
    x = (x & uint64(0x3333333333333333)) + ((x >> uint64(2)) & uint64(0x3333333333333333))
    x = (x + (x >> uint64(4))) & uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * uint64(0x0101010101010101)) >> uint64(56))


@njit(nogil=True, cache=True)
def _word_ranks(bits):
    """ranks[w]: set bits in the words before ``w``; returns (ranks, total)."""
    ranks = np.empty(bits.size, np.int64)
    total = 0
    for w in range(bits.size):
        ranks[w] = total
        total += popcount(bits[w])
    return ranks, total


@njit(nogil=True, cache=True)
def _set_positions(bits, out):
    n = 0
    for w in range(bits.size):
        word = bits[w]
        while word:
            low = word & (~word + uint64(1))
            out[n] = (w << 6) + popcount(low - uint64(1))
            n += 1
            word ^= low


@njit(nogil=True, parallel=True, cache=True)
def _bitmap_keys(bits, ranks, rows, out):
    for i in prange(rows.size):
        k = rows[i]
        w = k >> 6
        below = bits[w] & ((uint64(1) << uint64(k & 63)) - uint64(1))
        out[i] = ranks[w] + popcount(below)


@njit(nogil=True, cache=True)
def _first_seen(ranks, key_of_rank, n_assigned, out):
    for i in range(ranks.size):
        r = ranks[i]
        k = key_of_rank[r]
        if k < 0:
            k = n_assigned
            key_of_rank[r] = k
            n_assigned += 1
        out[i] = k
    return n_assigned


class FirstSeen:
    """Numbers ranks (`RowIndex.ranks`) by first appearance over a stream of chunks."""

    def __init__(self, n_distinct: int):
        self.key_of_rank = np.full(n_distinct, -1, np.int64)
        self.n_assigned = 0

    def keys(self, ranks: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.n_assigned = _first_seen(ranks, self.key_of_rank, self.n_assigned, out)
        return out

    def row_ids(self, sorted_row_ids: np.ndarray) -> np.ndarray:
        """Each key's row id, in key order (once every rank has been seen)."""
        out = np.empty_like(sorted_row_ids)
        out[self.key_of_rank] = sorted_row_ids
        return out


class RowIndex:
    """Distinct rows of one trace over a table of ``n_table_rows``: `add` row ids, `finish`, then `ranks`."""

    def __init__(self, n_table_rows: int):
        self.n_table_rows = int(n_table_rows)
        self._bits = np.zeros((self.n_table_rows >> 6) + 1, np.uint64) if self.n_table_rows <= BITMAP_MAX_ROWS else None
        self._runs: list[np.ndarray] = []  # sorted runs of distinct rows, largest first
        self._ranks: np.ndarray | None = None
        self.row_ids: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, np.int64)
        if self._bits is not None:
            _mark(self._bits, rows)
            return
        self._runs.append(np.unique(rows))
        while len(self._runs) > 1 and self._runs[-1].size * 2 >= self._runs[-2].size:
            top = self._runs.pop()
            self._runs[-1] = np.union1d(self._runs[-1], top)

    def finish(self) -> np.ndarray:
        """The sorted distinct rows added (int64); `keys` works from here on."""
        if self._bits is not None:
            self._ranks, total = _word_ranks(self._bits)
            self.row_ids = np.empty(total, np.int64)
            _set_positions(self._bits, self.row_ids)
        else:
            self.row_ids = self._runs[0] if len(self._runs) == 1 else np.unique(np.concatenate(self._runs or [np.empty(0, np.int64)]))
            self._runs = []
        return self.row_ids

    def ranks(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Ranks of ``rows`` among the distinct rows in row order (each must have been added)."""
        rows = np.ascontiguousarray(rows, np.int64)
        if out is None:
            out = np.empty(rows.size, np.int64)
        if self._bits is not None:
            _bitmap_keys(self._bits, self._ranks, rows, out)
        else:
            out[:] = np.searchsorted(self.row_ids, rows)
        return out


def dense_keys(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, row_ids) of an in-memory array of row ids, keys in first-request order: ``row_ids[keys] == rows``."""
    sorted_ids, first, ranks = np.unique(np.asarray(rows, np.int64), return_index=True, return_inverse=True)
    order = np.argsort(first)  # ranks in first-request order
    key_of_rank = np.empty(order.size, np.int64)
    key_of_rank[order] = np.arange(order.size)
    return key_of_rank[ranks.reshape(-1)], sorted_ids[order]
