"""A throwaway Mooncake Store on loopback, for the Mooncake tests and benchmarks (not part of the package).

`MooncakeStore` starts a ``mooncake_master`` (with its embedded HTTP metadata server) and one
``mooncake_client`` process that contributes the store's memory, all on free loopback ports, and
waits until the master reports the client's segment mounted. The tier under test then joins as a pure
client (no memory of its own), as a serving process would. `mooncake_missing` says why none can be
started here, `need_mooncake` skips a test then. Benchmarks import this module after putting ``tests/``
on ``sys.path`` (pytest is imported only by `need_mooncake`).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_S = 30.0  # the master takes about a second, the client's segment mounts right after


def mooncake_binary(name: str) -> str | None:
    """``name`` (a console script of mooncake-transfer-engine-non-cuda) next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def mooncake_missing() -> str | None:
    """Why a Mooncake Store cannot be started here, or None when it can."""
    from engramtier.tiers.remote import mooncake  # sets Mooncake's log level before loading it

    if mooncake.IMPORT_ERROR:
        return f"the package mooncake-transfer-engine-non-cuda does not import ({mooncake.IMPORT_ERROR})"
    absent = [name for name in ("mooncake_master", "mooncake_client") if mooncake_binary(name) is None]
    return f"{' and '.join(absent)} not found next to {sys.executable} or on PATH" if absent else None


def need_mooncake() -> None:
    """Skip the calling test when a Mooncake Store cannot be started here."""
    import pytest

    missing = mooncake_missing()
    if missing:
        pytest.skip(f"{missing}; pip install mooncake-transfer-engine-non-cuda to run the Mooncake tests")


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class MooncakeStore:
    """A master and one client providing ``segment_bytes`` of memory (at least 16 MiB), on free
    loopback ports; logs go to ``log_dir``.

    ``storage(...)`` is the ``storage`` table that opens a tier on it; `kill_master` simulates losing
    the store; `stop` (or leaving the ``with`` block) kills both processes.
    """

    def __init__(self, log_dir: str | Path, segment_bytes: int = 256 << 20) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        rpc, http, metrics, client = free_ports(4)
        self.master = f"127.0.0.1:{rpc}"
        self.metadata = f"http://127.0.0.1:{http}/metadata"
        self._metrics = f"http://127.0.0.1:{metrics}/metrics"
        self._processes: list[subprocess.Popen] = []
        try:
            self.master_process = self._start(
                "master", "mooncake_master", f"--rpc_port={rpc}", "--rpc_address=127.0.0.1",
                "--enable_http_metadata_server=true", "--http_metadata_server_host=127.0.0.1",
                f"--http_metadata_server_port={http}", "--metrics_host=127.0.0.1", f"--metrics_port={metrics}")
            self._wait_until(lambda capacity: capacity is not None, "the master")  # the client would retry at 2 s
            self._start("client", "mooncake_client", f"--global_segment_size={segment_bytes}",
                        f"--master_server_address={self.master}", f"--metadata_server={self.metadata}",
                        "--host=127.0.0.1", f"--port={client}")
            self._wait_until(lambda capacity: (capacity or 0) >= segment_bytes, "the client's segment")
        except BaseException:
            self.stop()
            raise

    def _start(self, label: str, binary: str, *args: str) -> subprocess.Popen:
        with open(self.log_dir / f"{label}.log", "wb") as log:
            process = subprocess.Popen([mooncake_binary(binary) or binary, *args], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        self._processes.append(process)
        return process

    def _wait_until(self, ready, what: str) -> None:
        """Poll the master's metrics until ``ready(total mounted capacity, None before it answers)``."""
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a Mooncake process exited with {process.returncode}; see {self.log_dir}")
            try:
                with urllib.request.urlopen(self._metrics, timeout=1) as reply:
                    found = re.search(rb"^master_total_capacity_bytes (\S+)", reply.read(), re.M)
                capacity = float(found.group(1)) if found else None
            except OSError:
                capacity = None
            if ready(capacity):
                return
            time.sleep(0.02)
        raise RuntimeError(f"{what} did not come up within {STARTUP_S:.0f} s; see the logs in {self.log_dir}")

    def storage(self, **options) -> dict:
        """The ``storage`` table of a tier on this store."""
        return {"backend": "mooncake", "master": self.master, "metadata": self.metadata, **options}

    def kill_master(self) -> None:
        _kill(self.master_process)

    def stop(self) -> None:
        for process in reversed(self._processes):
            _kill(process)

    def __enter__(self) -> "MooncakeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
