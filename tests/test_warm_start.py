"""Warm start (`engramtier.cache.warm`): caches opened holding a profile's hottest rows start hitting at
once, through the policies' own admit path, in each mode's shape; bad profiles are refused in one line."""

from dataclasses import replace

import numpy as np
import pytest
from reference_policies import PyLRU
from zipf import zipf_keys

from engramtier.cache.engine import Engine
from engramtier.cache.hierarchy import Hierarchy, load_hierarchy
from engramtier.cache.policy import PolicyContext, make_policy
from engramtier.cache.simulator import simulate
from engramtier.cache.warm import warm_rows
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import save_trace

N_ROWS, STEP = 5000, 200
POPULARITY = np.random.default_rng(9).permutation(N_ROWS)  # rank -> row id, one for every draw: not id order


def zipf_rows(n, seed):
    return POPULARITY[zipf_keys(n, N_ROWS, 1.0, seed)]


def zipf_trace(n_steps, seed):
    rows = zipf_rows(n_steps * STEP, seed)
    return RowTrace(rows, np.arange(0, rows.size + 1, STEP, dtype=np.int64), N_ROWS, 16, {})


def hierarchy(mode="inclusive", top="lru", middle="lru"):
    return Hierarchy.from_dict({"mode": mode, "tier": [
        {"name": "gpu", "capacity": 100, "policy": top, "model": "hbm"},
        {"name": "dram", "capacity": 400, "policy": middle, "model": "dram"},
        {"name": "nvme", "model": "nvme"}]})


@pytest.fixture(scope="module")
def profile():
    """Requests per row of a profiling run: the same popularity, other draws than the measured trace."""
    return np.bincount(zipf_rows(40 * STEP, 0), minlength=N_ROWS)


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("top", ["lru", "s3fifo"])
def test_a_warm_start_raises_the_first_steps_hit_rate(profile, mode, top):
    trace = zipf_trace(30, seed=1)
    cold = simulate(trace, hierarchy(mode, top), compute_window_s=1e-5, progress=False)
    warm = simulate(trace, hierarchy(mode, top).with_warm(profile), compute_window_s=1e-5, progress=False)
    c, w = cold.first_steps(5), warm.first_steps(5)
    assert w["served_share"]["gpu"] > 1.5 * c["served_share"]["gpu"]
    assert w["served_share"]["nvme"] < c["served_share"]["nvme"]
    assert w["stall_seconds"] < c["stall_seconds"]
    held = [t["warm_rows"] for t in warm.tier_stats()][:2]
    assert held == [100, 400] if top == "lru" else 0 < held[0] <= 100 and 0 < held[1] <= 400
    assert all(t["warm_rows"] == 0 for t in cold.tier_stats())


def test_warm_sets_per_mode(profile):
    caps = [100, 400]
    inclusive = warm_rows(hierarchy().with_warm(profile), caps, N_ROWS)
    exclusive = warm_rows(hierarchy("exclusive").with_warm(profile), caps, N_ROWS)
    ranked = np.lexsort((np.arange(N_ROWS), -profile))
    assert inclusive[0][::-1].tolist() == ranked[:100].tolist()  # coldest first: the hottest admitted last
    assert inclusive[1][::-1].tolist() == ranked[:400].tolist()  # the lower tier's set holds the upper's
    assert exclusive[1][::-1].tolist() == ranked[100:500].tolist()  # the next-hottest slice
    gpu, *rest = hierarchy().tiers
    only_gpu = Hierarchy((replace(gpu, warm=profile), *rest))
    assert warm_rows(only_gpu, caps, N_ROWS)[1] is None
    sparse = np.zeros(N_ROWS, np.int64)
    sparse[[5, 9]] = [1, 3]
    assert [r.tolist() for r in warm_rows(hierarchy().with_warm(sparse), caps, N_ROWS)] == [[5, 9], [5, 9]]


def test_profiles_from_files_relative_to_the_toml(tmp_path, profile):
    np.save(tmp_path / "profile.npy", profile)
    save_trace(zipf_trace(10, seed=3), tmp_path / "profile.trace")
    for name in ("profile.npy", "profile.trace"):
        (tmp_path / "h.toml").write_text(
            'mode = "inclusive"\n[[tier]]\nname = "gpu"\ncapacity = 100\npolicy = "lru"\nmodel = "hbm"\n'
            f'warm = "{name}"\n[[tier]]\nname = "nvme"\nmodel = "nvme"\n')
        h = load_hierarchy(tmp_path / "h.toml")
        assert h.caches[0].to_dict()["warm"] == str(tmp_path / name)
        rows = warm_rows(h, [100], N_ROWS)[0]
        assert rows.size == 100


def test_bad_profiles_are_refused_in_one_line(tmp_path, profile):
    caps = [100, 400]
    np.save(tmp_path / "short.npy", profile[:-1])
    negative = profile.copy()
    negative[3] = -1
    cases = [
        (profile[:-1], r"tier 'gpu': the warm profile must hold one count per table row \(5000\), got int64\[4999\]"),
        (negative, "tier 'gpu': the warm profile holds a negative or non-finite count"),
        (str(tmp_path / "missing.npy"), "warm profile .*missing.npy does not exist"),
        (str(tmp_path / "short.npy"), r"short.npy must hold one count per table row \(5000\)"),
    ]
    for source, message in cases:
        with pytest.raises(EngramTierError, match=message) as err:
            warm_rows(hierarchy().with_warm(source), caps, N_ROWS)
        assert "\n" not in str(err.value)
    with pytest.raises(EngramTierError, match="policy 'belady' takes no warm start"):
        simulate(zipf_trace(2, 0), hierarchy(top="belady").with_warm(profile), compute_window_s=0.0, progress=False)
    with pytest.raises(EngramTierError, match="the backing store and holds every row already"):
        Hierarchy.from_dict({"tier": [{"name": "nvme", "model": "nvme", "warm": "p.npy"}]})
    with pytest.raises(EngramTierError, match="warm must be a profile's path"):
        Hierarchy.from_dict({"tier": [{"name": "gpu", "capacity": 4, "policy": "lru", "model": "hbm", "warm": 3},
                                      {"name": "nvme", "model": "nvme"}]})
    with pytest.raises(EngramTierError, match="cold-start window must be a positive number of steps"):
        simulate(zipf_trace(2, 0), hierarchy(), compute_window_s=0.0, progress=False).first_steps(0)


def test_engine_warm_is_the_policys_own_admit_path_compiled_or_python():
    """The hottest row (admitted last) is the most recently used: LRU evicts the coldest warm row first,
    the same in a built-in and in a plain-Python policy (the Python driver path)."""
    for policy in (make_policy("lru", 3, PolicyContext(n_keys=10)), PyLRU(3)):
        engine = Engine([policy], "inclusive", 10)
        assert engine.warm([np.array([4, 7, 1, 2])]) == [3]  # 4 came first: pushed out by the fourth
        assert [policy.contains(k) for k in (4, 7, 1, 2)] == [False, True, True, True]
        engine.feed(np.array([5]), np.array([0]), np.array([0, 1]))  # a miss evicts the coldest warm row, 7
        assert [policy.contains(k) for k in (7, 1, 2, 5)] == [False, True, True, True]
        assert engine.tier_counts()[0]["lookups"] == 1  # warming counted no lookup


@pytest.mark.parametrize("name", ["arc", "lru"])
def test_engine_warm_leaves_held_rows_alone_and_refuses_a_row_given_twice(name):
    """`admit` is for rows a policy does not hold: ARC took a held row for a ghost of an empty list and
    divided by zero. Rows a tier holds after lookups stay where they are; the others are admitted."""
    ctx = PolicyContext(n_keys=1000)
    keys = zipf_keys(20_000, 1000, 1.0, 3)
    engine = Engine([make_policy("lru", 100, ctx), make_policy(name, 600, ctx)], "exclusive", 1000)
    engine.feed(keys, np.arange(keys.size), np.array([0, keys.size]))
    lower = engine.policies[1]
    before = {k for k in range(1000) if lower.contains(k)}
    assert engine.warm([None, np.arange(50)]) == [100, 600]
    assert {k for k in range(1000) if lower.contains(k)} >= before & set(range(50))
    with pytest.raises(EngramTierError, match="key 7 appears 2 times in cache tier 1's keys; give each row once"):
        engine.warm([None, np.array([3, 7, 7])])
