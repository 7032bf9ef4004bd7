"""benchmarks/gpu_check.sh's dry run: the script a GPU machine runs, here at tiny shapes on the CPU, so a
renamed option or a broken benchmark shows on every CI pass, not in the few minutes a GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_writes_every_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SKIP_INSTALL": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--device", "cpu", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps["device"] == "cpu" and all(steps[s]["exit"] == 0 for s in ("tests", "gather", "tiers", "runtime"))
    gather = json.loads((tmp_path / "gather.json").read_text())
    assert gather["gather_then_copy"]["gbps"] > 0 and gather["uva_gather"].startswith("skipped")
    tiers = json.loads((tmp_path / "tiers.json").read_text())
    assert tiers["device"] == "cpu" and any(r["tier"] == "gpu-emulated" for r in tiers["results"])
    runtime = json.loads((tmp_path / "runtime.json").read_text())
    assert all(r["bitwise_equal"] and r["simulator_hits_equal"] for r in runtime["results"].values())
    assert not (tmp_path / "tier-tables").exists() and not (tmp_path / "runtime-tables").exists()
