"""Policies named by ``"module:attribute"`` (issue 15): a plain-Python policy module beside a TOML file
runs from `engramtier simulate` and `sweep` with the hit counts of the same policy registered in
process (the LRU-2 of docs/custom_policy.md) or of the built-in it mimics (a Python FIFO vs "fifo"),
and every bad reference is one line, exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from configs import gpu_dram_nvme, hierarchy, zipf_trace

import engramtier.cache.policy as policy_module
from engramtier.analysis.config import load_config
from engramtier.analysis.sweep import hit_rate_sweep, simulate_point
from engramtier.cache.hierarchy import load_hierarchy
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.trace.tracefile import load_trace

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "custom_policy.md"

FIFO = """
from collections import deque


class FIFO:
    def __init__(self, capacity):
        self.capacity, self.queue, self.cached = capacity, deque(), set()

    def lookup(self, key, t):
        return key in self.cached

    def admit(self, key, t):
        victim = -1
        if len(self.cached) >= self.capacity:
            victim = self.queue.popleft()
            self.cached.remove(victim)
        self.queue.append(key)
        self.cached.add(key)
        return victim

    def remove(self, key):
        if key not in self.cached:
            return False
        self.cached.remove(key)
        self.queue.remove(key)
        return True

    def contains(self, key):
        return key in self.cached

    def occupancy(self):
        return len(self.cached)

    def hit_victim(self):
        return -1


class Tunable(FIFO):
    def __init__(self, capacity, ctx, *, slack=0):
        super().__init__(capacity - slack)
        self.n_keys = ctx.n_keys


class HalfPolicy:
    def __init__(self, capacity):
        pass

    def lookup(self, key, t):
        return False


def build_dict(capacity, ctx):
    return {}


class NeedsDepth(FIFO):
    def __init__(self, capacity, depth):
        super().__init__(capacity)


class RaisingInit(FIFO):
    def __init__(self, capacity):
        raise RuntimeError("no room")


def raising_builder(capacity, ctx):
    raise ValueError("bad builder")


class ShortLookup(FIFO):
    def lookup(self, key):
        return key in self.cached


class FailingLookup(FIFO):
    def lookup(self, key, t):
        raise KeyError(key)


class ExitingAdmit(FIFO):
    def admit(self, key, t):
        raise SystemExit(0)


NOT_CALLABLE = 3
"""

EXPERIMENT = zipf_trace(zipf_alpha=1.0, batch=2) + hierarchy(gpu_dram_nvme(150, 600, "{gpu}", "{dram}"), mode="inclusive") + """
[timing]
window_s = 1e-4

[sweep]
sizes = [50, 300]
policies = {policies}
"""

REFS = {"gpu": "user_fifo:FIFO", "dram": "user_lru2:LRU2"}
USER_MODULES = ("user_fifo", "user_lru2", "broken", "exiting")
SAME_REGISTERED = {"gpu": "fifo", "dram": "lru2"}  # built-in FIFO; the doc's module registers "lru2"


@pytest.fixture(autouse=True)
def isolated():
    """Each test imports its policy modules afresh and leaves no registration, reference or module behind."""
    policy_module.policy_names()  # the built-ins registered before the registry is saved
    saved = dict(policy_module._REGISTRY), dict(policy_module._REFERENCES), list(sys.path)
    yield
    for table, before in zip((policy_module._REGISTRY, policy_module._REFERENCES), saved[:2], strict=True):
        table.clear()
        table.update(before)
    for name in USER_MODULES:
        sys.modules.pop(name, None)
    sys.path[:] = saved[2]


def write_modules(directory: Path) -> None:
    """user_fifo.py (the FIFO and bad objects above) and user_lru2.py (the doc's definition block)."""
    (directory / "user_fifo.py").write_text(FIFO)
    doc_block = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)[0]
    (directory / "user_lru2.py").write_text(doc_block)


def experiment(tmp_path: Path, policies=(REFS["gpu"], REFS["dram"], "fifo"), **tiers: str) -> Path:
    write_modules(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT.format(**{**REFS, **tiers}, policies=json.dumps(list(policies))))
    return path


def tier_hits(tiers) -> list[tuple]:
    return [(t["name"], t["hits"]) for t in tiers]


def same_run_with_registered_policies(config: Path, run: Path) -> dict:
    """The run's trace through the same hierarchy with each reference replaced by its registered twin."""
    cfg = load_config(config)
    tiers = tuple(replace(t, policy=SAME_REGISTERED.get(t.name)) for t in cfg.hierarchy.tiers)
    return simulate_point(load_trace(run / "trace.trace"), replace(cfg.hierarchy, tiers=tiers), cfg.timing).summary()


def test_simulate_runs_a_policy_module_beside_the_toml(tmp_path, capsys):
    config, run = experiment(tmp_path), tmp_path / "run"
    assert str(tmp_path) not in sys.path
    assert main(["simulate", str(config), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    tiers = json.loads((run / "summary.json").read_text())["simulation"]["tiers"]
    assert [t["policy"] for t in tiers] == [REFS["gpu"], REFS["dram"], None]
    expected = same_run_with_registered_policies(config, run)["tiers"]
    assert tier_hits(tiers) == tier_hits(expected)
    assert all(t["hits"] > 0 for t in tiers)
    assert str(tmp_path) not in sys.path  # the TOML's directory was searched, not left on the path


def test_sweep_lists_references_under_their_own_name(tmp_path, capsys):
    config, run = experiment(tmp_path), tmp_path / "run"
    assert main(["sweep", str(config), "--stages", "hit_rate", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    hits = {}
    for r in records:
        if r["experiment"] == "hit_rate":
            hits.setdefault(r["policy"], []).append(r["hits"])
    assert set(hits) == {REFS["gpu"], REFS["dram"], "fifo"}
    assert hits[REFS["gpu"]] == hits["fifo"]
    registered = hit_rate_sweep(load_trace(run / "trace.trace"), ["lru2"], [50, 300], progress=False)
    assert hits[REFS["dram"]] == [r["hits"] for r in registered]
    assert hits[REFS["dram"]] != hits["fifo"]


def test_cli_subprocess_with_hierarchy_file(tmp_path):
    config = experiment(tmp_path)
    hierarchy = tmp_path / "h.toml"
    hierarchy.write_text(config.read_text().split("[hierarchy]")[1].split("[sweep]")[0]
                         .replace("hierarchy.tier", "tier"))
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "500", "--tokens", "3000", "--seq-len", "100",
                 "--batch", "2", "--layers", "1", "--heads", "2", "--max-ngram", "2", "--table-size", "1009",
                 "-o", str(tmp_path / "z.trace"), "--quiet"]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "engramtier.cli", "simulate", "--hierarchy", str(hierarchy),
                           str(tmp_path / "z.trace"), "--out", str(run), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tiers = json.loads((run / "summary.json").read_text())["simulation"]["tiers"]
    assert tiers[0]["policy"] == REFS["gpu"]
    cfg = load_config(hierarchy, need_trace=False)
    twin = replace(cfg.hierarchy, tiers=tuple(replace(t, policy=SAME_REGISTERED.get(t.name))
                                              for t in cfg.hierarchy.tiers))
    expected = simulate_point(load_trace(tmp_path / "z.trace"), twin, cfg.timing).summary()["tiers"]
    assert tier_hits(tiers) == tier_hits(expected)


def test_replay_hierarchy_file_finds_the_module_beside_it(tmp_path):
    write_modules(tmp_path)
    path = tmp_path / "h.toml"
    path.write_text('[[tier]]\nname = "dram"\ncapacity = 4\npolicy = "user_fifo:FIFO"\nmodel = "dram"\n'
                    '[[tier]]\nname = "nvme"\nmodel = "nvme"\n')
    (policy,) = load_hierarchy(path).build_policies(PolicyContext(n_keys=16), row_bytes=8)
    keys = np.random.default_rng(1).integers(0, 16, 500)
    assert replay(policy, keys) == replay(make_policy("fifo", 4, PolicyContext(n_keys=16)), keys)


def test_class_with_ctx_and_params_and_a_builder_function(tmp_path, monkeypatch):
    write_modules(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = PolicyContext(n_keys=16)
    tunable = make_policy("user_fifo:Tunable", 5, ctx, slack=1)
    assert tunable.capacity == 4 and tunable.n_keys == 16
    with pytest.raises(EngramTierError, match="unknown parameter.s. ghost; it takes slack"):
        make_policy("user_fifo:Tunable", 5, ctx, ghost=1)
    keys = np.random.default_rng(2).integers(0, 16, 400)
    by_builder = replay(make_policy("user_lru2:build_lru2", 6, ctx), keys)
    assert by_builder == replay(make_policy("user_lru2:LRU2", 6, ctx), keys) == replay(make_policy("lru2", 6, ctx), keys)
    with pytest.raises(EngramTierError, match="policy 'user_fifo:build_dict': its builder returned a dict, which is "
                                              "not a policy: it lacks lookup"):
        make_policy("user_fifo:build_dict", 4, ctx)


@pytest.mark.parametrize("reference, message", [
    ("nomodule:FIFO", "policy 'nomodule:FIFO': no module 'nomodule' on the Python path nor in {dir} (the TOML "
                      "file's directory); add its directory to PYTHONPATH or put the module beside the TOML file"),
    ("user_fifo:FIFI", "policy 'user_fifo:FIFI': module 'user_fifo' ({dir}/user_fifo.py) has no attribute 'FIFI'; "
                       "did you mean 'FIFO'?"),
    ("user_fifo:HalfPolicy", "class HalfPolicy is not a policy: it lacks admit, remove, contains, occupancy, "
                             "hit_victim"),
    ("user_fifo:NOT_CALLABLE", "NOT_CALLABLE is an object of type int, not a policy class or a builder function"),
    ("broken:FIFO", "importing module 'broken' failed: ZeroDivisionError: division by zero"),
    ("exiting:FIFO", "importing module 'exiting' failed: it called sys.exit(0)"),
    ("user_fifo:", "a policy reference is 'module:attribute'"),
    ("user_fifo:NeedsDepth", "policy 'user_fifo:NeedsDepth': it needs parameter(s) depth, which have no default; add "
                             "them to the tier's params table (params = {{depth = ...}})"),
    ("user_fifo:ShortLookup", "class ShortLookup is not a policy: lookup(self, key) cannot be called as lookup(key, t)"),
])
def test_bad_references_are_one_line(tmp_path, capsys, reference, message):
    config = experiment(tmp_path, gpu=reference)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "exiting.py").write_text("import sys\nsys.exit(0)\n")
    assert main(["simulate", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "exp.toml: [hierarchy]: tier 'gpu': " in err and message.format(dir=tmp_path) in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("reference, message", [
    ("user_fifo:RaisingInit", "policy 'user_fifo:RaisingInit': building it failed: RuntimeError: no room"),
    ("user_fifo:raising_builder", "policy 'user_fifo:raising_builder': building it failed: ValueError: bad builder"),
    ("user_fifo:FailingLookup", "policy FailingLookup failed: KeyError: "),
    ("user_fifo:ExitingAdmit", "policy ExitingAdmit failed: it called sys.exit(0)"),
])
def test_a_policy_raising_when_built_or_run_is_one_line(tmp_path, capsys, reference, message):
    assert main(["simulate", str(experiment(tmp_path, gpu=reference)), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_reference_in_sweep_policies(tmp_path, capsys):
    config = experiment(tmp_path, policies=["lru", "user_fifo:Fifo"])
    assert main(["sweep", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "exp.toml: [sweep]: policy 'user_fifo:Fifo': module 'user_fifo'" in err and "did you mean 'FIFO'?" in err


def test_unknown_plain_name_is_refused_as_before(tmp_path, capsys):
    config = experiment(tmp_path, gpu="lur")
    assert main(["simulate", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "tier 'gpu': unknown policy 'lur': did you mean 'lru'?" in capsys.readouterr().err
