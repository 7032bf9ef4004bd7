"""benchmarks/gpu_check.sh's dry run: the script a GPU machine runs, here at tiny shapes on the CPU, so that a
renamed option or a broken benchmark shows on every CI pass, not in the few minutes a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_json(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SKIP_INSTALL": "1",
           "GPU_CHECK_SCRATCH": str(tmp_path / "scratch")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    steps = json.loads((out / "steps.json").read_text())
    assert steps["device"] == "cpu" and steps["ok"] and steps["seconds"] <= steps["budget_s"]
    assert set(steps["steps"]) == {"table", "tests", "tiers", "runtime"}
    assert all(s["exit"] == 0 and s["seconds"] <= s["limit_s"] for s in steps["steps"].values())
    assert "skipped" in steps["tests_summary"]  # the GPU tests, skipped without CUDA

    tiers = json.loads((out / "tiers.json").read_text())
    assert tiers["device"] == "cpu" and tiers["gather"].startswith("skipped: no CUDA")
    assert {r["tier"] for r in tiers["results"]} >= {"gpu-emulated", "dram", "cxl-modeled", "nvme"}

    table = json.loads((out / "runtime-table.json").read_text())["table"]
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["table"] == table and runtime["workload"]["sequences"] == 8
    assert set(runtime["results"]) == {"prefill", "decode"}
    for mode in runtime["results"].values():
        assert set(mode["tiered"]) == {"dram/copy", "dram-nvme/copy"} and mode["flat_tokens_per_s"] > 0
        for entry in mode["tiered"].values():
            assert entry["bitwise_equal"] and entry["simulator_hits_equal"] and entry["tokens_per_s"] > 0
        assert mode["tiered"]["dram/copy"]["served_share"]["dram"] == 1.0  # warmed: every row from dram
    assert not any(p.suffix == ".lmdb" for p in out.rglob("*"))  # tables stay in the scratch folder
