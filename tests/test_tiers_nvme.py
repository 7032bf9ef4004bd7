"""The nvme (LMDB) tier: byte-exact reads against the source, layout, checksums, and every refusal."""

import json
import shutil
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest
import torch

from engramtier.errors import EngramTierError
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table, load_profile, page_rows_for
from engramtier.tiers.nvme import DATA_FILE, NvmeTier, drop_page_cache
from engramtier.tiers.pages import PAGE_KEY, Compression

N_ROWS = 3000


@pytest.fixture(scope="module")
def source():
    return RandomRows(N_ROWS, "bf16", 16, seed=11)


def source_rows(source, ids):
    out = np.empty((len(ids), source.row_bytes), np.uint8)
    source.rows(np.asarray(ids, np.int64), out)
    return out


@pytest.fixture(scope="module")
def tables(tmp_path_factory, source):
    """One table per layout: plain, zstd, zstd-dict, and frequency-ordered by a profile."""
    root = tmp_path_factory.mktemp("tables")
    profile = np.random.default_rng(2).zipf(1.3, N_ROWS).astype(float)
    made = {}
    for name, kwargs in {
        "none": {}, "zstd": {"compression": "zstd:3"}, "zstd-dict": {"compression": "zstd-dict"},
        "profiled": {"profile": profile, "compression": "zstd:1"}, "profiled-raw": {"profile": profile},
    }.items():
        build_lmdb_table(source, root / name, page_kib=4, progress=False, **kwargs)
        made[name] = root / name
    made["profile"] = profile
    return made


@pytest.mark.parametrize("layout", ["none", "zstd", "zstd-dict", "profiled", "profiled-raw"])
@pytest.mark.parametrize("readers", [1, 3])
def test_reads_are_byte_exact(tables, source, layout, readers):
    with NvmeTier(tables[layout], readers=readers) as tier:
        ids = np.random.default_rng(readers).integers(0, N_ROWS, 2500)  # unordered, with duplicates
        out = np.empty((ids.size, source.row_bytes), np.uint8)
        for _ in range(2):  # the second read takes page addresses from the cache
            out.fill(0)
            tier.read(ids, out)
            np.testing.assert_array_equal(out, source_rows(source, ids))
        everything = torch.empty((N_ROWS, source.row_bytes), dtype=torch.uint8)
        tier.read(torch.arange(N_ROWS), everything)
        np.testing.assert_array_equal(everything.numpy(), source_rows(source, np.arange(N_ROWS)))
        tier.read(np.empty(0, np.int64), np.empty((0, source.row_bytes), np.uint8))
        stats = tier.stats()
        assert stats["rows_read"] == 2 * ids.size + N_ROWS
        expected = {"none": "none", "zstd": "zstd:3", "zstd-dict": "zstd-dict:3", "profiled": "zstd:1"}
        assert stats["compression"] == expected.get(layout, "none")
        assert tier.contains(ids).all() and tier.capacity_rows == N_ROWS


def test_fp8_rows_round_trip(tmp_path):
    source = RandomRows(500, "fp8_e4m3", 64, seed=1)
    assert source.row_bytes == 64 + 2
    build_lmdb_table(source, tmp_path / "t", compression="zstd", page_kib=1, progress=False)
    with NvmeTier(tmp_path / "t") as tier:
        ids = np.arange(499, -1, -7)
        out = np.empty((ids.size, 66), np.uint8)
        tier.read(ids, out)
        np.testing.assert_array_equal(out, source_rows(source, ids))
        assert tier.manifest["format"] == "fp8_e4m3" and tier.layout.page_rows == page_rows_for(1, 66)


def test_random_rows_depend_only_on_seed_and_id(source):
    alone = source_rows(source, [1234])
    among = source_rows(source, [5, 1234, 7])
    np.testing.assert_array_equal(alone[0], among[1])
    assert not np.array_equal(among[0], among[2])
    other_seed = RandomRows(N_ROWS, "bf16", 16, seed=12)
    assert not np.array_equal(alone, source_rows(other_seed, [1234]))
    values = source.format.decode(torch.from_numpy(source_rows(source, np.arange(N_ROWS))))
    assert abs(values.mean().item()) < 0.02 and abs(values.std().item() - 1) < 0.02  # N(0, 1)


def test_profile_puts_hot_rows_on_the_first_pages(tables, source):
    profile = tables["profile"]
    hot = np.argsort(-profile, kind="stable")
    with NvmeTier(tables["profiled"]) as tier:
        np.testing.assert_array_equal(tier.positions(hot), np.arange(N_ROWS))
        page_rows = tier.layout.page_rows
        k = 3 * page_rows
        out = np.empty((k, source.row_bytes), np.uint8)
        tier.read(hot[:k][::-1], out)
        assert tier.stats()["pages_read"] == 3  # the k hottest rows fill exactly the first 3 pages
        np.testing.assert_array_equal(out, source_rows(source, hot[:k][::-1]))
    with NvmeTier(tables["none"]) as plain:
        plain.read(hot[:k], out)
        assert plain.stats()["pages_read"] > 3 * 3  # scattered by id without the profile


def test_load_profile_takes_counts_or_a_row_trace(tmp_path):
    from engramtier.trace.rowtrace import RowTrace
    from engramtier.trace.tracefile import save_trace

    counts = np.array([0, 5, 2, 0, 1])
    rows = np.array([1, 1, 4, 2, 1, 2, 1, 1])
    save_trace(RowTrace(rows, np.array([0, 3, 8]), 5, 160), tmp_path / "t.trace", chunk_rows=4)
    np.testing.assert_array_equal(load_profile(tmp_path / "t.trace", 5), counts)
    with pytest.raises(EngramTierError, match="addresses 5 rows, the table has 6"):
        load_profile(tmp_path / "t.trace", 6)
    np.save(tmp_path / "counts.npy", counts)
    np.testing.assert_array_equal(load_profile(tmp_path / "counts.npy", 5), counts)
    np.save(tmp_path / "trace.npy", np.array([1, 1, 4, 2, 1, 2, 1, 1]))
    np.testing.assert_array_equal(load_profile(tmp_path / "trace.npy", 5), counts)
    np.save(tmp_path / "far.npy", np.array([1, 9]))
    for name, message in [("far.npy", "outside the table's 5 rows"), ("absent.npy", "cannot read"),
                          ("absent.trace", "does not exist")]:
        with pytest.raises(EngramTierError, match=message):
            load_profile(tmp_path / name, 5)
    np.save(tmp_path / "floats.npy", np.array([0.5, 1.5]))
    with pytest.raises(EngramTierError, match="per-row counts or integer row ids"):
        load_profile(tmp_path / "floats.npy", 5)


def test_compression_specs():
    assert str(Compression.parse("zstd")) == "zstd:3" and str(Compression.parse("zstd-dict:9")) == "zstd-dict:9"
    for bad in ("lz4", "zstd:x", "zstd:99", "none:1"):
        with pytest.raises(EngramTierError, match="compression|level"):
            Compression.parse(bad)


def _flip(table_dir, page, offset_in_value):
    """Flip one byte of page ``page``'s stored value in place, found by its bytes in the data file."""
    env = lmdb.open(str(table_dir), readonly=True, lock=False, max_dbs=3)
    with env.begin(db=env.open_db(b"pages", create=False)) as txn:
        value = txn.get(PAGE_KEY.pack(page))
    env.close()
    data = bytearray((table_dir / DATA_FILE).read_bytes())
    at = data.find(value)
    assert at >= 0 and data.find(value, at + 1) < 0
    data[at + offset_in_value] ^= 0x40
    (table_dir / DATA_FILE).write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["none", "zstd"])
def test_corrupt_pages_are_named(tables, source, tmp_path, layout):
    table = tmp_path / "copy"
    shutil.copytree(tables[layout], table)
    with NvmeTier(table) as tier:
        page_rows = tier.layout.page_rows
    header = 16 + 4 * page_rows
    _flip(table, 2, 8)  # the row count in page 2's header
    _flip(table, 4, 20)  # page 4's row-checksum list
    _flip(table, 6, header + 40)  # inside page 6's rows (raw) or its zstd frame
    with NvmeTier(table) as tier:
        out = np.empty((1, source.row_bytes), np.uint8)
        for page, why in [(2, "header"), (4, "checksum list"), (6, "row checksum|zstd|decompressed")]:
            with pytest.raises(EngramTierError, match=f"page {page} of .*{DATA_FILE} is corrupt .*({why})") as err:
                tier.read([page * page_rows + 1], out)
            assert "\n" not in str(err.value)
        tier.read([1], out)  # page 0 is intact
        np.testing.assert_array_equal(out, source_rows(source, [1]))
        if layout == "none":  # one flipped row fails; the rest of its page still reads
            with pytest.raises(EngramTierError, match="row checksum mismatch"):
                tier.read([6 * page_rows + 1], out)
            tier.read([6 * page_rows + 3], out)
            np.testing.assert_array_equal(out, source_rows(source, [6 * page_rows + 3]))
    with NvmeTier(table, readers=3) as tier:  # a batch shared by the readers, page by page, finds them too
        ids = np.random.default_rng(5).permutation(N_ROWS)[:1000]
        with pytest.raises(EngramTierError, match=f"page [246] of .*{DATA_FILE} is corrupt"):
            tier.read(np.concatenate([ids, [4 * page_rows + 1]]), np.empty((1001, source.row_bytes), np.uint8))


def test_refusals(tmp_path, tables, source):
    cases = [(tmp_path / "absent", "no table at"), (tmp_path, "not an engramtier table \\(no data.mdb")]
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / DATA_FILE).write_bytes(b"not lmdb at all" * 1000)
    cases.append((tmp_path / "garbage", "not an engramtier table"))
    other = lmdb.open(str(tmp_path / "other"), max_dbs=3)
    with other.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    other.close()
    cases.append((tmp_path / "other", "not an engramtier table \\(no meta database"))
    for path, message in cases:
        with pytest.raises(EngramTierError, match=message) as err:
            NvmeTier(path)
        assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match="readers must be at least 1"):
        NvmeTier(tables["none"], readers=0)
    with pytest.raises(EngramTierError, match="hash fingerprint None.*rebuild"):
        NvmeTier(tables["none"], expect_fingerprint="abc123")
    with NvmeTier(tables["none"]) as tier:
        with pytest.raises(EngramTierError, match="read-only"):
            tier.write([0], np.zeros((1, source.row_bytes), np.uint8))
        with pytest.raises(EngramTierError, match="row id 3000 lies outside"):
            tier.read([0, N_ROWS], np.zeros((2, source.row_bytes), np.uint8))
        with pytest.raises(EngramTierError, match="uint8 of shape"):
            tier.read([0], np.zeros((1, source.row_bytes + 2), np.uint8))
    tier.close()
    with pytest.raises(EngramTierError, match="closed"):
        tier.read([0], np.zeros((1, source.row_bytes), np.uint8))


def test_cold_read_after_dropping_the_page_cache(tables, source):
    drop_page_cache(tables["zstd"])
    with NvmeTier(tables["zstd"], readers=2) as tier:
        ids = np.arange(0, N_ROWS, 3)
        out = np.empty((ids.size, source.row_bytes), np.uint8)
        tier.read(ids, out)
        np.testing.assert_array_equal(out, source_rows(source, ids))
        stats = tier.stats()
        assert 0 < stats["stored_bytes_read"] < stats["file_bytes"]
        assert json.dumps(stats)  # plain numbers only


READ_ALL = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from engramtier.tiers.nvme import NvmeTier
    with NvmeTier(sys.argv[1], readers=2) as tier:
        out = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
        for _ in range(20):
            tier.read(np.arange(tier.n_table_rows)[::-1], out)
        print(hashlib.sha256(out.tobytes()).hexdigest())
""")


def test_several_processes_read_one_table_at_once(tables, source):
    """Read-only, lock-free opens: concurrent serving processes see the same bytes."""
    import hashlib

    procs = [subprocess.Popen([sys.executable, "-c", READ_ALL, str(tables["profiled"])], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    with NvmeTier(tables["profiled"]) as tier:
        out = np.empty((N_ROWS, source.row_bytes), np.uint8)
        tier.read(np.arange(N_ROWS)[::-1], out)
    want = hashlib.sha256(source_rows(source, np.arange(N_ROWS)[::-1]).tobytes()).hexdigest()
    assert hashlib.sha256(out.tobytes()).hexdigest() == want
    for proc in procs:
        assert proc.communicate(timeout=60)[0].strip() == want and proc.returncode == 0


def _stored_values(table_dir):
    """Every stored value no page checksum covers: meta (layout, manifest, completion...) and the permutation."""
    env = lmdb.open(str(table_dir), readonly=True, lock=False, max_dbs=3)
    values = {}
    with env.begin() as txn:
        names = {bytes(k) for k, _ in txn.cursor()}  # the named databases: meta, pages and (permuted) layout
    for db in sorted(names - {b"pages"}):
        with env.begin(db=env.open_db(db, create=False)) as txn:
            values.update({(db, bytes(k)): bytes(v) for k, v in txn.cursor()})
    env.close()
    return values


@pytest.mark.parametrize("layout", ["profiled-raw", "zstd-dict"])
def test_damaged_metadata_is_refused_never_read_wrong(tables, source, tmp_path, layout):
    """LMDB keeps no checksums: a changed digit in the layout, manifest or completion record, or a
    changed entry of the row permutation, must be refused at open (each is checked against another
    copy of what it says) and never read as other rows. Every copy of each value is damaged in turn;
    LMDB's stale copies in free pages may change nothing, but the live one must be caught."""
    data = (tables[layout] / DATA_FILE).read_bytes()
    want = source_rows(source, np.arange(N_ROWS))
    rng = np.random.default_rng(3)
    for (db, key), value in _stored_values(tables[layout]).items():
        if key in (b"build", b"zdict"):  # what a resumed build compares; the zstd dictionary is checked by the rows
            continue
        copies = [at for at in range(len(data)) if data.startswith(value, at)] if len(value) >= 8 else []
        digits = ([i for i, b in enumerate(value) if chr(b).isdigit()] if value.startswith(b"{")  # JSON: its numbers
                  else list(range(len(value))))
        refused = 0
        for at in copies:
            for i in rng.choice(digits, min(4, len(digits)), replace=False).tolist():
                bad = bytearray(data)
                bad[at + i] = ord("7") if bad[at + i] != ord("7") else ord("3")
                table = tmp_path / "bad"
                table.mkdir(exist_ok=True)
                (table / DATA_FILE).write_bytes(bytes(bad))
                try:
                    with NvmeTier(table) as tier:
                        out = np.empty((N_ROWS, tier.row_bytes), np.uint8)
                        tier.read(np.arange(N_ROWS), out)
                except EngramTierError as err:
                    assert "\n" not in str(err) and str(table) in str(err)
                    refused += 1
                    continue
                np.testing.assert_array_equal(out, want, err_msg=f"{db} {key} byte {i} of the copy at {at}")
        assert refused or not copies, f"no damage to {db} {key} was caught"
