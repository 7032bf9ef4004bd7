"""Miss-ratio curves against independent references: the LRU policy replayed per size, brute-force
Python models of LRU stacks and of both SHARDS samplers, and the published splitmix64 output."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zipf import zipf_keys

from engramtier.cache.mrc import (
    MissRatioCurve,
    _hash32,
    lru_mrc,
    mini_mrc,
    sample_context,
    shards_mrc,
    spatial_samples,
    sweep,
)
from engramtier.cache.policy import PolicyContext, make_policy, replay
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

MASK64 = (1 << 64) - 1


def splitmix_top32(key, seed):
    z = ((key ^ seed) + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 32


def stack_depths(keys):
    """LRU stack depth of every request (0 for a first request), with a Python list as the stack."""
    stack, depths = [], []
    for k in keys:
        if k in stack:
            depths.append(stack.index(k) + 1)
            stack.remove(k)
        else:
            depths.append(0)
        stack.insert(0, k)
    return depths


def lru_hits_per_size(keys, sizes):
    keys = np.asarray(keys, dtype=np.int64)
    ctx = PolicyContext(n_keys=int(keys.max()) + 1)
    return [replay(make_policy("lru", int(s), ctx), keys) if s <= ctx.n_keys else None for s in sizes]


# ------------------------------------------------------------------------------------------ exact LRU


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 40), min_size=1, max_size=400))
def test_exact_curve_equals_lru_replayed_at_every_size(keys):
    curve = lru_mrc(keys)
    distinct = len(set(keys))
    np.testing.assert_array_equal(curve.sizes, np.arange(1, distinct + 1))
    assert curve.hits.tolist() == [sum(0 < d <= s for d in stack_depths(keys)) for s in curve.sizes]
    assert curve.hits.tolist() == lru_hits_per_size(keys, curve.sizes)


def test_exact_curve_on_a_zipf_trace_spanning_many_words():
    keys = zipf_keys(60_000, 5_000, 1.0, 1, shuffle=True)
    sizes = [1, 2, 3, 63, 64, 65, 500, 4_999, 5_000, 7_000]
    curve = lru_mrc(keys, sizes)
    assert curve.hits[:-1].tolist() == lru_hits_per_size(keys, sizes[:-1])
    assert curve.hits[-1] == curve.hits[-2]  # beyond every key, nothing more to gain
    np.testing.assert_allclose(curve.miss_ratios, 1 - curve.hits / keys.size)
    assert np.all(np.diff(curve.miss_ratios) <= 0)


def test_exact_curve_on_a_hand_worked_trace():
    # a b a c b a: depths 0 0 2 0 3 3 -> size 1: 0 hits, 2: 1, 3: 3
    curve = lru_mrc([0, 1, 0, 2, 1, 0])
    assert curve.sizes.tolist() == [1, 2, 3] and curve.hits.tolist() == [0, 1, 3]
    assert curve.method == "exact-lru" and curve.requests == 6


# --------------------------------------------------------------------------------------------- SHARDS


def test_hash_is_splitmix64():
    # splitmix64 seeded with 0 first outputs 0xE220A8397B1DCDAF (Vigna's reference implementation)
    assert _hash32(0, 0) == 0xE220A839
    for key, seed in [(1, 0), (12345, 0), (7, 99), (2**40 + 3, 5)]:
        assert _hash32(key, seed) == splitmix_top32(key, seed)


def shards_rate_reference(keys, sizes, rate, seed):
    threshold = max(1, round(rate * 2**32))
    r = threshold / 2**32
    sampled = [k for k in keys if splitmix_top32(k, seed) < threshold]
    depths = stack_depths(sampled)
    expected = r * len(keys)
    out = []
    for size in sizes:
        limit = 1 + math.floor((size - 1) * r)
        hits = sum(0 < d <= limit for d in depths) + expected - len(sampled)
        out.append(1 - min(max(hits / expected, 0.0), 1.0))
    return out


def shards_size_reference(keys, sizes, rate, seed, s_max):
    threshold = max(1, round(rate * 2**32))
    tracked, stack, weights, total = {}, [], {}, 0.0
    for k in keys:
        h = splitmix_top32(k, seed)
        if h >= threshold:
            continue
        scale = 2**32 / threshold
        total += scale
        if k in stack:
            depth = stack.index(k) + 1
            stack.remove(k)
            stack.insert(0, k)
            estimate = min(math.ceil(1 + (depth - 1) * scale), max(sizes) + 1)
            weights[estimate] = weights.get(estimate, 0.0) + scale
            continue
        stack.insert(0, k)
        tracked[k] = h
        while len(tracked) > s_max or (tracked and max(tracked.values()) >= threshold):
            gone = max(tracked, key=tracked.get)
            threshold = min(threshold, tracked.pop(gone))
            stack.remove(gone)
    n = len(keys)
    return [1 - min(max((sum(w for e, w in weights.items() if e <= s) + n - total) / n, 0.0), 1.0) for s in sizes]


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(st.integers(0, 300), min_size=1, max_size=400), rate=st.sampled_from([0.05, 0.3, 0.7]),
       seed=st.integers(0, 3))
def test_fixed_rate_shards_matches_brute_force(keys, rate, seed):
    sizes = [1, 2, 5, 20, 100, 301]
    if not any(splitmix_top32(k, seed) < round(rate * 2**32) for k in keys):
        with pytest.raises(EngramTierError, match="sampled no request"):
            shards_mrc(keys, sizes, rate=rate, seed=seed)
        return
    curve = shards_mrc(keys, sizes, rate=rate, seed=seed)
    np.testing.assert_allclose(curve.miss_ratios, shards_rate_reference(keys, sizes, rate, seed), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(st.integers(0, 300), min_size=1, max_size=400), s_max=st.integers(1, 40),
       rate=st.sampled_from([0.2, 1.0]))
def test_fixed_size_shards_matches_brute_force(keys, s_max, rate):
    sizes = [1, 2, 5, 20, 100, 301]
    if not any(splitmix_top32(k, 1) < round(rate * 2**32) for k in keys):
        with pytest.raises(EngramTierError, match="sampled no request"):
            shards_mrc(keys, sizes, rate=rate, s_max=s_max, seed=1)
        return
    curve = shards_mrc(keys, sizes, rate=rate, s_max=s_max, seed=1)
    np.testing.assert_allclose(curve.miss_ratios, shards_size_reference(keys, sizes, rate, 1, s_max), atol=1e-12)


def test_shards_at_full_rate_is_exact():
    keys = zipf_keys(20_000, 2_000, 0.9, 2, shuffle=True)
    sizes = np.arange(1, 2_001, 37)
    exact = lru_mrc(keys, sizes)
    for curve in (shards_mrc(keys, sizes, rate=1.0), shards_mrc(keys, sizes, rate=1.0, s_max=10**6)):
        np.testing.assert_array_equal(curve.hits, exact.hits)
        assert curve.with_error(exact).error == pytest.approx(0.0, abs=1e-12)


def test_shards_error_shrinks_with_the_rate_on_a_large_trace():
    """Which keys a hash picks decides much of the error on a skewed trace, so compare means over seeds."""
    keys = zipf_keys(400_000, 50_000, 0.8, 3, shuffle=True)
    sizes = np.unique(np.geomspace(100, 10_000, 20).astype(np.int64))
    exact = lru_mrc(keys, sizes)

    def mean_error(**sampling):
        curves = [shards_mrc(keys, sizes, seed=seed, **sampling).with_error(exact) for seed in range(5)]
        return np.mean([curve.error for curve in curves])

    assert mean_error(rate=0.5) < mean_error(rate=0.1) < mean_error(rate=0.01) < 0.15
    assert mean_error(rate=0.5) < 0.02
    assert mean_error(rate=1.0, s_max=20_000) < mean_error(rate=1.0, s_max=2_000) < 0.05


# ---------------------------------------------------------------------------------------------- sweep


@pytest.mark.parametrize("policy, params", [("lru", {}), ("belady", {}), ("belady", {"bypass": True})])
def test_sweep_equals_one_replay_per_size_whatever_the_workers(policy, params):
    keys = zipf_keys(20_000, 1_000, 1.0, 4, shuffle=True)
    ctx = PolicyContext(n_keys=1_000, keys=keys)
    sizes = [1, 7, 50, 300, 1_000]
    expected = [replay(make_policy(policy, s, ctx, **params), keys) for s in sizes]
    for workers in (1, 3):
        curve = sweep(keys, policy, sizes, ctx, workers=workers, **params)
        assert curve.hits.tolist() == expected and curve.method == f"replay:{policy}"


def test_sweep_of_lru_equals_the_exact_curve():
    keys = zipf_keys(30_000, 3_000, 1.0, 5, shuffle=True)
    sizes = np.unique(np.geomspace(1, 3_000, 25).astype(np.int64))
    swept = sweep(keys, "lru", sizes, PolicyContext(n_keys=3_000), workers=2)
    np.testing.assert_array_equal(swept.hits, lru_mrc(keys, sizes).hits)


# -------------------------------------------------------------------------------- curve and bad input


def test_curve_error_and_dict():
    exact = MissRatioCurve.from_hits(np.array([1, 2]), np.array([2, 6]), 10, "exact-lru")
    estimate = MissRatioCurve.from_miss_ratios(np.array([1, 2]), np.array([0.9, 0.3]), 10, "shards(R=0.5)")
    assert estimate.hits.tolist() == [1, 7]
    scored = estimate.with_error(exact)
    assert scored.error == pytest.approx((0.1 + 0.1) / 2)
    assert json.loads(json.dumps(scored.to_dict())) == {
        "method": "shards(R=0.5)", "requests": 10, "sizes": [1, 2], "hits": [1, 7],
        "miss_ratios": [0.9, 0.3], "error": pytest.approx(0.1),
    }
    with pytest.raises(EngramTierError, match="compute both over the same trace and the same sizes"):
        estimate.with_error(MissRatioCurve.from_hits(np.array([1, 3]), np.array([2, 6]), 10, "exact-lru"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: lru_mrc([]), "the trace is empty"),
        (lambda: lru_mrc([1.5, 2.0]), "row ids must be integers"),
        (lambda: lru_mrc([3, -1]), "row id -1 is negative"),
        (lambda: lru_mrc([1, 2], [4, 0]), "cache sizes must be whole numbers of rows > 0"),
        (lambda: lru_mrc([1, 2], [-3]), "cache sizes must be whole numbers of rows > 0"),
        (lambda: lru_mrc([1, 2], []), "cache sizes must be whole numbers of rows > 0"),
        (lambda: shards_mrc([], [1]), "the trace is empty"),
        (lambda: shards_mrc([1, 2], [0]), "cache sizes must be whole numbers of rows > 0"),
        (lambda: shards_mrc([1, 2], [1], rate=0.0), r"sampling rate must lie in \(0, 1\], got 0.0"),
        (lambda: shards_mrc([1, 2], [1], rate=1.5), r"sampling rate must lie in \(0, 1\], got 1.5"),
        (lambda: shards_mrc([1, 2], [1], rate=-0.1), r"sampling rate must lie in \(0, 1\], got -0.1"),
        (lambda: shards_mrc([1, 2], [1], s_max=0), "s_max must be a positive number of tracked keys"),
        (lambda: sweep([], "lru", [1], PolicyContext(n_keys=3)), "the trace is empty"),
        (lambda: sweep([1], "lru", [0], PolicyContext(n_keys=3)), "cache sizes must be whole numbers of rows > 0"),
        (lambda: sweep([1], "lru", [1], PolicyContext(n_keys=3), workers=0), "workers must be a positive number"),
        (lambda: sweep([1, 2], "belady", [1], PolicyContext(n_keys=3, keys=np.array([1]))),
         r"ctx.keys \(1 requests\) is not the swept trace \(2\)"),
        (lambda: sweep([1, 2], "belady", [1], PolicyContext(n_keys=3, keys=np.array([2, 1]))),
         r"ctx.keys \(2 requests\) is not the swept trace \(2\)"),
        (lambda: sweep([1], "lru", [5], PolicyContext(n_keys=3)), "capacity 5 rows exceeds the table's 3 rows"),
    ],
)
def test_bad_input_raises_one_clear_line(call, message):
    with pytest.raises(EngramTierError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_sweep_refuses_keys_outside_the_table():
    ctx = PolicyContext(n_keys=10)
    with pytest.raises(EngramTierError, match="outside the table's rows"):
        sweep(np.array([1, 2, 10]), "lru", [2], ctx)


def test_streamed_curves_equal_the_in_memory_ones(tmp_path):
    """A trace file streamed chunk by chunk (dense keys) gives exactly the curves of the keys in memory;
    SHARDS' sampled state grows as it goes, from a guess far too small."""
    from engramtier.cache.mrc import KeyStream
    from engramtier.trace.rowtrace import RowTrace
    from engramtier.trace.tracefile import TraceReader, save_trace

    rng = np.random.default_rng(5)
    rows = rng.choice(10**9, 50_000, replace=False)[zipf_keys(200_000, 50_000, 1.2, rng)]
    trace = RowTrace(rows.astype(np.int64), np.arange(0, 200_001, 1000, dtype=np.int64), 10**9, 160)
    save_trace(trace, tmp_path / "z.trace", chunk_rows=7_000)
    keys = trace.dense_keys()
    sizes = np.unique(np.geomspace(1, trace.n_distinct, 30).astype(np.int64))
    with TraceReader(tmp_path / "z.trace") as reader:
        stream = KeyStream.of_trace(reader)
        assert (stream.n_requests, stream.n_keys) == (rows.size, trace.n_distinct)
        np.testing.assert_array_equal(lru_mrc(stream, sizes).hits, lru_mrc(keys, sizes).hits)
        for kwargs in ({"rate": 0.01}, {"rate": 0.1, "s_max": 300}):
            streamed = shards_mrc(stream, sizes, seed=3, **kwargs)
            in_memory = shards_mrc(keys, sizes, seed=3, **kwargs)
            np.testing.assert_array_equal(streamed.miss_ratios, in_memory.miss_ratios)
            assert streamed.method == in_memory.method


# ---------------------------------------------------------------------------------- miniature simulation


def sparse_row_trace(seed: int, n_requests: int = 40_000, touched: int = 4_000, table: int = 1 << 40):
    """Zipf requests over ``touched`` rows scattered over a huge table (dense keys are not row ids), 100-row steps."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(table, touched, replace=False)[zipf_keys(n_requests, touched, 0.9, rng, shuffle=True)]
    return RowTrace(rows.astype(np.int64), np.arange(0, n_requests + 1, 100, dtype=np.int64), table, 160)


def test_a_spatial_sample_keeps_every_request_of_the_rows_whose_id_hashes_below_the_rate():
    trace = sparse_row_trace(1)
    rate = 0.2
    for seed, sample in enumerate(spatial_samples(trace, rate, seeds=3)):
        distinct = np.unique(trace.rows)
        chosen = distinct[[splitmix_top32(int(r), seed) < round(rate * 2**32) for r in distinct]]
        kept = np.isin(trace.rows, chosen)
        np.testing.assert_array_equal(sample.row_ids[sample.keys], trace.rows[kept])  # row ids, in request order
        assert sample.keys[0] == 0 and np.all(np.diff(np.maximum.accumulate(sample.keys)) <= 1)
        np.testing.assert_array_equal(np.diff(sample.step_starts),
                                      np.add.reduceat(kept, trace.step_starts[:-1]).astype(np.int64))
        assert abs(chosen.size - rate * distinct.size) < 5 * np.sqrt(distinct.size * rate * (1 - rate))


@pytest.mark.parametrize("policy", ["lru", "arc", "s3fifo", "belady", "reference_policies:PyLRU"])
def test_mini_simulation_at_rate_one_is_the_full_sweep(policy):
    trace = sparse_row_trace(2, n_requests=8_000, touched=1_500)
    sizes = np.array([20, 50, 200, 900])
    ctx = PolicyContext(n_keys=trace.n_distinct, keys=trace.dense_keys(), step_starts=trace.step_starts,
                        n_table_rows=trace.n_table_rows, row_ids=trace.row_ids())
    exact = sweep(ctx.keys, policy, sizes, ctx, workers=2)
    mini = mini_mrc(trace, spatial_samples(trace, 1.0, seeds=2), policy, sizes, workers=2)
    np.testing.assert_array_equal(mini.scaled, sizes)
    np.testing.assert_array_equal(mini.miss_ratios, np.stack([exact.miss_ratios] * 2))
    assert np.all(mini.spread == 0) and np.all(mini.errors(exact.miss_ratios) == 0)


def test_mini_simulation_estimates_the_curve_within_a_few_points():
    trace = sparse_row_trace(3, n_requests=400_000, touched=100_000)
    sizes = np.unique(np.geomspace(100, 100_000, 12).astype(np.int64))
    ctx = PolicyContext(n_keys=trace.n_distinct, keys=trace.dense_keys(), row_ids=trace.row_ids(),
                        n_table_rows=trace.n_table_rows)
    for policy in ("lru", "arc"):
        exact = sweep(ctx.keys, policy, sizes, ctx, workers=2).miss_ratios
        mini = mini_mrc(trace, spatial_samples(trace, 0.05, seeds=4), policy, sizes, workers=2)
        np.testing.assert_array_equal(mini.scaled, np.maximum(1, np.rint(sizes * mini.rate)))
        assert np.all(mini.estimated) and np.all(mini.sampled > 0.03 * trace.n_rows)
        assert np.mean(np.abs(mini.mean - exact)) < 0.02, policy
        assert np.all(mini.errors(exact) < 0.05) and np.all(mini.spread >= 0)


def test_each_salt_is_moved_to_the_trace_s_compulsory_miss_ratio():
    """A sample's whole curve sits higher or lower as it holds fewer or more of the hottest rows; the trace's
    compulsory miss ratio (distinct rows over requests) is known without simulating, so each salt's curve is
    moved by the difference: a size holding every row is estimated exactly, and each salt's estimate is its
    sample's own replay moved by one offset at every size."""
    trace = sparse_row_trace(4, n_requests=100_000, touched=20_000)
    sizes = np.array([2_000, 8_000, 40_000])
    samples = spatial_samples(trace, 0.05, seeds=3)
    mini = mini_mrc(trace, samples, "lru", sizes, workers=2)
    compulsory = trace.n_distinct / trace.n_rows
    np.testing.assert_allclose(mini.miss_ratios[:, -1], compulsory)
    offsets = []
    for i, sample in enumerate(samples):
        replayed = sweep(sample.keys, "lru", mini.scaled, sample_context(sample, trace), workers=1).miss_ratios
        offsets.append(compulsory - sample.row_ids.size / sample.keys.size)
        np.testing.assert_allclose(mini.miss_ratios[i] - replayed, offsets[-1])
    assert max(np.abs(offsets)) > 1e-3  # the samples' own floors do differ from the trace's


def test_sizes_a_policy_refuses_at_miniature_scale_are_left_out_and_bad_names_refused():
    trace = sparse_row_trace(4)
    samples = spatial_samples(trace, 0.1, seeds=1)
    mini = mini_mrc(trace, samples, "wtinylfu", [100, 500, 1_000, 3_000])  # W-TinyLFU needs 100 rows
    assert mini.estimated.tolist() == [False, False, True, True] and np.isnan(mini.miss_ratios[0, :2]).all()
    with pytest.raises(EngramTierError, match="did you mean 'arc'"):
        mini_mrc(trace, samples, "arcc", [100])
    with pytest.raises(EngramTierError, match="unknown parameter"):
        mini_mrc(trace, samples, "arc", [100], ghosts=3)
    with pytest.raises(EngramTierError, match="sampled no row"):
        spatial_samples(RowTrace(np.array([5, 5, 5]), np.array([0, 3]), 10, 160), 1e-9)


def test_mrc_command_mini_writes_the_curve_its_error_and_speed_up(tmp_path, capsys):
    from engramtier.cli import main
    from engramtier.trace.tracefile import save_trace

    save_trace(sparse_row_trace(5), tmp_path / "t.trace")
    out = tmp_path / "run"
    assert main(["mrc", str(tmp_path / "t.trace"), "--mini", "0.25", "--policy", "arc", "--sweep", "--seeds", "2",
                 "--sizes", "40,400,2000", "--out", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "arc by miniature simulation, R=0.25, 2 salts, 3 of 3 sizes estimated; mean abs. error" in line
    summary = json.loads((out / "summary.json").read_text())["mini"]
    assert summary["estimated_sizes"] == 3 and summary["speedup"] > 0
    rows = [r.split(",") for r in (out / "mrc.csv").read_text().splitlines()[1:]]
    curves = {name: [float(r[4]) for r in rows if r[0] == name] for name in ("arc", "arc-mini")}
    assert [len(c) for c in curves.values()] == [3, 3]
    assert summary["mean_curve_abs_error"] == pytest.approx(np.mean(np.abs(np.subtract(*curves.values()))))
    assert summary["max_abs_error_per_seed"] >= summary["mean_abs_error_per_seed"] > 0
    assert (out / "figures" / "mrc_mini.svg").exists() and (out / "report.html").exists()
