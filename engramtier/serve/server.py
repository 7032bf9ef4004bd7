"""`engramtier serve`: a trained run's model behind an OpenAI-compatible HTTP server, its table in tiers."""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
import sys
import threading
from pathlib import Path

import uvicorn

from engramtier.argtypes import nonnegative_int, positive_int
from engramtier.errors import EngramTierError
from engramtier.outputs import check_output_file
from engramtier.serve.app import build_app
from engramtier.serve.commands import checked_hierarchy, format_ms, load_served_run, serving_options, table_opener, tier_table
from engramtier.serve.engine import ServeEngine
from engramtier.serve.metrics import ServeMetrics, histogram_quantile
from engramtier.tiers.records import sized_tiers
from engramtier.trace.schedule import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, Scheduler
from engramtier.trace.tracefile import save_trace

SERVE_EXAMPLES = """examples:
  engramtier serve --run runs/train-1                                    # http://127.0.0.1:8000
  engramtier serve --run runs/train-1 --hierarchy tiers.toml --port 8080 --max-queue 64
  engramtier serve --run runs/train-1 --record served.trace          # then: engramtier simulate
                                                                         #   --hierarchy tiers.toml served.trace
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The tutorial", "max_tokens": 32, "temperature": 0}'
  curl -sN localhost:8000/v1/completions -d '{"prompt": "Python is", "max_tokens": 32, "stream": true}'
  curl -s localhost:8000/metrics | grep '^engramtier:tier_hits'

Endpoints: POST /v1/completions (prompt, max_tokens, temperature, top_k, seed, stream), GET /v1/models,
GET /health, GET /metrics (Prometheus). Steps are cut by vLLM's continuous batching (--max-num-batched-tokens,
--max-num-seqs); each step is one TieredTable step. SIGTERM or Ctrl-C stops taking requests, finishes the
ones in flight, writes --record and the tier report, and exits 0.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a trained model over HTTP (OpenAI completions API, Prometheus /metrics), table in tiers",
        description="An OpenAI-compatible completions server for a run directory of `engramtier train`, its Engram "
        "table served by a TieredTable; continuous batching with chunked prefill; per-tier lookups, hits, rows and "
        "bytes read, step stall and step time at /metrics.",
        epilog=SERVE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", dest="run_dir", required=True, help="run directory of `engramtier train`")
    serving_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=nonnegative_int, default=8000, help="port (default 8000; 0: any free port, printed)")
    p.add_argument("--served-model-name", metavar="NAME", help="the model's name in the API (default: the run directory's name)")
    p.add_argument("--max-num-batched-tokens", type=positive_int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS, metavar="N",
                   help=f"token budget of a step (default {DEFAULT_MAX_NUM_BATCHED_TOKENS})")
    p.add_argument("--max-num-seqs", type=positive_int, default=DEFAULT_MAX_NUM_SEQS, metavar="N",
                   help=f"most requests running at once (default {DEFAULT_MAX_NUM_SEQS})")
    p.add_argument("--max-queue", type=nonnegative_int, metavar="N",
                   help="most requests waiting to be admitted; more get 429 (default: no limit)")
    p.add_argument("--record", metavar="FILE",
                   help="write the served steps as a trace file at shutdown (simulate replays it to the same hits)")
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    hierarchy = checked_hierarchy(args)
    if hierarchy is not None and hierarchy.lossy:
        raise EngramTierError(f"--hierarchy: tier '{hierarchy.lossy_tier}' drops late rows (on_late = 'drop'); serve "
                              "does not take such a tier yet: leave on_late out (engramtier generate --window-s takes it)")
    if args.record:
        check_output_file(args.record, "--record")
    sock = _listen(args.host, args.port)
    with sock:
        _serve(args, hierarchy, sock)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``, or one line saying why not (before the model loads)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise EngramTierError(f"--host {host}: {err.strerror}; give an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        advice = "choose another --port" if err.errno == errno.EADDRINUSE else "check --host and --port"
        raise EngramTierError(f"--host {host} --port {port}: {err.strerror}; {advice}") from None
    return sock


def _serve(args: argparse.Namespace, hierarchy, sock: socket.socket) -> None:
    loaded = load_served_run(args, args.run_dir)
    name = args.served_model_name or Path(args.run_dir).resolve().name
    table = table_opener(args, args.run_dir, hierarchy, loaded)(bool(args.record))
    with table:
        engine = ServeEngine(loaded.model, loaded.tokenizer, table, Scheduler(args.max_num_batched_tokens, args.max_num_seqs),
                             ServeMetrics(), device=table.device, max_queue=args.max_queue,
                             record_trace=bool(args.record), source={"kind": "served", "run": str(args.run_dir)})
        app = build_app(engine, name, loaded.tokenizer, loaded.model.config.max_seq_len)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        host, port = sock.getsockname()[:2]
        print(f"engramtier serve: {name} at http://{host}:{port} (OpenAI /v1/completions, /v1/models, /health, "
              f"/metrics); SIGTERM or Ctrl-C finishes the requests in flight and stops", flush=True)
        with _graceful_signals():
            server.run(sockets=[sock])
        if engine.failure is not None:
            raise EngramTierError(f"serve: the engine failed and the server stopped: {engine.failure}")
        stats = table.stats()
        if args.record:
            if not stats["steps"]:
                print("no request was served, so no trace was written", file=sys.stderr)
            else:
                trace, columns = engine.recorded()
                save_trace(trace, args.record, step_columns=columns)
                print(f"{args.record}: {trace.n_steps} served steps, {trace.n_rows} row ids")
    stall = [histogram_quantile(engine.metrics.step_stall, q) for q in (0.5, 0.99)]
    print(f"served {stats['steps']} steps; " + (
        f"stall per step p50 ~{format_ms(stall[0])}, p99 ~{format_ms(stall[1])} (in /metrics' buckets), "
        f"total {stats['stall_seconds']:.4f} s ({100 * stats['stall_fraction']:.2f}% of step time)" if stats["steps"] else "no steps"))
    print(tier_table(sized_tiers(stats["tiers"], stats["row_bytes"])))


@contextlib.contextmanager
def _graceful_signals():
    """SIGTERM and SIGINT only ask the server to stop: uvicorn finishes the requests in flight, then raises
    the signal again under the handler it found, which must not end the process before the trace and the
    report are written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

