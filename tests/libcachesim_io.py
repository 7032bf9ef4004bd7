"""libCacheSim as an independent reference: one test-side oracleGeneral writer and reader, and one way
to score a libCacheSim cache on such a file. Kept apart from engramtier's own exporter on purpose, so
the tests that check the exporter compare it against something it does not share code with."""

from __future__ import annotations

import ctypes
import importlib
import os

import numpy as np
import pytest

lcs = pytest.importorskip("libcachesim")
_EXTENSION = ctypes.CDLL(importlib.import_module("libcachesim.libcachesim_python").__file__)
_EXTENSION.set_rand_seed.argtypes = [ctypes.c_uint64]

# libCacheSim's oracleGeneral record: time, object id, object size, position of the next request for
# the same id (its ``next_access_vtime``), -1 for the id's last request.
ORACLE_RECORD = np.dtype([("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])


def next_positions(keys) -> np.ndarray:
    """Position of the next request for the same key, -1 for a key's last request."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    nxt = np.full(keys.size, -1, np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def write_oracle_general(path, keys) -> None:
    """One record per request: time = position, size 1 (cache sizes are rows), next request position."""
    keys = np.asarray(keys, dtype=np.int64)
    records = np.empty(keys.size, ORACLE_RECORD)
    records["time"] = np.arange(keys.size)
    records["id"] = keys
    records["size"] = 1
    records["next"] = next_positions(keys)
    records.tofile(path)


def read_oracle_general(path) -> np.ndarray:
    return np.fromfile(path, ORACLE_RECORD)


def libcachesim_hits(cache, path, params=None) -> int:
    """Hits of the libCacheSim ``cache`` over the oracleGeneral file, from the miss ratio it reports;
    ``params`` is an optional ``lcs.ReaderInitParam``."""
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE, *([params] if params else []))
    miss_ratio, _ = cache.process_trace(reader)
    return round((1.0 - miss_ratio) * (os.path.getsize(path) // ORACLE_RECORD.itemsize))


def seeded_hits(run: int, path, cache_class, *args, **kwargs) -> int:
    """`libcachesim_hits` over ``path`` of a ``cache_class(*args, **kwargs)`` built and run with its random
    draws seeded for the ``run``-th run of a comparison.


    libCacheSim seeds its generator once per process, not from the clock, so an unseeded run's draws
    depend on every draw made before it in the process, that is on which tests the worker ran first: a
    comparison could pass or fail by test order. Each run is seeded instead (its exported
    ``set_rand_seed``), with a large number derived from ``run``: small seeds give its xorshift generator
    states whose first draws are far from uniform."""
    _EXTENSION.set_rand_seed(int(np.random.SeedSequence(run).generate_state(1, np.uint64)[0]) | 1)
    return libcachesim_hits(cache_class(*args, **kwargs), path)
