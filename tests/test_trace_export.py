"""Exports: oracleGeneral records against a brute-force next-request model and libCacheSim's own LRU;
CSV read back; the streamed (file, backwards over chunks) export equal to the in-memory one."""

from __future__ import annotations

import numpy as np
import pytest

from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace.build import StepPlan, build_trace, hasher_for
from engramtier.trace.export import ORACLE_RECORD, export_csv, export_oracle_general, export_trace
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import ZipfSource
from engramtier.trace.tracefile import TraceReader, save_trace

lcs = pytest.importorskip("libcachesim")


@pytest.fixture(scope="module")
def zipf_trace() -> RowTrace:
    source = ZipfSource(0.9, vocab=400, n_tokens=6000, seed=11, doc_len=200)
    hasher = hasher_for(source, 1009, (1,), 2, 3, 0)
    return build_trace(source, hasher, StepPlan("decode", requests=6, seq_len=100, prompt_len=8), row_bytes=160)


def brute_next(rows):
    nxt, later = [], {}
    for t in range(len(rows) - 1, -1, -1):
        nxt.append(later.get(rows[t], -1))
        later[rows[t]] = t
    return nxt[::-1]


def test_oracle_records_hand_worked(tmp_path):
    trace = RowTrace(np.array([7, 3, 7, 7, 3, 9]), np.array([0, 2, 2, 5, 6]), 10, 264)
    export_oracle_general(trace, tmp_path / "o.bin")
    rec = np.fromfile(tmp_path / "o.bin", ORACLE_RECORD)
    assert ORACLE_RECORD.itemsize == 24
    assert rec["time"].tolist() == [0, 0, 2, 2, 2, 3]
    assert rec["id"].tolist() == [7, 3, 7, 7, 3, 9]
    assert rec["size"].tolist() == [264] * 6
    assert rec["next"].tolist() == [2, 4, 3, -1, -1, -1]


def test_oracle_file_matches_brute_force_and_streams(zipf_trace, tmp_path):
    export_oracle_general(zipf_trace, tmp_path / "mem.bin")
    rec = np.fromfile(tmp_path / "mem.bin", ORACLE_RECORD)
    np.testing.assert_array_equal(rec["id"], zipf_trace.rows)
    np.testing.assert_array_equal(rec["next"], brute_next(zipf_trace.rows.tolist()))
    np.testing.assert_array_equal(rec["time"], np.repeat(np.arange(zipf_trace.n_steps), np.diff(zipf_trace.step_starts)))
    save_trace(zipf_trace, tmp_path / "z.trace", chunk_rows=777)
    with TraceReader(tmp_path / "z.trace") as reader:
        assert reader.n_chunks > 10
        export_trace(reader, tmp_path / "file.bin", "oracle")
    assert (tmp_path / "file.bin").read_bytes() == (tmp_path / "mem.bin").read_bytes()


@pytest.mark.parametrize("capacity", [8, 50, 400, 2000])
def test_libcachesim_lru_on_the_export_equals_our_replay(zipf_trace, tmp_path, capacity):
    path = tmp_path / "z.oracleGeneral.bin"
    export_oracle_general(zipf_trace, path)
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = lcs.LRU(capacity * zipf_trace.row_bytes).process_trace(reader)  # bytes: every row is row_bytes
    ours = replay(make_policy("lru", capacity, PolicyContext(n_keys=zipf_trace.n_table_rows)), zipf_trace.rows)
    n = zipf_trace.rows.size
    assert 0 < ours < n
    assert round((1.0 - miss_ratio) * n) == ours


def test_csv_reads_back(zipf_trace, tmp_path):
    save_trace(zipf_trace, tmp_path / "z.trace", chunk_rows=1000)
    with TraceReader(tmp_path / "z.trace") as reader:
        assert export_csv(reader, tmp_path / "z.csv") == zipf_trace.rows.size
    assert (tmp_path / "z.csv").read_text().splitlines()[0] == "time,id,size"
    table = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1, dtype=np.int64)
    np.testing.assert_array_equal(table[:, 1], zipf_trace.rows)
    np.testing.assert_array_equal(table[:, 0], np.repeat(np.arange(zipf_trace.n_steps), np.diff(zipf_trace.step_starts)))
    assert set(table[:, 2]) == {160}


def test_csv_writes_zero_and_wide_numbers(tmp_path):
    trace = RowTrace(np.array([0, 2**40 + 7, 10]), np.array([0, 1, 3]), 2**41, 1)
    export_csv(trace, tmp_path / "w.csv")
    assert (tmp_path / "w.csv").read_text() == f"time,id,size\n0,0,1\n1,{2**40 + 7},1\n1,10,1\n"


def test_unknown_format(zipf_trace, tmp_path):
    with pytest.raises(EngramTierError, match="unknown export format 'parquet'"):
        export_trace(zipf_trace, tmp_path / "x", "parquet")
