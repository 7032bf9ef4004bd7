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
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import njit, uint64

from engramtier.cache.nextuse import heap_delete, heap_push
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError

HASH_RANGE = 1 << 32  # sampling compares the top 32 bits of a key's 64-bit hash with the threshold


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
def _popcount(x):
    x = x - ((x >> uint64(1)) & uint64(0x5555555555555555))
    x = (x & uint64(0x3333333333333333)) + ((x >> uint64(2)) & uint64(0x3333333333333333))
    x = (x + (x >> uint64(4))) & uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * uint64(0x0101010101010101)) >> uint64(56))


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
        _fenwick_add(tree, word, _popcount(bits[word]))


@njit(nogil=True)
def _marks_upto(bits, tree, time):
    """Marks at times ``0..time``."""
    word = time >> 6
    total = _popcount(bits[word] & (~uint64(0) >> uint64(63 - (time & 63))))
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


def _mark_arrays(n_times: int, n_keys: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bits, tree, last): empty marks for ``n_times`` times, and each key's latest time (-1: none)."""
    n_words = (n_times >> 6) + 1
    last_dtype = np.int32 if n_times < 2**31 else np.int64
    return np.zeros(n_words, np.uint64), np.zeros(n_words + 1, np.int32), np.full(n_keys, -1, last_dtype)


@njit(nogil=True)
def _hash32(key, seed):
    """Top 32 bits of splitmix64(key ^ seed), as a non-negative int64."""
    z = uint64(key) ^ uint64(seed)
    z += uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    z ^= z >> uint64(31)
    return np.int64(z >> uint64(32))


@njit(nogil=True, cache=True)
def _sampled_count(keys, threshold, seed):
    if threshold >= HASH_RANGE:
        return keys.size
    count = 0
    for t in range(keys.size):
        if _hash32(keys[t], seed) < threshold:
            count += 1
    return count


@njit(nogil=True, cache=True)
def _depth_histogram(keys, bits, tree, last, threshold, seed, max_depth):
    """``hist[d]``: requests of stack depth ``d`` (``1 <= d <= max_depth``) among the requests whose key
    hashes below ``threshold`` (all of them when ``threshold == HASH_RANGE``)."""
    hist = np.zeros(max_depth + 1, np.int64)
    n_marked = 0
    now = 0
    for t in range(keys.size):
        key = keys[t]
        if threshold < HASH_RANGE and _hash32(key, seed) >= threshold:
            continue
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
    return hist


@njit(nogil=True, cache=True)
def _shards_size_histogram(keys, bits, tree, last, threshold, seed, s_max, max_size):
    """Weighted histogram of estimated depths (``ceil(1 + (d - 1) / R)``, capped at ``max_size + 1``), total weight
    (first requests included) and the final threshold, tracking at most ``s_max`` keys."""
    where = np.full(last.size, -1, np.int32)  # heap of tracked keys by hash, largest on top
    heap_key = np.empty(s_max + 1, np.int64)
    heap_hash = np.empty(s_max + 1, np.int64)
    hist = np.zeros(max_size + 2, np.float64)
    total = 0.0
    n_tracked = 0
    now = 0
    for t in range(keys.size):
        key = keys[t]
        h = _hash32(key, seed)
        if h >= threshold:
            continue
        scale = HASH_RANGE / threshold  # 1 / R while this request was sampled
        total += scale
        _publish(bits, tree, now)
        prev = last[key]
        if prev >= 0:
            depth = n_tracked - _marks_upto(bits, tree, prev) + 1
            _unmark(bits, tree, prev, now)
            hist[min(np.int64(np.ceil(1 + (depth - 1) * scale)), max_size + 1)] += scale
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
    return hist, total, threshold


# ------------------------------------------------------------------------------------------- front end


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


def lru_mrc(keys: np.ndarray, sizes: Any = None) -> MissRatioCurve:
    """Exact LRU hits at ``sizes`` (default: every size from 1 to the number of distinct keys), in one pass.

    Memory: 4 bytes per row id up to the largest in ``keys``, plus 1.5 bits per request.
    """
    keys = _checked_keys(keys)
    n_keys = int(keys.max()) + 1
    if sizes is None:
        sizes = np.arange(1, np.count_nonzero(np.bincount(keys, minlength=n_keys)) + 1)
    sizes = _checked_sizes(sizes)
    max_depth = int(min(sizes.max(), n_keys))
    hist = _depth_histogram(keys, *_mark_arrays(keys.size, n_keys), HASH_RANGE, 0, max_depth)
    hits_at_depth = np.cumsum(hist)
    return MissRatioCurve.from_hits(sizes, hits_at_depth[np.minimum(sizes, max_depth)], keys.size, "exact-lru")


def shards_mrc(
    keys: np.ndarray, sizes: Any, rate: float = 0.01, s_max: int | None = None, seed: int = 0
) -> MissRatioCurve:
    """Estimated LRU miss-ratio curve from a spatially hashed sample of the keys (SHARDS).

    ``rate`` is the sampling rate; with ``s_max`` it is the starting rate of fixed-size SHARDS, which
    lowers it so that at most ``s_max`` keys are tracked.
    """
    keys = _checked_keys(keys)
    sizes = _checked_sizes(sizes)
    threshold = _threshold(rate)
    if s_max is not None and (int(s_max) != s_max or s_max <= 0):
        raise EngramTierError(f"SHARDS: s_max must be a positive number of tracked keys, got {s_max}")
    n_sampled = _sampled_count(keys, threshold, seed)
    if n_sampled == 0:
        raise EngramTierError(
            f"SHARDS: rate {rate} sampled no request of the {keys.size}; raise the rate or use a longer trace"
        )
    marks = _mark_arrays(n_sampled, int(keys.max()) + 1)
    if s_max is None:
        r = threshold / HASH_RANGE
        depth_limits = 1 + np.floor((sizes - 1) * r).astype(np.int64)  # 1 + (d - 1) / R <= size
        hist = _depth_histogram(keys, *marks, threshold, seed, int(depth_limits.max()))
        expected = r * keys.size  # SHARDS_adj: credit the sampling shortfall to the smallest depth
        hit_ratio = np.clip((np.cumsum(hist)[depth_limits] + expected - n_sampled) / expected, 0.0, 1.0)
        method = f"shards(R={r:.6g})"
    else:
        max_size = int(sizes.max())
        hist, total, final = _shards_size_histogram(keys, *marks, threshold, seed, int(s_max), max_size)
        # SHARDS_adj again: the weights of the sampled requests estimate the trace length
        hit_ratio = np.clip((np.cumsum(hist)[sizes] + keys.size - total) / keys.size, 0.0, 1.0)
        method = f"shards(s_max={int(s_max)}, R={final / HASH_RANGE:.6g})"
    return MissRatioCurve.from_miss_ratios(sizes, 1.0 - hit_ratio, keys.size, method)


def sweep(
    keys: np.ndarray, policy: str, sizes: Any, ctx: PolicyContext, workers: int = 1, **params: Any
) -> MissRatioCurve:
    """Hits of ``policy`` at each size, one replay per size, ``workers`` sizes at a time.

    Offline policies read the trace from ``ctx.keys``, which must be ``keys``. Results do not depend
    on ``workers``: every replay owns its policy and shares only read-only context arrays.
    """
    keys = _checked_keys(keys)
    sizes = _checked_sizes(sizes)
    if keys.min() < 0 or keys.max() >= ctx.n_keys:
        bad = keys.min() if keys.min() < 0 else keys.max()
        raise EngramTierError(f"sweep: trace key {bad} lies outside the table's rows [0, {ctx.n_keys}); "
                              "pass the table's row count as PolicyContext(n_keys=...)")
    if int(workers) != workers or workers < 1:
        raise EngramTierError(f"sweep: workers must be a positive number of threads, got {workers}")
    if ctx.keys is not None and not np.array_equal(ctx.keys, keys):
        raise EngramTierError(
            f"sweep: ctx.keys ({len(ctx.keys)} requests) is not the swept trace ({keys.size}); "
            "pass the same trace to both"
        )

    def hits_at(size: int) -> int:
        return replay(make_policy(policy, int(size), ctx, **params), keys)

    # Compile the driver for this policy type and fill ctx's derived arrays once, before threads share them.
    replay(make_policy(policy, int(sizes[0]), ctx, **params), keys[:1])
    with ThreadPoolExecutor(max_workers=int(workers)) as pool:
        hits = np.fromiter(pool.map(hits_at, sizes), dtype=np.int64, count=sizes.size)
    return MissRatioCurve.from_hits(sizes, hits, keys.size, f"replay:{policy}")
