"""What a row trace looks like to a cache: skew, reuse, working sets, and where the requests go.

One streaming pass over the chunks (numba) keeps three arrays over the rows the trace touches (request
count, position and step of the last request, indexed by dense key, see `engramtier.trace.rowindex`),
so a trace file of any length over a table of any size is summarised in 24 bytes per distinct row:

requests, unique rows   and the fraction of unique rows requested only once (one-hit wonders, which
                        no cache can serve)
zipf alpha              maximum-likelihood exponent of the rank-frequency law P(rank r) ∝ r^-alpha
                        over the rows seen (`zipf_alpha_mle`)
reuse distance          per request, the number of requests since the last request for the same
                        row, in log2 buckets. (The LRU *stack* distance, counting distinct rows in
                        between, is what cache/mrc computes for miss-ratio curves.)
working set             unique rows per window of W steps, for a few W (W = 1 is the rows a step
                        actually fetches after de-duplication)
sub-tables              requests and unique rows per (layer, order, head) sub-table and per (layer,
                        order); per order across layers, and per (order, head), also reuse (requests
                        per distinct row) and zipf alpha; when the trace's meta records the layout
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from engramtier.errors import EngramTierError
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import TraceReader, trace_chunks

WINDOW_STEPS = (1, 10, 100, 1000)
_REUSE_BUCKETS = 64  # bucket 0: distance 0; bucket b >= 1: distances in [2**(b-1), 2**b)


@njit(nogil=True, cache=True)
def _scan(rows, step_counts, first_step, first_row, counts, last_pos, last_step, reuse_hist,
          window_steps, window_first, window_unique):
    """Update the per-row state and the histograms with one chunk of whole steps.

    ``window_unique[j, w - window_first[j]]`` counts rows new to window ``w`` of ``window_steps[j]``
    steps: a row is new to its window when its last request came before the window began.
    """
    i = 0
    for s in range(step_counts.size):
        step = first_step + s
        for _ in range(step_counts[s]):
            k = rows[i]
            pos = first_row + i
            counts[k] += 1
            if last_pos[k] >= 0:
                d = pos - last_pos[k] - 1
                b = 0
                while d > 0:
                    b += 1
                    d >>= 1
                reuse_hist[b] += 1
            for j in range(window_steps.size):
                w = step // window_steps[j]
                if last_step[k] < w * window_steps[j]:
                    window_unique[j, w - window_first[j]] += 1
            last_pos[k] = pos
            last_step[k] = step
            i += 1


def zipf_alpha_mle(counts: np.ndarray, lo: float = 0.0, hi: float = 6.0, tol: float = 1e-7) -> float:
    """The alpha maximising the likelihood of the rank-frequency law over nonzero ``counts``.

    With c_r the count of the r-th most requested row, n = sum c_r and N rows, the log-likelihood is
    ``-alpha * sum_r c_r ln r - n ln sum_{r<=N} r^-alpha``, concave in alpha (a linear term minus a
    log-sum-exp), so golden-section search on [lo, hi] finds its maximum.
    """
    c = np.sort(np.asarray(counts)[np.asarray(counts) > 0])[::-1].astype(np.float64)
    if c.size < 2:
        raise EngramTierError("zipf fit: needs at least two distinct rows with requests")
    log_rank = np.log(np.arange(1, c.size + 1, dtype=np.float64))
    weighted, n = float(c @ log_rank), float(c.sum())

    def neg_log_likelihood(alpha: float) -> float:
        return alpha * weighted + n * np.log(np.exp(-alpha * log_rank).sum())

    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
    f1, f2 = neg_log_likelihood(x1), neg_log_likelihood(x2)
    while b - a > tol:
        if f1 < f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - ratio * (b - a)
            f1 = neg_log_likelihood(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + ratio * (b - a)
            f2 = neg_log_likelihood(x2)
    return (a + b) / 2.0


def _skew(counts: np.ndarray) -> dict:
    """Requests, distinct rows, reuse (requests per distinct row) and Zipf alpha of one row group."""
    requests, unique = int(counts.sum()), int(counts.size)
    return {"requests": requests, "unique_rows": unique, "reuse": requests / unique if unique else None,
            "zipf_alpha": zipf_alpha_mle(counts) if unique >= 2 else None}


@dataclass
class TraceStats:
    """The summary of one trace; `stats_dict` is its JSON form."""

    requests: int
    steps: int
    table_rows: int
    counts: np.ndarray  # requests per distinct row, in dense key order
    row_ids: np.ndarray  # the distinct rows: counts[k] is for row row_ids[k]
    reuse_hist: np.ndarray  # log2 buckets, see _REUSE_BUCKETS
    window_unique: dict[int, np.ndarray]  # window length in steps -> unique rows per window
    window_requests: dict[int, np.ndarray]  # window length in steps -> requests per window
    meta: dict = field(default_factory=dict)

    @property
    def unique_rows(self) -> int:
        return int(self.counts.size)

    @property
    def seen_once_fraction(self) -> float:
        return float(np.count_nonzero(self.counts == 1) / max(self.unique_rows, 1))

    def zipf_alpha(self) -> float | None:
        return zipf_alpha_mle(self.counts) if self.unique_rows >= 2 else None

    def reuse_distance(self) -> list[dict]:
        """Non-empty buckets: ``min <= requests in between <= max``, with their request counts."""
        buckets = []
        for b in np.flatnonzero(self.reuse_hist):
            lo = 0 if b == 0 else 1 << (int(b) - 1)
            hi = 0 if b == 0 else (1 << int(b)) - 1
            buckets.append({"min": lo, "max": hi, "requests": int(self.reuse_hist[b])})
        return buckets

    def working_set(self) -> dict[str, dict]:
        out = {}
        for w, unique in self.window_unique.items():
            requests = self.window_requests[w]
            out[str(w)] = {"windows": int(unique.size), "mean_unique_rows": float(unique.mean()),
                           "max_unique_rows": int(unique.max()),
                           "mean_unique_fraction": float((unique / np.maximum(requests, 1)).mean())}
        return out

    def subtables(self) -> dict | None:
        """Requests and unique rows per sub-table and per (layer, order), and per order across layers
        (`by_order`), from the meta's layout."""
        layout = SubtableLayout.from_meta(self.meta, self.table_rows, "trace stats")
        if layout is None:
            return None
        sizes, n_heads = layout.sizes, layout.n_heads
        subtable = layout.subtable_of(self.row_ids)  # of each distinct row
        requests = np.bincount(subtable, weights=self.counts, minlength=sizes.size).astype(np.int64)
        unique = np.bincount(subtable, minlength=sizes.size)
        names = [(l, o, h) for l in layout.layer_ids for o in layout.orders for h in range(n_heads)]
        per_subtable = [{"layer": l, "order": o, "head": h, "rows": int(sizes[i]), "requests": int(requests[i]),
                         "unique_rows": int(unique[i])} for i, (l, o, h) in enumerate(names)]
        per_order = []
        for i in range(0, len(names), n_heads):
            l, o, _ = names[i]
            per_order.append({"layer": l, "order": o, "rows": int(sizes[i : i + n_heads].sum()),
                              "requests": int(requests[i : i + n_heads].sum()),
                              "unique_rows": int(unique[i : i + n_heads].sum())})
        return {"per_order": per_order, "per_subtable": per_subtable, "by_order": self._by_order(layout)}

    def _by_order(self, layout: SubtableLayout) -> list[dict]:
        """Per n-gram order across layers, and per (order, head): the skew a cache of that order's rows
        would see. Peers report higher orders drawing several times the distinct rows of bigrams, which
        is what decides whether splitting a tier's capacity by order can pay."""
        order, head = layout.order_of(self.row_ids), layout.head_of(self.row_ids)
        out = []
        for o in layout.orders:
            in_order = order == o
            heads = [{"head": h, **_skew(self.counts[in_order & (head == h)])} for h in range(layout.n_heads)]
            out.append({"order": o, **_skew(self.counts[in_order]), "heads": heads})
        return out

    def stats_dict(self) -> dict:
        return {
            "requests": self.requests,
            "steps": self.steps,
            "table_rows": self.table_rows,
            "unique_rows": self.unique_rows,
            "seen_once_fraction": self.seen_once_fraction,
            "zipf_alpha": self.zipf_alpha(),
            "reuse_distance": {"unit": "requests since the last request for the same row",
                               "first_requests": self.unique_rows, "buckets": self.reuse_distance()},
            "working_set": self.working_set(),
            "subtables": self.subtables(),
            "rows_per_token": self.meta.get("rows_per_token"),
            "fingerprint": self.meta.get("fingerprint"),
        }


def trace_stats(trace: RowTrace | TraceReader, window_steps: tuple[int, ...] = WINDOW_STEPS) -> TraceStats:
    """One pass over ``trace`` (streamed chunk by chunk when it is a file)."""
    if trace.n_rows == 0:
        raise EngramTierError("trace stats: the trace is empty")
    n = trace.n_distinct
    counts = np.zeros(n, np.int64)
    last_pos = np.full(n, -1, np.int64)
    last_step = np.full(n, -1, np.int64)
    reuse_hist = np.zeros(_REUSE_BUCKETS, np.int64)
    windows = np.array([w for w in window_steps if w <= trace.n_steps] or [trace.n_steps], np.int64)
    n_windows = (trace.n_steps + windows - 1) // windows
    unique = {int(w): np.zeros(m, np.int64) for w, m in zip(windows, n_windows, strict=True)}
    requests = {int(w): np.zeros(m, np.int64) for w, m in zip(windows, n_windows, strict=True)}
    for chunk in trace_chunks(trace, dense=True):
        if chunk.step_counts.size == 0:
            continue
        last = chunk.first_step + chunk.step_counts.size - 1
        first_window = chunk.first_step // windows
        local = np.zeros((windows.size, int((last // windows - first_window).max()) + 1), np.int64)
        _scan(chunk.rows, chunk.step_counts, chunk.first_step, chunk.first_row, counts, last_pos, last_step,
              reuse_hist, windows, first_window, local)
        step_of_chunk = np.arange(chunk.first_step, last + 1)
        for j, w in enumerate(windows):
            span = slice(first_window[j], last // w + 1)
            unique[int(w)][span] += local[j, : span.stop - span.start]
            requests[int(w)][span] += np.bincount(step_of_chunk // w - first_window[j], weights=chunk.step_counts,
                                                  minlength=span.stop - span.start).astype(np.int64)
    return TraceStats(trace.n_rows, trace.n_steps, trace.n_table_rows, counts, trace.row_ids(), reuse_hist, unique,
                      requests, dict(trace.meta))


def row_counts(trace: RowTrace | TraceReader) -> np.ndarray:
    """Requests per table row (int64, ``n_table_rows`` of them), chunk by chunk: the frequency profile a
    table layout (`engramtier.tiers.lmdb_table`) or a warm start (`engramtier.cache.warm`) ranks rows by."""
    counts = np.zeros(trace.n_table_rows, np.int64)
    for chunk in trace_chunks(trace):
        counts += np.bincount(chunk.rows, minlength=trace.n_table_rows)
    return counts
