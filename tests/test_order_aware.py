"""Order-aware placement: per-order statistics against brute force, and the partitioned policy against
its inner policy per order (exact hits, shares never exceeded, refusals in one line)."""

from __future__ import annotations

import bisect
from collections import Counter

import numpy as np
import pytest
from zipf import zipf_keys

from engramtier.cache.policies.partitioned import Partitioned
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace.build import StepPlan, build_trace, hasher_for
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.sources import ZipfSource
from engramtier.trace.stats import trace_stats, zipf_alpha_mle

N_KEYS = 400
# one layer, orders 2-4, two heads: six sub-tables of unequal (prime-like) sizes
LAYOUT = SubtableLayout(np.array([61, 67, 71, 59, 73, 69]), (1,), 2, 4)


def test_per_order_and_per_head_stats_match_brute_force():
    source = ZipfSource(1.0, vocab=200, n_tokens=3000, seed=3, doc_len=64)
    hasher = hasher_for(source, 211, (2, 5), 3, 4, 1)
    trace = build_trace(source, hasher, StepPlan("prefill", batch=2, seq_len=64))
    by_order = trace_stats(trace).stats_dict()["subtables"]["by_order"]
    ends = np.cumsum(hasher.subtable_sizes).tolist()
    groups: dict[tuple[int, int], Counter] = {}
    for k in trace.rows.tolist():
        i = bisect.bisect_right(ends, k)  # sub-table: layer-major, then order, then head
        order, head = 2 + (i // 3) % 3, i % 3
        groups.setdefault((order, head), Counter())[k] += 1
    assert [o["order"] for o in by_order] == [2, 3, 4]
    for o in by_order:
        rows = sum((groups[(o["order"], h)] for h in range(3)), Counter())
        assert o["requests"] == sum(rows.values()) == 2 * 3 * 3000  # 2 layers x 3 heads, every token
        assert o["unique_rows"] == len(rows)
        assert o["reuse"] == pytest.approx(sum(rows.values()) / len(rows))
        assert o["zipf_alpha"] == pytest.approx(zipf_alpha_mle(np.array(list(rows.values()))))
        for h in o["heads"]:
            counts = groups[(o["order"], h["head"])]
            assert (h["requests"], h["unique_rows"]) == (sum(counts.values()), len(counts))
            assert h["zipf_alpha"] == pytest.approx(zipf_alpha_mle(np.array(list(counts.values()))))
    # the observation: higher orders draw more distinct rows, so each is reused less
    assert by_order[0]["unique_rows"] < by_order[1]["unique_rows"] < by_order[2]["unique_rows"]
    assert by_order[0]["reuse"] > by_order[2]["reuse"]


@pytest.mark.parametrize("inner", ["lru", "s3fifo", "arc", "twoq", "wtinylfu", "clock"])
@pytest.mark.parametrize("shares", [{"2": 1.0}, "profile"])
def test_one_order_is_its_inner_policy_exactly(inner, shares):
    layout = SubtableLayout(np.array([200, 200]), (1,), 2, 2)  # order 2 only
    keys = zipf_keys(5000, N_KEYS, 0.9, 7, shuffle=True)
    ctx = PolicyContext(n_keys=N_KEYS, keys=keys, layout=layout)
    want, got = np.empty(keys.size, bool), np.empty(keys.size, bool)
    replay(make_policy(inner, 120, ctx), keys, want)
    policy = make_policy("partitioned", 120, ctx, inner=inner, shares=shares)
    assert policy.rows == {2: 120}
    replay(policy, keys, got)
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < keys.size


def test_fixed_shares_keep_each_order_to_its_rows_and_run_the_inner_policy_per_order():
    keys = zipf_keys(8000, N_KEYS, 0.8, 3, shuffle=True)
    ctx = PolicyContext(n_keys=N_KEYS, layout=LAYOUT)
    policy = make_policy("partitioned", 41, ctx, shares={"2": 0.25, 3: 0.5})  # order 4 gets none
    assert policy.rows == {2: 10, 3: 20}
    order = LAYOUT.order_of(np.arange(N_KEYS))
    hits = np.empty(keys.size, bool)
    for t, k in enumerate(keys):
        hits[t] = policy.lookup(k, t) or policy.admit(k, t) == -2  # admit never returns -2: a miss
        held = policy.part_occupancy()
        assert held[2] <= 10 and held[3] <= 20 and policy.occupancy() == held[2] + held[3]
    assert policy.part_occupancy() == {2: 10, 3: 20}  # both shares fill up
    assert not any(policy.contains(k) for k in np.flatnonzero(order == 4))  # declined rows are never held
    assert not hits[order[keys] == 4].any()
    for o, rows in policy.rows.items():  # each order hits exactly as an LRU of its share over its own requests
        alone = np.empty(int((order[keys] == o).sum()), bool)
        replay(make_policy("lru", rows, ctx), keys[order[keys] == o], alone)
        np.testing.assert_array_equal(hits[order[keys] == o], alone)


def test_profile_shares_follow_the_orders_hit_curves():
    rng = np.random.default_rng(0)
    order = LAYOUT.order_of(np.arange(N_KEYS))
    hot = rng.choice(np.flatnonzero(order == 2), 12, replace=False)  # 12 bigram rows, reused over and over
    scan = rng.permutation(np.flatnonzero(order == 3))  # trigram rows, each read once
    stream = []
    for i, s in enumerate(scan):
        stream += [s, hot[i % hot.size], hot[(i + 5) % hot.size], hot[(i + 9) % hot.size]]
    keys = np.array(stream, np.int64)
    ctx = PolicyContext(n_keys=N_KEYS, keys=keys, layout=LAYOUT)
    policy = make_policy("partitioned", 16, ctx, shares="profile")
    assert policy.rows == {2: 16}  # the scan gains nothing from rows, so it gets none
    assert replay(policy, keys) > replay(make_policy("lru", 16, ctx), keys)  # and the shared LRU loses to it
    # without a trace the profile's counts decide, as for a static (preloaded) cache of each order's hottest
    # rows: the 12 hot rows first, then scan rows, which a preloaded cache would serve once each
    counts = np.bincount(keys, minlength=N_KEYS)
    assert make_policy("partitioned", 16, PolicyContext(n_keys=N_KEYS, profile=counts, layout=LAYOUT)).rows == {2: 12, 3: 4}


@pytest.mark.parametrize("params,ctx,message", [
    ({"shares": {"2": 0.6, "3": 0.5}}, None, "shares add up to 1.1, more than the whole capacity"),
    ({"shares": {"5": 0.5}}, None, "shares name order '5', but the table has orders 2, 3, 4"),
    ({"shares": {"two": 0.5}}, None, "shares name order 'two'"),
    ({"shares": {"2": -0.1}}, None, "the share of order 2 must lie in [0, 1]"),
    ({"shares": "even"}, None, "shares must be \"profile\" or a table of fractions"),
    ({"inner": "lruu"}, None, "did you mean 'lru'"),
    ({"inner": "partitioned"}, None, "inner must be another policy"),
    ({"shares": {"2": 0.01}}, None, "order 2's share of 1 rows"),
    ({"shares": {"2": 0.5, "3": 0.001}}, None, "order 3's share 0.001 of 100 rows rounds to 0 rows"),
    ({}, PolicyContext(n_keys=N_KEYS), "needs the table's sub-table layout"),
    ({}, PolicyContext(n_keys=N_KEYS, layout=LAYOUT), "shares = \"profile\" needs the trace"),
])
def test_bad_partitions_are_refused_in_one_line(params, ctx, message):
    ctx = ctx or PolicyContext(n_keys=N_KEYS, layout=LAYOUT)
    inner = {"inner": "twoq"} if message.startswith("order 2") else {}
    with pytest.raises(EngramTierError) as err:
        make_policy("partitioned", 100, ctx, **{**inner, **params})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_partitioned_policy_is_a_plain_python_policy():
    assert isinstance(make_policy("partitioned", 9, PolicyContext(n_keys=N_KEYS, layout=LAYOUT), shares={"2": 1}),
                      Partitioned)


def test_shares_come_from_a_hierarchy_toml(tmp_path):
    from engramtier.cache.hierarchy import load_hierarchy

    path = tmp_path / "tiers.toml"
    path.write_text('[[tier]]\nname = "gpu"\ncapacity = 100\npolicy = "partitioned"\nmodel = "hbm"\n'
                    'params = { inner = "lru", shares = { 2 = 0.3, 3 = 0.7 } }\n[[tier]]\nname = "nvme"\nmodel = "nvme"\n')
    (policy,) = load_hierarchy(path).build_policies(PolicyContext(n_keys=N_KEYS, layout=LAYOUT), 160)
    assert policy.rows == {2: 30, 3: 70}
    path.write_text(path.read_text().replace("inner = \"lru\"", "inner = 5"))
    with pytest.raises(EngramTierError) as err:
        load_hierarchy(path).build_policies(PolicyContext(n_keys=N_KEYS, layout=LAYOUT), 160)
    assert "tier 'gpu': policy 'partitioned': inner must name a policy, got 5" in str(err.value)
