"""The remote tier on Redis against a real redis-server and a real 3-shard Redis Cluster: byte-exact reads,
refusals, block-wise resumable populate, a server killed mid-read, and calibration."""

import threading
import time

import numpy as np
import pytest
import redis
from redis.crc import key_slot
from redis_servers import free_port
from remote_source import N_ROWS, SourceRows

from engramtier.errors import EngramTierError
from engramtier.tiers.remote import RemoteUnavailable, calibrate_remote, open_remote, populate_remote
from engramtier.tiers.remote.redis import RedisTier

BLOCK_ROWS = 256  # small blocks so a read spans many hash tags; 20 blocks, the last of 136 rows
N_BLOCKS = -(-N_ROWS // BLOCK_ROWS)


def open_tier(server, fingerprint="fp-a", prefix="t", cluster=False):
    return RedisTier(server.url, n_table_rows=N_ROWS, row_bytes=32, fingerprint=fingerprint, key_prefix=prefix,
                     block_rows=BLOCK_ROWS, cluster=cluster)


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_round_trip_is_byte_exact_over_random_batches(kind, request):
    store = request.getfixturevalue(kind)
    source = SourceRows()
    with open_tier(store, cluster=kind == "cluster") as tier:
        assert populate_remote(source, tier, batch_rows=1000, progress=False) == N_ROWS
        rng = np.random.default_rng(0)
        for size in (1, 7, 300, 5000, 9000):  # 9000 > CHUNK_KEYS with duplicates
            ids = rng.integers(0, N_ROWS, size)
            out = np.empty((size, 32), np.uint8)
            tier.read(ids, out)
            np.testing.assert_array_equal(out, source.expected(ids))
        assert tier.contains(np.array([0, N_ROWS - 1])).all() and tier.populated_rows == N_ROWS
        stats = tier.stats()
        assert stats["rows_read"] == 1 + 7 + 300 + 5000 + 9000 and stats["rows_written"] == N_ROWS
        assert tier.manifest["table"] == source.manifest
    if kind == "cluster":  # the blocks really spread over the shards, each holding whole blocks
        sizes = [redis.Redis(port=node.port).dbsize() for node in store.nodes]
        assert all(size > 0 for size in sizes) and sum(sizes) == N_ROWS + N_BLOCKS + 1


def test_cluster_shard_killed_mid_run_is_unavailable_and_out_untouched(cluster):
    with open_tier(cluster, cluster=True) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        cluster.nodes[1].kill()
        out = np.full((N_ROWS, 32), 3, np.uint8)
        with pytest.raises(RemoteUnavailable, match=r"remote tier redis://127.0.0.1:\d+ \(cluster\) unreachable") as err:
            tier.read(np.arange(N_ROWS), out)
        assert "\n" not in str(err.value) and (out == 3).all()


def test_rows_of_one_block_share_a_cluster_slot(server):
    with open_tier(server) as tier:
        keys = tier.keys(np.arange(BLOCK_ROWS * 2))
    slots = [key_slot(k) for k in keys]  # redis-py's own CRC16 hash-tag rule, as a Redis Cluster routes keys
    assert len(set(slots[:BLOCK_ROWS])) == 1 and len(set(slots[BLOCK_ROWS:])) == 1


def test_whole_block_writes_then_contains_and_missing_row_is_one_line(server):
    with open_tier(server) as tier:
        rows = np.random.default_rng(1).integers(0, 256, (BLOCK_ROWS, 32), dtype=np.uint8)
        last = np.arange(19 * BLOCK_ROWS, N_ROWS)  # the short last block
        tier.write(np.arange(BLOCK_ROWS), rows)
        tier.write(last, rows[: last.size])
        assert tier.contains(np.array([17, BLOCK_ROWS, N_ROWS - 1])).tolist() == [True, False, True]
        assert tier.populated_rows == BLOCK_ROWS + last.size
        out = np.full((2, 32), 7, np.uint8)
        tier.read(np.array([N_ROWS - 1, 17]), out)
        np.testing.assert_array_equal(out, rows[[last.size - 1, 17]])
        out[:] = 9
        with pytest.raises(EngramTierError, match=rf"row {BLOCK_ROWS + 1} is missing \(block 1 .*remote populate") as err:
            tier.read(np.array([17, BLOCK_ROWS + 1]), out)
        assert "\n" not in str(err.value) and (out == 9).all()  # nothing written on failure
        with pytest.raises(EngramTierError, match=r"writes go by whole blocks of 256 rows"):
            tier.write(np.array([4000, 17]), rows[:2])


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


@pytest.mark.parametrize("kind", ["server", "cluster"])
def test_populate_killed_then_resumed_writes_every_row_once(kind, request):
    store = request.getfixturevalue(kind)
    batch = 3 * BLOCK_ROWS
    with open_tier(store, cluster=kind == "cluster") as tier:
        crashing = SourceRows(fail_after=3)
        with pytest.raises(RuntimeError, match="source crashed"):
            populate_remote(crashing, tier, batch_rows=batch, progress=False)
        assert tier.populated_rows == 3 * batch and tier.stats()["rows_written"] == 3 * batch
        resumed = SourceRows()
        assert populate_remote(resumed, tier, batch_rows=batch, progress=False) == N_ROWS - 3 * batch
        assert resumed.batches == -(-(N_BLOCKS - 9) // 3)  # restarted exactly at the first missing block
        assert populate_remote(SourceRows(), tier, progress=False) == 0
        ids = np.arange(N_ROWS)
        out = np.empty((N_ROWS, 32), np.uint8)
        tier.read(ids, out)
        np.testing.assert_array_equal(out, resumed.expected(ids))
    nodes = store.nodes if kind == "cluster" else [store]
    assert sum(redis.Redis(port=n.port).dbsize() for n in nodes) == N_ROWS + N_BLOCKS + 1  # rows, marks, manifest


def test_populate_fills_exactly_the_blocks_the_store_lacks(server):
    with open_tier(server) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        client = redis.Redis.from_url(server.url)
        client.delete(tier._done_key(5), *tier.keys(np.arange(5 * BLOCK_ROWS, 6 * BLOCK_ROWS)))
    with open_tier(server) as tier:
        assert not tier.contains(np.array([5 * BLOCK_ROWS]))[0] and tier.populated_rows == N_ROWS - BLOCK_ROWS
        source = SourceRows()
        assert populate_remote(source, tier, progress=False) == BLOCK_ROWS and source.batches == 1
        assert tier.populated_rows == N_ROWS


def test_populate_from_a_table_of_other_sizes_is_refused(server):
    with RedisTier(server.url, n_table_rows=N_ROWS + 1, row_bytes=32, fingerprint=None, key_prefix="other") as tier:
        with pytest.raises(EngramTierError, match=r"source has 5000 rows of 32 B, the remote tier 5001 rows"):
            populate_remote(SourceRows(), tier, progress=False)
        assert tier.populated_rows == 0


def test_unreachable_server_is_one_line(server):
    port = free_port()
    unreachable = rf"remote tier redis://127.0.0.1:{port} unreachable: .*Connection refused.*start the server"
    with pytest.raises(RemoteUnavailable, match=unreachable):
        RedisTier(f"redis://127.0.0.1:{port}", n_table_rows=10, row_bytes=8, fingerprint=None, timeout_s=1)


def test_server_killed_mid_read_is_one_line_and_out_untouched(server):
    with open_tier(server) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        stall = redis.Redis.from_url(server.url)
        threading.Thread(target=lambda: _ignore(stall.execute_command, "DEBUG", "SLEEP", "2"), daemon=True).start()
        time.sleep(0.2)  # the server is now asleep: the read below waits for its reply
        threading.Timer(0.3, server.kill).start()
        out = np.full((N_ROWS, 32), 3, np.uint8)
        with pytest.raises(RemoteUnavailable, match=rf"remote tier {server.url} unreachable: .*\(during read\); start the server") \
                as err:
            tier.read(np.arange(N_ROWS), out)
        assert "\n" not in str(err.value) and (out == 3).all()


def _ignore(call, *args):
    try:
        call(*args)
    except redis.RedisError:
        pass


def test_open_remote_builds_the_backend_and_refuses_unknown_options(server):
    storage = {"backend": "redis", "url": server.url, "key_prefix": "o", "block_rows": BLOCK_ROWS}
    with open_remote(storage, n_table_rows=N_ROWS, row_bytes=32, fingerprint="fp") as tier:
        assert isinstance(tier, RedisTier) and tier.key_prefix == "o" and tier.block_rows == BLOCK_ROWS
    with pytest.raises(EngramTierError, match=r"storage: unknown storage option 'urll'.*did you mean 'url'"):
        open_remote({"backend": "redis", "urll": server.url}, n_table_rows=N_ROWS, row_bytes=32, fingerprint=None)
    with pytest.raises(EngramTierError, match=r"backend must be one of redis, mooncake, got 'memcached'"):
        open_remote({"backend": "memcached"}, n_table_rows=N_ROWS, row_bytes=32, fingerprint=None)


def test_calibrate_returns_a_positive_model(server):
    with open_tier(server) as tier:
        populate_remote(SourceRows(), tier, progress=False)
        model = calibrate_remote(tier, sizes=(1, 64, 1024, 4096), repeats=3)
    assert model.name == "remote" and model.latency_s > 0 and model.bandwidth_Bps > 0
    assert model.fetch_seconds(4096, 32) > model.fetch_seconds(1, 32)
