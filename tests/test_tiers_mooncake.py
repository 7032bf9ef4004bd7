"""The remote tier on Mooncake Store against a real master and store client: byte-exact reads, refusals,
resumable populate, a master killed under a reader, and calibration. Skipped without the package."""

import time

import numpy as np
import pytest
from mooncake_fixture import MooncakeStore, free_ports, need_mooncake
from remote_source import N_ROWS, ROW_BYTES, SourceRows
from zipf import zipf_keys

from engramtier.errors import EngramTierError
from engramtier.tiers.lmdb_table import build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.open import open_table
from engramtier.tiers.remote import RemoteDamaged, RemoteUnavailable, calibrate_remote, mooncake, open_remote, populate_remote

BLOCK_ROWS = 256  # small blocks so a read spans many objects


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (starting one takes about a second); each test uses its own key prefix."""
    need_mooncake()
    with MooncakeStore(tmp_path_factory.mktemp("mooncake")) as running:
        yield running


@pytest.fixture(scope="module")
def table(store):
    """A tier on the shared store, populated from `SourceRows` once (closing a Mooncake client takes a second)."""
    with open_tier(store, "table") as tier:
        assert populate_remote(SourceRows(), tier, batch_rows=1000, progress=False) == N_ROWS
        yield tier


@pytest.fixture
def own_store(tmp_path):
    """A store of the test's own, for a test that kills its master."""
    need_mooncake()
    with MooncakeStore(tmp_path) as running:
        yield running


def open_tier(store, prefix, fingerprint="fp-a", **options):
    storage = store.storage(key_prefix=prefix, block_rows=BLOCK_ROWS, **options)
    return open_remote(storage, n_table_rows=N_ROWS, row_bytes=ROW_BYTES, fingerprint=fingerprint)


def test_round_trip_is_byte_exact_over_random_batches(table):
    source = SourceRows()
    before = table.stats()
    rng = np.random.default_rng(0)
    for size in (1, 7, 255, 300, 5000, 9000):  # 9000 > the table: duplicates, every block
        ids = rng.integers(0, N_ROWS, size)
        out = np.empty((size, ROW_BYTES), np.uint8)
        table.read(ids, out)
        np.testing.assert_array_equal(out, source.expected(ids))
    ranges = table.stats()["ranges_read"]
    ids = np.arange(N_ROWS)[::-1]
    out = np.empty((N_ROWS, ROW_BYTES), np.uint8)
    table.read(ids, out)
    np.testing.assert_array_equal(out, source.expected(ids))
    stats = table.stats()
    assert stats["ranges_read"] - ranges == table.n_blocks  # consecutive rows: one range per block
    assert stats["rows_read"] - before["rows_read"] == 1 + 7 + 255 + 300 + 5000 + 9000 + N_ROWS
    assert stats["backend"] == "mooncake" and table.populated_rows == N_ROWS
    assert table.manifest["table"] == source.manifest
    assert table.contains(np.array([0, N_ROWS - 1])).all()


def test_write_then_contains_and_missing_block_is_one_line(store):
    with open_tier(store, "partial") as tier:
        rows = np.arange(BLOCK_ROWS * ROW_BYTES, dtype=np.uint32).astype(np.uint8).reshape(BLOCK_ROWS, ROW_BYTES)
        tier.write(np.arange(BLOCK_ROWS), rows)
        assert tier.contains(np.array([0, BLOCK_ROWS - 1, BLOCK_ROWS])).tolist() == [True, True, False]
        out = np.full((2, ROW_BYTES), 7, np.uint8)
        tier.read(np.array([17, 4]), out)
        np.testing.assert_array_equal(out, rows[[17, 4]])
        out[:] = 9
        missing = r"row 300 is missing \(block 1 of prefix 'partial' is not in the store.*populate"
        with pytest.raises(EngramTierError, match=missing) as err:
            tier.read(np.array([17, 300]), out)
        assert "\n" not in str(err.value) and (out == 9).all()  # nothing written on failure
        with pytest.raises(EngramTierError, match="writes go by whole blocks"):
            tier.write(np.array([1]), rows[:1])


def test_a_damaged_block_is_refused_and_out_untouched(store):
    source = SourceRows()
    with open_tier(store, "damaged") as tier:
        populate_remote(source, tier, batch_rows=1000, progress=False)
        key = "damaged/block/1"
        stored = np.frombuffer(tier._store.get(key), np.uint8).reshape(BLOCK_ROWS, tier.stored_row_bytes).copy()
        stored[:, :8] = 0xA5  # the first 8 bytes of every row of block 1
        assert tier._store.upsert(key, stored.reshape(-1), tier._config) == 0
        out = np.full((3, ROW_BYTES), 9, np.uint8)
        with pytest.raises(RemoteDamaged, match=r"1 of 3 rows read fail their checksum \(first: row 300, "
                                                         r"block 1 of prefix 'damaged'\)") as err:
            tier.read(np.array([5, 300, 600]), out)
        assert "\n" not in str(err.value) and (out == 9).all()
        tier.read(np.array([5, 600, 4999]), out)  # the other blocks still read
        np.testing.assert_array_equal(out, source.expected([5, 600, 4999]))


def test_fingerprint_and_shape_mismatch_are_refused(store, table):
    with pytest.raises(EngramTierError, match=r"fingerprint fp-a, but the model's is fp-b") as err:
        open_tier(store, "table", fingerprint="fp-b")
    assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match=r"holds 5000 rows of 32 B in blocks of 256") as err:
        open_remote(store.storage(key_prefix="table", block_rows=BLOCK_ROWS), n_table_rows=N_ROWS, row_bytes=64,
                    fingerprint="fp-a")
    assert "\n" not in str(err.value)


def test_populate_killed_then_resumed_writes_every_block_once(store):
    with open_tier(store, "resume") as tier:
        with pytest.raises(RuntimeError, match="source crashed"):
            populate_remote(SourceRows(fail_after=3), tier, batch_rows=2 * BLOCK_ROWS, progress=False)
        assert tier.populated_rows == 3 * 2 * BLOCK_ROWS
        resumed = SourceRows()
        assert populate_remote(resumed, tier, batch_rows=2 * BLOCK_ROWS, progress=False) == N_ROWS - 3 * 2 * BLOCK_ROWS
        assert tier.stats()["rows_written"] == N_ROWS  # over both calls: every block once
    with open_tier(store, "resume") as again:  # a fresh client finds every block committed
        assert populate_remote(SourceRows(), again, progress=False) == 0
        ids = np.arange(N_ROWS)
        out = np.empty((N_ROWS, ROW_BYTES), np.uint8)
        again.read(ids, out)
        np.testing.assert_array_equal(out, resumed.expected(ids))


def test_master_killed_read_is_one_line_and_out_untouched(own_store):
    with open_tier(own_store, "killed") as tier:
        populate_remote(SourceRows(), tier, progress=False)
        out = np.empty((100, ROW_BYTES), np.uint8)
        tier.read(np.arange(100), out)
        own_store.kill_master()
        out[:] = 3
        for _ in range(2):  # the second read is answered at once: the master is probed while it is lost
            start = time.monotonic()
            with pytest.raises(RemoteUnavailable, match=rf"remote tier mooncake://{own_store.master} unreachable: "
                                                        r".*during read\); start") as err:
                tier.read(np.arange(0, N_ROWS, 50), out)
            assert "\n" not in str(err.value) and (out == 3).all()
        assert time.monotonic() - start < 1.0


def test_unreachable_master_is_one_line():
    need_mooncake()
    master = f"127.0.0.1:{free_ports()[0]}"
    start = time.monotonic()
    with pytest.raises(RemoteUnavailable, match=rf"mooncake://{master} unreachable: the master at {master} does not "
                                                r"answer .*start mooncake_master") as err:
        open_remote({"backend": "mooncake", "master": master}, n_table_rows=10, row_bytes=8, fingerprint=None)
    assert "\n" not in str(err.value) and time.monotonic() - start < 5  # not Mooncake's 90 s of retries


def test_open_remote_builds_the_tier_and_refuses_bad_options(store):
    with open_remote(store.storage(key_prefix="opts", replicas=1, protocol="tcp", local_buffer_size=1 << 20),
                     n_table_rows=N_ROWS, row_bytes=ROW_BYTES, fingerprint=None) as tier:
        assert isinstance(tier, mooncake.MooncakeTier) and tier.block_rows == mooncake.BLOCK_ROWS
    with pytest.raises(EngramTierError, match=r"unknown storage option 'replica': did you mean 'replicas'"):
        open_remote(store.storage(replica=2), n_table_rows=N_ROWS, row_bytes=ROW_BYTES, fingerprint=None)
    with pytest.raises(EngramTierError, match=r"local_buffer_size \(1024\) must hold a block .*lower block_rows"):
        open_tier(store, "opts2", local_buffer_size=1024)
    with pytest.raises(EngramTierError, match=r"master must be the mooncake_master's 'host:port'"):
        open_remote(store.storage(master="localhost"), n_table_rows=N_ROWS, row_bytes=ROW_BYTES, fingerprint=None)


def test_calibrate_returns_a_positive_model(table):
    model = calibrate_remote(table, sizes=(1, 64, 1024, 4096), repeats=3)
    assert model.name == "remote" and model.latency_s > 0 and model.bandwidth_Bps > 0
    assert model.fetch_seconds(4096, ROW_BYTES) > model.fetch_seconds(1, ROW_BYTES)


def test_without_the_package_the_tier_says_what_to_install(monkeypatch):
    monkeypatch.setattr(mooncake, "MooncakeDistributedStore", None)
    monkeypatch.setattr(mooncake, "IMPORT_ERROR", "No module named 'mooncake'")
    message = (r"^remote tier: backend 'mooncake' needs the package mooncake-transfer-engine-non-cuda and Debian's "
               r"libibverbs1 \(pip install .*\); it does not import: No module named 'mooncake'$")
    with pytest.raises(EngramTierError, match=message):
        open_remote({"backend": "mooncake"}, n_table_rows=10, row_bytes=8, fingerprint=None)


def test_a_tiered_table_serves_an_lmdb_table_from_mooncake(store, tmp_path):
    path = tmp_path / "table.lmdb"
    build_lmdb_table(SourceRows().rows, path, progress=False)
    with NvmeTier(path) as source, open_tier(store, "served", fingerprint=source.manifest["fingerprint"]) as tier:
        populate_remote(source, tier, progress=False)
    hierarchy = {"tier": [{"name": "dram", "capacity": 200, "policy": "lru", "model": "dram"},
                          {"name": "remote", "model": "remote",
                           "storage": store.storage(key_prefix="served", block_rows=BLOCK_ROWS)}]}
    rng = np.random.default_rng(2)
    with open_table(hierarchy, path, device="cpu") as table:
        for _ in range(4):
            ids = zipf_keys(500, N_ROWS, 1.2, rng)
            np.testing.assert_array_equal(table.prefetch(ids).wait().numpy(), SourceRows().expected(ids))
        table.finish()
        dram, remote = table.stats()["tiers"]
    assert dram["hits"] > 0 and remote["remote"]["backend"] == "mooncake" and remote["rows_read"] > 0
