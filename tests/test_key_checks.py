"""Keys crossing into compiled code are range-checked (issue 22, part 4): a built-in policy called from
Python with a key outside its table, `replay` over such keys, and a user policy whose ``admit`` or
``hit_victim`` names a key outside the table, through `simulate`, `replay` and `generate`, are each one
line (exit status 2 on the command line), never a segfault or silent garbage.

Compiled code does not bound-check, so a regression here crashes the process: every case runs in a
subprocess, where a crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from configs import gpu_dram_nvme, hierarchy_file

from engramtier.serve.replay import random_run
from engramtier.trace.sources import sample_text_dir

TIMEOUT_S = 300

# The Python API cases: each line of output is [case, exception type, message].
API_SCRIPT = r"""
import json
import numpy as np
from engramtier.cache.engine import Engine
from engramtier.cache.mrc import sweep
from engramtier.cache.policy import PolicyContext, make_policy, replay

keys = np.random.default_rng(0).zipf(1.2, 20_000)  # docs/custom_policy.md's trace without its % 1_000
ctx = PolicyContext(n_keys=1_000)
trace = np.arange(50) % 7
cases = {}
for name in ("lru", "s3fifo", "wtinylfu", "arc", "lfu"):
    cases[f"{name}-replay"] = lambda name=name: replay(make_policy(name, 100, ctx), keys)
    cases[f"{name}-lookup"] = lambda name=name: make_policy(name, 100, ctx).lookup(1_000, 0)
    cases[f"{name}-admit"] = lambda name=name: make_policy(name, 100, ctx).admit(10**12, 0)
    cases[f"{name}-remove"] = lambda name=name: make_policy(name, 100, ctx).remove(-1)
    cases[f"{name}-contains"] = lambda name=name: make_policy(name, 100, ctx).contains(5_000)
cases["hashed-lru-admit"] = lambda: make_policy("lru", 10, PolicyContext(n_keys=1_000, hashed=True)).admit(1_000, 0)
cases["static-lookup"] = lambda: make_policy("static", 5, PolicyContext(n_keys=7, keys=trace)).lookup(7, 0)
cases["belady-admit"] = lambda: make_policy("belady", 5, PolicyContext(n_keys=7, keys=trace)).admit(-3, 0)
cases["sweep"] = lambda: sweep(keys, "lru", [10, 100], ctx)
cases["engine-feed"] = lambda: Engine([make_policy("lru", 10, ctx)], "inclusive", 1_000).feed(
    np.array([3, 1_000]), np.arange(2), np.array([0, 2]))
cases["engine-steps"] = lambda: Engine([make_policy("lru", 10, ctx)], "inclusive", 1_000).feed(
    np.array([3, 4]), np.arange(2), np.array([0, 9]))
for case, call in cases.items():
    try:
        call()
        print(json.dumps([case, None, ""]), flush=True)
    except Exception as err:
        print(json.dumps([case, type(err).__name__, str(err)]), flush=True)
"""

POLICIES = """
class FIFO:
    def __init__(self, capacity):
        self.capacity, self.held = capacity, []

    def lookup(self, key, t):
        return key in self.held

    def admit(self, key, t):
        self.held.append(key)
        return self.victim(self.held.pop(0)) if len(self.held) > self.capacity else -1

    def victim(self, key):
        return key

    def remove(self, key):
        if key in self.held:
            self.held.remove(key)
            return True
        return False

    def contains(self, key):
        return key in self.held

    def occupancy(self):
        return len(self.held)

    def hit_victim(self):
        return -1


class FarVictim(FIFO):
    def victim(self, key):
        return 10**12


class NoVictim(FIFO):
    def victim(self, key):
        return None


class HitEvicts(FIFO):
    def hit_victim(self):
        return -7
"""

HIERARCHY = hierarchy_file(gpu_dram_nvme(20, 60, "{policy}"), mode="exclusive") + "[timing]\nwindow_s = 1e-4\n"


def test_python_api_refuses_keys_outside_the_policy():
    done = subprocess.run([sys.executable, "-c", API_SCRIPT], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"exit {done.returncode} (negative: killed by a signal)\n{done.stderr[-3000:]}"
    outcomes = {case: (kind, message) for case, kind, message in map(json.loads, done.stdout.splitlines())}
    assert len(outcomes) == 31, outcomes
    for case, (kind, message) in outcomes.items():
        assert kind == "EngramTierError" and "\n" not in message, (case, kind, message)
        if case == "engine-steps":
            assert "step_starts must rise from 0 to the 2 lookups" in message
        elif case != "sweep":
            assert "lies outside" in message and "keys [0, " in message, (case, message)
    assert "key 1000000000000 lies outside its keys [0, 1000)" in outcomes["lru-admit"][1]
    assert outcomes["belady-admit"][1].startswith("policy Belady: key -3 lies outside its keys [0, 7)")
    assert outcomes["static-lookup"][1].startswith("policy static: key 7 lies outside its keys [0, 7)")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("key_checks")
    text = root / "text"
    text.mkdir()
    shutil.copy(sample_text_dir() / "tutorial-appetite.rst.txt", text)
    random_run(root / "model", text, tokenizer="bpe:300", seq_len=32, d_model=32, n_layers=3, n_heads=2,
               engram_layers=(0, 2), table_size=101, hash_heads=2, row_dim=16)
    (root / "bad_policies.py").write_text(POLICIES)
    for policy in ("FarVictim", "NoVictim", "HitEvicts"):
        (root / f"{policy}.toml").write_text(HIERARCHY.format(policy=f"bad_policies:{policy}"))
    (root / "prompts.txt").write_text("Python is\nThe interpreter\n")
    zipf = "--synthetic-zipf 1.0 --vocab 1000 --tokens 5000 --batch 1 --seq-len 50 --table-size 1009 --layers 1 --heads 2"
    done = subprocess.run([sys.executable, "-m", "engramtier.cli", "trace", *zipf.split(), "--quiet", "-o",
                           str(root / "zipf.trace")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("command,policy,said", [
    ("simulate", "FarVictim", "admit("),
    ("simulate", "HitEvicts", "hit_victim() returned -7"),
    ("replay", "FarVictim", "returned 1000000000000"),
    ("generate", "NoVictim", "returned None"),
])
def test_a_policy_naming_a_key_outside_the_table_is_refused(workdir, command, policy, said):
    hierarchy = str(workdir / f"{policy}.toml")
    argv = {
        "simulate": ["simulate", "--hierarchy", hierarchy, str(workdir / "zipf.trace"), "--quiet"],
        "replay": ["replay", "--run", str(workdir / "model"), "--text", str(workdir / "text"), "--device", "cpu",
                   "--max-tokens", "100", "--hierarchy", hierarchy],
        "generate": ["generate", "--run", str(workdir / "model"), "--prompts", str(workdir / "prompts.txt"),
                     "--device", "cpu", "--max-new-tokens", "20", "--hierarchy", hierarchy],
    }[command]
    if command != "generate":
        argv += ["--out", str(workdir / f"{command}-{policy}")]
    done = subprocess.run([sys.executable, "-m", "engramtier.cli", *argv], capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=workdir)
    assert done.returncode == 2, f"exit {done.returncode} (negative: killed by a signal)\n{done.stderr[-3000:]}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"policy {policy}: " in lines[0] and said in lines[0], done.stderr
    assert "a key in [0, " in lines[0]
