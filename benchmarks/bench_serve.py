"""`engramtier serve` under load: 1, 8 and 32 concurrent streaming clients on loopback, each for a
bounded time, against one server (a subprocess, as it is deployed).

Each client sends greedy completions of a fixed length (``ignore_eos``: every request decodes
--max-tokens tokens) with prompts cut from the shipped sample text, back to back, until the level's
time is up. Measured per level, client side: output tokens/s, time to first token and inter-token
latency (p50, p99); server side, from the difference of two /metrics scrapes: each tier's hit rate
(hits / lookups) and the stall fraction (step stall seconds / step seconds).

    .venv/bin/python benchmarks/bench_serve.py [--run RUN] [--seconds 10] [--clients 1,8,32]

Prints JSON and saves benchmarks/results/serve.json. Without --run it trains the small sample model
first (kept under the benchmark's run directory, so a rerun can pass it as --run).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sample_model import add_model_options, model_for

from engramtier.rundir import RunDir
from engramtier.trace.sources import sample_text_dir

RESULTS = Path(__file__).parent / "results" / "serve.json"
HIERARCHY = """mode = "inclusive"
[[tier]]
name = "gpu"
capacity = 2000
policy = "lru"
model = "hbm"
[[tier]]
name = "dram"
capacity = 20000
policy = "s3fifo"
model = "dram"
[[tier]]
name = "nvme"
model = "nvme"
"""


def prompts(n: int, chars: int, seed: int) -> list[str]:
    """``n`` prompts of ``chars`` characters cut at random places from the shipped sample text."""
    text = " ".join(p.read_text(encoding="utf-8") for p in sorted(sample_text_dir().glob("*.txt")))
    starts = np.random.default_rng(seed).integers(0, len(text) - chars, n)
    return [text[s : s + chars] for s in starts]


def scrape(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {(s.name, *s.labels.values()): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def client(port: int, texts: list[str], max_tokens: int, until: float, out: dict) -> None:
    """Streamed completions back to back until ``until`` (at least one); appends TTFTs, inter-token gaps
    and tokens to ``out``."""
    i = 0
    while i == 0 or time.perf_counter() < until:
        body = {"prompt": texts[i % len(texts)], "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        i += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        sent = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        last = None
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                out["tokens"].append(chunk["usage"]["completion_tokens"])
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                (out["ttft"] if last is None else out["itl"]).append(now - (sent if last is None else last))
                last = now
        conn.close()


def level(port: int, n_clients: int, seconds: float, max_tokens: int, texts: list[str]) -> dict:
    """One load level: ``n_clients`` clients for ``seconds``; client latencies and the server's counters."""
    before = scrape(port)
    out = {"ttft": [], "itl": [], "tokens": []}
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(port, texts[c::n_clients], max_tokens, start + seconds, out))
               for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = scrape(port)
    delta = lambda *key: after.get(key, 0.0) - before.get(key, 0.0)  # noqa: E731
    tiers = sorted({k[1] for k in after if k[0] == "engramtier:tier_lookups_total"})
    p = lambda xs, q: round(float(np.percentile(xs, q)) * 1e3, 2) if xs else None  # noqa: E731
    return {
        "clients": n_clients, "seconds": round(wall, 2), "requests": len(out["tokens"]),
        "output_tokens_per_s": round(sum(out["tokens"]) / wall, 1),
        "ttft_ms": {"p50": p(out["ttft"], 50), "p99": p(out["ttft"], 99)},
        "itl_ms": {"p50": p(out["itl"], 50), "p99": p(out["itl"], 99)},
        "steps": int(delta("engramtier:step_seconds_count")),
        "hit_rate": {t: round(delta("engramtier:tier_hits_total", t) / max(delta("engramtier:tier_lookups_total", t), 1), 4)
                     for t in tiers},
        "stall_fraction": round(delta("engramtier:step_stall_seconds_sum") / max(delta("engramtier:step_seconds_sum"), 1e-12), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per load level")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens each request decodes")
    parser.add_argument("--prompt-chars", type=int, default=400, help="characters of each prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="the benchmark's run directory (default runs/bench-serve-TIME)")
    args = parser.parse_args()
    run = RunDir.create(args.out, "bench-serve", vars(args), None)
    model_dir, _, _ = model_for(args, run, seq_len=128)
    (run.path / "tiers.toml").write_text(HIERARCHY)
    server = subprocess.Popen(
        [sys.executable, "-m", "engramtier.cli", "serve", "--run", str(model_dir), "--port", "0", "--device", "cpu",
         "--hierarchy", str(run.path / "tiers.toml")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = int(server.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        texts = prompts(256, args.prompt_chars, args.seed)
        client(port, texts[:1], args.max_tokens, 0.0, {"ttft": [], "itl": [], "tokens": []})  # warm-up: kernels compile
        levels = [level(port, int(n), args.seconds, args.max_tokens, texts) for n in args.clients.split(",")]
    finally:
        server.terminate()
        server.communicate(timeout=120)
    result = {"machine": f"{os.cpu_count()}-core VM, CPU", "model": str(model_dir), "hierarchy": HIERARCHY,
              "max_tokens": args.max_tokens, "prompt_chars": args.prompt_chars, "levels": levels}
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
