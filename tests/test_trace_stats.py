"""Trace statistics against plain-Python counting, the Zipf fit against samples of known alpha, and the
streamed (file) pass against the in-memory one."""

from __future__ import annotations

import bisect
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.errors import EngramTierError
from engramtier.trace.build import StepPlan, build_trace, hasher_for
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import ZipfSource
from engramtier.trace.stats import trace_stats, zipf_alpha_mle
from engramtier.trace.tracefile import TraceReader, save_trace


def brute_stats(rows, step_starts, windows):
    step_of = np.searchsorted(step_starts, np.arange(len(rows)), side="right") - 1
    counts = Counter(rows)
    reuse, last = Counter(), {}
    for t, k in enumerate(rows):
        if k in last:
            reuse[(t - last[k] - 1).bit_length()] += 1
        last[k] = t
    n_steps = len(step_starts) - 1
    working = {}
    for w in windows:
        sets = [set() for _ in range((n_steps + w - 1) // w)]
        for t, k in enumerate(rows):
            sets[step_of[t] // w].add(k)
        working[w] = [len(s) for s in sets]
    return counts, reuse, working


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 30), min_size=1, max_size=300), cuts=st.lists(st.integers(0, 300), max_size=40),
       chunk_rows=st.integers(1, 100))
def test_stats_match_brute_force_in_memory_and_streamed(tmp_path_factory, rows, cuts, chunk_rows):
    starts = np.array(sorted({0, len(rows), *[c for c in cuts if c <= len(rows)]}), np.int64)
    trace = RowTrace(np.array(rows, np.int64), starts, 31, 160)
    windows = (1, 2, 5)
    counts, reuse, working = brute_stats(rows, starts, windows)
    path = tmp_path_factory.mktemp("st") / "t.trace"
    save_trace(trace, path, chunk_rows=chunk_rows)
    with TraceReader(path) as reader:
        streamed = trace_stats(reader, window_steps=windows)
    for stats in (trace_stats(trace, window_steps=windows), streamed):
        assert stats.requests == len(rows) and stats.unique_rows == len(counts)
        # per distinct row, in first-request order: state follows the rows the trace touches, not the table's 31
        np.testing.assert_array_equal(stats.row_ids, list(dict.fromkeys(rows)))
        np.testing.assert_array_equal(stats.counts, [counts[k] for k in dict.fromkeys(rows)])
        assert stats.seen_once_fraction == sum(c == 1 for c in counts.values()) / len(counts)
        assert {b: int(c) for b, c in enumerate(stats.reuse_hist) if c} == dict(reuse)
        for w in windows:
            if w <= trace.n_steps:
                assert stats.window_unique[w].tolist() == working[w]
                assert stats.window_requests[w].sum() == len(rows)


def test_reuse_buckets_and_working_set_hand_worked():
    # step 0: 5 5 6 | step 1: 5 | step 2: 7 6
    trace = RowTrace(np.array([5, 5, 6, 5, 7, 6]), np.array([0, 3, 4, 6]), 8, 160)
    d = trace_stats(trace, window_steps=(1, 2)).stats_dict()
    # distances: 5->5: 0 in between; 5 (pos 1 -> 3): 1; 6 (pos 2 -> 5): 2
    assert d["reuse_distance"]["buckets"] == [{"min": 0, "max": 0, "requests": 1}, {"min": 1, "max": 1, "requests": 1},
                                              {"min": 2, "max": 3, "requests": 1}]
    assert d["reuse_distance"]["first_requests"] == d["unique_rows"] == 3
    assert d["working_set"]["1"] == {"windows": 3, "mean_unique_rows": 5 / 3, "max_unique_rows": 2,
                                     "mean_unique_fraction": pytest.approx((2 / 3 + 1 + 1) / 3)}
    assert d["working_set"]["2"]["max_unique_rows"] == 2 and d["working_set"]["2"]["windows"] == 2
    assert d["seen_once_fraction"] == 1 / 3
    json.dumps(d)


@pytest.mark.parametrize("alpha", [0.7, 1.0, 1.3])
def test_zipf_mle_recovers_alpha(alpha):
    rng = np.random.default_rng(int(alpha * 100))
    p = np.arange(1, 3001, dtype=np.float64) ** -alpha
    sample = rng.choice(3000, size=300_000, p=p / p.sum())
    assert abs(zipf_alpha_mle(np.bincount(sample)) - alpha) < 0.05


def test_zipf_mle_needs_two_rows():
    with pytest.raises(EngramTierError, match="at least two distinct rows"):
        zipf_alpha_mle(np.array([0, 9, 0]))


def test_per_subtable_breakdown_matches_brute_force():
    source = ZipfSource(1.0, vocab=200, n_tokens=3000, seed=3, doc_len=64)
    hasher = hasher_for(source, 211, (2, 5), 3, 4, 1)
    trace = build_trace(source, hasher, StepPlan("prefill", batch=2, seq_len=64))
    sub = trace_stats(trace).stats_dict()["subtables"]
    ends = np.cumsum(hasher.subtable_sizes).tolist()
    requests, unique = Counter(), {}
    for k in trace.rows.tolist():
        i = bisect.bisect_right(ends, k)
        requests[i] += 1
        unique.setdefault(i, set()).add(k)
    assert len(sub["per_subtable"]) == 2 * 3 * 3
    for i, entry in enumerate(sub["per_subtable"]):
        assert (entry["layer"], entry["order"], entry["head"]) == ((2, 5)[i // 9], 2 + (i // 3) % 3, i % 3)
        assert entry["requests"] == requests[i] == 3000  # every token reads one row of every sub-table
        assert entry["unique_rows"] == len(unique[i]) and entry["rows"] == hasher.subtable_sizes[i]
    order2 = sub["per_order"][0]
    assert (order2["layer"], order2["order"], order2["requests"]) == (2, 2, 9000)
    assert order2["unique_rows"] == sum(len(unique[i]) for i in range(3))
    # higher orders see more distinct n-grams
    assert sub["per_order"][0]["unique_rows"] < sub["per_order"][2]["unique_rows"]


def test_traces_without_layout_skip_the_breakdown_and_empty_traces_are_refused():
    trace = RowTrace(np.array([1, 2, 1]), np.array([0, 3]), 4, 160)
    assert trace_stats(trace).stats_dict()["subtables"] is None
    empty = RowTrace(np.empty(0, np.int64), np.array([0]), 4, 160)
    with pytest.raises(EngramTierError, match="the trace is empty"):
        trace_stats(empty)
