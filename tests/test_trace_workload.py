"""Continuous batching (`Scheduler`), arrival traces (Azure, BurstGPT, Mooncake, Poisson) and workload
row traces: steps cut as vLLM cuts them, requests reading consecutive text, per-step columns in the
trace file, and simulate/stats working on them unchanged."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.model.hashing import NgramHasher
from engramtier.trace.arrivals import LengthDistribution, poisson_arrivals, read_arrivals
from engramtier.trace.schedule import Scheduler
from engramtier.trace.sources import ZipfSource
from engramtier.trace.tracefile import TraceReader, TraceWriter
from engramtier.trace.workload import STEP_COLUMNS, StepTime, run_arrivals

ZIPF = ["--synthetic-zipf", "1.0", "--vocab", "300", "--tokens", "5000", "--table-size", "1009", "--heads", "2",
        "--layers", "1", "--quiet"]


def steps_of(scheduler: Scheduler, stop_after=None):
    """Every step until the scheduler runs dry, as (ids, starts, tokens, samples) lists."""
    out = []
    while scheduler.has_work:
        step = scheduler.schedule()
        out.append((step.ids.tolist(), step.starts.tolist(), step.tokens.tolist(), step.samples.tolist()))
        scheduler.update(step, stop_after(step) if stop_after else ())
    return out


def test_running_first_then_chunked_prefill_first_come_first_served():
    s = Scheduler(max_num_batched_tokens=10, max_num_seqs=256)
    s.add(0, prompt_tokens=6, max_tokens=3)
    s.add(1, prompt_tokens=8, max_tokens=2)
    s.add(2, prompt_tokens=3, max_tokens=1)
    first = s.schedule()
    assert (first.prefill_tokens, first.decode_tokens, first.running, first.waiting) == (10, 0, 2, 1)
    s.update(first)
    assert steps_of(s) == [
        # 0 decodes one token; 1 finishes its prompt (4 left) and samples; 2 is admitted with the 5 tokens left over
        ([0, 1, 2], [6, 4, 0], [1, 4, 3], [True, True, True]),
        # 2 finished after its one token; 0 samples its third and 1 its second: both done
        ([0, 1], [7, 8], [1, 1], [True, True]),
    ]
    assert not s.has_work


def test_budget_and_max_num_seqs_bound_every_step():
    rng = np.random.default_rng(1)
    s = Scheduler(max_num_batched_tokens=16, max_num_seqs=3)
    prompts, outputs = rng.integers(1, 40, 30), rng.integers(1, 12, 30)
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        s.add(i, int(p), int(o))
    computed, sampled, admitted = np.zeros(30, np.int64), np.zeros(30, np.int64), []
    while s.has_work:
        step = s.schedule()
        assert 0 < step.n_tokens <= 16 and step.running <= 3 and step.ids.size <= 3
        np.testing.assert_array_equal(step.starts, computed[step.ids])  # every token exactly once, in order
        admitted += [i for i in step.ids.tolist() if i not in admitted]
        computed[step.ids] += step.tokens
        sampled[step.ids[step.samples]] += 1
        s.update(step)
    assert admitted == list(range(30))  # first come, first served
    np.testing.assert_array_equal(computed, prompts + outputs - 1)  # the last sampled token is never fed back
    np.testing.assert_array_equal(sampled, outputs)


def test_decoding_requests_past_the_budget_sit_the_step_out():
    s = Scheduler(max_num_batched_tokens=4, max_num_seqs=8)
    for i in range(6):
        s.add(i, 1, 5)
    s.update(s.schedule())  # admits 0..3 (one prompt token each, budget spent)
    step = s.schedule()
    assert step.ids.tolist() == [0, 1, 2, 3] and step.waiting == 2 and step.decode_tokens == 4


def test_stopped_and_aborted_requests_leave():
    s = Scheduler(max_num_batched_tokens=100)
    for i in range(3):
        s.add(i, 2, 10)
    step = s.schedule()
    assert s.update(step, stopped=[1]).tolist() == [1]  # an end-of-text token
    s.abort([2])
    s.add(3, 2, 1)
    s.abort([3])
    assert s.schedule().ids.tolist() == [0] and s.n_waiting == 0


def test_scheduler_refusals():
    with pytest.raises(EngramTierError, match="max_num_batched_tokens"):
        Scheduler(0)
    s = Scheduler()
    with pytest.raises(EngramTierError, match="max_tokens >= 1"):
        s.add(0, 5, 0)
    s.add(0, 5, 1)
    s.schedule()
    with pytest.raises(EngramTierError, match="not updated"):
        s.schedule()


def test_arrival_files_of_each_public_trace(tmp_path):
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:47.5,30,4\n"
                     "2023-11-16 18:15:46.0000000,100,7\n")
    a = read_arrivals(azure)
    assert a.times_s.tolist() == [0.0, 1.5] and a.input_tokens.tolist() == [100, 30]  # ordered by arrival
    assert a.origin["format"] == "azure" and a.origin["columns"] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]

    burst = tmp_path / "burst.csv"
    burst.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "5,ChatGPT,472,18,490,Conversation log\n6.5,GPT-4,100,0,100,Conversation log\n"
                     "9,ChatGPT,20,3,23,API log\n")
    b = read_arrivals(burst)
    assert b.times_s.tolist() == [0.0, 4.0] and b.output_tokens.tolist() == [18, 3] and b.origin["skipped_empty"] == 1

    moon = tmp_path / "mooncake.jsonl.gz"
    with gzip.open(moon, "wt") as f:
        for t, i, o in ((0, 6955, 52), (27482, 6472, 26)):
            f.write(json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": [1, 2]}) + "\n")
    m = read_arrivals(moon)
    assert m.times_s.tolist() == [0.0, 27.482] and m.origin["format"] == "mooncake" and m.origin["time_unit"] == "0.001 s"
    assert len(m.limited(1, None)) == 1 and len(m.limited(None, 10.0)) == 1


@pytest.mark.parametrize("content,message", [
    ("time,prompt,output\n1,2,3\n", "unknown columns (time, prompt, output)"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "holds no requests"),
    ("Timestamp,Request tokens,Response tokens\n1,ten,3\n", "line 2 column Request tokens: expected a token count"),
    ("Timestamp,Request tokens,Response tokens\n1,10,-3\n", "column Response tokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,3\n", "expected a date and time"),
    ("Timestamp,Request tokens,Response tokens\n1,0,3\n", "every request reads or writes 0 tokens"),
])
def test_bad_arrival_files_are_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["trace", "--arrivals", str(path), "-o", str(tmp_path / "x.trace"), *ZIPF]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x.trace").exists()


@pytest.mark.parametrize("argv,message", [
    (["--arrivals", "poisson:fast"], "expected poisson:RATE"),
    (["--arrivals", "poisson:0"], "rate must be"),
    (["--arrivals", "poisson:1", "--input-len", "gauss:3"], "--input-len 'gauss:3'"),
    (["--arrivals", "poisson:1", "--output-len", "uniform:9:2"], "--output-len"),
    (["--arrivals", "poisson:1", "--mode", "decode"], "leave out --mode"),
    (["--arrivals", "missing.csv"], "no such file"),
])
def test_bad_arrival_options_are_refused(tmp_path, capsys, argv, message):
    assert main(["trace", *argv, "-o", str(tmp_path / "x.trace"), *ZIPF]) == 2
    assert message in capsys.readouterr().err


def test_poisson_lengths_are_seeded_and_follow_their_distribution():
    args = dict(seed=3, max_requests=4000, duration_s=None)
    a = poisson_arrivals(8.0, LengthDistribution.parse("uniform:10:20", "x"), LengthDistribution.parse("7", "x"), **args)
    b = poisson_arrivals(8.0, LengthDistribution.parse("uniform:10:20", "x"), LengthDistribution.parse("7", "x"), **args)
    np.testing.assert_array_equal(a.times_s, b.times_s)
    assert a.input_tokens.min() == 10 and a.input_tokens.max() == 20 and set(a.output_tokens.tolist()) == {7}
    assert abs(len(a) / a.times_s[-1] - 8.0) < 0.5  # the rate
    median = np.median(LengthDistribution.parse("lognormal:300:0.5", "x").draw(np.random.default_rng(0), 20000))
    assert 290 <= median <= 310
    assert len(poisson_arrivals(8.0, LengthDistribution.parse("5", "x"), LengthDistribution.parse("5", "x"),
                                seed=0, max_requests=None, duration_s=10.0).times_s) in range(50, 110)


def test_one_request_reads_consecutive_text_in_chunks_then_decodes(tmp_path):
    """The trace of one request is the hash of the source's first prompt + output - 1 tokens, its prompt
    cut into budget-sized chunks, then one token per step."""
    arrivals = tmp_path / "one.csv"
    arrivals.write_text("Timestamp,Request tokens,Response tokens\n0,20,4\n")
    out = tmp_path / "one.trace"
    assert main(["trace", "--arrivals", str(arrivals), "--max-num-batched-tokens", "8", "-o", str(out), *ZIPF]) == 0
    source = ZipfSource(1.0, 300, 5000, 0, doc_len=2048)
    hasher = NgramHasher(source.hash_config((1009, 1009), (1,), 2, 0))
    expected = hasher.hash(np.concatenate(list(source.documents()))[:23]).reshape(-1)
    with TraceReader(out) as reader:
        trace = reader.read_all()
        columns = reader.step_columns
    np.testing.assert_array_equal(trace.rows, expected)
    assert (np.diff(trace.step_starts) // hasher.rows_per_token).tolist() == [8, 8, 4, 1, 1, 1]
    assert columns["prefill_tokens"].tolist() == [8, 8, 4, 0, 0, 0] and columns["decode_tokens"].tolist() == [0, 0, 0, 1, 1, 1]
    assert trace.meta["mode"] == "arrivals" and trace.meta["arrivals"]["format"] == "burstgpt"
    # the shipped [timing]: 50 us per token, no fixed cost
    assert np.allclose(np.diff(columns["start_us"]), [400, 400, 200, 50, 50])


def test_poisson_workload_trace_feeds_stats_and_simulate(tmp_path, capsys):
    out = tmp_path / "p.trace"
    assert main(["trace", "--arrivals", "poisson:50", "--max-requests", "40", "--input-len", "uniform:20:60",
                 "--output-len", "uniform:5:30", "--max-num-batched-tokens", "64", "--max-num-seqs", "6",
                 "--compute-s", "0.01", "-o", str(out), *ZIPF]) == 0
    assert "40 requests from Poisson at 50/s" in capsys.readouterr().out
    with TraceReader(out) as reader:
        columns, counts = reader.step_columns, np.diff(reader.step_starts)
        meta = reader.meta
    assert list(columns) == list(STEP_COLUMNS)
    tokens = columns["prefill_tokens"] + columns["decode_tokens"]
    np.testing.assert_array_equal(tokens * meta["rows_per_token"], counts)
    assert tokens.max() <= 64 and columns["running"].max() <= 6 and columns["waiting"].max() > 0  # queueing at 50/s
    assert meta["scheduler"] == {"max_num_batched_tokens": 64, "max_num_seqs": 6}
    assert meta["step_time"] == {"fixed_s": 0.01, "per_token_s": 50e-6}

    assert main(["stats", str(out)]) == 0
    assert "per step        prefill_tokens mean" in capsys.readouterr().out
    hierarchy = tmp_path / "h.toml"
    hierarchy.write_text('[[tier]]\nname = "dram"\ncapacity = 200\npolicy = "lru"\nmodel = "dram"\n'
                         '[[tier]]\nname = "nvme"\nmodel = "nvme"\n[timing]\nwindow_per_token_s = 1e-6\n')
    assert main(["simulate", "--hierarchy", str(hierarchy), str(out), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["simulation"]["steps"] == counts.size
    # each step's record carries its load, and the run draws hit rate and stall against it
    steps = [r for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())
             if r["experiment"] == "step"]
    for name in STEP_COLUMNS:
        assert [r[name] for r in steps] == columns[name].tolist()
    assert all(r["requests"] == n for r, n in zip(steps, counts, strict=True))
    assert (tmp_path / "run" / "figures" / "load.png").stat().st_size > 0


def test_step_clock_waits_for_arrivals_and_charges_compute():
    arrivals = poisson_arrivals(1.0, LengthDistribution.parse("10", "x"), LengthDistribution.parse("2", "x"),
                                seed=0, max_requests=3, duration_s=None)
    scheduler = Scheduler()
    starts = []
    for clock, step in run_arrivals(arrivals, scheduler, StepTime(0.001, 0.0)):
        starts.append((clock, step.ids.tolist()))
        scheduler.update(step)
    # each request alone: its prompt step at its arrival, its one decode step 1 ms later
    expected = [(t + d, [i]) for i, t in enumerate(arrivals.times_s.tolist()) for d in (0.0, 0.001)]
    assert [(round(c, 9), ids) for c, ids in starts] == [(round(c, 9), ids) for c, ids in expected]


def test_step_columns_in_the_trace_file(tmp_path):
    """Columns make a version-3 file; without them the file stays version 2 (what older readers read)."""
    rows = np.arange(60) % 17
    with TraceWriter(tmp_path / "c.trace", 20, 8, chunk_rows=25, step_columns=("a", "b")) as w:
        w.append(rows[:30], np.array([10, 20]), {"a": [1, 2], "b": [3, 4]})
        w.append(rows[30:], np.array([30]), {"a": [5], "b": [6]})
    with TraceWriter(tmp_path / "p.trace", 20, 8, chunk_rows=25) as w:
        w.append(rows, np.array([10, 20, 30]))
    versions = {name: int.from_bytes((tmp_path / name).read_bytes()[8:12], "little") for name in ("c.trace", "p.trace")}
    assert versions == {"c.trace": 3, "p.trace": 2}
    with TraceReader(tmp_path / "c.trace") as r, TraceReader(tmp_path / "p.trace") as plain:
        assert r.step_columns["a"].tolist() == [1, 2, 5] and r.step_columns["b"].tolist() == [3, 4, 6]
        np.testing.assert_array_equal(r.read_all().rows, plain.read_all().rows)
        np.testing.assert_array_equal(r.step_starts, plain.step_starts)
        assert plain.step_columns == {}
    with pytest.raises(EngramTierError, match="one value per step"):
        with TraceWriter(tmp_path / "x.trace", 20, 8, step_columns=("a",)) as w:
            w.append(rows[:10], np.array([10]), {"a": [1, 2]})
    # a flipped byte in the last column's frame is caught when the columns are read
    data = bytearray((tmp_path / "c.trace").read_bytes())
    with TraceReader(tmp_path / "c.trace") as r:
        at = r._index_offset - 3
    data[at] ^= 0xFF
    (tmp_path / "d.trace").write_bytes(bytes(data))
    with TraceReader(tmp_path / "d.trace") as r, pytest.raises(EngramTierError, match="step column 'b' is corrupt"):
        _ = r.step_columns
