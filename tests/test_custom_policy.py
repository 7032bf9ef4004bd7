"""The plain-Python policy example of docs/custom_policy.md, executed from the page itself so the page
cannot rot, checked against a brute-force LRU-2 that rebuilds each row's history from the trace."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engramtier.cache.policy as policy_module
from engramtier.cache.mrc import sweep
from engramtier.cache.policy import PolicyContext, is_compiled, make_policy, replay

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_policy.md"


def doc_code_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def lru2_registered():
    """Run the page's definition block against a private copy of the registry, restored afterwards."""
    policy_module.policy_names()  # the built-ins registered first, or the restore would drop them
    saved = dict(policy_module._REGISTRY)
    namespace = {}
    exec(compile(doc_code_blocks()[0], str(DOC), "exec"), namespace)
    yield namespace
    policy_module._REGISTRY.clear()
    policy_module._REGISTRY.update(saved)


def brute_lru2_hits(keys, capacity):
    cache, hits = set(), []
    for t, k in enumerate(keys):
        hits.append(k in cache)
        if k in cache:
            continue
        if len(cache) == capacity:
            def rank(c, t=t):
                seen = [u for u in range(t) if keys[u] == c]
                return (seen[-2] if len(seen) > 1 else -1, seen[-1])

            cache.remove(min(cache, key=rank))
        cache.add(k)
    return hits


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 15), min_size=1, max_size=150), capacity=st.integers(1, 8))
def test_documented_policy_matches_brute_force(lru2_registered, keys, capacity):
    policy = make_policy("lru2", capacity, PolicyContext(n_keys=16))
    assert not is_compiled(policy)
    hits = np.empty(len(keys), np.bool_)
    replay(policy, np.array(keys), hits)
    assert hits.tolist() == brute_lru2_hits(keys, capacity)
    assert policy.occupancy() == min(capacity, len(set(keys)))


def test_documented_policy_differs_from_lru_where_lru2_should(lru2_registered):
    # 0 and 1 are requested twice, then a scan of one-off rows: LRU-2 keeps 0 and 1, LRU loses them.
    keys = np.array([0, 1, 0, 1, 2, 3, 4, 0, 1])
    ctx = PolicyContext(n_keys=5)
    assert replay(make_policy("lru2", 3, ctx), keys) == 4
    assert replay(make_policy("lru", 3, ctx), keys) == 2


def test_documented_usage_runs_and_sweep_matches_replay(lru2_registered, capsys):
    namespace = {}
    exec(compile(doc_code_blocks()[1], str(DOC), "exec"), namespace)
    keys, ctx, curve = namespace["keys"], namespace["ctx"], namespace["curve"]
    assert curve.hits.tolist() == [replay(make_policy("lru2", s, ctx), keys) for s in (10, 100, 500)]
    assert namespace["hits"] == curve.hits[1]
    assert sweep(keys, "lru2", [10, 100, 500], ctx, workers=3).hits.tolist() == curve.hits.tolist()
    assert str(namespace["hits"]) in capsys.readouterr().out


def test_remove_contains_occupancy(lru2_registered):
    policy = lru2_registered["LRU2"](2)
    assert policy.admit(5, 0) == -1 and policy.admit(6, 1) == -1
    assert policy.remove(5) and not policy.remove(5) and not policy.contains(5)
    assert policy.occupancy() == 1 and policy.lookup(6, 2) and not policy.lookup(5, 3)


def test_registering_a_taken_name_fails(lru2_registered):
    with pytest.raises(ValueError, match="registered twice"):
        policy_module.register("lru2")(lru2_registered["build_lru2"])
