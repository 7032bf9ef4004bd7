"""libCacheSim as an independent reference: one test-side oracleGeneral writer and reader, and one way
to score a libCacheSim cache on such a file. Kept apart from engramtier's own exporter on purpose, so
the tests that check the exporter compare it against something it does not share code with."""

from __future__ import annotations

import os

import numpy as np
import pytest

lcs = pytest.importorskip("libcachesim")

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
