"""Deadline-bounded (lossy) fetch: off changes nothing; on, the simulator and the runtime drop the same
rows, the runtime's dropped rows are zero and every other row is the flat table's, the stall never
exceeds the waiting run's, and bad option values are refused in one line."""

import json

import numpy as np
import pytest
import torch
from zipf import zipf_keys

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.cache.timing import TierModel
from engramtier.errors import EngramTierError
from engramtier.tiers import step
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.open import open_table
from engramtier.trace.rowtrace import RowTrace

N_ROWS, DIM = 400, 8
ROW_BYTES = 2 * DIM
# A slow store: 2 us per wave of 4 rows, so a 5 us window admits 8 of its rows (two waves) and a step of
# ~40 unique rows drops most of what the store serves; the dram tier is fast enough never to stall.
SLOW = {"latency_s": 2e-6, "bandwidth_Bps": 1e12, "parallelism": 4}
WINDOW = 5e-6


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("deadline") / "table"
    source = RandomRows(N_ROWS, "bf16", DIM, seed=7)
    build_lmdb_table(source, path, compression="zstd:1", page_kib=1, progress=False)
    flat = np.empty((N_ROWS, source.row_bytes), np.uint8)
    source.rows(np.arange(N_ROWS), flat)
    return path, flat


def hierarchy(mode="inclusive", on_late=None, dram_on_late=None):
    store = {"name": "nvme", "model": dict(SLOW)}
    dram = {"name": "dram", "capacity": 40, "policy": "lru", "model": "dram"}
    if on_late:
        store["on_late"] = on_late
    if dram_on_late:
        dram["on_late"] = dram_on_late
    return {"mode": mode, "tier": [dram, store]}


def zipf_steps(n_steps, seed):
    rng = np.random.default_rng(seed)
    return [zipf_keys(int(rng.integers(1, 60)), N_ROWS, 1.1, rng) for _ in range(n_steps)]


def trace_of(steps):
    starts = np.zeros(len(steps) + 1, np.int64)
    np.cumsum([s.size for s in steps], out=starts[1:])
    return RowTrace(np.concatenate(steps), starts, N_ROWS, ROW_BYTES, {})


def test_rows_within_inverts_the_fetch_model():
    model = TierModel("m", latency_s=3e-6, bandwidth_Bps=1e9, parallelism=8)
    n_max = np.array([0, 1, 7, 8, 9, 50, 1000, 10**6])
    for window in (0.0, 2.9e-6, 3e-6 + 8 * 64 / 1e9, 1e-4, 1.0):
        fit = model.rows_within(window, 64, n_max)
        assert np.all(fit <= n_max) and np.all(model.fetch_seconds(fit, 64) <= window)
        more = fit < n_max  # one row more would not fit
        assert np.all(model.fetch_seconds(fit[more] + 1, 64) > window)


def test_off_changes_nothing():
    """The default and an explicit on_late = 'wait' simulate identically, and the config is unchanged."""
    trace = trace_of(zipf_steps(80, seed=1))
    runs = [simulate(trace, Hierarchy.from_dict(h), compute_window_s=WINDOW, progress=False)
            for h in (hierarchy(), hierarchy(on_late="wait"))]
    a, b = (r.to_dict() for r in runs)
    assert a == b and "deadline" not in a and "dropped" not in a["per_step"]
    assert "on_late" not in str(a["config"]["hierarchy"])
    assert runs[0].dropped is None


@pytest.mark.parametrize("overlap", ["parallel", "serial"])
def test_dropping_saves_stall_without_changing_decisions(overlap):
    trace = trace_of(zipf_steps(80, seed=2))
    wait = simulate(trace, Hierarchy.from_dict(hierarchy()), compute_window_s=WINDOW, overlap=overlap, progress=False)
    drop = simulate(trace, Hierarchy.from_dict(hierarchy(on_late="drop")), compute_window_s=WINDOW, overlap=overlap,
                    progress=False)
    np.testing.assert_array_equal(drop.served, wait.served)  # the policies decide as before
    assert [t["hits"] for t in drop.tier_stats()] == [t["hits"] for t in wait.tier_stats()]
    assert drop.dropped[0].sum() == 0 and drop.dropped[1].sum() > 0  # only the lossy tier drops
    assert np.all(drop.stall_s <= wait.stall_s) and drop.stall_s.sum() < wait.stall_s.sum()
    np.testing.assert_array_equal(drop.waiting_stall_s, wait.stall_s)
    if overlap == "parallel":  # the slow store is the only tier that stalls: dropping removes all of it
        assert drop.stall_s.max() <= 0.0
    kept = drop.served[1] - drop.dropped[1]
    assert np.all(Hierarchy.from_dict(hierarchy()).store.model.fetch_seconds(kept, ROW_BYTES) <= WINDOW)
    summary = drop.summary()["deadline"]
    assert summary["dropped_rows"] == int(drop.dropped.sum())
    assert summary["dropped_fraction"] == pytest.approx(drop.dropped.sum() / drop.unique.sum())
    assert summary["stall_saved_seconds"] == pytest.approx(wait.stall_s.sum() - drop.stall_s.sum())


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("shared", [False, True])
def test_runtime_zeroes_exactly_the_simulators_dropped_rows(table_dir, monkeypatch, mode, shared):
    """``shared``: every step copies its slab rows on a helper thread while it decides (as large steps
    do, the threshold lowered to one row), and the late rows are zeroed after."""
    if shared:
        monkeypatch.setattr(step, "SHARED_MIN_ROWS", 1)
    path, flat = table_dir
    steps = zipf_steps(60, seed=3)
    spec = hierarchy(mode, on_late="drop")
    dropped_total = 0
    with open_table(spec, path, device="cpu", compute_window_s=WINDOW, record_trace=True) as table:
        outputs = [table.prefetch(torch.from_numpy(ids)).wait().numpy() for ids in steps]
        table.finish()
        per_step, stats = table.step_records(), table.stats()
        trace = table.recorded_trace()
    sim = simulate(trace, Hierarchy.from_dict(spec), compute_window_s=WINDOW, progress=False)
    runtime_dropped = np.array([[s["dropped"][name] for s in per_step] for name in ("dram", "nvme")])
    np.testing.assert_array_equal(runtime_dropped, sim.dropped)
    for ids, got, n_dropped in zip(steps, outputs, sim.dropped.sum(axis=0), strict=True):
        zero = ~got.any(axis=1)
        np.testing.assert_array_equal(got[~zero], flat[ids[~zero]])  # every other row: the flat table's bytes
        assert np.unique(ids[zero]).size == n_dropped  # the zero rows are exactly the dropped unique rows
        dropped_total += n_dropped
    assert dropped_total > 0 and stats["dropped_rows"] == dropped_total


def test_runtime_off_is_the_flat_table_and_records_no_drops(table_dir):
    path, flat = table_dir
    with open_table(hierarchy(), path, device="cpu", compute_window_s=WINDOW) as table:
        for ids in zipf_steps(20, seed=4):
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
        table.finish()
        assert "dropped" not in table.step_records()[0] and "dropped_rows" not in table.stats()


@pytest.mark.parametrize("value", ["late", 1, True, "Drop"])
def test_bad_on_late_is_one_line(value):
    spec = hierarchy()
    spec["tier"][1]["on_late"] = value
    with pytest.raises(EngramTierError, match="on_late must be one of 'wait', 'drop'") as err:
        Hierarchy.from_dict(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("window", [None, -1.0, float("nan"), "5us"])
def test_a_lossy_runtime_needs_a_window(table_dir, window):
    with pytest.raises(EngramTierError, match="needs compute_window_s") as err:
        open_table(hierarchy(on_late="drop"), table_dir[0], device="cpu", compute_window_s=window)
    assert "\n" not in str(err.value)


def test_simulate_command_reports_the_dropped_rows(tmp_path, capsys):
    from engramtier.cli import main

    trace = tmp_path / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "3000", "--tokens", "8000", "--table-size", "10007",
                 "--layers", "1", "--heads", "2", "--batch", "4", "--seq-len", "256", "-o", str(trace), "--quiet"]) == 0
    tiers = '[[tier]]\nname = "gpu"\ncapacity = 300\npolicy = "lru"\nmodel = "hbm"\n[[tier]]\nname = "nvme"\nmodel = "nvme"\n'
    timing = "[timing]\nwindow_per_token_s = 1e-8\ncompute_per_token_s = 3e-6\n"
    runs = {}
    for name, late in (("wait", ""), ("drop", 'on_late = "drop"\n')):
        (tmp_path / f"{name}.toml").write_text(tiers + late + timing)
        capsys.readouterr()
        assert main(["simulate", "--hierarchy", str(tmp_path / f"{name}.toml"), str(trace), "--out",
                     str(tmp_path / name), "--quiet"]) == 0
        runs[name] = (capsys.readouterr().out, json.loads((tmp_path / name / "summary.json").read_text())["simulation"])
    (waited, wait), (printed, drop) = runs["wait"], runs["drop"]
    assert "deadline" not in wait and "deadline-bounded" not in waited
    late = drop["deadline"]
    assert late["dropped_rows"] > 0 and f"{late['dropped_rows']:,} rows dropped" in printed
    assert late["waiting_stall_seconds"] == pytest.approx(wait["stall_seconds"])
    assert drop["stall_seconds"] < wait["stall_seconds"]
