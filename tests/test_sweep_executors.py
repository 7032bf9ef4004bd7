"""Where sweep points run: the executor option's refusals, and on a local Ray cluster of two CPUs the
local run's records exactly, progress shown, and a task whose worker process dies run again."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from configs import gpu_over_nvme, hierarchy_file, zipf_trace
from zipf import zipf_keys

from engramtier.analysis.config import TimingConfig
from engramtier.analysis.executors import LocalExecutor, parse_executor
from engramtier.analysis.sweep import hit_rate_sweep, stall_sweep
from engramtier.cache.hierarchy import Hierarchy
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("text,kind,address", [("local", "local", None), ("ray", "ray", None),
                                               ("ray:auto", "ray", "auto"), ("ray:ray://head:10001", "ray", "ray://head:10001")])
def test_executor_names_parse(text, kind, address):
    assert parse_executor(text) == (kind, address)


@pytest.mark.parametrize("text", ["threads", "ray:", "local:4", "Ray"])
def test_a_bad_executor_is_one_line(text):
    with pytest.raises(EngramTierError, match="write local, ray, or ray:ADDRESS"):
        parse_executor(text)


@pytest.fixture(scope="module")
def trace() -> RowTrace:
    rows = zipf_keys(20_000, 3_000, 0.9, np.random.default_rng(3), shuffle=True).astype(np.int64)
    return RowTrace(rows, np.arange(0, rows.size + 1, 200, dtype=np.int64), 3_000, 160, {"rows_per_token": 4})


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of two CPUs whose files stay in this test's temp dirs (Ray writes a token under
    HOME, sockets under a short temp dir); its workers import the test-side policy modules."""
    ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'engramtier[ray]')")
    home = tmp_path_factory.mktemp("ray-home")
    sockets = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # unix socket paths must stay short
    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=sockets,
             runtime_env={"env_vars": {"PYTHONPATH": path, "ENGRAMTIER_TEST_DIE_ONCE": str(home / "died")}})
    try:
        yield home / "died"
    finally:
        ray.shutdown()
        shutil.rmtree(sockets, ignore_errors=True)
        if saved_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved_home


@pytest.mark.slow
def test_sweeps_on_ray_equal_the_local_run_and_show_progress(trace, ray_cluster, capfd):
    from engramtier.analysis.executors import RayExecutor

    executor = RayExecutor()
    assert not executor.started and executor.describe() == "ray, 2 CPUs"  # it joined the cluster, not a new one
    policies, sizes = ["lru", "fifo", "belady"], [50, 200, 800]  # few policy types: each worker compiles each
    local = hit_rate_sweep(trace, policies, sizes, executor=LocalExecutor(2), progress=False)
    assert hit_rate_sweep(trace, policies, sizes, executor=executor, progress=True) == local
    err = capfd.readouterr().err  # lru's curve is one point, each other policy one a size: 7
    assert "hit-rate sweep (ray): 100%" in err and "7/7" in err
    hierarchy = Hierarchy.from_dict({"mode": "exclusive", "tier": [
        {"name": "gpu", "capacity": 30, "policy": "fifo", "model": "hbm", "admission": "bloom"},
        {"name": "dram", "capacity": 200, "policy": "lru", "model": "dram"}, {"name": "nvme", "model": "nvme"}]})
    timing = TimingConfig(window_s=2e-5)
    grid = {"gpu": [10, 40], "dram": [100, 400]}
    assert (stall_sweep(trace, hierarchy, grid, timing, executor=executor, progress=False)
            == stall_sweep(trace, hierarchy, grid, timing, workers=2, progress=False))


@pytest.mark.slow
def test_a_task_whose_worker_dies_is_run_again(trace, ray_cluster):
    from engramtier.analysis.executors import RayExecutor

    assert not ray_cluster.exists()
    sizes = [50, 400]
    on_ray = hit_rate_sweep(trace, ["die_once:LRUThatDiesOnce"], sizes, executor=RayExecutor(), progress=False)
    assert ray_cluster.exists()  # a worker ended itself building the policy; its task ran again
    local = hit_rate_sweep(trace, ["reference_policies:PyLRU"], sizes, workers=1, progress=False)
    assert [r["hits"] for r in on_ray] == [r["hits"] for r in local] and all(r["hits"] > 0 for r in local)


@pytest.mark.slow
def test_sweep_command_on_ray_writes_the_local_curves(tmp_path, ray_cluster, capsys):
    from engramtier.cli import main

    config = tmp_path / "x.toml"
    config.write_text(zipf_trace(zipf_alpha=1.0, vocab=2000, max_ngram=None) + hierarchy_file(gpu_over_nvme(100))
                      + '[timing]\nwindow_s = 1e-5\n[sweep]\npolicies = ["lru", "fifo"]\nsizes = [200, 1000]\n')
    runs = [tmp_path / "local", tmp_path / "ray"]
    assert main(["sweep", str(config), "--out", str(runs[0]), "--quiet"]) == 0
    assert main(["sweep", str(config), "--executor", "ray", "--out", str(runs[1]), "--quiet"]) == 0
    assert "sweep points on ray, 2 CPUs" in capsys.readouterr().out
    assert (runs[0] / "hit_rate.csv").read_text() == (runs[1] / "hit_rate.csv").read_text()
    assert main(["sweep", str(config), "--executor", "ray", "--workers", "2", "--out", str(tmp_path / "w")]) == 2
    assert "leave --workers out with --executor ray" in capsys.readouterr().err
