"""Memory a command would hold is estimated from its arguments and refused in one line before it is
allocated (issue 22 part 5), through the real command line, in-process: the machine's memory reading
is monkeypatched small, so the tests neither need nor risk a large allocation.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from engramtier import memory
from engramtier.cli import main

MiB = 1 << 20
ZIPF = ["--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "1000000", "--table-size", "1009", "--layers", "1",
        "--heads", "2", "--seq-len", "256", "--chunk-rows", "65536", "--quiet"]


def refused(capsys, argv: list[str]) -> str:
    """Run the command line in-process: it must refuse in one stderr line, exit 2, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    return err


@pytest.fixture
def small_memory(monkeypatch):
    """The machine's available memory reads as 48 MiB."""
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 48 * MiB)


def test_a_decode_trace_beyond_memory_is_refused_before_anything_is_written(tmp_path, capsys, small_memory):
    out = tmp_path / "a.trace"
    err = refused(capsys, ["trace", *ZIPF, "--mode", "decode", "--requests", "1000000000", "-o", str(out)])
    assert "would hold about" in err and "48.0 MiB are available" in err and "lower --requests" in err
    assert list(tmp_path.iterdir()) == []


def test_the_same_trace_with_fewer_requests_fits_the_same_memory(tmp_path, capsys, small_memory):
    """The estimate follows the arguments: 32 requests of the same million tokens fit in 48 MiB."""
    out = tmp_path / "a.trace"
    assert main(["trace", *ZIPF, "--mode", "decode", "--requests", "32", "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_a_huge_synthetic_vocabulary_is_refused_by_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 16 * MiB)
    argv = ["trace", *ZIPF, "--vocab", "10000000", "-o", str(tmp_path / "a.trace")]
    assert "lower the synthetic vocabulary (--vocab)" in refused(capsys, argv)


def test_an_endless_pipe_of_text_is_refused_once_it_outgrows_memory(tmp_path, capsys, monkeypatch):
    """A FIFO that never ends (text without NULs) is read in chunks and refused past what memory can
    tokenize at once, instead of being read until the kernel kills the process."""
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 1024 * MiB)  # 16 MiB of text per document
    fifo = tmp_path / "endless.txt"
    os.mkfifo(fifo)
    stop = threading.Event()

    def write_forever():
        try:
            with open(fifo, "wb") as f:
                while not stop.is_set():
                    f.write(b"all work and no play makes jack a dull boy\n" * 1000)
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    try:
        err = refused(capsys, ["trace", str(fifo), "--quiet", "-o", str(tmp_path / "a.trace")])
    finally:
        stop.set()
    writer.join(timeout=10)
    assert "more than 16.0 MiB of text in one document" in err and "split it" in err
    assert not (tmp_path / "a.trace").exists()


def test_a_table_build_batch_beyond_memory_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 1 * MiB)
    argv = ["build-table", str(tmp_path / "t.lmdb"), "--random", "--rows", "100000", "--dim", "80", "--quiet"]
    assert "lower --batch-pages or --page-kib" in refused(capsys, argv)
    assert not (tmp_path / "t.lmdb").exists()


def _cgroup(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def test_the_tightest_cgroup_limit_bounds_the_memory_available(tmp_path, monkeypatch):
    """A container's memory.max (v2) or memory.limit_in_bytes (v1), anywhere up the process's group, is
    what the process can get, less what is charged, the reclaimable page cache given back."""
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/job/task\n0::/job/task\n")
    monkeypatch.setattr(memory, "PROC_CGROUP", proc)
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "fs")
    v2 = tmp_path / "fs" / "job"
    _cgroup(v2, {"memory.max": str(1024 * MiB), "memory.current": str(700 * MiB),
                 "memory.stat": f"anon 1\ninactive_file {100 * MiB}\n"})
    _cgroup(v2 / "task", {"memory.max": "max", "memory.current": str(700 * MiB), "memory.stat": "anon 1\n"})
    v1 = tmp_path / "fs" / "memory" / "job" / "task"
    _cgroup(v1, {"memory.limit_in_bytes": str(2**63 - 4096), "memory.usage_in_bytes": "0",
                 "memory.stat": "total_inactive_file 0\n"})
    assert memory.cgroup_room() == 424 * MiB
    assert memory.available_host_bytes() <= 424 * MiB
    _cgroup(v1, {"memory.limit_in_bytes": str(300 * MiB), "memory.usage_in_bytes": str(100 * MiB)})
    assert memory.cgroup_room() == 200 * MiB
