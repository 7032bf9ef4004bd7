"""The remote (Redis) tier against a real redis-server: byte-exact reads, refusals, resumable populate,
a server killed mid-read, and calibration."""

import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from engramtier.errors import EngramTierError
from engramtier.tiers.build import RandomRows
from engramtier.tiers.remote import RedisTier, calibrate_remote, populate_remote

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
N_ROWS = 5000
BLOCK_ROWS = 256  # small blocks so a read spans many hash tags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throwaway redis-server on a free loopback port, no persistence, in a tmp dir."""

    def __init__(self, tmp_path):
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path), "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        else:
            self.kill()
            pytest.fail(f"redis-server did not answer on {self.url}")
        client.close()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path):
    if not shutil.which(REDIS_SERVER):
        pytest.skip(f"no redis-server at {REDIS_SERVER}; install the Debian package redis-server to run these tests")
    srv = Server(tmp_path)
    yield srv
    srv.kill()


class SourceRows:
    """A table with ``read(ids, out)`` from seeded random rows; ``fail_after`` batches it raises (a crash)."""

    def __init__(self, fail_after=None):
        self.rows = RandomRows(N_ROWS, "bf16", 16, seed=5)
        self.n_table_rows, self.row_bytes = N_ROWS, self.rows.row_bytes
        self.manifest = self.rows.manifest
        self.fail_after, self.batches = fail_after, 0

    def read(self, ids, out):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise RuntimeError("source crashed")
        self.batches += 1
        self.rows.rows(np.asarray(ids, np.int64), out)

    def expected(self, ids):
        out = np.empty((len(ids), self.row_bytes), np.uint8)
        self.rows.rows(np.asarray(ids, np.int64), out)
        return out


def open_tier(server, fingerprint="fp-a", prefix="t"):
    return RedisTier(server.url, n_table_rows=N_ROWS, row_bytes=32, fingerprint=fingerprint, key_prefix=prefix,
                     block_rows=BLOCK_ROWS)


def test_round_trip_is_byte_exact_over_random_batches(server):
    source = SourceRows()
    with open_tier(server) as tier:
        assert populate_remote(source, tier, batch_rows=1000, progress=False) == N_ROWS
        rng = np.random.default_rng(0)
        for size in (1, 7, 300, 5000, 9000):  # 9000 > CHUNK_KEYS with duplicates
            ids = rng.integers(0, N_ROWS, size)
            out = np.empty((size, 32), np.uint8)
            tier.read(ids, out)
            np.testing.assert_array_equal(out, source.expected(ids))
        assert tier.contains(np.array([0, N_ROWS - 1])).all()
        stats = tier.stats()
        assert stats["rows_read"] == 1 + 7 + 300 + 5000 + 9000 and stats["populated_rows"] == N_ROWS
        assert tier.manifest["table"] == source.manifest


def test_rows_of_one_block_share_a_cluster_slot(server):
    with open_tier(server) as tier:
        keys = tier.keys(np.arange(BLOCK_ROWS * 2))
    slots = [key_slot(k) for k in keys]  # redis-py's own CRC16 hash-tag rule, as a Redis Cluster routes keys
    assert len(set(slots[:BLOCK_ROWS])) == 1 and len(set(slots[BLOCK_ROWS:])) == 1


def test_write_then_contains_and_missing_row_is_one_line(server):
    with open_tier(server) as tier:
        rows = np.arange(2 * 32, dtype=np.uint8).reshape(2, 32)
        tier.write(np.array([4000, 17]), rows)
        assert tier.contains(np.array([17, 18, 4000])).tolist() == [True, False, True]
        out = np.full((2, 32), 7, np.uint8)
        tier.read(np.array([17, 4000]), out)
        np.testing.assert_array_equal(out, rows[::-1])
        out[:] = 9
        with pytest.raises(EngramTierError, match=r"row 18 is missing .*populate_remote") as err:
            tier.read(np.array([17, 18]), out)
        assert "\n" not in str(err.value) and (out == 9).all()  # nothing written on failure


def test_fingerprint_and_shape_mismatch_are_refused(server):
    open_tier(server, fingerprint="fp-a").close()
    with pytest.raises(EngramTierError, match=r"fingerprint fp-a, but the model's is fp-b") as err:
        open_tier(server, fingerprint="fp-b")
    assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match=r"holds 5000 rows of 32 B"):
        RedisTier(server.url, n_table_rows=N_ROWS, row_bytes=64, fingerprint="fp-a", key_prefix="t",
                  block_rows=BLOCK_ROWS)
    with pytest.raises(EngramTierError, match="key_prefix"):
        RedisTier(server.url, n_table_rows=N_ROWS, row_bytes=32, fingerprint="fp-a", key_prefix="a{b}")


def test_populate_killed_then_resumed_writes_every_row_once(server):
    with open_tier(server) as tier:
        crashing = SourceRows(fail_after=3)
        with pytest.raises(RuntimeError, match="source crashed"):
            populate_remote(crashing, tier, batch_rows=700, progress=False)
        assert tier.populated_rows == 3 * 700
        assert tier.stats()["rows_written"] == 3 * 700
        resumed = SourceRows()
        assert populate_remote(resumed, tier, batch_rows=700, progress=False) == N_ROWS - 3 * 700
        assert resumed.batches == -(-(N_ROWS - 3 * 700) // 700)  # restarted exactly at the counter
        assert populate_remote(SourceRows(), tier, progress=False) == 0
        ids = np.arange(N_ROWS)
        out = np.empty((N_ROWS, 32), np.uint8)
        tier.read(ids, out)
        np.testing.assert_array_equal(out, resumed.expected(ids))
    client = redis.Redis.from_url(server.url)
    assert client.dbsize() == N_ROWS + 2  # every row once, the manifest and the counter


def test_populate_from_a_table_of_other_sizes_is_refused(server):
    with RedisTier(server.url, n_table_rows=N_ROWS + 1, row_bytes=32, fingerprint=None, key_prefix="other") as tier:
        with pytest.raises(EngramTierError, match=r"source has 5000 rows of 32 B, the remote tier 5001 rows"):
            populate_remote(SourceRows(), tier, progress=False)
        assert tier.populated_rows == 0


def test_unreachable_server_is_one_line(server):
    port = free_port()
    with pytest.raises(EngramTierError, match=rf"remote tier redis://127.0.0.1:{port} unreachable: .*Connection refused.*start the server"):
        RedisTier(f"redis://127.0.0.1:{port}", n_table_rows=10, row_bytes=8, fingerprint=None, timeout_s=1)


def test_server_killed_mid_read_is_one_line_and_out_untouched(server):
    with open_tier(server) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        stall = redis.Redis.from_url(server.url)
        threading.Thread(target=lambda: _ignore(stall.execute_command, "DEBUG", "SLEEP", "2"), daemon=True).start()
        time.sleep(0.2)  # the server is now asleep: the read below waits for its reply
        threading.Timer(0.3, server.kill).start()
        out = np.full((N_ROWS, 32), 3, np.uint8)
        with pytest.raises(EngramTierError, match=rf"remote tier {server.url} unreachable: .*\(during read\); start the server") \
                as err:
            tier.read(np.arange(N_ROWS), out)
        assert "\n" not in str(err.value) and (out == 3).all()


def _ignore(call, *args):
    try:
        call(*args)
    except redis.RedisError:
        pass


def test_calibrate_returns_a_positive_model(server):
    with open_tier(server) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        model = calibrate_remote(tier, sizes=(1, 64, 1024, 4096), repeats=3)
    assert model.name == "remote" and model.latency_s > 0 and model.bandwidth_Bps > 0
    assert model.fetch_seconds(4096, 32) > model.fetch_seconds(1, 32)
