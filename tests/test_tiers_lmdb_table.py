"""build-table: resuming after kill -9 and after a full map or disk, refusals, and the command line."""

import json
import resource
import signal
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest

from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.tiers.lmdb_table import FlatTableRows, RandomRows, build_lmdb_table
from engramtier.tiers.nvme import COUNT, NvmeTier

ROWS, DIM, SEED = 6000, 16, 3
CLI_ARGS = ["--random", "--rows", str(ROWS), "--format", "bf16", "--dim", str(DIM), "--seed", str(SEED),
            "--compression", "zstd:1", "--page-kib", "4", "--quiet"]


def assert_table_equals(path, source, expect_fingerprint=None):
    """Every row byte-exact, and LMDB holds each page exactly once."""
    with NvmeTier(path, readers=2, expect_fingerprint=expect_fingerprint) as tier:
        out = np.empty((source.n_rows, source.row_bytes), np.uint8)
        tier.read(np.arange(source.n_rows), out)
        want = np.empty_like(out)
        source.rows(np.arange(source.n_rows), want)
        np.testing.assert_array_equal(out, want)
        n_pages = tier.layout.n_pages
    assert page_counts(path) == (n_pages, n_pages)


def page_counts(path):
    """(pages stored, pages the build says it committed)."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=3)
    with env.begin() as txn:
        stored = txn.stat(env.open_db(b"pages", txn=txn, create=False))["entries"]
        done = COUNT.unpack(txn.get(b"done_pages", db=env.open_db(b"meta", txn=txn, create=False)))[0]
    env.close()
    return stored, done


SLOW_BUILD = textwrap.dedent(f"""
    import sys, time
    from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table

    class Slow(RandomRows):
        def rows(self, ids, out):
            super().rows(ids, out)
            print("batch", flush=True)
            time.sleep(0.05)

    build_lmdb_table(Slow({ROWS}, "bf16", {DIM}, {SEED}), sys.argv[1], compression="zstd:1", page_kib=4,
                     progress=False, batch_pages=2)
""")


def test_kill_9_mid_build_then_rerun_finishes_with_every_row(tmp_path):
    out_dir = tmp_path / "t"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(out_dir)], stdout=subprocess.PIPE, text=True)
    for _ in range(6):
        assert proc.stdout.readline() == "batch\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored, done = page_counts(out_dir)
    assert stored == done and 0 < done < 54  # exactly the committed batches survive
    with pytest.raises(EngramTierError, match=f"unfinished build \\({done} of 54 pages"):
        NvmeTier(out_dir)
    assert main(["build-table", str(out_dir), *CLI_ARGS]) == 0  # the same command, from the CLI
    assert_table_equals(out_dir, RandomRows(ROWS, "bf16", DIM, SEED))


def test_full_map_is_one_line_and_resumable(tmp_path, capsys):
    source = RandomRows(ROWS, "bf16", DIM, SEED)
    with pytest.raises(EngramTierError, match="the LMDB map .* filled up writing pages .*--map-size to resume") as err:
        build_lmdb_table(source, tmp_path / "t", compression="zstd:1", page_kib=4, progress=False,
                         map_size=160 << 10, batch_pages=4)
    assert "\n" not in str(err.value)
    stored, done = page_counts(tmp_path / "t")
    assert stored == done > 0
    assert main(["build-table", str(tmp_path / "t"), *CLI_ARGS, "--map-size", "64MiB"]) == 0
    assert json.loads(capsys.readouterr().out)["pages"] == 54
    assert_table_equals(tmp_path / "t", source)


def _small_file_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (400 << 10, 400 << 10))


def test_file_size_limit_is_one_line_and_resumable(tmp_path):
    out_dir = tmp_path / "t"
    args = [sys.executable, "-m", "engramtier.cli", "build-table", str(out_dir), "--random", "--rows", "40000",
            "--dim", str(DIM), "--page-kib", "4", "--batch-pages", "8", "--quiet"]  # 1.3 MB of rows
    failed = subprocess.run(args, preexec_fn=_small_file_limit, capture_output=True, text=True)
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed" in lines[0] and "rerun the same command to resume" in lines[0]
    stored, done = page_counts(out_dir)
    assert stored == done > 0
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert_table_equals(out_dir, RandomRows(40000, "bf16", DIM, 0))


def test_rerun_of_a_complete_build_changes_nothing_and_other_settings_are_refused(tmp_path):
    source = RandomRows(500, "bf16", DIM, SEED)
    first = build_lmdb_table(source, tmp_path / "t", progress=False)
    before = (tmp_path / "t" / "data.mdb").read_bytes()
    assert build_lmdb_table(source, tmp_path / "t", progress=False) == first
    assert (tmp_path / "t" / "data.mdb").read_bytes() == before
    for kwargs, what in [({"compression": "zstd"}, "compression"), ({"page_kib": 8}, "page_rows"),
                         ({"profile": np.arange(500.0)}, "profile_sha256")]:
        with pytest.raises(EngramTierError, match=f"other settings \\({what} differ"):
            build_lmdb_table(source, tmp_path / "t", progress=False, **kwargs)
    with pytest.raises(EngramTierError, match="source differ"):
        build_lmdb_table(RandomRows(500, "bf16", DIM, SEED + 1), tmp_path / "t", progress=False)


def test_output_directory_refusals(tmp_path):
    source = RandomRows(100, "bf16", DIM, SEED)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for path, message in [(tmp_path / "busy", "not empty and holds no engramtier table"),
                          (tmp_path / "file", "not a directory")]:
        with pytest.raises(EngramTierError, match=message):
            build_lmdb_table(source, path, progress=False)
    with pytest.raises(EngramTierError, match="profile has 3 counts for a table of 100 rows"):
        build_lmdb_table(source, tmp_path / "new", profile=np.ones(3), progress=False)
    with pytest.raises(EngramTierError, match="cannot train a zstd dictionary from 1 sampled pages.*zstd:LEVEL"):
        build_lmdb_table(source, tmp_path / "tiny", compression="zstd-dict", progress=False)
    with pytest.raises(EngramTierError, match="cannot hold one"):
        build_lmdb_table(RandomRows(10, "bf16", 1024, 0), tmp_path / "new2", page_kib=1, progress=False)


def test_from_flat_table_keeps_the_manifest_and_fingerprint(tmp_path):
    from engramtier.model.hashing import HashConfig, NgramHasher
    from engramtier.model.rows import RowFormat
    from engramtier.model.table import save_table

    hasher = NgramHasher(HashConfig(vocab_size=100, pad_id=0, table_sizes=(40, 40), layer_ids=(1,), n_heads=2))
    fmt = RowFormat("bf16", 8)
    rows = np.random.default_rng(0).integers(0, 256, (hasher.n_rows, fmt.row_bytes), dtype=np.uint8)
    save_table(tmp_path / "flat", rows, fmt, hasher)
    np.save(tmp_path / "profile.npy", np.random.default_rng(1).integers(0, hasher.n_rows, 1000))
    assert main(["build-table", str(tmp_path / "lmdb"), "--from-table", str(tmp_path / "flat"),
                 "--profile", str(tmp_path / "profile.npy"), "--compression", "zstd:3", "--page-kib", "1",
                 "--quiet"]) == 0
    fingerprint = hasher.config.fingerprint
    assert_table_equals(tmp_path / "lmdb", FlatTableRows(tmp_path / "flat"), expect_fingerprint=fingerprint)
    with NvmeTier(tmp_path / "lmdb") as tier:
        assert tier.manifest["fingerprint"] == fingerprint and tier.layout.permuted
        assert tier.manifest["subtable_sizes"] == hasher.subtable_sizes.tolist()
    with pytest.raises(EngramTierError, match=f"built for hash fingerprint {fingerprint}"):
        NvmeTier(tmp_path / "lmdb", expect_fingerprint="0" * len(fingerprint))


def test_command_line(tmp_path, capsys):
    assert main(["build-table", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and "--random --rows 4000000" in help_text and "resumes" in help_text
    out = str(tmp_path / "t")
    for argv, message in [
        (["--random"], "--random needs --rows"),
        (["--random", "--rows", "10", "--compression", "lz4"], "compression 'lz4'"),
        (["--random", "--rows", "10", "--format", "fp16"], "row format 'fp16' is unknown"),
        (["--random", "--rows", "10", "--map-size", "2 GiBs"], "--map-size: size '2 GiBs' does not parse"),
        (["--random", "--rows", "10", "--profile", str(tmp_path / "none.npy")], "cannot read"),
        (["--from-table", str(tmp_path / "nothing")], "does not exist"),
    ]:
        assert main(["build-table", out, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["build-table", out, "--random", "--rows", "300", "--dim", "8", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 300 and summary["compression"] == "none"
    assert_table_equals(out, RandomRows(300, "bf16", 8, 0))
