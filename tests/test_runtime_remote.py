"""A TieredTable whose backing store is a real redis-server, killed mid-run: each `on_failure` rule
(error, retry across a restart, fallback to the local LMDB table) does what it says, and no row served
is ever other than the table's."""

import threading
import time

import numpy as np
import pytest
import redis
from redis_servers import Server, need_redis, server  # noqa: F401 (fixtures)

from engramtier.errors import EngramTierError
from engramtier.tiers.build import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.redis_store import RedisTier
from engramtier.tiers.remote import RemoteUnavailable, populate_remote
from engramtier.tiers.tiered import TieredTable

N_ROWS, BLOCK_ROWS, STEPS, KILL_AT = 3000, 256, 8, 3


@pytest.fixture(scope="module")
def lmdb_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote-runtime") / "table.lmdb"
    build_lmdb_table(RandomRows(N_ROWS, "bf16", 16, seed=3), path, progress=False)
    return path


@pytest.fixture(scope="module")
def table_rows(lmdb_table):
    """Every row of the LMDB table, read once (an LMDB file opens once per process: the fallback holds it)."""
    with NvmeTier(lmdb_table) as truth:
        rows = np.empty((N_ROWS, truth.row_bytes), np.uint8)
        truth.read(np.arange(N_ROWS), rows)
    return rows


def populate(url, table_path, prefix="rt"):
    with NvmeTier(table_path) as source, RedisTier(url, n_table_rows=N_ROWS, row_bytes=source.row_bytes,
                                                  fingerprint=source.manifest["fingerprint"], key_prefix=prefix,
                                                  block_rows=BLOCK_ROWS) as tier:
        populate_remote(source, tier, progress=False)


def hierarchy(url, **rule):
    storage = {"backend": "redis", "url": url, "key_prefix": "rt", "block_rows": BLOCK_ROWS, "timeout_s": 1, **rule}
    return {"mode": "inclusive", "tier": [
        {"name": "dram", "capacity": 300, "policy": "lru", "model": "dram"},
        {"name": "remote", "model": "remote", "storage": storage},
    ]}


def steps():
    rng = np.random.default_rng(11)
    return [np.minimum(rng.zipf(1.2, 600) - 1, N_ROWS - 1) for _ in range(STEPS)]


def run(table, table_rows, on_step=lambda step: None):
    """Feed every step, checking each one's rows against the table's; returns the store's statistics."""
    for step, ids in enumerate(steps()):
        on_step(step)
        np.testing.assert_array_equal(table.prefetch(ids).wait().numpy(), table_rows[ids])
    table.finish()
    return table.stats()["tiers"][-1]


def test_error_rule_stops_with_one_line_and_the_store_is_intact(tmp_path, lmdb_table, table_rows):
    need_redis()
    persistent = Server(tmp_path, persist=True)
    try:
        populate(persistent.url, lmdb_table)
        table = TieredTable.open(hierarchy(persistent.url), lmdb_table, device="cpu")
        with table, pytest.raises(RemoteUnavailable, match=rf"remote tier {persistent.url} unreachable: .*start the "
                                                           "server") as err:
            run(table, table_rows, on_step=lambda step: step == KILL_AT and persistent.kill())
        assert "\n" not in str(err.value)
        with pytest.raises(EngramTierError, match="closed"):
            table.prefetch(steps()[0])
        persistent.restart()  # every row is still there, byte for byte
        with NvmeTier(lmdb_table) as truth, RedisTier(persistent.url, n_table_rows=N_ROWS, row_bytes=truth.row_bytes,
                                                      fingerprint=None, key_prefix="rt", block_rows=BLOCK_ROWS) as tier:
            rows = np.empty_like(table_rows)
            tier.read(np.arange(N_ROWS), rows)
            np.testing.assert_array_equal(rows, table_rows)
            assert populate_remote(truth, tier, progress=False) == 0
    finally:
        persistent.kill()


def test_retry_rule_rides_out_a_restart(tmp_path, lmdb_table, table_rows):
    need_redis()
    persistent = Server(tmp_path, persist=True)
    try:
        populate(persistent.url, lmdb_table)

        def kill_and_restart(step):
            if step == KILL_AT:
                persistent.kill()
                threading.Timer(0.5, persistent.restart).start()

        with TieredTable.open(hierarchy(persistent.url, on_failure="retry", retry_s=20), lmdb_table,
                              device="cpu") as table:
            store = run(table, table_rows, on_step=kill_and_restart)
        facts = store["remote"]
        assert facts["failures"] >= 1 and facts["retries"] >= 1 and facts["waited_s"] >= 0.3
        assert facts["fallback_rows"] == 0 and store["rows_read"] > 0
    finally:
        persistent.kill()


def test_retry_rule_gives_up_after_retry_s(server, lmdb_table, table_rows):
    populate(server.url, lmdb_table)
    with TieredTable.open(hierarchy(server.url, on_failure="retry", retry_s=0.3), lmdb_table, device="cpu") as table:
        start = time.monotonic()
        with pytest.raises(RemoteUnavailable, match=r"still unreachable after retrying for 0.3 s"):
            run(table, table_rows, on_step=lambda step: step == KILL_AT and server.kill())
        assert time.monotonic() - start < 10


def test_fallback_rule_serves_the_local_table_then_returns_to_the_store(tmp_path, lmdb_table, table_rows):
    need_redis()
    persistent = Server(tmp_path, persist=True)
    try:
        populate(persistent.url, lmdb_table)

        def outage(step):
            if step == KILL_AT:
                persistent.kill()
            if step == KILL_AT + 2:
                persistent.restart()
                time.sleep(0.3)  # past retry_s: the next read tries the store again

        with TieredTable.open(hierarchy(persistent.url, on_failure="fallback", retry_s=0.2), lmdb_table,
                              device="cpu") as table:
            store = run(table, table_rows, on_step=outage)
            remote_rows = table.store.primary.rows_read
        facts = store["remote"]
        assert facts["failures"] >= 1 and facts["fallback_rows"] > 0
        assert remote_rows + facts["fallback_rows"] == store["rows_read"]
        assert table.store.primary.reads > KILL_AT  # back on the store after the restart
    finally:
        persistent.kill()


def test_fallback_must_be_the_table_the_store_was_populated_from(server, lmdb_table, tmp_path):
    populate(server.url, lmdb_table)
    other = tmp_path / "other.lmdb"
    build_lmdb_table(RandomRows(N_ROWS, "bf16", 16, seed=4), other, progress=False)
    with pytest.raises(EngramTierError, match="not the table the store was populated from") as err:
        TieredTable.open(hierarchy(server.url, on_failure="fallback"), other, device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match=r"on_failure must be one of error, retry, fallback, got 'ignore'"):
        TieredTable.open(hierarchy(server.url, on_failure="ignore"), lmdb_table, device="cpu")
