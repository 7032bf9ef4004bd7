"""The memory-mapped store of docs/custom_tier.md, executed from the page itself so the page cannot rot:
the class against a plain numpy model of a table, and the page's hierarchy giving the table's bytes
and the simulator's hit counts."""

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.cache.timing import tier_model
from engramtier.errors import EngramTierError

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_tier.md"
N_ROWS, ROW_BYTES = 50, 8


def doc_code_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def store_class():
    namespace = {}
    exec(compile(doc_code_blocks()[0], str(DOC), "exec"), namespace)
    return namespace["MemmapStore"]


def new_store(store_class, path):
    rows = np.arange(N_ROWS * ROW_BYTES, dtype=np.uint8).reshape(N_ROWS, ROW_BYTES)
    rows.tofile(path)
    return store_class(path, N_ROWS, ROW_BYTES, tier_model("nvme")), rows.copy()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, N_ROWS - 1), max_size=12)), max_size=20),
       seed=st.integers(0, 2**32 - 1))
def test_documented_store_reads_what_was_written(store_class, tmp_path_factory, ops, seed):
    path = tmp_path_factory.mktemp("memmap") / "table.bin"
    store, model = new_store(store_class, path)
    rng = np.random.default_rng(seed)
    reads = rows_read = writes = rows_written = 0
    with store:
        for is_write, ids in ops:
            ids = np.array(ids, np.int64)
            if is_write:
                rows = rng.integers(0, 256, (ids.size, ROW_BYTES), dtype=np.uint8)
                store.write(ids, rows)
                model[ids] = rows  # numpy assignment: the last of repeated ids wins, as in the file
                writes, rows_written = writes + 1, rows_written + ids.size
            else:
                out = np.empty((ids.size, ROW_BYTES), np.uint8)
                store.read(ids, out)
                np.testing.assert_array_equal(out, model[ids])
                reads, rows_read = reads + 1, rows_read + ids.size
        assert store.contains(np.arange(N_ROWS)).all()
        stats = store.stats()
    assert (stats["reads"], stats["rows_read"], stats["writes"], stats["rows_written"]) == \
        (reads, rows_read, writes, rows_written)
    assert stats["bytes_read"] == rows_read * ROW_BYTES and stats["path"] == str(path)
    np.testing.assert_array_equal(np.fromfile(path, np.uint8).reshape(N_ROWS, ROW_BYTES), model)  # flushed on close


def test_documented_store_refuses_bad_ids_and_buffers(store_class, tmp_path):
    store, _ = new_store(store_class, tmp_path / "table.bin")
    with store:
        with pytest.raises(EngramTierError, match=f"row id {N_ROWS} lies outside the table's {N_ROWS} rows"):
            store.read(np.array([1, N_ROWS]), np.empty((2, ROW_BYTES), np.uint8))
        with pytest.raises(EngramTierError, match=rf"out must be uint8 of shape \(2, {ROW_BYTES}\)"):
            store.read(np.array([1, 2]), np.empty((2, ROW_BYTES), np.int32))
        assert store.stats()["reads"] == 0


def test_documented_hierarchy_serves_the_table_with_the_simulators_hits(store_class, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the page's table file goes under tmp_path
    namespace = {"MemmapStore": store_class}
    exec(compile(doc_code_blocks()[1], str(DOC), "exec"), namespace)
    runtime, simulated, store = namespace["runtime"], namespace["simulated"], namespace["store"]
    tiers = runtime["tiers"]
    hits = [t["hits"] for t in tiers]
    assert hits == [t["hits"] for t in simulated.tier_stats()]
    assert all(h > 0 for h in hits) and sum(hits) == runtime["lookups"]
    assert [t["storage"] for t in tiers] == ["gpu", "dram", "memmap"]
    assert tiers[-1]["rows_read"] == store.rows_read > 0  # the report is the store's own count
    assert runtime["requests"] == 40 * 256 and runtime["fingerprint"] is None
    assert store.rows is None  # closed with the table, which owns its store
    assert [p.name for p in tmp_path.glob("*/table.bin")] == ["table.bin"]
    assert str(hits) in capsys.readouterr().out
