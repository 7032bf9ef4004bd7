"""The trace file: exact round trips, streaming in bounded chunks, seeking, and every damaged-file error."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.errors import EngramTierError
from engramtier.trace.build import StepPlan, build_trace, hasher_for
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import ZipfSource
from engramtier.trace.stats import trace_stats
from engramtier.trace.tracefile import TraceReader, TraceWriter, _decode_frame, decode_rows, encode_rows, load_trace, save_trace


def random_trace(rng, n_steps, n_table_rows, max_step=40, meta=None) -> RowTrace:
    counts = rng.integers(0, max_step, n_steps)
    counts[0] = max(counts[0], 1)
    rows = rng.integers(0, n_table_rows, int(counts.sum()))
    return RowTrace(rows, np.concatenate([[0], np.cumsum(counts)]), n_table_rows, 160, meta or {"fingerprint": "abc"})


def assert_same(a: RowTrace, b: RowTrace):
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.step_starts, b.step_starts)
    assert (a.n_table_rows, a.row_bytes, a.meta) == (b.n_table_rows, b.row_bytes, b.meta)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_steps=st.integers(1, 60), chunk_rows=st.integers(1, 300),
       n_table_rows=st.sampled_from([1, 7, 2**31 - 1, 2**31 + 5, 2**40]))
def test_round_trip_and_seek(tmp_path_factory, seed, n_steps, chunk_rows, n_table_rows):
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, n_steps, n_table_rows)
    path = tmp_path_factory.mktemp("rt") / "t.trace"
    save_trace(trace, path, chunk_rows=chunk_rows)
    with TraceReader(path) as reader:
        assert (reader.n_steps, reader.n_rows) == (trace.n_steps, trace.rows.size)
        assert_same(reader.read_all(), trace)
        for step, rows in zip(range(trace.n_steps), reader.steps(), strict=True):
            np.testing.assert_array_equal(rows, trace.step(step))
        first, stop = sorted(rng.integers(0, n_steps + 1, 2))
        rows, starts = reader.read_steps(int(first), int(stop))
        lo, hi = trace.step_starts[first], trace.step_starts[stop]
        np.testing.assert_array_equal(rows, trace.rows[lo:hi])
        np.testing.assert_array_equal(starts, trace.step_starts[first : stop + 1] - lo)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.integers(0, 2**31 - 1), max_size=50), width=st.sampled_from([4, 8]))
def test_row_coding_round_trips(rows, width):
    rows = np.array(rows, np.int64)
    np.testing.assert_array_equal(decode_rows(encode_rows(rows, width), rows.size, width), rows)


def test_streams_many_chunks_of_whole_steps(tmp_path):
    """Appending step by step and reading chunk by chunk never holds more than about one chunk."""
    rng = np.random.default_rng(3)
    path = tmp_path / "long.trace"
    chunk_rows = 500
    steps = [rng.integers(0, 10_000, rng.integers(1, 120)) for _ in range(2000)]
    steps[7] = rng.integers(0, 10_000, 1700)  # a step larger than a chunk gets a chunk of its own
    with TraceWriter(path, 10_000, 160, {"k": 1}, chunk_rows=chunk_rows) as writer:
        for rows in steps:
            writer.append_step(rows)
            assert writer._n_buffered < chunk_rows  # flushed as soon as a chunk is full
    with TraceReader(path) as reader:
        assert reader.n_chunks > 200
        step = 0
        for chunk in reader.chunks():
            assert chunk.first_step == step
            assert chunk.rows.size <= chunk_rows or chunk.step_counts.size == 1
            for rows in np.split(chunk.rows, chunk.step_starts[1:-1]):
                np.testing.assert_array_equal(rows, steps[step])
                step += 1
        assert step == len(steps)
        backwards = [c.index for c in reader.chunks(reverse=True)]
        assert backwards == list(range(reader.n_chunks - 1, -1, -1))


def test_compresses_real_row_ids_well(tmp_path):
    """Hashed n-grams of Zipf text repeat: far fewer than the 8 bytes of a raw int64 per row id."""
    source = ZipfSource(1.0, vocab=5000, n_tokens=20_000, seed=1)
    hasher = hasher_for(source, 100_003, (1, 15), 8, 3, 0)
    trace = build_trace(source, hasher, StepPlan("prefill", batch=4, seq_len=256))
    save_trace(trace, tmp_path / "z.trace")
    per_row = (tmp_path / "z.trace").stat().st_size / trace.rows.size
    assert per_row < 4.0, per_row
    assert_same(load_trace(tmp_path / "z.trace", expect_fingerprint=hasher.config.fingerprint), trace)


@pytest.fixture
def good_file(tmp_path):
    trace = random_trace(np.random.default_rng(0), 300, 1000, meta={"fingerprint": "f00d"})
    path = tmp_path / "good.trace"
    save_trace(trace, path, chunk_rows=400)
    return path


def damaged(path, edit):
    data = bytearray(path.read_bytes())
    data = edit(data)
    out = path.with_name("bad.trace")
    out.write_bytes(bytes(data))
    return out


def expect_error(path, *words, **kwargs):
    with pytest.raises(EngramTierError) as err:
        TraceReader(path, **kwargs).read_all()
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for w in words:
        assert w in message, message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.trace", "does not exist")


def test_wrong_magic(good_file):
    expect_error(damaged(good_file, lambda d: b"NOTATRAC" + d[8:]), "not an engramtier trace file")
    expect_error(damaged(good_file, lambda d: d[:3]), "not an engramtier trace file")


def test_version_from_the_future(good_file):
    expect_error(damaged(good_file, lambda d: d[:8] + struct.pack("<I", 99) + d[12:]), "version 99", "upgrade")


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_truncated(good_file, keep):
    expect_error(damaged(good_file, lambda d: d[: int(len(d) * keep)]), "truncated")


def test_corrupt_chunk(good_file):
    with TraceReader(good_file) as reader:
        assert reader.n_chunks >= 3
        second = int(reader._index["offset"][1])
    expect_error(damaged(good_file, lambda d: d[: second + 40] + bytes([d[second + 40] ^ 0x10]) + d[second + 41 :]),
                 "chunk 1", "corrupt")
    expect_error(damaged(good_file, lambda d: d[: second + 8] + b"\xff" + d[second + 9 :]), "chunk 1", "corrupt")


def test_corrupt_index(good_file):
    expect_error(damaged(good_file, lambda d: d[:-60] + bytes([d[-60] ^ 1]) + d[-59:]), "index is corrupt")


def test_fingerprint_mismatch_names_both(good_file):
    expect_error(good_file, "f00d", "beef", "rebuild", expect_fingerprint="beef")
    assert TraceReader(good_file, expect_fingerprint="f00d").n_steps == 300


def test_writer_refuses_bad_rows_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "w.trace"
    with pytest.raises(EngramTierError, match="row id 10 lies outside the table's 10 rows"):
        with TraceWriter(path, 10, 160) as writer:
            writer.append_step(np.array([1, 2, 3]))
            writer.append_step(np.array([4, 10]))
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(EngramTierError, match="add up to"):
        with TraceWriter(path, 10, 160) as writer:
            writer.append(np.array([1, 2, 3]), np.array([1, 1]))
    with pytest.raises(EngramTierError, match="trace file .*dir.trace: the folder .* does not exist"):
        TraceWriter(tmp_path / "no" / "such" / "dir.trace", 10, 160)


def test_header_flip_is_refused(good_file):
    """The header has its own checksum: a flipped byte in the row count or the fingerprint is caught."""
    data = good_file.read_bytes()
    for word in (b'"n_table_rows": 1000', b"f00d"):
        at = data.index(word) + len(word) - 1
        expect_error(damaged(good_file, lambda d, at=at: d[:at] + bytes([d[at] ^ 1]) + d[at + 1 :]), "header", "corrupt")


def test_version_1_traces_are_refused_with_rebuild(good_file):
    expect_error(damaged(good_file, lambda d: d[:8] + struct.pack("<I", 1) + d[12:]), "version-1", "rebuild")


def test_a_directory_or_a_text_file_is_no_trace(tmp_path, good_file):
    expect_error(tmp_path, "is a directory, not a trace file")
    text = tmp_path / "exp.toml"
    text.write_text('[trace]\nsource = "zipf"\n')
    expect_error(text, "not an engramtier trace file")


def test_a_frame_claiming_more_rows_than_the_index_is_refused_before_decompressing(good_file):
    """A frame whose checksum holds but whose counts exceed what the index leaves room for (a writer
    bug, or a crafted file) is refused before its payload is decompressed: a zstd frame without its
    content size would otherwise be given an output buffer of the claimed size, petabytes here."""
    with TraceReader(good_file) as reader:
        second, end = int(reader._index["offset"][1]), int(reader._index["offset"][2])
        steps = int(reader._index["first_step"][2] - reader._index["first_step"][1])
        rows = int(reader._index["first_row"][2] - reader._index["first_row"][1])
    data = good_file.read_bytes()
    n_steps, n_ids, n_payload, width = struct.unpack_from("<IQQB", data, second + 4)
    assert (n_steps, n_ids, second + 29 + n_payload) == (steps, rows, end)
    payload = zstandard.ZstdDecompressor().decompress(data[second + 29 : end])
    payload = zstandard.ZstdCompressor(write_content_size=False).compress(payload)

    def frame(ids):
        fields = struct.pack("<4sIQQB", b"CHNK", n_steps, ids, len(payload), width)
        return fields + struct.pack("<I", zlib.crc32(payload, zlib.crc32(fields))) + payload

    decompressor = zstandard.ZstdDecompressor()
    counts, keys = _decode_frame(frame(n_ids), decompressor, steps, rows)
    assert counts.size == steps and keys.size == rows
    assert _decode_frame(frame(1 << 50), decompressor, steps, rows) is None


def test_stats_refuse_a_meta_layout_that_does_not_describe_the_table(tmp_path):
    trace = random_trace(np.random.default_rng(1), 20, 100)
    for meta in ({"subtable_sizes": [50, 40], "layer_ids": [1], "n_heads": 2, "max_ngram": 2},  # 90 rows, not 100
                 {"subtable_sizes": [50, 50], "layer_ids": [1], "n_heads": 10**12, "max_ngram": 2},
                 {"subtable_sizes": "50,50", "layer_ids": [1], "n_heads": 2, "max_ngram": 2},
                 {"subtable_sizes": [50, 50], "layer_ids": [1], "n_heads": 2, "max_ngram": [3]}):
        path = tmp_path / "meta.trace"
        save_trace(RowTrace(trace.rows, trace.step_starts, 100, 160, meta), path)
        with TraceReader(path) as reader, pytest.raises(EngramTierError, match="sub-table layout .* does not describe"):
            trace_stats(reader).stats_dict()
    save_trace(RowTrace(trace.rows, trace.step_starts, 100, 160,
                        {"subtable_sizes": [50, 50], "layer_ids": [1], "n_heads": 2, "max_ngram": 2}), path)
    with TraceReader(path) as reader:
        assert [s["rows"] for s in trace_stats(reader).stats_dict()["subtables"]["per_subtable"]] == [50, 50]
