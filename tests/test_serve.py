"""`engramtier serve` on a free loopback port: concurrent streaming and plain completions equal to
`generate`'s greedy output, /metrics against the table's own counts, recorded steps that simulate to
the same hits, OpenAI-style 400/404/429 errors, and SIGTERM finishing the requests in flight."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn
from configs import gpu_dram_nvme, hierarchy_file
from prometheus_client.parser import text_string_to_metric_families

from engramtier.cache.hierarchy import load_hierarchy
from engramtier.cli import main
from engramtier.model.run import load_model
from engramtier.serve import engine as engine_module
from engramtier.serve.app import build_app
from engramtier.serve.engine import ServeEngine
from engramtier.serve.generate import generate
from engramtier.serve.metrics import ServeMetrics, histogram_quantile
from engramtier.serve.replay import random_run
from engramtier.tiers.lmdb_table import FlatTableRows, build_lmdb_table
from engramtier.tiers.open import open_for_model
from engramtier.trace.schedule import Scheduler
from engramtier.trace.sources import sample_text_dir
from engramtier.trace.tracefile import TraceReader, save_trace

SHAPE = dict(d_model=32, n_layers=3, n_heads=2, engram_layers=(0, 2), table_size=101, hash_heads=2, row_dim=16)
HIERARCHY = hierarchy_file(gpu_dram_nvme(40, 150, dram_policy="s3fifo"), mode="inclusive") + \
    "[timing]\nwindow_per_token_s = 1e-6\n"
PROMPTS = ["Python is", "The interpreter reads a line", "x", "An unusual prompt: (a, b) = 1, 2", "Tutorial", "if"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    text = tmp_path_factory.mktemp("text")
    for name in ("tutorial-appetite.rst.txt", "tutorial-interpreter.rst.txt"):
        shutil.copy(sample_text_dir() / name, text / name)
    run = random_run(tmp_path_factory.mktemp("run") / "model", text, tokenizer="bpe:300", seq_len=32, **SHAPE)
    build_lmdb_table(FlatTableRows(run / "table"), run / "table.lmdb", progress=False)
    (run / "tiers.toml").write_text(HIERARCHY)
    return run


@pytest.fixture(scope="module")
def loaded(run_dir):
    return load_model(run_dir)


@contextlib.contextmanager
def serving(run_dir, loaded, *, record=False, max_queue=None, **scheduler):
    """A server on a free loopback port in this process; yields (port, engine, table), stops it on exit."""
    table = open_for_model(loaded.model, run_dir / "table.lmdb", load_hierarchy(run_dir / "tiers.toml"), device="cpu",
                           record_trace=record)
    engine = ServeEngine(loaded.model, loaded.tokenizer, table, Scheduler(**scheduler), ServeMetrics(), device="cpu",
                         max_queue=max_queue, record_trace=record)
    app = build_app(engine, "tiny", loaded.tokenizer, loaded.model.config.max_seq_len)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], engine, table
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        table.close()


def post(port, body, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", raw if raw is not None else json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    out = response.status, json.loads(response.read()), {k.lower(): v for k, v in response.getheaders()}
    conn.close()
    return out


def stream(port, body):
    """The text and the finish reason of each choice of a streamed completion, and the usage chunk."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    texts, reasons, usage = {}, {}, None
    for event in sse_events(response):
        if event == "[DONE]":
            break
        chunk = json.loads(event)
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-")
        usage = chunk.get("usage", usage)
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                reasons[choice["index"]] = choice["finish_reason"]
    conn.close()
    return texts, reasons, usage


def sse_events(response):
    for line in response:
        line = line.decode().strip()
        if line.startswith("data: "):
            yield line[len("data: "):]


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    out = response.status, response.read().decode()
    conn.close()
    return out


def scrape(port) -> dict:
    """{(name, labels...): value} of every sample at /metrics."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(s.name, *sorted(s.labels.values())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def alone(loaded, prompt, max_tokens):
    """`generate`'s greedy continuation of one prompt with the flat table."""
    return generate(loaded.model, loaded.tokenizer, loaded.rows, [prompt], max_new_tokens=max_tokens, batch_size=1)[0][0]


@pytest.mark.parametrize("budget", [2048, 5])  # 5: prompts cut into chunks, several sequences per step
def test_concurrent_completions_equal_generate_and_metrics_equal_the_table(run_dir, loaded, budget):
    with serving(run_dir, loaded, max_num_batched_tokens=budget) as (port, engine, table):
        def ask(i):
            body = {"prompt": PROMPTS[i], "max_tokens": 7, "temperature": 0}
            if i % 2:
                texts, reasons, usage = stream(port, {**body, "stream_options": {"include_usage": True}})
                return texts[0], reasons[0], usage
            status, result, _ = post(port, body)
            assert status == 200
            return result["choices"][0]["text"], result["choices"][0]["finish_reason"], result["usage"]

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(ask, range(len(PROMPTS))))
        status, both, _ = post(port, {"prompt": PROMPTS[:2], "max_tokens": 7, "temperature": 0})
        metrics = scrape(port)
    stats = table.stats()
    for prompt, (text, reason, usage) in zip(PROMPTS, answers, strict=True):
        assert text == alone(loaded, prompt, 7)
        assert usage["completion_tokens"] <= 7 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert reason == ("length" if usage["completion_tokens"] == 7 else "stop")
    assert [c["text"] for c in both["choices"]] == [answers[0][0], answers[1][0]]
    for tier in stats["tiers"]:
        for metric, key in (("lookups", "lookups"), ("hits", "hits"), ("rows_read", "rows_read"), ("bytes_read", "bytes_read")):
            assert metrics[(f"engramtier:tier_{metric}_total", tier["name"])] == tier[key], (metric, tier["name"])
    assert stats["tiers"][0]["lookups"] > 0 and stats["tiers"][2]["hits"] > 0
    assert metrics[("engramtier:step_stall_seconds_count",)] == stats["steps"]
    assert metrics[("engramtier:step_stall_seconds_sum",)] == pytest.approx(stats["stall_seconds"])
    assert metrics[("engramtier:step_seconds_sum",)] == pytest.approx(stats["step_seconds"])
    generated = sum(a[2]["completion_tokens"] for a in answers) + both["usage"]["completion_tokens"]
    assert metrics[("engramtier:generation_tokens_total",)] == generated
    assert metrics[("engramtier:num_requests_running",)] == 0 == metrics[("engramtier:num_requests_waiting",)]
    if budget == 5:  # chunked: no step holds more than the budget
        assert metrics[("engramtier:step_tokens_bucket", "8.0")] == stats["steps"]


def test_under_load_the_engine_publishes_and_the_table_forgets_its_step_records(run_dir, loaded, monkeypatch):
    """With no scrape and no idle moment, the engine still publishes every few steps (`PUBLISH_STEPS`)
    and the table keeps only the records since: what a server holds per step does not grow."""
    monkeypatch.setattr(engine_module, "PUBLISH_STEPS", 3)
    with serving(run_dir, loaded) as (port, engine, table):
        kept = []
        prefetch = table.prefetch
        table.prefetch = lambda ids: (kept.append(len(table._log.steps)), prefetch(ids))[1]
        status, result, _ = post(port, {"prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0, "ignore_eos": True})
        assert status == 200 and result["usage"]["completion_tokens"] == 40
        metrics = scrape(port)
        stats = table.stats()
    assert len(kept) >= 40 and max(kept) <= 3  # records kept when a step starts: at most the unpublished ones
    assert metrics[("engramtier:step_stall_seconds_count",)] == stats["steps"] >= 40
    assert metrics[("engramtier:step_stall_seconds_sum",)] == pytest.approx(stats["stall_seconds"])


def test_histogram_quantile_interpolates_within_buckets():
    metrics = ServeMetrics()
    assert histogram_quantile(metrics.step_stall, 0.5) is None
    for value in [2e-5] * 50 + [3e-4] * 49 + [7.0]:  # buckets (1e-5, 2.5e-5], (2.5e-4, 5e-4] and +Inf
        metrics.step_stall.observe(value)
    assert histogram_quantile(metrics.step_stall, 0.5) == pytest.approx(2.5e-5)  # the 50th of 100: the top of its bucket
    assert histogram_quantile(metrics.step_stall, 0.25) == pytest.approx(1e-5 + 1.5e-5 * 25 / 50)
    assert histogram_quantile(metrics.step_stall, 0.99) == pytest.approx(5e-4)
    assert histogram_quantile(metrics.step_stall, 1.0) == 1.0  # beyond the largest bound: that bound


def test_recorded_steps_simulate_to_the_same_hits(run_dir, loaded, tmp_path):
    with serving(run_dir, loaded, record=True, max_num_batched_tokens=16, max_num_seqs=3) as (port, engine, table):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: post(port, {"prompt": p, "max_tokens": 6, "temperature": 0.8, "seed": 1}), PROMPTS))
    stats = table.stats()
    trace, columns = engine.recorded()
    save_trace(trace, tmp_path / "served.trace", step_columns=columns)
    with TraceReader(tmp_path / "served.trace") as reader:
        tokens = reader.step_columns["prefill_tokens"] + reader.step_columns["decode_tokens"]
        np.testing.assert_array_equal(tokens * reader.meta["rows_per_token"], np.diff(reader.step_starts))
        assert reader.n_steps == stats["steps"] and tokens.max() <= 16 and reader.step_columns["running"].max() <= 3
    assert main(["simulate", "--hierarchy", str(run_dir / "tiers.toml"), str(tmp_path / "served.trace"),
                 "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    simulated = json.loads((tmp_path / "sim" / "summary.json").read_text())["simulation"]["tiers"]
    assert [(t["lookups"], t["hits"]) for t in simulated] == [(t["lookups"], t["hits"]) for t in stats["tiers"]]


def test_bad_requests_get_openai_errors(run_dir, loaded):
    cases = [
        (None, "{not json", 400, "not valid JSON"),
        ([1, 2], None, 400, "must be a JSON object"),
        ({"max_tokens": 3}, None, 400, "prompt must be"),
        ({"prompt": "a", "max_tokens": 0}, None, 400, "max_tokens must be an integer >= 1"),
        ({"prompt": "a", "temperature": 3}, None, 400, "temperature must be"),
        ({"prompt": "a", "n": 2}, None, 400, "n = 2 is not supported"),
        ({"prompt": "a", "ignore_eos": 1}, None, 400, "ignore_eos must be true or false"),
        ({"prompt": "a", "frobnicate": 1}, None, 400, "unrecognized request argument supplied: frobnicate"),
        ({"prompt": "a", "max_tokens": 5000}, None, 400, "exceeds the model's 2048 positions"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, None, 400, "only allowed with stream"),
        ({"prompt": "a", "model": "gpt-4"}, None, 404, "The model `gpt-4` does not exist"),
    ]
    with serving(run_dir, loaded) as (port, engine, table):
        for body, raw, status, message in cases:
            got, answer, _ = post(port, body, raw)
            assert got == status and message in answer["error"]["message"], (body, raw, answer)
            assert set(answer["error"]) == {"message", "type", "param", "code"}
        assert get(port, "/health") == (200, json.dumps({"status": "ok"}, separators=(",", ":")))
        models = json.loads(get(port, "/v1/models")[1])
        assert models["data"][0]["id"] == "tiny" and models["data"][0]["object"] == "model"
        assert post(port, {"prompt": "a", "max_tokens": 2, "model": "tiny"})[0] == 200


def test_a_full_queue_gets_429_and_a_client_that_leaves_is_aborted(run_dir, loaded):
    with serving(run_dir, loaded, max_num_seqs=1, max_queue=1) as (port, engine, table):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Python", "max_tokens": 2000, "stream": True,
                                                            "ignore_eos": True}),
                      {"Content-Type": "application/json"})
        response = conn.getresponse()
        next(sse_events(response))  # the long request is running
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(post, port, {"prompt": "x", "max_tokens": 1})
            deadline = time.monotonic() + 60
            while scrape(port)[("engramtier:num_requests_waiting",)] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            status, answer, headers = post(port, {"prompt": "y", "max_tokens": 1})
            assert status == 429 and "queue is full" in answer["error"]["message"] and headers["retry-after"] == "1"
            response.close()
            conn.close()  # the client leaves: its request is aborted, and the waiting one runs
            assert waiting.result(timeout=60)[0] == 200
        metrics = scrape(port)
    assert metrics[("engramtier:request_success_total", "abort")] == 1
    assert metrics[("engramtier:request_success_total", "length")] == 1


def test_sigterm_finishes_requests_in_flight_and_exits_0(run_dir, tmp_path):
    trace = tmp_path / "served.trace"
    process = subprocess.Popen(
        [sys.executable, "-m", "engramtier.cli", "serve", "--run", str(run_dir), "--port", "0", "--device", "cpu",
         "--hierarchy", str(run_dir / "tiers.toml"), "--record", str(trace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = process.stdout.readline()
        port = int(first.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Python", "max_tokens": 300, "stream": True,
                                                            "temperature": 0}))
        response = conn.getresponse()
        events = sse_events(response)
        next(events)
        process.send_signal(signal.SIGTERM)
        rest = list(events)
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] in ("length", "stop")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "served.trace" in out and "served" in out and "nvme" in out
    with TraceReader(trace) as reader:
        assert reader.n_steps > 1 and reader.meta["mode"] == "served"


def test_serve_refusals(run_dir, tmp_path, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    with busy:
        assert main(["serve", "--run", str(run_dir), "--port", str(port)]) == 2
    assert "choose another --port" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path), "--port", "0"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["serve", "--run", str(run_dir), "--record", str(tmp_path / "no" / "x.trace")]) == 2
    assert "does not exist" in capsys.readouterr().err
