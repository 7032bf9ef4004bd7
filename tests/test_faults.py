"""kill -9 at random points of `trace`, `build-table` and `remote populate`, through the real command line.

After each kill, whatever is on disk (or in the store) is either refused by its reader in one line or
complete and correct; rerunning the same command then finishes, and the result is byte-identical to an
uninterrupted run. The kill points are drawn (seeded) over the measured length of an uninterrupted run,
so they land during start-up, mid-write and near the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import redis
from redis_servers import server  # noqa: F401 (fixture)

from engramtier.errors import EngramTierError
from engramtier.tiers.build import RandomRows
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import open_remote

ENGRAMTIER = [sys.executable, "-m", "engramtier.cli"]
KILLS = 3


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGRAMTIER, *argv], capture_output=True, text=True, timeout=300)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = run(argv)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def killed_runs(argv: list[str], seconds: float, started, seed: int):
    """Start ``argv`` KILLS times; once ``started()`` (its output appeared), SIGKILL it after a drawn
    fraction of the rest of ``seconds`` (an uninterrupted run's length). Yields after each kill."""
    rng = np.random.default_rng(seed)
    for fraction in rng.uniform(0.05, 0.9, KILLS):
        begin = time.perf_counter()
        proc = subprocess.Popen([*ENGRAMTIER, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not started() and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(fraction * max(seconds - (time.perf_counter() - begin), 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        yield


def one_line_refusal(argv: list[str]) -> None:
    done = run(argv)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_trace_killed_then_rerun_is_byte_identical(tmp_path):
    argv = ["--synthetic-zipf", "1.1", "--vocab", "50000", "--tokens", "600000", "--table-size", "100003",
            "--layers", "1,2", "--heads", "4", "--chunk-rows", "65536", "--quiet"]
    reference = tmp_path / "reference.trace"
    seconds = timed(["trace", *argv, "-o", str(reference)])
    out = tmp_path / "killed.trace"
    started = lambda: bool(list(tmp_path.glob("killed.trace*")))  # noqa: E731
    interrupted = 0
    for _ in killed_runs(["trace", *argv, "-o", str(out)], seconds, started, seed=1):
        if out.exists():  # renamed into place only once complete
            assert out.read_bytes() == reference.read_bytes()
        else:
            interrupted += 1
            one_line_refusal(["stats", str(out)])
        for part in tmp_path.glob("killed.trace.part*"):  # a half-written file is never read as a trace
            if part.read_bytes() != reference.read_bytes():
                one_line_refusal(["stats", str(part)])
    assert interrupted >= 1
    out.unlink(missing_ok=True)
    assert run(["trace", *argv, "-o", str(out)]).returncode == 0
    assert out.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.glob("killed.trace.part*"))


ROWS, DIM, SEED = 120_000, 32, 7
BUILD = ["--random", "--rows", str(ROWS), "--format", "bf16", "--dim", str(DIM), "--seed", str(SEED),
         "--compression", "zstd:1", "--page-kib", "4", "--batch-pages", "4", "--quiet"]


def table_rows(path) -> np.ndarray:
    with NvmeTier(path) as tier:
        out = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
        tier.read(np.arange(tier.n_table_rows), out)
        return out


def test_build_table_killed_then_rerun_has_every_row(tmp_path):
    reference = tmp_path / "reference"
    seconds = timed(["build-table", str(reference), *BUILD])
    want = np.empty((ROWS, 2 * DIM), np.uint8)
    RandomRows(ROWS, "bf16", DIM, SEED).rows(np.arange(ROWS), want)
    np.testing.assert_array_equal(table_rows(reference), want)
    out = tmp_path / "killed"
    interrupted = 0
    for _ in killed_runs(["build-table", str(out), *BUILD], seconds, out.exists, seed=2):
        try:  # an unfinished build is refused, never read as a table
            np.testing.assert_array_equal(table_rows(out), want)
        except EngramTierError as err:
            interrupted += 1
            assert "\n" not in str(err)
    assert interrupted >= 1
    assert run(["build-table", str(out), *BUILD]).returncode == 0
    np.testing.assert_array_equal(table_rows(out), want)
    with NvmeTier(out) as built, NvmeTier(reference) as ref:
        assert built.manifest == ref.manifest


def test_remote_populate_killed_then_rerun_has_every_row(server, tmp_path):  # noqa: F811
    table = tmp_path / "table"
    assert run(["build-table", str(table), *BUILD]).returncode == 0
    want = table_rows(table)
    storage = {"backend": "redis", "url": server.url, "key_prefix": "faults", "block_rows": 1024}
    argv = ["remote", "populate", "--table", str(table), "--batch-rows", "4096", "--quiet", "--storage",
            *(f"{k}={v}" for k, v in storage.items())]
    with NvmeTier(table) as t:
        fingerprint = t.manifest["fingerprint"]

    def store_rows() -> np.ndarray:
        with open_remote(storage, n_table_rows=ROWS, row_bytes=2 * DIM, fingerprint=fingerprint) as tier:
            out = np.empty_like(want)
            tier.read(np.arange(ROWS), out)
            return out

    client = redis.Redis.from_url(server.url)
    seconds = timed(argv)
    client.flushall()
    interrupted = 0
    for _ in killed_runs(argv, seconds, lambda: client.dbsize() > 0, seed=3):
        try:  # rows of a block never committed are refused as missing, never returned as garbage
            np.testing.assert_array_equal(store_rows(), want)
        except EngramTierError as err:
            interrupted += 1
            assert "never populated" in str(err), err
    assert interrupted >= 1
    done = run(argv)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(store_rows(), want)
    assert run(argv).returncode == 0  # a finished store: the rerun writes nothing and changes nothing
    np.testing.assert_array_equal(store_rows(), want)
