"""Miss-ratio curves: hit counts at many cache sizes, from one pass (LRU) or a parallel sweep (any policy).

Exact LRU (Mattson et al. 1970): LRU has the stack property, so a request hits an LRU cache of ``C``
rows iff its *stack depth* (distinct keys requested since the previous request for the same key, that
key included) is at most ``C``. One pass computes every depth from a mark at the time of each key's
latest request: the depth is the number of marks after the key's previous request plus one, counted
with a Fenwick tree. O(n log n) for all sizes at once; the depth histogram gives the hits at every size.

SHARDS (Waldspurger et al., FAST'15): run the same over the requests whose key hashes (splitmix64)
below a threshold ``T``, a sampling rate ``R = T / 2**32`` of the keys. A sampled depth ``d`` counts
the key itself and ``d - 1`` sampled other keys, which stand for ``(d - 1) / R`` keys of the full
trace, so it is read as depth ``1 + (d - 1) / R`` (scaling ``d`` whole would make every cache smaller
than ``1 / R`` rows miss everything). *Fixed rate* keeps ``R``; the adjustment of the paper
(SHARDS_adj) credits the gap between the expected ``R * n`` and the actual number of sampled
requests to the smallest depth. *Fixed size* tracks at most ``s_max`` keys: when a new key would
exceed that, the key with the largest hash leaves and ``T`` drops to its hash; earlier counts are worth
``R_now / R_then`` of later ones, which is done by weighting each sampled request by ``1 / R`` at its
time; the weights then estimate the trace length, and the adjustment credits the gap to the smallest
depth as in fixed-rate mode (on skewed traces whether the few hottest keys hash into the sample
decides most of the error, and the adjustment removes most of it).

`sweep` replays any registered policy once per size, the sizes on parallel threads (the compiled
drivers release the GIL).

Miniature simulation (Waldspurger et al., ATC'17) estimates any policy's curve, offline and
plain-Python ones included: the requests whose *global row id* hashes (splitmix64 with a salt, as
SHARDS) below ``R * 2**32`` form a spatially sampled trace of about ``R`` of the rows and requests, and
a cache of ``S`` rows is emulated by the policy itself at ``max(1, round(R * S))`` rows over that
sample; its miss ratio estimates the full one. Hashing the row id (not a trace's dense key) samples the
same rows whichever trace numbering holds them. Each salt (`mini_mrc`'s seeds) draws another sample, so
the spread over salts shows the estimate's sampling error.

Most of one salt's error is an offset of its whole curve: rows are sampled, not requests, and whether a
sample holds a few more of the hottest rows moves its miss ratio at every size, as its compulsory miss
ratio (distinct rows over requests, the curve's value once the cache holds every row) shows. That part
of the curve is known exactly without simulating, the trace's distinct rows over its requests, so each
salt's curve is moved by the difference and only the capacity misses are estimated from the sample (on
the shipped sample at R = 0.01 this takes one salt's error from ~0.02 to ~0.007 for LRU, ARC, 2Q or
S3-FIFO; `benchmarks/bench_mini_mrc.py`), the same idea as SHARDS' count adjustment above.

A size the policy refuses at its scaled size (W-TinyLFU needs 100 rows, S-FIFO's small queue a row) is
not estimated and is reported so.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
from numba import njit, uint64
from tqdm import tqdm

from engramtier.cache.diskcache import kernel
from engramtier.cache.nextuse import heap_delete, heap_push
from engramtier.cache.policy import PolicyContext, check_policy, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.rowindex import dense_keys, popcount
from engramtier.trace.tracefile import trace_chunks

HASH_RANGE = 1 << 32  # sampling compares the top 32 bits of a key's 64-bit hash with the threshold
KEYS, NOW, THRESHOLD = range(3)  # a pass's state array: keys marked (or tracked), requests seen, sampling threshold


@dataclass(frozen=True)
class MissRatioCurve:
    """Hits at each cache size (rows) over ``requests`` requests; estimates for SHARDS.

    ``error`` is the mean absolute error of ``miss_ratios`` against an exact curve, once compared.
    """

    sizes: np.ndarray
    hits: np.ndarray
    requests: int
    miss_ratios: np.ndarray
    method: str
    error: float | None = None

    @classmethod
    def from_hits(cls, sizes: np.ndarray, hits: np.ndarray, requests: int, method: str) -> "MissRatioCurve":
        return cls(sizes, hits, requests, 1.0 - hits / requests, method)

    @classmethod
    def from_miss_ratios(
        cls, sizes: np.ndarray, miss_ratios: np.ndarray, requests: int, method: str
    ) -> "MissRatioCurve":
        hits = np.rint((1.0 - miss_ratios) * requests).astype(np.int64)
        return cls(sizes, hits, requests, miss_ratios, method)

    def with_error(self, exact: "MissRatioCurve") -> "MissRatioCurve":
        """This curve with ``error`` = mean |miss ratio - exact miss ratio| over the sizes."""
        if not np.array_equal(self.sizes, exact.sizes) or self.requests != exact.requests:
            raise EngramTierError(
                f"cannot compare the {self.method} curve with the {exact.method} curve: "
                "compute both over the same trace and the same sizes"
            )
        return replace(self, error=float(np.mean(np.abs(self.miss_ratios - exact.miss_ratios))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "requests": self.requests,
            "sizes": self.sizes.tolist(),
            "hits": self.hits.tolist(),
            "miss_ratios": self.miss_ratios.tolist(),
            "error": self.error,
        }


# ---------------------------------------------------------------------------------------------- kernels


# The marks (one per key, at the time of its latest request) are bits, 64 times to a word, and a
# Fenwick tree counts them per word: 1/64 of the memory of a tree over times, so the tree stays in
# the CPU cache. Times advance by one per request; a word's count enters the tree when the next word
# starts (`_publish`), so marking the current time never touches the tree. Each kernel moves a mark
# with the same few lines (publish, count, unmark, mark) inline: the same steps behind one helper
# call ran 1.5x slower.


@njit(nogil=True)
def _fenwick_add(tree, word, delta):
    i = word + 1
    while i < tree.size:
        tree[i] += delta
        i += i & -i


@njit(nogil=True)
def _publish(bits, tree, now):
    """At the first time of a word, the previous word is complete: add its count to the tree."""
    if now & 63 == 0 and now > 0:
        word = (now >> 6) - 1
        _fenwick_add(tree, word, popcount(bits[word]))


@njit(nogil=True)
def _marks_upto(bits, tree, time):
    """Marks at times ``0..time``."""
    word = time >> 6
    total = popcount(bits[word] & (~uint64(0) >> uint64(63 - (time & 63))))
    i = word
    while i > 0:
        total += tree[i]
        i -= i & -i
    return total


@njit(nogil=True)
def _unmark(bits, tree, time, now):
    word = time >> 6
    bits[word] &= ~(uint64(1) << uint64(time & 63))
    if word != now >> 6:  # the current word is not in the tree yet
        _fenwick_add(tree, word, -1)


@kernel()
def _rebuild_tree(bits, tree, now):
    """The Fenwick tree of the complete words' counts (those before ``now``'s word), in O(words)."""
    tree[:] = 0
    for i in range(1, min(now >> 6, bits.size) + 1):
        tree[i] += popcount(bits[i - 1])
        j = i + (i & -i)
        if j < tree.size:
            tree[j] += tree[i]


@njit(nogil=True)
def _hash32(key, seed):
    """Top 32 bits of splitmix64(key ^ seed), as a non-negative int64."""
    z = uint64(key) ^ uint64(seed)
    z += uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z ^= z >> uint64(31)
    return np.int64(z >> uint64(32))


@kernel()
def _sample(keys, threshold, seed, table, table_ids, n_ids, ids_out, hashes_out):
    """The requests whose key hashes below ``threshold``, as compact ids (0, 1, ... in order of first
    sampling, through the open-addressing ``table`` of keys, -1 = empty, a power of two in size) and
    their hashes. Returns (sampled requests, compact ids used so far)."""
    mask = table.size - 1
    n = 0
    for t in range(keys.size):
        key = keys[t]
        h = _hash32(key, seed)
        if h >= threshold:
            continue
        i = (h * 0x9E3779B1) & mask
        while table[i] != key and table[i] >= 0:
            i = (i + 1) & mask
        if table[i] < 0:
            table[i] = key
            table_ids[i] = n_ids
            n_ids += 1
        ids_out[n] = table_ids[i]
        hashes_out[n] = h
        n += 1
    return n, n_ids


@kernel()
def _depth_pass(ids, bits, tree, last, state, hist):
    """Add to ``hist[d]`` the requests of stack depth ``d`` (``d < hist.size``) among ``ids``, which
    continue the stream whose (marked keys, time) are ``state``."""
    max_depth = hist.size - 1
    n_marked, now = state[KEYS], state[NOW]
    for t in range(ids.size):
        key = ids[t]
        _publish(bits, tree, now)
        prev = last[key]
        if prev >= 0:
            depth = n_marked - _marks_upto(bits, tree, prev) + 1
            _unmark(bits, tree, prev, now)
            if depth <= max_depth:
                hist[depth] += 1
        else:
            n_marked += 1
        bits[now >> 6] |= uint64(1) << uint64(now & 63)
        last[key] = now
        now += 1
    state[KEYS], state[NOW] = n_marked, now


@kernel()
def _shards_size_pass(ids, hashes, bits, tree, last, where, heap_key, heap_hash, state, hist, total, s_max):
    """Fixed-size SHARDS over sampled ``ids``: weighted histogram of estimated depths
    (``ceil(1 + (d - 1) / R)``, capped at ``hist.size - 1``) and total weight (first requests
    included); ``state`` is (tracked keys, time, threshold), tracking at most ``s_max`` keys."""
    cap = hist.size - 1
    n_tracked, now, threshold = state[KEYS], state[NOW], state[THRESHOLD]
    for t in range(ids.size):
        key = ids[t]
        h = hashes[t]
        if h >= threshold:
            continue
        scale = HASH_RANGE / threshold  # 1 / R while this request was sampled
        total[0] += scale
        _publish(bits, tree, now)
        prev = last[key]
        if prev >= 0:
            depth = n_tracked - _marks_upto(bits, tree, prev) + 1
            _unmark(bits, tree, prev, now)
            hist[min(np.int64(np.ceil(1 + (depth - 1) * scale)), cap)] += scale
        bits[now >> 6] |= uint64(1) << uint64(now & 63)
        last[key] = now
        now += 1
        if prev >= 0:
            continue
        heap_push(heap_key, heap_hash, where, n_tracked, key, h)
        n_tracked += 1
        while n_tracked > s_max or (n_tracked > 0 and heap_hash[0] >= threshold):
            threshold = min(threshold, heap_hash[0])
            gone = heap_key[0]
            heap_delete(heap_key, heap_hash, where, 0, n_tracked)
            _unmark(bits, tree, last[gone], now - 1)
            last[gone] = -1
            n_tracked -= 1
    state[KEYS], state[NOW], state[THRESHOLD] = n_tracked, now, threshold


# ------------------------------------------------------------------------------------------- front end


@dataclass(frozen=True)
class KeyStream:
    """A trace's keys (``0 <= key < n_keys``) as a stream of chunks, for curves of traces larger than
    memory: ``chunks()`` starts a pass. Build one with `of` (an array) or `of_trace` (a trace file or
    an in-memory trace, in dense keys)."""

    chunks: Callable[[], Iterator[np.ndarray]]
    n_requests: int
    n_keys: int
    n_distinct: int

    @classmethod
    def of(cls, keys: Any) -> "KeyStream":
        keys = _checked_keys(keys)
        n_keys = int(keys.max()) + 1
        return cls(lambda: iter((keys,)), keys.size, n_keys, int(np.count_nonzero(np.bincount(keys, minlength=n_keys))))

    @classmethod
    def of_trace(cls, trace) -> "KeyStream":
        if trace.n_rows == 0:
            raise EngramTierError("miss-ratio curve: the trace is empty; build it from non-empty text")
        return cls(lambda: (c.rows for c in trace_chunks(trace, dense=True)), trace.n_rows, trace.n_distinct,
                   trace.n_distinct)


class _Marks:
    """Marks over times (bits and their Fenwick tree, see above) and each id's latest time, grown as
    the stream goes: SHARDS does not know ahead how many requests or keys it will sample."""

    def __init__(self, n_times: int, n_ids: int):
        n_words = (max(n_times, 1) >> 6) + 1
        self.bits, self.tree = np.zeros(n_words, np.uint64), np.zeros(n_words + 1, np.int64)
        self.last = np.full(max(n_ids, 1), -1, np.int64)
        self.state = np.zeros(3, np.int64)  # KEYS, NOW, THRESHOLD

    def reserve(self, more_times: int, more_ids: int, n_ids: int) -> None:
        now = int(self.state[NOW])
        if (now + more_times) >> 6 >= self.bits.size:
            words = max(2 * self.bits.size, ((now + more_times) >> 6) + 1)
            self.bits = np.concatenate([self.bits, np.zeros(words - self.bits.size, np.uint64)])
            self.tree = np.zeros(words + 1, np.int64)
            _rebuild_tree(self.bits, self.tree, now)
        if n_ids + more_ids > self.last.size:
            size = max(2 * self.last.size, n_ids + more_ids)
            self.last = np.concatenate([self.last, np.full(size - self.last.size, -1, np.int64)])


class _Sampler:
    """Streams the sampled requests of chunks as compact ids (so state follows the sample, not the
    keys) with their hashes, reusing its buffers."""

    def __init__(self, threshold: int, seed: int):
        self.threshold, self.seed, self.n_ids = threshold, seed, 0
        self.table, self.table_ids = np.full(1 << 10, -1, np.int64), np.empty(1 << 10, np.int64)
        self.ids = self.hashes = np.empty(0, np.int64)

    def sample(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if 2 * (self.n_ids + keys.size) > self.table.size:
            self._grow(2 * (self.n_ids + keys.size))
        if self.ids.size < keys.size:
            self.ids, self.hashes = np.empty(keys.size, np.int64), np.empty(keys.size, np.int64)
        n, self.n_ids = _sample(keys, self.threshold, self.seed, self.table, self.table_ids, self.n_ids,
                                self.ids, self.hashes)
        return self.ids[:n], self.hashes[:n]

    def _grow(self, entries: int) -> None:
        size = 1 << max(10, int(entries - 1).bit_length())
        held = self.table >= 0
        keys, ids = self.table[held], self.table_ids[held]
        self.table, self.table_ids = np.full(size, -1, np.int64), np.empty(size, np.int64)
        order = np.argsort(ids)  # re-inserting in id order keeps every key's compact id
        _sample(keys[order], HASH_RANGE, self.seed, self.table, self.table_ids, 0, np.empty(keys.size, np.int64),
                np.empty(keys.size, np.int64))


def _checked_keys(keys: Any) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.ndim != 1 or keys.size == 0:
        raise EngramTierError(
            "miss-ratio curve: the trace is empty; pass a 1-D array of row ids with at least one request"
        )
    if keys.dtype.kind not in "iu":
        raise EngramTierError(f"miss-ratio curve: row ids must be integers, got dtype {keys.dtype}")
    if keys.min() < 0:
        raise EngramTierError(f"miss-ratio curve: row id {keys.min()} is negative; row ids are table rows >= 0")
    return np.ascontiguousarray(keys, dtype=np.int64)


def _stream(keys: "np.ndarray | KeyStream") -> KeyStream:
    return keys if isinstance(keys, KeyStream) else KeyStream.of(keys)


def _checked_sizes(sizes: Any) -> np.ndarray:
    sizes = np.atleast_1d(np.asarray(sizes))
    if sizes.size == 0 or sizes.dtype.kind not in "iuf" or np.any(sizes != np.floor(sizes)) or sizes.min() <= 0:
        raise EngramTierError(
            f"miss-ratio curve: cache sizes must be whole numbers of rows > 0, got {sizes.tolist()[:8]}"
        )
    return sizes.astype(np.int64)


def _threshold(rate: float) -> int:
    if not 0.0 < rate <= 1.0:
        raise EngramTierError(f"SHARDS: the sampling rate must lie in (0, 1], got {rate}")
    return max(1, round(rate * HASH_RANGE))


def lru_mrc(keys: "np.ndarray | KeyStream", sizes: Any = None, progress: bool = False) -> MissRatioCurve:
    """Exact LRU hits at ``sizes`` (default: every size from 1 to the number of distinct keys), in one pass.

    Memory: 8 bytes per key (up to the largest, or the stream's ``n_keys``), plus 1.5 bits per request.
    """
    stream = _stream(keys)
    sizes = _checked_sizes(np.arange(1, stream.n_distinct + 1) if sizes is None else sizes)
    marks = _Marks(stream.n_requests, stream.n_keys)
    hist = np.zeros(int(min(sizes.max(), stream.n_distinct)) + 1, np.int64)
    with tqdm(total=stream.n_requests, unit="req", unit_scale=True, desc="exact LRU", disable=not progress) as bar:
        for chunk in stream.chunks():
            _depth_pass(chunk, marks.bits, marks.tree, marks.last, marks.state, hist)
            bar.update(chunk.size)
    hits_at_depth = np.cumsum(hist)
    return MissRatioCurve.from_hits(sizes, hits_at_depth[np.minimum(sizes, hist.size - 1)], stream.n_requests,
                                    "exact-lru")


def shards_mrc(
    keys: "np.ndarray | KeyStream", sizes: Any, rate: float = 0.01, s_max: int | None = None, seed: int = 0,
    progress: bool = False,
) -> MissRatioCurve:
    """Estimated LRU miss-ratio curve from a spatially hashed sample of the keys (SHARDS), in one pass.

    ``rate`` is the sampling rate; with ``s_max`` it is the starting rate of fixed-size SHARDS, which
    lowers it so that at most ``s_max`` keys are tracked. Memory follows the sample: sampled keys get
    compact ids, and the marks grow with the sampled requests (fixed size: at most ``s_max`` keys).
    """
    stream = _stream(keys)
    sizes = _checked_sizes(sizes)
    threshold = _threshold(rate)
    if s_max is not None and (int(s_max) != s_max or s_max <= 0):
        raise EngramTierError(f"SHARDS: s_max must be a positive number of tracked keys, got {s_max}")
    sampler = _Sampler(threshold, seed)
    expected = threshold / HASH_RANGE * stream.n_requests
    marks = _Marks(int(1.2 * expected) + 64, int(min(stream.n_keys, 1.2 * expected)) + 64)
    marks.state[THRESHOLD] = threshold
    r = threshold / HASH_RANGE
    if s_max is None:
        depth_limits = 1 + np.floor((sizes - 1) * r).astype(np.int64)  # 1 + (d - 1) / R <= size
        hist = np.zeros(int(depth_limits.max()) + 1, np.int64)
    else:
        hist, total = np.zeros(int(sizes.max()) + 2, np.float64), np.zeros(1, np.float64)
        where = np.full(0, -1, np.int32)
        heap_key, heap_hash = np.empty(int(s_max) + 1, np.int64), np.empty(int(s_max) + 1, np.int64)
    with tqdm(total=stream.n_requests, unit="req", unit_scale=True, desc="SHARDS", disable=not progress) as bar:
        for chunk in stream.chunks():
            ids, hashes = sampler.sample(chunk)
            marks.reserve(ids.size, ids.size, sampler.n_ids)
            if s_max is None:
                _depth_pass(ids, marks.bits, marks.tree, marks.last, marks.state, hist)
            else:
                if where.size < marks.last.size:
                    where = np.concatenate([where, np.full(marks.last.size - where.size, -1, np.int32)])
                _shards_size_pass(ids, hashes, marks.bits, marks.tree, marks.last, where, heap_key, heap_hash,
                                  marks.state, hist, total, int(s_max))
                sampler.threshold = int(marks.state[THRESHOLD])  # later chunks need sample no more than this
            bar.update(chunk.size)
    n_sampled = int(marks.state[NOW])
    if n_sampled == 0:
        raise EngramTierError(
            f"SHARDS: rate {rate} sampled no request of the {stream.n_requests}; raise the rate or use a longer trace"
        )
    if s_max is None:
        # SHARDS_adj: credit the sampling shortfall to the smallest depth
        hit_ratio = np.clip((np.cumsum(hist)[depth_limits] + expected - n_sampled) / expected, 0.0, 1.0)
        method = f"shards(R={r:.6g})"
    else:
        # SHARDS_adj again: the weights of the sampled requests estimate the trace length
        n = stream.n_requests
        hit_ratio = np.clip((np.cumsum(hist)[sizes] + n - total[0]) / n, 0.0, 1.0)
        method = f"shards(s_max={int(s_max)}, R={marks.state[THRESHOLD] / HASH_RANGE:.6g})"
    return MissRatioCurve.from_miss_ratios(sizes, 1.0 - hit_ratio, stream.n_requests, method)


def compile_replay(policy: str, capacity: int, ctx: PolicyContext, **params: Any) -> None:
    """Compile the replay of this policy type and fill ``ctx``'s derived arrays, once, before threads share
    them (and before anything is timed): one replay of one request."""
    replay(make_policy(policy, capacity, ctx, **params), ctx.keys[:1] if ctx.keys is not None else np.zeros(1, np.int64))


def sweep(
    keys: np.ndarray, policy: str, sizes: Any, ctx: PolicyContext, workers: int | None = None, **params: Any
) -> MissRatioCurve:
    """Hits of ``policy`` at each size, one replay per size, ``workers`` sizes at a time (default: every core).

    Offline policies read the trace from ``ctx.keys``, which must be ``keys``. Results do not depend
    on ``workers``: every replay owns its policy and shares only read-only context arrays.
    """
    keys = _checked_keys(keys)
    sizes = _checked_sizes(sizes)
    if keys.min() < 0 or keys.max() >= ctx.n_keys:
        bad = keys.min() if keys.min() < 0 else keys.max()
        raise EngramTierError(f"sweep: trace key {bad} lies outside the table's rows [0, {ctx.n_keys}); "
                              "pass the table's row count as PolicyContext(n_keys=...)")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if int(workers) != workers or workers < 1:
        raise EngramTierError(f"sweep: workers must be a positive number of threads, got {workers}")
    if ctx.keys is not None and not np.array_equal(ctx.keys, keys):
        raise EngramTierError(
            f"sweep: ctx.keys ({len(ctx.keys)} requests) is not the swept trace ({keys.size}); "
            "pass the same trace to both"
        )

    def hits_at(size: int) -> int:
        return replay(make_policy(policy, int(size), ctx, **params), keys)

    compile_replay(policy, int(sizes[0]), ctx, **params)
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        hits = np.fromiter(pool.map(hits_at, sizes), dtype=np.int64, count=sizes.size)
    return MissRatioCurve.from_hits(sizes, hits, keys.size, f"replay:{policy}")


# ---------------------------------------------------------------------------------- miniature simulation


@kernel()
def _rows_below(row_ids, threshold, seed, chosen):
    """Mark in ``chosen`` (per dense key) the rows whose id hashes below ``threshold`` under ``seed``:
    each distinct row is hashed once, not once per request."""
    for k in range(row_ids.size):
        chosen[k] = _hash32(row_ids[k], seed) < threshold


@kernel()
def _positions_of_chosen(keys, chosen, out):
    """Positions of the requests (dense ``keys``) whose row is ``chosen``; returns how many."""
    n = 0
    for t in range(keys.size):
        if chosen[keys[t]]:
            out[n] = t
            n += 1
    return n


@dataclass(frozen=True)
class SampledTrace:
    """The requests of a trace whose rows hash below ``rate``: ``keys`` numbered by first request, each
    key's global row id (``row_ids``), and the trace's steps (``step_starts``, empty steps kept)."""

    keys: np.ndarray
    row_ids: np.ndarray
    step_starts: np.ndarray
    rate: float


def spatial_samples(trace, rate: float, seeds: int = 1) -> list[SampledTrace]:
    """The spatially hashed samples of ``trace`` (a `RowTrace` or a `TraceReader`, streamed chunk by
    chunk, once for all salts) at ``rate``, one per salt ``0..seeds-1``: every request of a sampled row,
    none of another."""
    if int(seeds) != seeds or seeds < 1:
        raise EngramTierError(f"miniature simulation: seeds must be a positive number of hash salts, got {seeds}")
    threshold = _threshold(rate)
    row_ids = trace.row_ids()
    chosen = np.empty((int(seeds), row_ids.size), np.bool_)
    for seed in range(int(seeds)):
        _rows_below(row_ids, threshold, seed, chosen[seed])
    picked = [[] for _ in range(int(seeds))]
    steps = [[np.zeros(1, np.int64)] for _ in range(int(seeds))]
    for chunk in trace_chunks(trace, dense=True):
        positions = np.empty(chunk.rows.size, np.int64)
        for seed in range(int(seeds)):
            n = _positions_of_chosen(chunk.rows, chosen[seed], positions)
            picked[seed].append(chunk.rows[positions[:n]])
            steps[seed].append(np.searchsorted(positions[:n], chunk.step_starts[1:]) + steps[seed][-1][-1])
    samples = []
    for seed in range(int(seeds)):
        if sum(p.size for p in picked[seed]) == 0:
            raise EngramTierError(f"miniature simulation: rate {rate:g} (salt {seed}) sampled no row of the trace's "
                                  f"{trace.n_distinct}; raise the rate")
        keys, dense = dense_keys(np.concatenate(picked[seed]))
        samples.append(SampledTrace(keys, row_ids[dense], np.concatenate(steps[seed]), threshold / HASH_RANGE))
    return samples


def sample_context(sample: SampledTrace, trace) -> PolicyContext:
    """The context a policy replaying ``sample`` of ``trace`` is built with: the sample's keys, steps and
    row ids, the trace's table and sub-table layout."""
    return PolicyContext(n_keys=sample.row_ids.size, keys=sample.keys, step_starts=sample.step_starts,
                         n_table_rows=trace.n_table_rows, row_ids=sample.row_ids,
                         layout=SubtableLayout.from_meta(trace.meta, trace.n_table_rows, "miniature simulation"))


@dataclass(frozen=True)
class MiniCurves:
    """A policy's miss ratios estimated by miniature simulation: ``miss_ratios[i, j]`` for salt ``i`` at
    ``sizes[j]`` (NaN where the policy refused ``scaled[j]`` rows), over ``sampled`` requests per salt."""

    policy: str
    rate: float
    sizes: np.ndarray
    scaled: np.ndarray
    miss_ratios: np.ndarray
    sampled: np.ndarray

    @property
    def estimated(self) -> np.ndarray:
        """Which sizes have an estimate."""
        return ~np.isnan(self.miss_ratios).any(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.miss_ratios.mean(axis=0)

    @property
    def spread(self) -> np.ndarray:
        """Per size, the largest minus the smallest estimate over the salts."""
        return self.miss_ratios.max(axis=0) - self.miss_ratios.min(axis=0)

    def errors(self, exact: np.ndarray) -> np.ndarray:
        """Per salt, the mean absolute error against the ``exact`` miss ratios over the estimated sizes."""
        keep = self.estimated
        return np.abs(self.miss_ratios[:, keep] - exact[keep]).mean(axis=1)


def mini_sizes(sizes: Any, rate: float) -> np.ndarray:
    """The miniature cache emulating each of ``sizes`` at sampling ``rate``: ``max(1, round(rate * size))`` rows."""
    return np.maximum(1, np.rint(_checked_sizes(sizes) * (_threshold(rate) / HASH_RANGE))).astype(np.int64)


def mini_mrc(trace, samples: list[SampledTrace], policy: str, sizes: Any, workers: int | None = None,
             **params: Any) -> MiniCurves:
    """Miniature simulation of ``policy`` (with ``params``) at ``sizes`` rows, over each of ``samples``
    of ``trace`` (`spatial_samples`), the miniature caches of each replayed on ``workers`` threads (`sweep`);
    each sample's curve moved by the difference between the trace's compulsory miss ratio and the
    sample's (module docstring)."""
    sizes = _checked_sizes(sizes)
    rate = samples[0].rate
    scaled = mini_sizes(sizes, rate)
    check_policy(policy)
    miss_ratios, sampled = np.full((len(samples), sizes.size), np.nan), np.zeros(len(samples), np.int64)
    compulsory = trace.n_distinct / trace.n_rows  # the exact curve's floor, known without simulating (module docstring)
    for i, sample in enumerate(samples):
        ctx = sample_context(sample, trace)
        make_policy(policy, int(scaled.max()), ctx, **params)  # a bad name or parameter is refused, not skipped
        accepted = np.array([c for c in np.unique(scaled) if _builds(policy, int(c), ctx, params)], np.int64)
        sampled[i] = sample.keys.size
        if accepted.size == 0:
            continue
        curve = sweep(sample.keys, policy, accepted, ctx, workers=workers, **params)
        at = np.searchsorted(accepted, scaled).clip(max=accepted.size - 1)
        found = accepted[at] == scaled
        offset = compulsory - sample.row_ids.size / sample.keys.size
        miss_ratios[i, found] = np.clip(curve.miss_ratios[at[found]] + offset, 0.0, 1.0)
    return MiniCurves(policy, rate, sizes, scaled, miss_ratios, sampled)


def _builds(policy: str, capacity: int, ctx: PolicyContext, params: dict) -> bool:
    """Whether ``policy`` accepts a cache of ``capacity`` rows (a miniature one may be refused as too small)."""
    try:
        make_policy(policy, capacity, ctx, **params)
    except EngramTierError:
        return False
    return True
