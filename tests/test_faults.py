"""kill -9 at random points of `trace`, `build-table` and `remote populate`, through the real command line.

Each test first runs the command uninterrupted, as the reference, and notes how far its output grows (the
trace's working files, the LMDB data file, the number of keys in the store). It then starts the same
command again several times and SIGKILLs it as soon as its output reaches a seeded random point of that
growth, so every kill lands mid-write whatever the machine's speed (kills timed from the reference's
duration often missed: on two shared cores the same build took 1.4 s in one run and 4.6 s in the next).
After every kill, what is left must be refused by its reader, at the command line in one line (exit 2, no
traceback); then the same command, rerun to completion, must give a result byte-identical to the reference.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
import redis

from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import open_remote

ENGRAMTIER = [sys.executable, "-m", "engramtier.cli"]
KILLS = 3


def spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*ENGRAMTIER, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def reference_run(argv: list[str], watch=None) -> None:
    """Run ``argv`` to completion, calling ``watch()`` every few milliseconds while it runs."""
    proc = spawn(argv)
    while proc.poll() is None:
        if watch:
            watch()
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()


def killed_run(argv: list[str], reached) -> None:
    """Start ``argv`` and SIGKILL it as soon as ``reached()``, which must come before it ends."""
    proc = spawn(argv)
    while not reached():
        assert proc.poll() is None, f"ended ({proc.returncode}) before the kill point: {proc.stderr.read()}"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read()


def points(total: int, seed: int, n: int = KILLS) -> list[int]:
    """``n`` increasing random points of ``total``, one in each of ``n`` equal slices of 5%..85% of it (the
    last 15% is left to the run, so it cannot finish between the test seeing the point and the kill)."""
    edges = np.linspace(0.05, 0.85, n + 1)
    return (np.random.default_rng(seed).uniform(edges[:-1], edges[1:]) * total).astype(int).tolist()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def new_file_grown_to(folder: Path, pattern: str, target: int):
    """A test that turns true once a file matching ``pattern`` in ``folder``, other than those there now
    (an earlier run's leftovers: a writer's temporary files are named by its process), holds ``target`` bytes."""
    before = set(folder.glob(pattern))
    return lambda: any(size(p) >= target for p in folder.glob(pattern) if p not in before)


def grown_to(path: Path, target: int):
    """A test that turns true once ``path`` holds ``target`` bytes written by a run started after this call:
    a leftover of an earlier run, however large, does not count until the new run rewrites it."""
    def stat():
        try:
            s = path.stat()
        except FileNotFoundError:
            return None
        return s.st_ino, s.st_mtime_ns, s.st_size

    before = stat()
    return lambda: stat() not in (None, before) and size(path) >= target


def refused(capsys, argv: list[str]) -> str:
    """Run the command line in-process: it must refuse in one stderr line, exit 2, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    return err


TRACE = ["--synthetic-zipf", "1.1", "--vocab", "50000", "--tokens", "400000", "--table-size", "100003",
         "--layers", "1,2", "--heads", "4", "--chunk-rows", "65536", "--quiet"]


def test_trace_killed_leaves_nothing_readable_and_rerun_is_byte_identical(tmp_path, capsys):
    """The trace writer writes PATH.<pid>-0.raw, rewrites it to dense keys in PATH.<pid>-0.part and renames
    that to PATH: a kill anywhere leaves either no PATH or a complete one, leftovers that `stats` refuses,
    and a rerun over them (another process) writes the same bytes and removes them. Two kills land while
    the raw file grows, one in the shorter rewrite."""
    reference = tmp_path / "reference.trace"
    raw_sizes = [0]
    reference_run(["trace", *TRACE, "-o", str(reference)],
                  lambda: raw_sizes.append(max([size(p) for p in tmp_path.glob("reference.trace.*.raw")] or [0])))
    want = reference.read_bytes()
    out = tmp_path / "killed.trace"
    argv = ["trace", *TRACE, "-o", str(out)]
    kills = [(".raw", at) for at in points(max(raw_sizes), seed=1, n=KILLS - 1)]
    kills += [(".part", at) for at in points(len(want), seed=2, n=1)]
    for suffix, at in kills:
        killed_run(argv, new_file_grown_to(tmp_path, f"killed.trace.*{suffix}", at))
        assert "does not exist" in refused(capsys, ["stats", str(out)])  # renamed into place only once complete
        parts = [p for p in tmp_path.glob("killed.trace.*") if p.suffix in (".part", ".raw")]
        assert parts
        for part in parts:  # half-written: never read as a trace
            assert re.search("is not an engramtier trace file|is truncated", refused(capsys, ["stats", str(part)]))
    assert main(argv) == 0  # over the last kill's leftovers
    assert out.read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.trace", "reference.trace"]


ROWS, DIM, SEED = 100_000, 32, 7
BUILD = ["--random", "--rows", str(ROWS), "--format", "bf16", "--dim", str(DIM), "--seed", str(SEED),
         "--page-kib", "4", "--batch-pages", "4", "--quiet"]


def table_rows(path: Path) -> np.ndarray:
    with NvmeTier(path) as tier:
        out = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
        tier.read(np.arange(tier.n_table_rows), out)
        return out


def source_rows() -> np.ndarray:
    want = np.empty((ROWS, 2 * DIM), np.uint8)
    RandomRows(ROWS, "bf16", DIM, SEED).rows(np.arange(ROWS), want)
    return want


def stored_records(path: Path) -> dict:
    """Every record of a table's LMDB databases (meta, pages, layout), as stored; the completion summary
    names the table's own path, so that one is read without it."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=3)
    records = {}
    with env.begin() as txn:
        for name in (b"meta", b"pages", b"layout"):
            for key, value in txn.cursor(db=env.open_db(name, txn=txn, create=False)):
                records[name, key] = value
    env.close()
    complete = json.loads(records[b"meta", b"complete"])
    assert complete.pop("path") == str(path)
    records[b"meta", b"complete"] = complete
    return records


def test_build_table_killed_is_refused_and_rerun_has_every_row(tmp_path, capsys):
    """build-table commits pages in batches with a done counter and marks the table complete last: a kill
    mid-build leaves a table every reader refuses as unfinished, and the same command resumes it to the
    reference's rows and stored bytes. The hot-first permutation and the zstd dictionary ride in the first
    commit, and a resumed build must compress with that dictionary."""
    profile = tmp_path / "profile.npy"
    np.save(profile, np.random.default_rng(0).zipf(1.2, ROWS).astype(np.float64))
    argv = [*BUILD, "--compression", "zstd-dict:1", "--profile", str(profile)]
    reference = tmp_path / "reference"
    reference_run(["build-table", str(reference), *argv])
    want = source_rows()
    np.testing.assert_array_equal(table_rows(reference), want)
    out = tmp_path / "killed"
    for at in points(size(reference / "data.mdb"), seed=3):  # each run resumes the last: increasing points
        killed_run(["build-table", str(out), *argv], grown_to(out / "data.mdb", at))
        # killed in the first commit (its permutation is a tenth of the file), it is no table yet
        with pytest.raises(EngramTierError, match=r"unfinished build \(\d+ of \d+ pages|is not an engramtier table"):
            NvmeTier(out)
        # at the command line too: populate's reader (the runtime's) refuses it before sending anything
        refused(capsys, ["remote", "populate", "--table", str(out), "--storage", "backend=redis", "url=redis://127.0.0.1:1"])
    assert main(["build-table", str(out), *argv]) == 0
    np.testing.assert_array_equal(table_rows(out), want)
    assert stored_records(out) == stored_records(reference)  # every page, the manifest, layout and dictionary


def test_checkpoint_import_killed_is_refused_and_rerun_has_every_row(tmp_path, capsys):
    """build-table --from-checkpoint writes the stand-in model, then builds RUN/table.lmdb through the same
    resumable builder, here hottest rows first: killed mid-build, the run's table is refused (by replay too,
    in one line), and the same command resumes it to the checkpoint's rows and the reference's stored bytes."""
    from checkpoint_fixture import TABLE_SIZE, engram_tensors, expected_rows, hash_config, write_checkpoint

    tensors = engram_tensors(hash_config())
    checkpoint = write_checkpoint(tmp_path / "ckpt", tensors)
    profile = tmp_path / "profile.npy"  # hot rows first: the rows are read scattered, not in id order
    np.save(profile, np.random.default_rng(0).zipf(1.2, len(expected_rows(tensors, hash_config()))).astype(np.float64))
    argv = ["--from-checkpoint", str(checkpoint), "--table-size", str(TABLE_SIZE), "--page-kib", "4",
            "--batch-pages", "1", "--profile", str(profile), "--quiet"]
    reference_run(["build-table", str(tmp_path / "reference"), *argv])
    reference = tmp_path / "reference" / "table.lmdb"
    out = tmp_path / "killed"
    for at in points(size(reference / "data.mdb"), seed=4, n=2):
        killed_run(["build-table", str(out), *argv], grown_to(out / "table.lmdb" / "data.mdb", at))
        with pytest.raises(EngramTierError, match=r"unfinished build \(\d+ of \d+ pages|is not an engramtier table"):
            NvmeTier(out / "table.lmdb")
        refused(capsys, ["replay", "--engram-only", "--run", str(out), "--out", str(tmp_path / "replay")])
    assert main(["build-table", str(out), *argv]) == 0
    np.testing.assert_array_equal(table_rows(out / "table.lmdb"), expected_rows(tensors, hash_config()))
    assert stored_records(out / "table.lmdb") == stored_records(reference)


@pytest.mark.parametrize("left", ["lock file", "empty data file", "no header"])
def test_build_killed_before_its_first_commit_is_refused_then_resumes(tmp_path, left):
    """The first instants of a build, too short for a kill at a point of its growth to hit: LMDB creates
    lock.mdb, then an empty data.mdb, then writes its own meta pages, and only then does the build commit
    its header. Killed in any of these, the directory is refused by the reader and the same build resumes."""
    out = tmp_path / "t"
    out.mkdir()
    (out / "lock.mdb").touch()
    if left == "empty data file":
        (out / "data.mdb").touch()
    elif left == "no header":  # the build opened its databases; the header commit did not land
        env = lmdb.open(str(out), max_dbs=3)
        env.open_db(b"meta"), env.open_db(b"pages")
        env.close()
    with pytest.raises(EngramTierError, match="is not an engramtier table") as err:
        NvmeTier(out)
    assert "\n" not in str(err.value)
    source = RandomRows(500, "bf16", DIM, SEED)
    build_lmdb_table(source, out, page_kib=4, progress=False)
    want = np.empty((500, 2 * DIM), np.uint8)
    source.rows(np.arange(500), want)
    np.testing.assert_array_equal(table_rows(out), want)


def test_remote_populate_killed_then_rerun_has_every_row(server, tmp_path, capsys):
    """populate commits each block's rows with its done mark in one MULTI/EXEC: after a kill the store
    holds whole blocks only, readers refuse the rest as never populated, resuming from another table is
    refused, and rerunning from the same one fills exactly the missing blocks, every row byte-identical
    to the LMDB table's."""
    table = tmp_path / "table"
    build_lmdb_table(RandomRows(ROWS, "bf16", DIM, SEED), table, compression="zstd:1", page_kib=4, progress=False)
    want = table_rows(table)
    storage = {"backend": "redis", "url": server.url, "key_prefix": "faults", "block_rows": 512}
    named = ["--storage", *(f"{k}={v}" for k, v in storage.items())]
    store = ["--table", str(table), *named]
    argv = ["remote", "populate", *store, "--batch-rows", "2048", "--quiet"]
    client = redis.Redis.from_url(server.url)

    def keys_reached(target: int):  # and at least one block (its rows and done mark) written by the new run
        least = max(target, client.dbsize() + 2)
        return lambda: client.dbsize() >= least

    def store_rows() -> np.ndarray:
        with open_remote(storage, n_table_rows=ROWS, row_bytes=2 * DIM, fingerprint=None) as tier:
            out = np.empty_like(want)
            tier.read(np.arange(ROWS), out)
            return out

    reference_run(argv)
    np.testing.assert_array_equal(store_rows(), want)
    total = client.dbsize()
    client.flushall()
    for at in points(total, seed=4):  # each run resumes the last: increasing points
        killed_run(argv, keys_reached(at))
        with pytest.raises(EngramTierError, match="was never populated") as err:  # never garbage
            store_rows()
        assert "\n" not in str(err.value)
        assert "rows are populated; run `engramtier remote populate` first" in refused(capsys, ["remote", "calibrate", *store])
    other = tmp_path / "other"  # same sizes and fingerprint, other rows: resuming would mix two tables
    build_lmdb_table(RandomRows(ROWS, "bf16", DIM, SEED + 1), other, page_kib=4, progress=False)
    err = refused(capsys, ["remote", "populate", "--table", str(other), *named, "--quiet"])
    assert "holds rows populated from another table (its recorded manifest differs in source)" in err
    with open_remote(storage, n_table_rows=ROWS, row_bytes=2 * DIM, fingerprint=None) as tier:
        held = tier.populated_rows
    capsys.readouterr()
    for missing in (ROWS - held, 0):  # the blocks the kills left out, exactly; then, complete, nothing
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["written_rows"] == missing
        np.testing.assert_array_equal(store_rows(), want)


def test_ctrl_c_erases_the_progress_bar_and_leaves_no_file(tmp_path):
    """SIGINT mid-trace: the bar's line is cleared before 'interrupted' (which starts its own line), the
    exit status is 130, and the interrupted writer leaves nothing behind. The command starts with SIGINT's
    default action, as from a terminal: a suite started as a background job (``make test &``) ignores
    SIGINT, and a child inherits that, would finish its trace and exit 0."""
    out = tmp_path / "big.trace"
    proc = subprocess.Popen([*ENGRAMTIER, "trace", "--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "100000000",
                             "--table-size", "1009", "--layers", "1", "--heads", "2", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,  # bytes: text mode reads \r as \n
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.suffix == ".raw" and p.stat().st_size for p in tmp_path.iterdir()):  # tracing has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 130
    before, last = err.rsplit("\r", 1)
    assert last == "engramtier trace: interrupted\n" and "trace:" in before and before.rsplit("\r", 1)[-1].strip() == ""
    assert list(tmp_path.iterdir()) == []
