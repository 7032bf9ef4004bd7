"""Cache tiers (gpu, dram, cxl): slot bookkeeping against a dict model, copies, refusals, modeled time."""

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.cache.timing import TierModel
from engramtier.errors import EngramTierError
from engramtier.tiers.cxl import CxlTier, cpuless_numa_nodes, wait_until
from engramtier.tiers.dram import DramTier
from engramtier.tiers.gpu import GpuTier

N_ROWS, CAPACITY, ROW_BYTES = 64, 8, 24
TIERS = {
    "gpu": lambda n, c, b: GpuTier(n, c, b, device="cpu"),
    "dram": lambda n, c, b: DramTier(n, c, b),
    "dram-parallel": lambda n, c, b: DramTier(n, c, b, parallel_min_rows=1),
    "cxl": lambda n, c, b: CxlTier(n, c, b, binding="modeled", latency_s=0.0),
}


def table(n=N_ROWS, row_bytes=ROW_BYTES):
    """Row i's bytes are distinct from every other row's, so a wrong slot is always visible."""
    return np.random.default_rng(7).integers(0, 256, (n, row_bytes), dtype=np.uint8)


def read(tier, ids):
    out = np.empty((len(ids), tier.row_bytes), np.uint8)
    tier.read(np.asarray(ids, np.int64), out)
    return out


ops = st.lists(
    st.tuples(st.sampled_from(["write_slots", "write", "evict", "read"]),
              st.lists(st.integers(0, N_ROWS - 1), min_size=1, max_size=5, unique=True),
              st.lists(st.integers(0, CAPACITY - 1), min_size=5, max_size=5, unique=True)),
    max_size=30,
)


@pytest.mark.parametrize("kind", sorted(TIERS))
@settings(max_examples=25, deadline=None)
@given(ops=ops)
def test_slots_follow_a_dict_model(kind, ops):
    """Every operation either does what a {slot: row} dict says or is refused, leaving state intact."""
    rows = table()
    tier = TIERS[kind](N_ROWS, CAPACITY, ROW_BYTES)
    held: dict[int, int] = {}  # slot -> row
    for op, ids, slots in ops:
        ids = np.array(ids)
        where = {r: s for s, r in held.items()}
        if op == "write_slots":
            slots = np.array(slots[: ids.size])
            clash = any(r in where and where[r] != s for r, s in zip(ids.tolist(), slots.tolist(), strict=True))
            if clash:
                with pytest.raises(EngramTierError, match="already held"):
                    tier.write_slots(slots, ids, rows[ids])
                continue
            tier.write_slots(slots, ids, rows[ids])
            for r, s in zip(ids.tolist(), slots.tolist(), strict=True):
                held[s] = r
        elif op == "write":
            new = [r for r in ids.tolist() if r not in where]
            free = [s for s in range(CAPACITY) if s not in held]
            if len(new) > len(free):
                with pytest.raises(EngramTierError, match="free slots"):
                    tier.write(ids, rows[ids])
                continue
            tier.write(ids, rows[ids])
            for r, s in zip(new, free[: len(new)], strict=True):  # the lowest free slots, in order
                held[s] = r
        elif op == "evict":
            if all(r in where for r in ids.tolist()):
                freed = tier.evict(ids)
                assert sorted(freed.tolist()) == sorted(where[r] for r in ids.tolist())
                for r in ids.tolist():
                    del held[where[r]]
            else:
                with pytest.raises(EngramTierError, match="not held"):
                    tier.evict(ids)
        else:
            if all(r in where for r in ids.tolist()):
                np.testing.assert_array_equal(read(tier, ids), rows[ids])
            else:
                with pytest.raises(EngramTierError, match="not held"):
                    read(tier, ids)
        expected = np.zeros(N_ROWS, bool)
        expected[list(held.values())] = True
        np.testing.assert_array_equal(tier.contains(np.arange(N_ROWS)), expected)
        assert tier.occupancy() == len(held)
    if held:
        ids = np.array(list(held.values()))
        np.testing.assert_array_equal(read(tier, ids[::-1]), rows[ids[::-1]])


@pytest.mark.parametrize("kind", sorted(TIERS))
def test_large_batches_and_torch_buffers(kind):
    """Batches past the parallel threshold, duplicate ids, and torch tensors in and out."""
    n, cap = 50_000, 40_000
    rows = np.random.default_rng(1).integers(0, 256, (n, 160), dtype=np.uint8)
    tier = TIERS[kind](n, cap, 160)
    ids = np.random.default_rng(2).permutation(n)[:cap]
    tier.write_slots(np.arange(cap), ids, torch.from_numpy(rows[ids]))
    want = np.random.default_rng(3).choice(ids, 60_000)  # duplicates on purpose
    out = torch.empty((want.size, 160), dtype=torch.uint8)
    tier.read(torch.from_numpy(want), out)
    np.testing.assert_array_equal(out.numpy(), rows[want])
    stats = tier.stats()
    assert (stats["reads"], stats["rows_read"], stats["bytes_read"]) == (1, want.size, want.size * 160)
    assert (stats["writes"], stats["rows_written"], stats["occupancy"]) == (1, cap, cap)


def test_write_slots_replaces_and_counts_evictions():
    rows = table()
    tier = DramTier(N_ROWS, 2, ROW_BYTES)
    tier.write_slots([0, 1], [10, 11], rows[[10, 11]])
    tier.write_slots([1], [12], rows[[12]])  # slot 1 held row 11: it goes
    assert tier.contains([10, 11, 12]).tolist() == [True, False, True]
    assert tier.stats()["evictions"] == 1
    tier.write_slots([0], [10], rows[[13]])  # rewriting a row in its own slot overwrites the bytes
    np.testing.assert_array_equal(read(tier, [10]), rows[[13]])


@pytest.mark.parametrize("kind", sorted(TIERS))
def test_refusals_are_one_line(kind):
    rows = table()
    tier = TIERS[kind](N_ROWS, CAPACITY, ROW_BYTES)
    tier.write_slots([0, 1], [3, 4], rows[[3, 4]])
    bad = [
        (lambda: tier.read([N_ROWS], np.empty((1, ROW_BYTES), np.uint8)), "outside the table"),
        (lambda: tier.read([-1], np.empty((1, ROW_BYTES), np.uint8)), "outside the table"),
        (lambda: tier.read([3], np.empty((1, ROW_BYTES + 1), np.uint8)), "shape"),
        (lambda: tier.read([3], np.empty((1, ROW_BYTES), np.int16)), "uint8"),
        (lambda: tier.write_slots([0, 0], [5, 6], rows[[5, 6]]), "twice"),
        (lambda: tier.write_slots([CAPACITY], [5], rows[[5]]), "slot numbers"),
        (lambda: tier.write_slots([0, 1], [5], rows[[5]]), "2 slots given for 1 rows"),
        (lambda: tier.write_slots([2], [3], rows[[3]]), "already held in slot 0"),
        (lambda: tier.read([3], np.empty((1, 2 * ROW_BYTES), np.uint8)[:, ::2]), "C-contiguous"),
    ]
    for call, message in bad:
        with pytest.raises(EngramTierError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    assert tier.contains([3, 4, 5]).tolist() == [True, True, False]


@pytest.mark.parametrize("make", [lambda: DramTier(10, 11, 8), lambda: DramTier(10, 0, 8),
                                  lambda: GpuTier(0, 1, 8, device="cpu")])
def test_bad_sizes(make):
    with pytest.raises(EngramTierError, match="capacity_rows|must be positive"):
        make()


@pytest.mark.parametrize("kind", ["gpu", "dram", "cxl"])
def test_capacity_larger_than_the_machine_is_refused_before_allocating(kind):
    rows = 1 << 40  # 1 Ti rows x 160 B: no host has that; the map alone would need 4 TiB
    with pytest.raises(EngramTierError, match="GiB are free in host memory"):
        TIERS[kind](rows, rows, 160)


def test_gpu_tier_without_cuda_is_emulated():
    tier = GpuTier(N_ROWS, CAPACITY, ROW_BYTES)
    assert tier.stats()["emulated"] == (not torch.cuda.is_available())
    if not torch.cuda.is_available():
        with pytest.raises(EngramTierError, match="CUDA is not available"):
            GpuTier(N_ROWS, CAPACITY, ROW_BYTES, device="cuda")
        with pytest.raises(EngramTierError, match="CUDA is not available"):
            DramTier(N_ROWS, CAPACITY, ROW_BYTES, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dram_rows_into_a_gpu_tier_and_its_device_gather():
    rows = np.random.default_rng(5).integers(0, 256, (4096, 160), dtype=np.uint8)
    dram = DramTier(4096, 4096, 160, device="cuda")
    assert dram.stats()["slab_pinned"]
    dram.write(np.arange(4096), rows)
    ids = np.random.default_rng(6).integers(0, 4096, 3000)
    host = np.empty((1024, 160), np.uint8)
    dram.read(np.arange(1024), host)
    gpu = GpuTier(4096, 1024, 160)
    assert not gpu.stats()["emulated"]
    gpu.write_slots(np.arange(1024), np.arange(1024), torch.from_numpy(host).cuda())
    out = torch.empty((500, 160), dtype=torch.uint8, device="cuda")
    gpu.read(ids[:500] % 1024, out)
    np.testing.assert_array_equal(out.cpu().numpy(), rows[ids[:500] % 1024])


def test_cxl_modeled_reads_take_at_least_the_modeled_time():
    rows = table(4096, 160)
    tier = CxlTier(4096, 4096, 160, binding="modeled", latency_s=3e-3, bandwidth_Bps=20e6)
    assert tier.modeled and tier.stats()["binding"].startswith("modeled")
    tier.write(np.arange(4096), rows)
    for n in (1, 64, 1000):  # latency-bound to bandwidth-bound: 3 ms + 8 us ... 3 ms + 8 ms (x waves)
        ids = np.arange(n)
        modeled = tier.model.fetch_seconds(n, 160)
        assert modeled == pytest.approx(3e-3 * -(-n // tier.model.parallelism) + n * 160 / 20e6)
        start = time.perf_counter()
        np.testing.assert_array_equal(read(tier, ids), rows[ids])
        elapsed = time.perf_counter() - start
        assert modeled <= elapsed < modeled + 0.5


def test_cxl_defaults_come_from_the_cxl_tier_model():
    tier = CxlTier(N_ROWS, CAPACITY, ROW_BYTES, binding="modeled")
    assert tier.model.name == "cxl"
    assert 100e-9 <= tier.model.latency_s and tier.model.bandwidth_Bps == pytest.approx(36e9)


def test_wait_until_never_returns_early():
    for delay in (0.0, 20e-6, 150e-6, 2e-3):
        deadline = time.perf_counter() + delay
        wait_until(deadline)
        assert time.perf_counter() >= deadline


def _node(root, i, cpus, mem_kb):
    d = root / f"node{i}"
    d.mkdir()
    (d / "cpulist").write_text(cpus + "\n")
    (d / "meminfo").write_text(f"Node {i} MemTotal:       {mem_kb} kB\nNode {i} MemFree:        1 kB\n")


def test_cpuless_numa_nodes_reads_sysfs(tmp_path):
    _node(tmp_path, 0, "0-15", 1 << 20)
    _node(tmp_path, 1, "", 1 << 20)  # a CXL expander: memory, no CPUs
    _node(tmp_path, 2, "", 0)  # an empty node
    _node(tmp_path, 10, "16-31", 1 << 20)
    assert cpuless_numa_nodes(tmp_path) == [1]
    assert cpuless_numa_nodes(tmp_path / "absent") == []


def test_cxl_binding_refusals():
    with pytest.raises(EngramTierError, match="binding must be"):
        CxlTier(N_ROWS, CAPACITY, ROW_BYTES, binding="fast")
    if not cpuless_numa_nodes():
        with pytest.raises(EngramTierError, match="no CPU-less memory node"):
            CxlTier(N_ROWS, CAPACITY, ROW_BYTES, binding="numa")
        auto = CxlTier(N_ROWS, CAPACITY, ROW_BYTES)
        assert auto.modeled and "no CPU-less NUMA node" in auto.stats()["binding"]
    with pytest.raises(EngramTierError, match="not a CPU-less memory node"):
        CxlTier(N_ROWS, CAPACITY, ROW_BYTES, node=10**6)


def test_a_tier_model_can_be_passed_whole():
    model = TierModel("mine", latency_s=0.0, bandwidth_Bps=1e12, parallelism=4)
    assert DramTier(N_ROWS, CAPACITY, ROW_BYTES, model=model).model is model
