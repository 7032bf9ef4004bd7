"""Compiled policy loops kept on disk, so that a process loads what an earlier one compiled.

numba caches a function on disk (``cache=True``) under a key that hashes its bytecode and, for a
closure, the pickles of its cells. The engine's drivers (`engramtier.cache.engine.make_drivers`) and
each policy's replay loop are closures over the policy's operations, and numba pickles a
jitted function with an id drawn at random in each process, so those keys never matched: every
process (each command line run, each test worker and subprocess) compiled every policy it used anew,
5-18 s apiece.

`kernel` gives such a closure a cache keyed instead by what its cells *are*: each numba function's
module and name, and the hash of the source they can reach (the engramtier package, and the module
of a function defined outside it). The key is the same in every process while that source is, and
changes with any edit of it, so an edited policy is compiled again, never served stale code. (A user
operation calling helpers of *other* modules of its own is not re-hashed when only those change,
numba's own limit for cached functions.) The functions those loops inline (`inlined`) are kept under
the same key, since numba's own would check only a function's own file while LLVM copies its
callees' code into it.

Every driver of every policy shares one index file, so processes compiling at once (test workers)
take a file lock around each load and save: numba numbers a new entry's data file from the index it
read, and two unlocked writers could file one's code under the other's key. And a process that misses
holds a lock on that key until it has saved, so that others wanting the same code wait and load it
instead of compiling it a second time.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from numba import njit
from numba.core.caching import FunctionCache
from numba.core.serialize import dumps

PACKAGE = Path(__file__).resolve().parent.parent


@functools.cache
def _source_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _identity(value: Any) -> bytes:
    """What a closure cell holds, as the key sees it: a function by its module, name and source hash;
    anything else (or a function without a source file) by its pickle, as numba keys it."""
    func = getattr(value, "py_func", None) or getattr(value, "_defn", None) or value
    code = getattr(func, "__code__", None)
    if code is None or not Path(code.co_filename).is_file():
        return dumps(value)
    path = Path(code.co_filename).resolve()
    own = "" if path.is_relative_to(PACKAGE) else _source_hash(path)
    return f"{func.__module__}.{func.__qualname__}:{own}".encode()


class ClosureCache(FunctionCache):
    """numba's on-disk cache for one closure over numba functions (see the module docstring).
    ``options``: the numba options the code was compiled with, part of the key (see `kernel`)."""

    _compiling: Any = None  # the compile lock this process holds from a miss until the save

    def __init__(self, py_func: Any, options: str = "") -> None:
        super().__init__(py_func)
        self.options = options

    def _index_key(self, sig: Any, codegen: Any) -> tuple:
        digest = hashlib.sha256(self._py_func.__code__.co_code)
        digest.update(self.options.encode())
        for cell in self._py_func.__closure__ or ():
            digest.update(_identity(cell.cell_contents))
        digest.update(_source_hash(PACKAGE).encode())
        return sig, codegen.magic_tuple(), digest.hexdigest()

    def _lock_file(self, suffix: str) -> Any:
        self._impl.locator.ensure_cache_path()
        return open(os.path.join(self._cache_path, f"{self._impl.filename_base}{suffix}.lock"), "a")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_file("") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        """The compiled code for ``sig`` from disk; on a miss this process keeps the key's compile lock
        until it saves (`save_overload`), so that another process asking for the same code meanwhile
        waits and loads it rather than compiling it too (test workers start on the same policies)."""
        self._release_compile_lock()  # a compile of ours that failed before its save
        key = hashlib.sha256(repr(self._index_key(sig, target_context.codegen())).encode()).hexdigest()[:16]
        lock = self._lock_file(f"-{key}")
        _wait_for(lock, COMPILE_WAIT_S)
        with self._locked():
            data = super().load_overload(sig, target_context)
        if data is not None:
            lock.close()
        else:
            self._compiling = lock
        return data

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            with self._locked():
                super().save_overload(sig, data)
        finally:
            self._release_compile_lock()

    def _release_compile_lock(self) -> None:
        if self._compiling is not None:
            self._compiling.close()  # closing the file releases its lock
            self._compiling = None


COMPILE_WAIT_S = 300  # past this, a process compiles for itself rather than wait on another's compile


def _wait_for(lock: Any, seconds: float) -> None:
    """Take ``lock`` (an open file) exclusively, waiting at most ``seconds`` (then going on without it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


def kernel(**options: Any) -> Any:
    """A decorator: the function as ``njit(nogil=True, **options)``, loading and saving its compiled code
    on disk under `ClosureCache`'s key with ``options`` in it. Every function of the package whose code
    LLVM copies in from other modules is compiled so: the policies' replay loops and the engine's
    drivers (closures over a policy's operations), the runtime's kernels (the key map's probes, the row
    copies), the miss-ratio curves' (the heap's helpers), and the `inlined` functions themselves. numba's
    own ``cache=True`` would (a) check only a function's own file and (b) leave compile options out of
    its key, so that a serial and a ``parallel=True`` build of one function load each other's code."""

    def build(function: Any) -> Any:
        dispatcher = njit(nogil=True, **options)(function)
        dispatcher._cache = ClosureCache(function, repr(sorted(options.items())))
        return dispatcher

    return build


def inlined(function: Any) -> Any:
    """``function`` compiled as a small piece of the loops that call it: the policies' operations, their
    helpers, the key map's probes and the admission filters' hooks.

    numba's own ``inline="always"`` copies a function's IR into every caller and types it there again,
    so each policy's replay loop and engine drivers re-compiled its whole operation tree; across the
    policies that was most of the compile time of a first run. Here the function is compiled once
    per signature, kept on disk (`kernel`: any edit of the package compiles it again) and marked
    for LLVM to inline wherever it is called (``forceinline``), which gives the callers the same
    machine code (`benchmarks/bench_policies.py`, side by side). Compiled without reference counting
    (``_nrt=False``): these functions neither allocate nor keep arrays."""
    return kernel(forceinline=True, _nrt=False)(function)
