"""Row traces in steps against plain-Python models of prefill batching and continuous-batching decode."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig, NgramHasher, hash_reference_numpy
from engramtier.trace.build import StepPlan, TraceBuilder, build_trace, hasher_for
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import ZipfSource

VOCAB = 50


class ListSource:
    """A token source over fixed documents (the `TokenSource` protocol, without a tokenizer)."""

    def __init__(self, docs):
        self.docs = [np.asarray(d, np.int64) for d in docs]

    def documents(self):
        yield from self.docs

    def hash_config(self, table_sizes, layer_ids, n_heads, seed):
        return HashConfig(vocab_size=VOCAB, pad_id=0, table_sizes=table_sizes, layer_ids=layer_ids, n_heads=n_heads, seed=seed)

    def describe(self):
        return {"kind": "list"}


def small_hasher(source, max_ngram=3):
    return hasher_for(source, 101, (0, 2), 2, max_ngram, seed=5)


def reference_rows(hasher: NgramHasher, seq) -> np.ndarray:
    """[len, rows_per_token] from the numpy specification of the addressing."""
    return hash_reference_numpy(hasher, np.asarray(seq, np.int64)[None, :])[0].reshape(len(seq), -1)


def request_windows(docs, seq_len):
    return [list(d[i : i + seq_len]) for d in docs for i in range(0, len(d), seq_len)]


def built(source, hasher, plan, block_tokens):
    builder = TraceBuilder(source, hasher, plan, block_tokens=block_tokens)
    rows, counts = [], []
    for r, c in builder.blocks():
        rows.append(r.copy())
        counts.append(c)
    counts = np.concatenate(counts)
    return np.concatenate(rows), np.concatenate([[0], np.cumsum(counts)])


def brute_prefill(hasher, docs, batch, seq_len):
    seqs = request_windows(docs, seq_len)
    rows, starts = [], [0]
    for lo in range(0, len(seqs), batch):
        step = [reference_rows(hasher, s).ravel() for s in seqs[lo : lo + batch]]
        rows.extend(step)
        starts.append(starts[-1] + sum(r.size for r in step))
    return np.concatenate(rows), np.array(starts)


def brute_decode(hasher, docs, requests, seq_len, prompt_len):
    """Step by step: fill free slots in slot order from the queue, then each busy slot reads its next
    token (or its whole prompt, on its first step)."""
    queue = deque(request_windows(docs, seq_len))
    slots = [None] * requests  # [rows of the request's positions, next position]
    rows, starts = [], [0]
    while queue or any(s is not None for s in slots):
        for i in range(requests):
            if slots[i] is None and queue:
                slots[i] = [reference_rows(hasher, queue.popleft()), 0]
        step = []
        for i in range(requests):
            if slots[i] is None:
                continue
            req, pos = slots[i]
            take = max(prompt_len, 1) if pos == 0 else 1
            step.append(req[pos : pos + take].ravel())
            slots[i] = None if pos + take >= len(req) else [req, pos + take]
        rows.extend(step)
        starts.append(starts[-1] + sum(r.size for r in step))
    return np.concatenate(rows), np.array(starts)


documents = st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=30), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(docs=documents, batch=st.integers(1, 4), seq_len=st.integers(1, 12), block=st.integers(1, 64))
def test_prefill_matches_brute_force(docs, batch, seq_len, block):
    source = ListSource(docs)
    hasher = small_hasher(source)
    rows, starts = built(source, hasher, StepPlan("prefill", batch=batch, seq_len=seq_len), block)
    want_rows, want_starts = brute_prefill(hasher, docs, batch, seq_len)
    np.testing.assert_array_equal(starts, want_starts)
    np.testing.assert_array_equal(rows, want_rows)


@settings(max_examples=60, deadline=None)
@given(docs=documents, requests=st.integers(1, 4), seq_len=st.integers(1, 12), prompt=st.integers(0, 5),
       block=st.integers(1, 64))
def test_decode_matches_brute_force(docs, requests, seq_len, prompt, block):
    source = ListSource(docs)
    hasher = small_hasher(source)
    plan = StepPlan("decode", seq_len=seq_len, requests=requests, prompt_len=prompt)
    rows, starts = built(source, hasher, plan, block)
    want_rows, want_starts = brute_decode(hasher, docs, requests, seq_len, prompt)
    np.testing.assert_array_equal(starts, want_starts)
    np.testing.assert_array_equal(rows, want_rows)


def test_decode_rows_equal_prefill_rows_of_the_same_positions():
    docs = [np.random.default_rng(i).integers(0, VOCAB, n) for i, n in enumerate((40, 7, 93, 1, 25))]
    source = ListSource(docs)
    hasher = small_hasher(source)
    rpt = hasher.rows_per_token
    prefill = build_trace(source, hasher, StepPlan("prefill", batch=1, seq_len=64))
    one_by_one = build_trace(source, hasher, StepPlan("decode", requests=1, seq_len=64))
    # a lone request without a prompt reads each position in a step of its own, in order
    np.testing.assert_array_equal(one_by_one.rows, prefill.rows)
    np.testing.assert_array_equal(np.diff(one_by_one.step_starts), np.full(prefill.rows.size // rpt, rpt))
    interleaved = build_trace(source, hasher, StepPlan("decode", requests=3, seq_len=64, prompt_len=4))
    np.testing.assert_array_equal(np.sort(interleaved.rows), np.sort(prefill.rows))
    assert interleaved.n_steps < one_by_one.n_steps


def test_rows_within_a_token_are_layer_order_head_major():
    source = ListSource([[3, 9, 4, 4, 17]])
    hasher = small_hasher(source)
    trace = build_trace(source, hasher, StepPlan("prefill", batch=1, seq_len=8))
    per_token = trace.rows.reshape(5, hasher.n_layers, 2, 2)  # [token, layer, order, head]
    offsets = hasher.offsets  # [layer, order, head] sub-table offsets, increasing in that order
    assert np.all(per_token >= offsets) and np.all(per_token < offsets + hasher.primes)
    np.testing.assert_array_equal(per_token, hash_reference_numpy(hasher, [[3, 9, 4, 4, 17]])[0].reshape(5, 2, 2, 2))


def test_meta_records_layout_and_provenance():
    source = ListSource([[1, 2, 3]])
    hasher = small_hasher(source, max_ngram=4)
    trace = build_trace(source, hasher, StepPlan("decode", requests=5, seq_len=2), row_bytes=264)
    m = trace.meta
    assert m["rows_per_token"] == hasher.rows_per_token == 2 * 3 * 2
    assert m["tokens_per_step"] == 5 and m["mode"] == "decode" and m["max_ngram"] == 4
    assert m["layer_ids"] == [0, 2] and m["n_heads"] == 2
    assert m["subtable_sizes"] == hasher.subtable_sizes.tolist()
    assert m["fingerprint"] == hasher.config.fingerprint == HashConfig.from_dict(m["hash_config"]).fingerprint
    assert m["source"] == {"kind": "list"}
    assert m["preset"] is None and m["tokenizer_digest"] == hasher.config.tokenizer_digest
    assert trace.n_table_rows == hasher.n_rows and trace.row_bytes == 264
    trace.validate()
    assert build_trace(source, hasher, StepPlan(), preset="engram-27b").meta["preset"] == "engram-27b"


def test_zipf_source_traces_validate_and_stay_in_the_table():
    source = ZipfSource(1.1, vocab=300, n_tokens=5000, seed=2, doc_len=100)
    hasher = hasher_for(source, 1009, (1,), 4, 3, 0)
    trace = build_trace(source, hasher, StepPlan("prefill", batch=4, seq_len=64))
    assert isinstance(trace, RowTrace) and trace.validate() is trace
    assert trace.rows.size == 5000 * hasher.rows_per_token
    # 50 documents of 100 tokens cut into 64 + 36 token windows, four windows per step
    assert trace.n_steps == 100 // 4 and trace.step_starts[1] == 2 * (64 + 36) * hasher.rows_per_token


@pytest.mark.parametrize("kwargs, words", [
    ({"mode": "chunked"}, "unknown mode"), ({"batch": 0}, "batch"), ({"seq_len": 0}, "seq_len"),
    ({"requests": -1}, "requests"), ({"prompt_len": -2}, "prompt_len"),
])
def test_bad_step_plans(kwargs, words):
    with pytest.raises(EngramTierError, match=words):
        StepPlan(**kwargs)


def test_bad_max_ngram_and_empty_source():
    with pytest.raises(EngramTierError, match="max n-gram size must be >= 2"):
        hasher_for(ListSource([[1]]), 101, (0,), 1, 1, 0)
    empty = ListSource([])
    with pytest.raises(EngramTierError, match="holds no tokens"):
        build_trace(empty, small_hasher(empty), StepPlan())
