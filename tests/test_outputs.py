"""What engramtier does to the files it writes (engramtier.outputs), through the real command line:
devices and FIFOs stay what they are, links stay links, the mode of a replaced file is kept, an
output that is an input is refused, and two writers of one name never share a temporary file.

Device nodes are made inside the test's own folder (never the machine's /dev); making one needs root,
so those tests skip elsewhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engramtier.cli import main
from engramtier.trace.tracefile import TraceReader

ZIPF = ["--synthetic-zipf", "1.0", "--vocab", "1000", "--tokens", "3000", "--table-size", "1009", "--layers", "1",
        "--heads", "2", "--quiet"]


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.fixture()
def null_device(tmp_path) -> Path:
    """A character device like /dev/null (major 1, minor 3), made in the test's folder."""
    path = tmp_path / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "t.trace"
    assert main(["trace", *ZIPF, "-o", str(path)]) == 0
    return path


def test_a_device_is_written_in_place_and_stays_a_device(null_device, trace_file, capsys):
    for argv in (["trace", *ZIPF, "-o", str(null_device)],
                 ["stats", str(trace_file), "--json", str(null_device)],
                 ["export", str(trace_file), "--format", "csv", "-o", str(null_device)]):
        assert main(argv) == 0, capsys.readouterr().err
        assert stat.S_ISCHR(os.lstat(null_device).st_mode)
    link = null_device.with_name("link-to-null")
    link.symlink_to(null_device)
    assert main(["stats", str(trace_file), "--json", str(link)]) == 0
    assert link.is_symlink() and stat.S_ISCHR(os.lstat(null_device).st_mode)
    assert sorted(p.name for p in null_device.parent.iterdir()) == ["link-to-null", "null"]  # no temporary left
    err = refused(capsys, ["export", str(trace_file), "--format", "oracle", "-o", str(null_device)])
    assert "is a character device; give a regular file" in err
    assert stat.S_ISCHR(os.lstat(null_device).st_mode)


def test_a_fifo_gets_a_stream_and_stays_a_fifo(tmp_path, trace_file):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert main(["stats", str(trace_file), "--json", str(fifo)]) == 0
    reader.join(timeout=30)
    assert json.loads(got[0])["requests"] > 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_link_stays_a_link_and_its_target_is_replaced_with_its_mode(tmp_path, trace_file):
    target = tmp_path / "real.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["stats", str(trace_file), "--json", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["requests"] > 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.json"
    umask = os.umask(0o022)
    try:
        assert main(["stats", str(trace_file), "--json", str(fresh)]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # the umask's, not a temporary file's 0600


def test_a_block_device_a_socket_and_a_read_only_file_are_refused(tmp_path, trace_file, capsys):
    import socket

    block = tmp_path / "disk"
    try:
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 200))  # a loop device number: never opened
    except PermissionError:
        block = None
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    frozen = tmp_path / "frozen.json"
    frozen.write_text("keep me")
    frozen.chmod(0o444)
    cases = [(tmp_path / "sock", "is a socket"), (frozen, "is read-only; make it writable")]
    cases += [(block, "is a block device")] if block is not None else []
    for path, words in cases:
        assert words in refused(capsys, ["stats", str(trace_file), "--json", str(path)])
    assert frozen.read_text() == "keep me"
    sock.close()


def test_an_output_that_is_an_input_is_refused(tmp_path, trace_file, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("Some text about engrams. " * 50)
    before = notes.read_bytes()
    hard = tmp_path / "hard.txt"
    os.link(notes, hard)
    soft = tmp_path / "soft.txt"
    soft.symlink_to(notes)
    for out in (notes, hard, soft):
        err = refused(capsys, ["trace", str(notes), "--table-size", "1009", "--layers", "1", "--heads", "2", "--quiet",
                               "-o", str(out)])
        assert "is the input" in err and "itself" in err
    assert notes.read_bytes() == before
    copy = tmp_path / "copy.trace"
    copy.write_bytes(trace_file.read_bytes())
    for argv in (["stats", str(copy), "--json", str(copy)], ["export", str(copy), "--format", "csv", "-o", str(copy)]):
        assert "is the input" in refused(capsys, argv)
    assert copy.read_bytes() == trace_file.read_bytes()


def test_two_writers_of_one_name_never_share_a_temporary_file(tmp_path):
    """Two trace commands writing one name at once: both finish, the file is a whole trace, nothing is left."""
    out = tmp_path / "same.trace"
    argv = [sys.executable, "-m", "engramtier.cli", "trace", *ZIPF[:5], "200000", *ZIPF[6:], "-o", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    with TraceReader(out) as reader:
        assert reader.n_rows > 0
    assert [p.name for p in tmp_path.iterdir()] == ["same.trace"]
