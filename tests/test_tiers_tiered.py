"""TieredTable: the simulator's hit counts exactly, the flat table's bytes exactly, slabs that mirror
their policies, one step per forward pass, preloaded hot sets, and its refusals."""

import tracemalloc

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from zipf import zipf_keys

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import PolicyContext
from engramtier.cache.simulator import simulate
from engramtier.errors import EngramTierError
from engramtier.tiers import step
from engramtier.tiers.computed import ComputedStore, expected_rows
from engramtier.tiers.cxl import CxlTier
from engramtier.tiers.dram import DramTier
from engramtier.tiers.gpu import GpuTier
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.open import open_table, tiered_table

N_ROWS, DIM = 400, 8


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    """A small LMDB table of random rows, laid out with a permutation and compressed, plus its flat rows."""
    path = tmp_path_factory.mktemp("runtime") / "table"
    source = RandomRows(N_ROWS, "bf16", DIM, seed=5)
    profile = np.random.default_rng(0).random(N_ROWS)  # permuted layout: row id != position
    build_lmdb_table(source, path, profile=profile, compression="zstd:1", page_kib=1, progress=False)
    flat = np.empty((N_ROWS, source.row_bytes), np.uint8)
    source.rows(np.arange(N_ROWS), flat)
    return path, flat


def hierarchy(mode, top="lru", middle="s3fifo", top_rows=12, middle_rows=30):
    return {"mode": mode, "tier": [{"name": "gpu", "capacity": top_rows, "policy": top, "model": "hbm"},
                                   {"name": "dram", "capacity": middle_rows, "policy": middle, "model": "dram"},
                                   {"name": "nvme", "model": "nvme"}]}


def zipf_steps(n_steps, seed, max_len=50):
    """Skewed random id batches, so that hits, misses and in-step evictions all happen."""
    rng = np.random.default_rng(seed)
    return [zipf_keys(int(rng.integers(0, max_len)), N_ROWS, 1.2, rng) for _ in range(n_steps)]


def assert_slabs_mirror_policies(table, flat):
    """Every cache tier's slab holds exactly its policy's rows, each with the table's bytes."""
    for tier, policy in zip(table.caches, table.engine.policies, strict=True):
        held = np.sort(tier.id_of[tier.id_of >= 0])
        by_policy = np.array([k for k in range(N_ROWS) if policy.contains(k)], np.int64)
        np.testing.assert_array_equal(held, by_policy)
        rows = np.empty((held.size, flat.shape[1]), np.uint8)
        tier.read(held, rows)
        np.testing.assert_array_equal(rows, flat[held])


def assert_runtime_is_simulated(table, spec, ctx=None):
    """The table's counts per tier and per step are what the simulator makes of its recorded trace."""
    trace, runtime, per_step = table.recorded_trace(), table.stats(), table.step_records()
    sim = simulate(trace, Hierarchy.from_dict(spec), compute_window_s=0.0, progress=False)
    keys = ("lookups", "hits", "promoted", "demoted", "evicted", "declined", "served_bytes")
    simulated = [{**t, "served_bytes": t["bytes_read"]} for t in sim.tier_stats()]
    assert [{k: t[k] for k in keys} for t in runtime["tiers"]] == [{k: t[k] for k in keys} for t in simulated]
    served = np.array([[s["served"][t["name"]] for s in per_step] for t in spec["tier"]])
    np.testing.assert_array_equal(served, sim.served)
    assert [s["unique"] for s in per_step] == sim.unique.tolist()
    return runtime


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("top,middle", [("lru", "s3fifo"), ("clock", "lru")])
def test_hit_counts_equal_the_simulator(table_dir, mode, top, middle):
    path, flat = table_dir
    steps = zipf_steps(60, seed=1)
    with open_table(hierarchy(mode, top, middle), path, device="cpu", record_trace=True) as table:
        for ids in steps:
            got = table.prefetch(torch.from_numpy(ids)).wait()
            np.testing.assert_array_equal(got.numpy(), flat[ids])
        table.finish()
        np.testing.assert_array_equal(table.recorded_trace().rows, np.concatenate(steps))
        assert_slabs_mirror_policies(table, flat)
        runtime = assert_runtime_is_simulated(table, hierarchy(mode, top, middle))
    assert runtime["tiers"][0]["hits"] > 0 and runtime["tiers"][1]["hits"] > 0 and runtime["tiers"][1]["evicted"] > 0


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("middle", ["dram", "cxl"])  # a cxl slab is read through `read`: its rows are staged
def test_steps_that_copy_while_they_decide_serve_the_same(table_dir, monkeypatch, mode, middle):
    """A large step finds its sources and copies its slab rows on a helper thread while the engine
    decides (`StepPipeline.decide`); here every step does (the threshold lowered to one row), with rows
    from both tiers, the store and, under cxl, staging: the flat table's bytes and the simulator's hits."""
    assert numba.get_num_threads() > 1, "the helper thread is used only where numba has two threads"
    monkeypatch.setattr(step, "SHARED_MIN_ROWS", 1)
    path, flat = table_dir
    spec = hierarchy(mode, "clock", "lru")
    spec["tier"][1]["storage"] = middle
    with open_table(spec, path, device="cpu", record_trace=True) as table:
        for ids in zipf_steps(60, seed=4):
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
            assert ids.size == 0 or table._pipeline._sources is not None  # the helper found this step's sources
        table.finish()
        assert_slabs_mirror_policies(table, flat)
        runtime = assert_runtime_is_simulated(table, spec)
    assert all(t["hits"] > 0 for t in runtime["tiers"]) and runtime["tiers"][0]["evicted"] > 0


def test_a_step_above_the_threshold_copies_while_it_decides(table_dir):
    """The same at the real threshold: steps of 40,000 requests over the small table."""
    path, flat = table_dir
    rng = np.random.default_rng(2)
    spec = hierarchy("exclusive", "lru", "s3fifo")
    with open_table(spec, path, device="cpu", record_trace=True) as table:
        for _ in range(3):
            ids = zipf_keys(40_000, N_ROWS, 0.6, rng)
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
            assert table._pipeline._sources is not None
        table.finish()
        assert_runtime_is_simulated(table, spec)


ONLINE = ["lru", "fifo", "clock", "sieve", "lfu", "arc", "twoq", "s3fifo", "wtinylfu", "slru", "random", "lruprob", "hyperbolic",
          "lecar", "lhd", "lfuda", "clock2qplus", "lirs", "lruk", "mq", "cacheus", "clockpro"]
ONLINE_ROWS = {"wtinylfu": (100, 110), "slru": (20, 32), "lirs": (200, 200)}
ONLINE_STEPS = {"lirs": 200}  # its 200 rows on top hold half the table: enough misses to reach the tier below


@pytest.mark.parametrize("policy", ONLINE)
def test_every_policy_hits_as_simulated_above_and_below_in_both_modes(table_dir, policy):
    """Each online policy as the top tier and as the tier below, inclusive and exclusive: the runtime keys
    its maps by row id in hashed maps, the simulator by dense keys in arrays; the counts agree."""
    path, flat = table_dir
    steps = zipf_steps(ONLINE_STEPS.get(policy, 40), seed=8, max_len=60)
    # (rows on top, rows below): W-TinyLFU's window needs 100 rows, SLRU 4 segments of equal rows,
    # LIRS a 2-row HIR queue (1%)
    top, below = ONLINE_ROWS.get(policy, (20, 30))
    for mode in ("inclusive", "exclusive"):
        for spec in (hierarchy(mode, policy, "lru", top_rows=top, middle_rows=top + 40),
                     hierarchy(mode, "lru", policy, top_rows=10, middle_rows=below)):
            with open_table(spec, path, device="cpu", record_trace=True) as table:
                for ids in steps:
                    np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
                table.finish()
                assert_slabs_mirror_policies(table, flat)
                runtime = assert_runtime_is_simulated(table, spec)
            assert runtime["tiers"][0]["hits"] > 0 and runtime["tiers"][1]["hits"] > 0


@pytest.mark.parametrize("filter_text", ["bloom", "prob:0.5:1", "tinylfu"])
def test_admission_hits_as_simulated_in_both_modes(table_dir, filter_text):
    """A filter on each cache tier: the runtime keys it by row id, the simulator by dense keys hashed as
    their row ids, and both decline the same rows (in exclusive mode, a row tier 0 declines goes down)."""
    path, flat = table_dir
    steps = zipf_steps(40, seed=10, max_len=60)
    for mode in ("inclusive", "exclusive"):
        spec = hierarchy(mode, "lru", "arc", top_rows=20, middle_rows=60)
        for tier in spec["tier"][:2]:
            tier["admission"] = filter_text
        with open_table(spec, path, device="cpu", record_trace=True) as table:
            for ids in steps:
                np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
            table.finish()
            assert_slabs_mirror_policies(table, flat)
            runtime = assert_runtime_is_simulated(table, spec)
        assert all(t["declined"] > 0 and t["hits"] > 0 for t in runtime["tiers"][:2])


@pytest.mark.parametrize("policy", ["belady", "lookahead"])
def test_offline_policies_hit_as_simulated(table_dir, policy):
    path, flat = table_dir
    steps = zipf_steps(40, seed=9)
    starts = np.cumsum([0] + [ids.size for ids in steps])
    for mode in ("inclusive", "exclusive"):
        spec = hierarchy(mode, policy, "lru", top_rows=15, middle_rows=40)
        ctx = PolicyContext(n_keys=N_ROWS, keys=np.concatenate(steps), step_starts=starts)
        with open_table(spec, path, device="cpu", ctx=ctx, record_trace=True) as table:
            for ids in steps:
                np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
            table.finish()
            assert_runtime_is_simulated(table, spec)


@settings(max_examples=15, deadline=None)
@given(mode=st.sampled_from(["inclusive", "exclusive"]),
       batches=st.lists(st.lists(st.integers(0, N_ROWS - 1), max_size=40), min_size=1, max_size=25),
       sizes=st.tuples(st.integers(1, 6), st.integers(1, 10)))
def test_rows_are_the_flat_tables_bytes(table_dir, mode, batches, sizes):
    """Tiny tiers, so that every step promotes and evicts; shapes other than 1-D pass through."""
    path, flat = table_dir
    spec = hierarchy(mode, "clock", "lru", top_rows=sizes[0], middle_rows=sizes[1])
    with open_table(spec, path, device="cpu") as table:
        for batch in batches:
            ids = torch.tensor(batch, dtype=torch.int64)
            if ids.numel() % 2 == 0 and ids.numel():
                ids = ids.view(2, -1)
            got = table.prefetch(ids).wait()
            assert got.shape == (*ids.shape, flat.shape[1]) and got.dtype == torch.uint8
            np.testing.assert_array_equal(got.numpy(), flat[ids.numpy()])
        assert_slabs_mirror_policies(table, flat)


def test_a_step_is_every_layer_of_one_forward_in_trace_order(table_dir):
    """Two layers' [B, T, K] requests form one step ordered (b, t, layer, k), as in a trace file."""
    path, flat = table_dir
    rng = np.random.default_rng(3)
    layers = [[torch.from_numpy(rng.integers(0, N_ROWS, (2, 3, 4))) for _ in range(2)] for _ in range(5)]
    with open_table(hierarchy("inclusive"), path, device="cpu", layers_per_step=2, record_trace=True) as table:
        for forward in layers:
            handles = [table.prefetch(ids) for ids in forward]
            for ids, handle in zip(forward, handles, strict=True):
                np.testing.assert_array_equal(handle.wait().numpy(), flat[ids.numpy()])
        trace = table.recorded_trace()
        assert table.stats()["steps"] == 5
    expected = np.concatenate([torch.stack(forward, dim=2).reshape(-1).numpy() for forward in layers])
    np.testing.assert_array_equal(trace.rows, expected)
    assert trace.step_starts.tolist() == [0, 48, 96, 144, 192, 240]


def test_a_static_hot_set_is_preloaded_and_hits_at_once(table_dir):
    path, flat = table_dir
    profile = np.zeros(N_ROWS, np.int64)
    hot = np.array([7, 99, 250, 3])
    profile[hot] = [10, 9, 8, 7]
    spec = {"tier": [{"name": "gpu", "capacity": 4, "policy": "static", "model": "hbm"}, {"name": "nvme", "model": "nvme"}]}
    ctx = PolicyContext(n_keys=N_ROWS, profile=profile)
    with open_table(spec, path, device="cpu", ctx=ctx) as table:
        ids = torch.tensor([99, 1, 3, 1, 250])
        np.testing.assert_array_equal(table.prefetch(ids).wait().numpy(), flat[ids.numpy()])
        gpu, store = table.stats()["tiers"]
        assert (gpu["lookups"], gpu["hits"], gpu["declined"], store["hits"]) == (4, 3, 1, 1)
        assert gpu["rows_read"] == 3 and store["rows_read"] == 1 + 4  # the preload read the hot set once


def test_per_step_records_and_stall(table_dir):
    path, _ = table_dir
    with open_table(hierarchy("inclusive"), path, device="cpu") as table:
        for ids in zipf_steps(4, seed=2, max_len=20):
            table.prefetch(torch.from_numpy(ids)).wait()
        table.finish()
        records, stats, later = table.step_records(), table.stats(), table.step_records(since=2)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert later == records[2:]  # what a server asks for: the steps it has not seen
    assert all(r["step_s"] > 0 and 0 <= r["stall_s"] <= r["step_s"] and r["fetch_s"] > 0 for r in records)
    assert stats["stall_seconds"] == pytest.approx(sum(r["stall_s"] for r in records))
    assert stats["requests"] == sum(r["requests"] for r in records)
    assert 0 <= stats["stall_fraction"] <= 1


def test_forgotten_steps_stay_in_the_totals(table_dir):
    """A server forgets the records it has published (`forget_steps`): the totals are those of every
    step, the records kept are those not forgotten, and older ones are refused in one line."""
    path, _ = table_dir
    with open_table(hierarchy("inclusive"), path, device="cpu") as table:
        for i, ids in enumerate(zipf_steps(30, seed=2, max_len=20)):
            table.prefetch(torch.from_numpy(ids)).wait()
            if i == 19:
                table.finish()
                every = table.step_records()
                table.forget_steps(12)
        table.finish()
        stats, kept = table.stats(), table.step_records(since=12)
        with pytest.raises(EngramTierError, match="steps before step 12 were retired"):
            table.step_records()
    assert [r["step"] for r in kept] == list(range(12, 30)) and kept[:8] == every[12:20]
    assert len(table._log.steps) == 18
    records = every[:12] + kept
    assert stats["steps"] == 30 and stats["requests"] == sum(r["requests"] for r in records)
    assert stats["lookups"] == sum(r["unique"] for r in records)
    for key, field in (("stall_seconds", "stall_s"), ("step_seconds", "step_s"), ("fetch_seconds", "fetch_s")):
        assert stats[key] == pytest.approx(sum(r[field] for r in records))


def test_refusals(table_dir, tmp_path, monkeypatch):
    path, _ = table_dir
    with pytest.raises(EngramTierError, match="no table at"):
        open_table(hierarchy("inclusive"), tmp_path / "missing")
    fingerprinted = tmp_path / "other"
    build_lmdb_table(RandomRows(50, "bf16", DIM, seed=1), fingerprinted, progress=False)
    with pytest.raises(EngramTierError, match="built for hash fingerprint None, but the model's is abc"):
        open_table(hierarchy("inclusive"), fingerprinted, expect_fingerprint="abc")
    with pytest.raises(EngramTierError, match=r"tier 'dram': capacity 500 \(500 rows\) exceeds the table's 400 rows"):
        open_table(hierarchy("inclusive", middle_rows=500), path)
    monkeypatch.setattr("engramtier.tiers.slab.available_host_bytes", lambda: 100)
    with pytest.raises(EngramTierError, match="tier 'gpu': gpu tier: needs .* GiB but only .* GiB are free"):
        open_table(hierarchy("inclusive"), path, device="cpu")
    monkeypatch.undo()
    spec = {"tier": [{"name": "flash", "capacity": 4, "policy": "lru", "model": "nvme"}, {"name": "nvme", "model": "nvme"}]}
    with pytest.raises(EngramTierError, match="cannot tell where cache tier 'flash' lives"):
        open_table(spec, path, device="cpu")
    spec["tier"][0]["storage"] = "ssd"
    with pytest.raises(EngramTierError, match=r"tier 'flash': unknown storage \(where the rows live\) 'ssd'"):
        open_table(spec, path, device="cpu")
    spec["tier"][-1]["storage"] = "dram"
    with pytest.raises(EngramTierError, match="backing store; its storage is a table naming a remote store"):
        Hierarchy.from_dict(spec | {"tier": [{**spec["tier"][0], "storage": "dram"}, spec["tier"][-1]]})
    with pytest.raises(EngramTierError, match="policy 'belady' is offline and needs the whole trace"):
        open_table(hierarchy("inclusive", top="belady"), path, device="cpu")
    with open_table(hierarchy("inclusive"), path, device="cpu", layers_per_step=2) as table:
        handle = table.prefetch(torch.zeros(3, dtype=torch.int64))
        with pytest.raises(EngramTierError, match="equally shaped ids"):
            table.prefetch(torch.zeros(4, dtype=torch.int64))
        with pytest.raises(EngramTierError, match="awaited after 1 of its 2 layers"):
            handle.wait()
    with open_table(hierarchy("inclusive"), path, device="cpu") as table:
        with pytest.raises(EngramTierError, match="row id 400 lies outside the table's 400 rows"):
            table.prefetch(torch.tensor([1, 400]))
    with pytest.raises(EngramTierError, match="stable_rows .* needs a cuda device"):
        open_table(hierarchy("inclusive"), path, device="cpu", stable_rows=True)


@pytest.mark.parametrize("storage,slab", [(None, GpuTier), ("dram", DramTier), ("cxl", CxlTier)])
def test_a_cache_tiers_storage_says_where_its_rows_live(table_dir, storage, slab):
    """An explicit `storage` decides the slab, whatever the tier and its model are called; without one,
    the model does (hbm: a gpu tier). The hits follow the policy alone."""
    path, _ = table_dir
    spec = hierarchy("inclusive")
    spec["tier"][0] |= {"name": "fast", "model": "hbm"} | ({"storage": storage} if storage else {})
    with open_table(spec, path, device="cpu") as table:
        assert type(table.caches[0]) is slab and isinstance(table.caches[1], DramTier)
        for step in zipf_steps(20, seed=3):
            table.prefetch(torch.from_numpy(step)).wait()
        assert table.stats()["tiers"][0]["hits"] > 0
    assert Hierarchy.from_dict(spec).to_dict()["tier"][0].get("storage") == storage


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_gpu_rows_and_hits(table_dir, mode):
    path, flat = table_dir
    steps = zipf_steps(40, seed=4)
    with open_table(hierarchy(mode), path, device="cuda", record_trace=True) as table:
        assert not table.caches[0].emulated
        for ids in steps:
            got = table.prefetch(torch.from_numpy(ids).cuda()).wait()
            assert got.device.type == "cuda"
            np.testing.assert_array_equal(got.cpu().numpy(), flat[ids])
        table.finish()
        runtime = table.stats()
        trace = table.recorded_trace()
    sim = simulate(trace, Hierarchy.from_dict(hierarchy(mode)), compute_window_s=0.0, progress=False)
    assert [t["hits"] for t in runtime["tiers"]] == [t["hits"] for t in sim.tier_stats()]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stable_rows_feed_a_captured_cuda_graph(table_dir):
    """With stable_rows, steps of one size deliver into one buffer, so a CUDA graph captured over the
    first step's rows computes on every later step's rows when replayed."""
    path, flat = table_dir
    rng = np.random.default_rng(12)
    steps = [rng.integers(0, N_ROWS, 32) for _ in range(30)]
    with open_table(hierarchy("inclusive"), path, device="cuda", stable_rows=True) as table:
        rows = table.prefetch(torch.from_numpy(steps[0]).cuda()).wait()
        sums = torch.empty(32, dtype=torch.int64, device="cuda")
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            sums.copy_(rows.to(torch.int64).sum(dim=1))
        for ids in steps[1:]:
            again = table.prefetch(torch.from_numpy(ids).cuda()).wait()
            assert again.data_ptr() == rows.data_ptr()
            graph.replay()
            np.testing.assert_array_equal(sums.cpu().numpy(), flat[ids].astype(np.int64).sum(axis=1))
        assert table.stats()["tiers"][0]["hits"] > 0


# Policies whose hits can evict (`hit_victim`): (seed, step rows, steps, top rows, middle rows). W-TinyLFU's
# promotions overfill probation; CLOCK-Pro, on a few more rows than it holds (22 through 20), evicts two rows
# in one admission now and then and keeps the second held (pending, see clockpro.py) until a later hit or
# admission reports it.
HIT_EVICTIONS = {
    "wtinylfu": (3, lambda rng: zipf_keys(40, N_ROWS, 1.05, rng), 150, 100, 200),
    "clockpro": (4, lambda rng: 2 * zipf_keys(6, 22, 0.5, rng), 400, 20, 40),
}


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("top", sorted(HIT_EVICTIONS))
def test_rows_evicted_by_a_hit_leave_their_slot(table_dir, mode, top):
    """A row a hit reports evicted must leave its slab slot then (or the next admission finds no slot), and
    a row still held keeps its slot: the slabs mirror the policies, the runtime as the simulator."""
    path, flat = table_dir
    seed, step_rows, n_steps, top_rows, middle_rows = HIT_EVICTIONS[top]
    rng = np.random.default_rng(seed)
    steps = [step_rows(rng) for _ in range(n_steps)]
    spec = hierarchy(mode, top=top, middle="lru", top_rows=top_rows, middle_rows=middle_rows)
    hit_evictions = 0
    with open_table(spec, path, device="cpu", record_trace=True) as table:
        for ids in steps:
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
            first = table.engine.streams[0]
            hit_evictions += int(np.sum(first.hit & (first.victim >= 0)))
        table.finish()
        assert_slabs_mirror_policies(table, flat)
        assert_runtime_is_simulated(table, spec)
    assert hit_evictions > 0


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
@pytest.mark.parametrize("top,middle", [("lru", "s3fifo"), ("arc", "clock")])
def test_warm_start_hits_equal_the_simulator_and_serves_the_table_bytes(table_dir, mode, top, middle):
    path, flat = table_dir
    steps = zipf_steps(40, seed=6)
    # Profiled on other steps of the same popularity (as a training prefix would be); rows 395+ are counted
    # but never requested below, so warm rows outside the measured trace take their place in both.
    profile = np.bincount(np.concatenate(zipf_steps(40, seed=7)), minlength=N_ROWS)
    profile[395:] = np.sort(profile)[-20]  # ranked about 20th: in the dram tier's share
    steps = [ids[ids < 395] for ids in steps]
    warm = Hierarchy.from_dict(hierarchy(mode, top, middle)).with_warm(profile)
    with open_table(warm, path, device="cpu", record_trace=True) as table:
        held = [int(policy.occupancy()) for policy in table.engine.policies]
        assert held[0] > 0 and held[1] > 0
        assert_slabs_mirror_policies(table, flat)  # warm rows were copied in at open, byte for byte
        first = table.prefetch(torch.from_numpy(steps[0])).wait()
        np.testing.assert_array_equal(first.numpy(), flat[steps[0]])
        assert table.stats()["tiers"][0]["hits"] > 0  # the first step already hits
        for ids in steps[1:]:
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
        table.finish()
        runtime, trace = table.stats(), table.recorded_trace()
        assert_slabs_mirror_policies(table, flat)
    sim = simulate(trace, warm, compute_window_s=0.0, progress=False)
    keys = ("lookups", "hits", "promoted", "demoted", "evicted", "declined", "warm_rows")
    assert [{k: t[k] for k in keys} for t in runtime["tiers"]] == [{k: t[k] for k in keys} for t in sim.tier_stats()]
    assert [t["warm_rows"] for t in runtime["tiers"][:2]] == held


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_a_warm_start_that_leaves_room_admits_into_the_free_slots(table_dir, mode):
    """Warm rows fill only part of each tier: the rows admitted later take the free slots, not the warm
    rows' (the slot plans are made after the warm rows are copied in)."""
    path, flat = table_dir
    profile = np.zeros(N_ROWS)
    profile[:8] = np.arange(8, 0, -1)  # 8 rows profiled: 12- and 30-row tiers keep room
    warm = Hierarchy.from_dict(hierarchy(mode)).with_warm(profile)
    with open_table(warm, path, device="cpu", record_trace=True) as table:
        assert 0 < table.engine.policies[0].occupancy() < table.caches[0].capacity_rows
        for ids in zipf_steps(40, seed=8):
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
        table.finish()
        assert_slabs_mirror_policies(table, flat)


@pytest.mark.parametrize("mode", ["inclusive", "exclusive"])
def test_partitioned_hit_counts_equal_the_simulator(table_dir, mode):
    """Order-aware placement runs through the same engine: fixed shares above, profile shares (from the
    trace, the same curves over global ids as over the simulator's dense keys) below."""
    from engramtier.trace.layout import SubtableLayout

    path, flat = table_dir
    layout = SubtableLayout(np.array([70, 61, 69, 67, 73, 60]), (1,), 2, 4)  # orders 2-4, two heads
    steps = zipf_steps(60, seed=4)
    spec = hierarchy(mode, "partitioned", "partitioned", top_rows=12, middle_rows=40)
    spec["tier"][0]["params"] = {"shares": {"2": 0.5, "4": 0.5}}
    spec["tier"][1]["params"] = {"inner": "s3fifo", "shares": "profile"}
    ctx = PolicyContext(n_keys=N_ROWS, keys=np.concatenate(steps), layout=layout)
    with open_table(spec, path, device="cpu", ctx=ctx, record_trace=True) as table:
        for ids in steps:
            np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), flat[ids])
        table.finish()
        trace = table.recorded_trace()
        runtime = table.stats()
        assert_slabs_mirror_policies(table, flat)
        runtime_rows = [p.rows for p in table.engine.policies]
    trace.meta.update(layout.to_meta())
    sim = simulate(trace, Hierarchy.from_dict(spec), compute_window_s=0.0, progress=False)
    keys = ("lookups", "hits", "promoted", "demoted", "evicted", "declined")
    assert [{k: t[k] for k in keys} for t in runtime["tiers"]] == [{k: t[k] for k in keys} for t in sim.tier_stats()]
    assert runtime_rows[0] == {2: 6, 4: 6} and sum(runtime_rows[1].values()) == 40
    gpu = runtime["tiers"][0]
    assert gpu["hits"] > 0 and gpu["declined"] > 0  # order 3 rows have no share in the top tier


def test_state_follows_the_caches_not_the_table():
    """A table of 2**33 rows opens in a few MiB and serves the same hits as a table of 1,000 rows that
    sees the same pattern of requests (row ids spread over the whole table)."""
    n_big = 2**33
    rng = np.random.default_rng(11)
    steps = [zipf_keys(int(rng.integers(1, 80)), 1000, 1.1, rng) for _ in range(80)]
    spread = lambda keys: (keys * 2_147_483_629 + 12_345) % n_big  # odd multiplier: a bijection of ids  # noqa: E731
    spec = {"mode": "exclusive", "tier": [{"name": "gpu", "capacity": 64, "policy": "s3fifo", "model": "hbm"},
                                          {"name": "dram", "capacity": 256, "policy": "lru", "model": "dram"},
                                          {"name": "nvme", "model": "nvme"}]}
    tiered_table(spec, ComputedStore(1000, 16), device="cpu").close()  # compiles what the first open compiles
    hits = []
    for store, ids_of in ((ComputedStore(n_big, 16), spread), (ComputedStore(1000, 16), lambda keys: keys)):
        tracemalloc.start()
        table = tiered_table(spec, store, device="cpu")
        opened = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        with table:
            for keys in steps:
                ids = ids_of(keys)
                np.testing.assert_array_equal(table.prefetch(torch.from_numpy(ids)).wait().numpy(), expected_rows(ids, 16))
            table.finish()
            hits.append([(t["hits"], t["evicted"]) for t in table.stats()["tiers"]])
        assert opened < 4 * 2**20, f"opening allocated {opened / 2**20:.1f} MiB"
    assert hits[0] == hits[1] and hits[0][0][0] > 0 and hits[0][1][0] > 0
