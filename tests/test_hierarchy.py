"""Size parsing, hierarchy declaration (Python and TOML-shaped dicts), capacity resolution against a table,
and one clear error for each way a declaration can be wrong."""

import pytest

from engramtier.cache.hierarchy import Hierarchy, TierSpec, format_bytes, parse_size
from engramtier.cache.policy import PolicyContext
from engramtier.cache.timing import TierModel, default_tier_models
from engramtier.errors import EngramTierError


@pytest.mark.parametrize("text, nbytes", [
    ("2GiB", 2 * 1024**3),
    ("512 MiB", 512 * 1024**2),
    ("1.5GB", 1_500_000_000),
    ("160000B", 160_000),
    ("4 kib", 4096),
    ("3KB", 3000),
    ("0.5KiB", 512),
    (" 1TiB ", 1024**4),
    (".25 MB", 250_000),
])
def test_parse_size(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text, match", [
    ("2 GiBs", "units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"),
    ("1000", "does not parse"),
    ("GiB", "does not parse"),
    ("-2GiB", "does not parse"),
    ("1.5 B", "not a whole number of bytes"),
])
def test_parse_size_refuses(text, match):
    with pytest.raises(EngramTierError, match=match):
        parse_size(text)


TOML_LIKE = {
    "mode": "exclusive",
    "tier": [
        {"name": "gpu", "capacity": "2GiB", "policy": "lru", "model": "hbm"},
        {"name": "dram", "capacity": 50_000_000, "policy": "fifo", "model": "dram"},
        {"name": "nvme", "model": {"latency_s": 1e-4, "bandwidth_Bps": 5e9, "parallelism": 64}},
    ],
}


def test_from_dict_builds_the_declared_hierarchy():
    h = Hierarchy.from_dict(TOML_LIKE)
    assert h.mode == "exclusive"
    assert [t.name for t in h.tiers] == ["gpu", "dram", "nvme"]
    assert h.tiers[0].model == default_tier_models()["hbm"]
    assert h.store.model == TierModel("nvme", 1e-4, 5e9, 64)
    assert h.store.policy is None and h.caches == h.tiers[:2]
    # 2 GiB of 160-B rows holds floor(2**31 / 160) rows; the integer capacity is rows already
    assert h.capacities(100_000_000, 160) == [2**31 // 160, 50_000_000]
    assert Hierarchy.from_dict(h.to_dict()) == h  # to_dict round-trips (models spelled out as tables)


def test_a_remote_store_round_trips_with_its_storage_table():
    d = {"tier": [{"name": "dram", "capacity": 10, "policy": "lru", "model": "dram"},
                  {"name": "remote", "model": "remote",
                   "storage": {"backend": "redis", "url": "redis://10.0.0.5:6379", "on_failure": "retry"}}]}
    h = Hierarchy.from_dict(d)
    assert h.store.storage["url"] == "redis://10.0.0.5:6379" and h.caches[0].storage == {}
    assert Hierarchy.from_dict(h.to_dict()) == h and "storage" not in h.to_dict()["tier"][0]


def test_mode_defaults_to_inclusive():
    h = Hierarchy.from_dict({"tier": [{"name": "nvme", "model": "nvme"}]})
    assert h.mode == "inclusive" and h.caches == ()


def test_build_policies_sizes_each_cache_tier():
    h = Hierarchy((TierSpec("a", "1600B", "lru", {}, "hbm"), TierSpec("b", 30, "fifo", {}, "dram"),
                   TierSpec("s", None, None, {}, "nvme")))
    a, b = h.build_policies(PolicyContext(n_keys=100), row_bytes=160)
    for k in range(40):  # fill both well past their capacities
        if not a.lookup(k, k):
            a.admit(k, k)
        if not b.lookup(k, k):
            b.admit(k, k)
    assert (a.occupancy(), b.occupancy()) == (10, 30)


def spec(**overrides):
    d = {"name": "gpu", "capacity": 100, "policy": "lru", "params": {}, "model": "hbm"}
    d.update(overrides)
    return TierSpec(**d)


STORE = TierSpec("nvme", None, None, {}, "nvme")


@pytest.mark.parametrize("make, match", [
    (lambda: spec(capacity=0), "capacity must be positive"),
    (lambda: spec(capacity=-5), "capacity must be positive"),
    (lambda: spec(capacity=2.5), "capacity must be rows"),
    (lambda: spec(capacity="2 GiBs"), "units: B, KB"),
    (lambda: spec(model="hbn"), "tier 'gpu': unknown tier model 'hbn': did you mean 'hbm'"),
    (lambda: spec(params=[1]), "params must be a table"),
    (lambda: spec(name=""), "non-empty"),
    (lambda: Hierarchy(()), "no tiers"),
    (lambda: Hierarchy((spec(), STORE), mode="victim"), "unknown mode 'victim'; choose one of inclusive, exclusive"),
    (lambda: Hierarchy((spec(), spec(), STORE)), "two tiers are named 'gpu'"),
    (lambda: Hierarchy((spec(policy=None), STORE)), "cache tier 'gpu' needs a capacity and a policy"),
    (lambda: Hierarchy((spec(capacity=None), STORE)), "cache tier 'gpu' needs a capacity and a policy"),
    (lambda: Hierarchy((spec(), TierSpec("nvme", None, "lru", {}, "nvme"))), "takes no policy"),
    (lambda: spec(storage="redis://x"), r"unknown storage \(where the rows live\) 'redis://x': choose one of gpu"),
    (lambda: spec(storage=3), "storage must be where a cache tier's rows live"),
    (lambda: Hierarchy((spec(storage={"backend": "redis"}), STORE)), "cache tier 'gpu' has a storage table"),
])
def test_declaration_errors(make, match):
    with pytest.raises(EngramTierError, match=match):
        make()


@pytest.mark.parametrize("tiers, match", [
    ((spec(capacity=1001), STORE), "tier 'gpu': capacity 1001 \\(1001 rows\\) exceeds the table's 1000 rows"),
    ((spec(capacity="1MiB"), STORE), "exceeds the table's 1000 rows"),
    ((spec(capacity="100B"), STORE), "holds no row of 160 bytes"),
    ((spec(), TierSpec("nvme", 999, None, {}, "nvme")), "backing store holds 999 rows but the table has 1000"),
    ((spec(), TierSpec("nvme", "1KiB", None, {}, "nvme")), "backing store holds 6 rows"),
])
def test_capacity_errors_against_the_table(tiers, match):
    with pytest.raises(EngramTierError, match=match):
        Hierarchy(tiers).capacities(1000, 160)


def test_a_store_larger_than_the_table_is_fine():
    assert Hierarchy((spec(), TierSpec("nvme", "4TB", None, {}, "nvme"))).capacities(1000, 160) == [100]


def test_unknown_policy_is_refused_by_make_policy_naming_the_tier():
    h = Hierarchy((spec(policy="lur"), STORE))
    with pytest.raises(EngramTierError, match="tier 'gpu': unknown policy 'lur': did you mean 'lru'"):
        h.build_policies(PolicyContext(n_keys=1000), 160)


def test_unknown_policy_parameter_is_refused_naming_the_tier():
    h = Hierarchy((spec(params={"windows": 3}), STORE))
    with pytest.raises(EngramTierError, match="tier 'gpu': policy 'lru': unknown parameter\\(s\\) windows"):
        h.build_policies(PolicyContext(n_keys=1000), 160)


@pytest.mark.parametrize("d, match", [
    ({"mode": "exclusive", "tiers": []}, "hierarchy: unknown key 'tiers': did you mean 'tier'"),
    ({"tier": []}, "'tier' must be a non-empty list"),
    ({"tier": "gpu"}, "'tier' must be a non-empty list"),
    ({"tier": [{"name": "gpu", "capacty": "1GiB", "policy": "lru", "model": "hbm"}]},
     "hierarchy: tier\\[0\\]: unknown key 'capacty': did you mean 'capacity'"),
    ({"tier": [{"name": "nvme"}]}, "tier\\[0\\] needs a 'name' and a 'model'"),
    ({"tier": [{"name": "nvme", "model": {"latency": 1e-4, "bandwidth_Bps": 1e9}}]},
     "tier\\[0\\].model: unknown key 'latency': did you mean 'latency_s'"),
    ({"tier": [{"name": "nvme", "model": {"latency_s": 1e-4}}]}, "tier\\[0\\].model: .*bandwidth_Bps"),
    ({"tier": ["gpu"]}, "tier\\[0\\] must be a table"),
])
def test_from_dict_errors(d, match):
    with pytest.raises(EngramTierError, match=match):
        Hierarchy.from_dict(d)


def test_errors_are_one_line():
    for bad in ({"tier": [{"name": "x", "capacity": "2 GiBs", "policy": "lru", "model": "hbm"}]},
                {"mode": "exclusive", "tiers": []}):
        with pytest.raises(EngramTierError) as err:
            Hierarchy.from_dict(bad)
        assert "\n" not in str(err.value)


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 999, 1000, 1536, 1048480, 3 << 30)] == \
        ["0 B", "999 B", "0.977 KiB", "1.5 KiB", "1 MiB", "3 GiB"]
