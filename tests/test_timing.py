"""TierModel's cost formula against hand-worked numbers, the shipped defaults, and calibration recovering
known parameters from noisy synthetic reads."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.cache.timing import TierModel, calibrate, default_tier_models, tier_model
from engramtier.errors import EngramTierError


def test_fetch_seconds_hand_worked():
    m = TierModel("t", latency_s=1e-6, bandwidth_Bps=1e9, parallelism=4)
    assert m.fetch_seconds(0, 160) == 0.0
    # 1 row: one wave + 160 B at 1 GB/s
    assert m.fetch_seconds(1, 160) == pytest.approx(1e-6 + 160e-9)
    # 4 rows still one wave; 5 rows need two
    assert m.fetch_seconds(4, 100) == pytest.approx(1e-6 + 400e-9)
    assert m.fetch_seconds(5, 100) == pytest.approx(2e-6 + 500e-9)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
    latency=st.floats(0, 1e-3),
    bandwidth=st.floats(1e6, 1e13),
    parallelism=st.integers(1, 10**6),
    row_bytes=st.integers(1, 4096),
)
def test_vectorised_equals_scalar(counts, latency, bandwidth, parallelism, row_bytes):
    m = TierModel("t", latency, bandwidth, parallelism)
    got = m.fetch_seconds(np.array(counts), row_bytes)
    want = [0.0 if n == 0 else latency * math.ceil(n / parallelism) + n * row_bytes / bandwidth for n in counts]
    assert got.shape == (len(counts),)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_defaults_cover_every_tier_and_rank_sensibly():
    models = default_tier_models()
    assert set(models) == {"hbm", "dram", "cxl", "nvme", "remote"}
    assert all(name == m.name for name, m in models.items())
    # a 4096-row step of 160-B rows: HBM < DRAM < CXL < NVMe, the order a hierarchy relies on
    cost = {name: m.fetch_seconds(4096, 160) for name, m in models.items()}
    assert cost["hbm"] < cost["dram"] < cost["cxl"] < cost["nvme"]
    assert cost["remote"] < cost["nvme"]
    assert tier_model("cxl") == models["cxl"]


def test_unknown_model_name_suggests_the_closest():
    with pytest.raises(EngramTierError, match="did you mean 'nvme'"):
        tier_model("nvm")


@pytest.mark.parametrize("kwargs, match", [
    ({"latency_s": -1.0, "bandwidth_Bps": 1e9, "parallelism": 1}, "latency_s"),
    ({"latency_s": float("nan"), "bandwidth_Bps": 1e9, "parallelism": 1}, "latency_s"),
    ({"latency_s": 1e-6, "bandwidth_Bps": 0.0, "parallelism": 1}, "bandwidth_Bps"),
    ({"latency_s": 1e-6, "bandwidth_Bps": 1e9, "parallelism": 0}, "parallelism"),
    ({"latency_s": 1e-6, "bandwidth_Bps": 1e9, "parallelism": 2.5}, "parallelism"),
    ({"latency_s": "1us", "bandwidth_Bps": 1e9, "parallelism": 1}, "latency_s must be a number, got '1us'"),
])
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(EngramTierError, match=match):
        TierModel("bad", **kwargs)


def test_toml_numbers_are_normalised():
    m = TierModel("t", latency_s=0, bandwidth_Bps=10**9, parallelism=64.0)
    assert (m.latency_s, m.bandwidth_Bps, m.parallelism) == (0.0, 1e9, 64)
    assert type(m.parallelism) is int and type(m.latency_s) is float


def synthetic_samples(model, rng, noise):
    samples = []
    for n in np.unique(np.geomspace(1, 200_000, 40).astype(int)):
        for row_bytes in (160, 264):
            seconds = model.fetch_seconds(int(n), row_bytes) * (1 + noise * rng.standard_normal())
            samples.append((int(n), row_bytes, seconds))
    return samples


@pytest.mark.parametrize("name", ["dram", "cxl", "nvme", "remote"])
def test_calibrate_recovers_known_parameters_from_noisy_reads(name):
    truth = default_tier_models()[name]
    fitted = calibrate(synthetic_samples(truth, np.random.default_rng(1), noise=0.02), name=name,
                       parallelism=truth.parallelism)
    assert fitted.name == name and fitted.parallelism == truth.parallelism
    assert fitted.latency_s == pytest.approx(truth.latency_s, rel=0.05)
    n = np.geomspace(1, 200_000, 50).astype(int)
    np.testing.assert_allclose(fitted.fetch_seconds(n, 160), truth.fetch_seconds(n, 160), rtol=0.02)
    if name != "nvme":  # NVMe reads are 96% latency: 2% noise leaves its bandwidth term unidentifiable
        assert fitted.bandwidth_Bps == pytest.approx(truth.bandwidth_Bps, rel=0.05)


def test_calibrate_is_exact_without_noise_and_clamps_to_non_negative():
    truth = TierModel("t", 3e-6, 20e9, 16)
    fitted = calibrate(synthetic_samples(truth, np.random.default_rng(0), noise=0.0), parallelism=16)
    assert fitted.latency_s == pytest.approx(3e-6, rel=1e-9)
    assert fitted.bandwidth_Bps == pytest.approx(20e9, rel=1e-9)
    # pure bandwidth reads (time proportional to bytes, one wave each) pull the latency to the bound 0
    # rather than negative; the bandwidth is still exact
    bandwidth_only = [(n, 160, n * 160 / 10e9 - 1e-9) for n in (1000, 2000, 4000, 8000)]
    fitted = calibrate(bandwidth_only, parallelism=10**6)
    assert fitted.latency_s == 0.0
    assert fitted.bandwidth_Bps == pytest.approx(10e9, rel=1e-3)


@pytest.mark.parametrize("samples, match", [
    ([(10, 160, 1e-6)], "at least 2"),
    ([(0, 160, 1e-6), (10, 160, 2e-6)], "n_rows >= 1"),
    ([(10, 160, 0.0), (20, 160, 2e-6)], "seconds > 0"),
])
def test_calibrate_refuses_bad_samples(samples, match):
    with pytest.raises(EngramTierError, match=match):
        calibrate(samples)
