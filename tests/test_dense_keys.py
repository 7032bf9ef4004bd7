"""Dense keys: policy state sized by the rows a trace touches gives exactly the results of global row ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zipf import zipf_keys

from engramtier.cache.engine import Engine
from engramtier.cache.hierarchy import Hierarchy, TierSpec
from engramtier.cache.policy import PolicyContext, policy_names
from engramtier.cache.simulator import simulate
from engramtier.trace import rowindex
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.lookups import unique_per_step
from engramtier.trace.rowindex import FirstSeen, RowIndex, dense_keys
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import TraceReader, save_trace

TABLE_ROWS = 50_000


def sparse_trace(seed: int, n_steps: int = 60, step: int = 300, touched: int = 2_000) -> RowTrace:
    """Zipf(1.3) requests over ``touched`` rows scattered across a much larger table."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(TABLE_ROWS, touched, replace=False)[zipf_keys(n_steps * step, touched, 1.3, rng)]
    return RowTrace(rows.astype(np.int64), np.arange(n_steps + 1, dtype=np.int64) * step, TABLE_ROWS, 160)


def served_on_global_ids(trace: RowTrace, hierarchy: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    """The engine fed the trace's global row ids, policies sized by the whole table (no dense keys) and
    keyed by hashed maps, as the runtime keys them."""
    ctx = PolicyContext(n_keys=trace.n_table_rows, keys=trace.rows, step_starts=trace.step_starts,
                        layout=SubtableLayout.from_meta(trace.meta, trace.n_table_rows, "test"), hashed=True)
    engine = Engine(hierarchy.build_policies(ctx, trace.row_bytes), hierarchy.mode, trace.n_table_rows,
                    hierarchy.build_admissions(ctx, trace.row_bytes))
    keys, ts = np.empty(trace.n_rows, np.int64), np.empty(trace.n_rows, np.int64)
    starts = np.empty(trace.n_steps + 1, np.int64)
    n = unique_per_step(trace.rows, trace.step_starts, 0, np.full(trace.n_table_rows, -1, np.int64), 0, keys, ts, starts)
    return engine.feed(keys[:n], ts[:n], starts), engine.counters


# Sizes straddle the trace's distinct rows, so a tier larger than the working set (whose pool is capped
# at the keys there are) is covered too.
@pytest.mark.parametrize("policy", [p for p in policy_names()])
@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_every_policy_hits_the_same_on_dense_keys(policy, mode):
    trace = sparse_trace(1)
    # 2 layers x orders 2-3 x 2 heads, for `partitioned`, which routes by the row id behind a dense key
    trace.meta.update(SubtableLayout(np.array([6247] * 7 + [TABLE_ROWS - 7 * 6247]), (1, 2), 2, 3).to_meta())
    distinct = np.unique(trace.rows).size
    hierarchy = Hierarchy((TierSpec("a", 300, policy, {}, "hbm"), TierSpec("b", distinct + 500, "lru", {}, "dram"),
                           TierSpec("store", None, None, {}, "nvme")), mode)
    result = simulate(trace, hierarchy, compute_window_s=1e-3, progress=False)
    served, counters = served_on_global_ids(trace, hierarchy)
    np.testing.assert_array_equal(result.served, served)
    for i, totals in enumerate(result.tier_totals[:-1]):
        assert [totals[c] for c in ("lookups", "hits", "promoted", "demoted", "evicted", "declined")] == counters[i].tolist()


@pytest.mark.parametrize("filter_text", ["bloom", "bloom:2", "prob:0.4:5", "tinylfu"])
@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_admission_decides_the_same_on_dense_keys(filter_text, mode):
    """Filters hash the row id behind a dense key: the same rows are declined as on global ids."""
    trace = sparse_trace(5)
    hierarchy = Hierarchy((TierSpec("a", 150, "lru", {}, "hbm", admission=filter_text),
                           TierSpec("b", 600, "s3fifo", {}, "dram", admission=filter_text),
                           TierSpec("store", None, None, {}, "nvme")), mode)
    result = simulate(trace, hierarchy, compute_window_s=1e-3, progress=False)
    served, counters = served_on_global_ids(trace, hierarchy)
    np.testing.assert_array_equal(result.served, served)
    for i, totals in enumerate(result.tier_totals[:-1]):
        assert [totals[c] for c in ("lookups", "hits", "promoted", "demoted", "evicted", "declined")] == counters[i].tolist()
        assert totals["declined"] > 0


@pytest.mark.parametrize("policy", ["lru", "arc", "s3fifo", "wtinylfu", "twoq", "lfu", "sieve", "clock", "slru",
                                    "random", "lruprob", "hyperbolic", "lecar", "lhd", "lfuda",
                                    "clock2qplus", "lirs", "lruk", "mq", "cacheus", "clockpro"])
def test_a_tier_larger_than_the_working_set_never_evicts(policy):
    trace = sparse_trace(2)
    distinct = np.unique(trace.rows).size
    hierarchy = Hierarchy((TierSpec("a", 4 * distinct, policy, {}, "hbm"), TierSpec("store", None, None, {}, "nvme")))
    result = simulate(trace, hierarchy, compute_window_s=1e-3, progress=False)
    assert result.tier_totals[0]["evicted"] == 0
    assert result.tier_totals[0]["lookups"] - result.tier_totals[0]["hits"] == distinct


def test_streamed_file_simulates_like_the_trace_in_memory(tmp_path):
    trace = sparse_trace(3)
    save_trace(trace, tmp_path / "t.trace", chunk_rows=1_000)
    hierarchy = Hierarchy((TierSpec("gpu", 200, "s3fifo", {}, "hbm"), TierSpec("dram", 800, "belady", {}, "dram"),
                           TierSpec("store", None, None, {}, "nvme")))
    in_memory = simulate(trace, hierarchy, compute_window_s=1e-4, progress=False)
    with TraceReader(tmp_path / "t.trace") as reader:
        assert reader.n_chunks > 10
        streamed = simulate(reader, hierarchy, compute_window_s=1e-4, chunk_requests=700, progress=False)
    np.testing.assert_array_equal(streamed.served, in_memory.served)
    np.testing.assert_array_equal(streamed.stall_s, in_memory.stall_s)
    assert streamed.tier_totals == in_memory.tier_totals


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3_000),
       table=st.sampled_from([1, 64, 65, 10_007, 2**31 + 11, 2**45]))
def test_row_index_ranks_and_first_seen_keys(seed, n, table):
    """Bitmap and sorted runs (tables too large for a bitmap) both give each row its rank; chunk by
    chunk, `FirstSeen` numbers rows by first request exactly as `dense_keys` does in memory."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, table, n)
    index = RowIndex(table)
    for part in np.array_split(rows, 7):
        index.add(part)
    sorted_ids = index.finish()
    np.testing.assert_array_equal(sorted_ids, np.unique(rows))
    np.testing.assert_array_equal(index.ranks(rows), np.searchsorted(sorted_ids, rows))
    first_seen = FirstSeen(sorted_ids.size)
    keys = np.concatenate([first_seen.keys(index.ranks(part), np.empty(part.size, np.int64))
                           for part in np.array_split(rows, 5)] or [np.empty(0, np.int64)])
    expect_keys, expect_ids = dense_keys(rows)
    np.testing.assert_array_equal(keys, expect_keys)
    np.testing.assert_array_equal(first_seen.row_ids(sorted_ids), expect_ids)
    if n:
        assert keys[0] == 0 and np.all(np.diff(np.maximum.accumulate(keys)) <= 1)  # first requests count up


def test_file_is_the_same_whichever_row_index_builds_it(tmp_path, monkeypatch):
    trace = sparse_trace(4)
    save_trace(trace, tmp_path / "bitmap.trace", chunk_rows=2_000)
    monkeypatch.setattr(rowindex, "BITMAP_MAX_ROWS", 0)
    save_trace(trace, tmp_path / "sorted.trace", chunk_rows=2_000)
    assert (tmp_path / "bitmap.trace").read_bytes() == (tmp_path / "sorted.trace").read_bytes()
    with TraceReader(tmp_path / "sorted.trace") as reader:
        np.testing.assert_array_equal(reader.row_ids(), dense_keys(trace.rows)[1])
        np.testing.assert_array_equal(reader.row_ids()[reader.dense_keys()], trace.rows)
        assert reader.n_distinct == np.unique(trace.rows).size
