"""The zero-copy (UVA) gather: bit-identical to a host gather, in the dram tier and the runtime, and refused
in one line where it cannot run."""

import numpy as np
import pytest
import torch
from zipf import zipf_keys

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.errors import EngramTierError
from engramtier.tiers.dram import DramTier
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.open import open_table
from engramtier.tiers.uva import device_view, gather_rows

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
N_ROWS = 400


def id_cases(n_rows, generator):
    """Random ids, duplicates (and the first and last row), and none."""
    return [torch.randint(0, n_rows, (777,), generator=generator), torch.tensor([3, 3, 3, n_rows - 1, 0, 3]),
            torch.empty(0, dtype=torch.int64)]


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("uva") / "table"
    source = RandomRows(N_ROWS, "bf16", 8, seed=7)
    build_lmdb_table(source, path, compression="none", page_kib=1, progress=False)
    flat = np.empty((N_ROWS, source.row_bytes), np.uint8)
    source.rows(np.arange(N_ROWS), flat)
    return path, flat


def hierarchy(with_gpu):
    gpu = [{"name": "gpu", "capacity": 12, "policy": "lru", "model": "hbm"}] if with_gpu else []
    return {"mode": "inclusive", "tier": [*gpu, {"name": "dram", "capacity": 60, "policy": "s3fifo", "model": "dram"},
                                          {"name": "nvme", "model": "nvme"}]}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("row_bytes", [1, 6, 160, 264])
def test_uva_gather_of_byte_rows_equals_index_select(row_bytes):
    g = torch.Generator().manual_seed(row_bytes)
    host = torch.randint(0, 256, (5000, row_bytes), dtype=torch.uint8, generator=g).pin_memory()
    view = device_view(host)
    assert view.is_cuda and view.data_ptr() == host.data_ptr()  # a view, not a copy
    for ids in id_cases(5000, g):
        got = gather_rows(view, ids.cuda())
        assert got.is_cuda and got.shape == (ids.numel(), row_bytes)
        assert torch.equal(got.cpu(), torch.index_select(host, 0, ids))


@pytest.mark.gpu
@cuda
def test_uva_gather_of_bf16_rows_equals_index_select_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    host = torch.randn(3000, 80, generator=g).to(torch.bfloat16).pin_memory()
    host[0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])  # bits, not values, must survive
    view = device_view(host)
    assert view.dtype == torch.bfloat16
    for ids in id_cases(3000, g):
        got = gather_rows(view, ids.cuda())
        assert torch.equal(got.cpu().view(torch.int16), torch.index_select(host, 0, ids).view(torch.int16))


@pytest.mark.gpu
@cuda
def test_dram_tier_uva_reads_equal_its_copy_reads():
    rows = np.random.default_rng(5).integers(0, 256, (4096, 160), dtype=np.uint8)
    tiers = {g: DramTier(4096, 4096, 160, device="cuda", gather=g) for g in ("copy", "uva")}
    for tier in tiers.values():
        tier.write(np.arange(4096), rows)
    ids = np.random.default_rng(6).integers(0, 4096, 3000)
    for name, tier in tiers.items():
        assert tier.stats()["gather"] == name
        assert tier.device == torch.device("cuda", torch.cuda.current_device())  # "cuda", numbered as tensors are
        transfers = [tier.read_async(ids[i::3]) for i in range(3)]
        for i, t in enumerate(transfers):
            np.testing.assert_array_equal(t.wait().cpu().numpy(), rows[ids[i::3]])
    out = torch.empty((500, 160), dtype=torch.uint8, device="cuda")
    tiers["uva"].read(ids[:500], out)  # a read into device memory is the GPU gather
    np.testing.assert_array_equal(out.cpu().numpy(), rows[ids[:500]])
    host_out = np.empty((500, 160), np.uint8)
    tiers["uva"].read(ids[:500], host_out)  # into host memory it stays a CPU gather
    np.testing.assert_array_equal(host_out, rows[ids[:500]])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("with_gpu", [True, False])
def test_runtime_with_uva_dram_serves_the_flat_bytes_and_the_simulated_hits(table_dir, with_gpu):
    path, flat = table_dir
    rng = np.random.default_rng(4)
    steps = [zipf_keys(50, N_ROWS, 1.1, rng) for _ in range(40)]
    with open_table(hierarchy(with_gpu), path, device="cuda", dram_gather="uva", record_trace=True) as table:
        assert table.stats()["dram_gather"] == "uva"
        for ids in steps:
            got = table.prefetch(torch.from_numpy(ids).cuda()).wait()
            np.testing.assert_array_equal(got.cpu().numpy(), flat[ids])
        table.finish()
        runtime, trace = table.stats(), table.recorded_trace()
    sim = simulate(trace, Hierarchy.from_dict(hierarchy(with_gpu)), compute_window_s=0.0, progress=False)
    assert [t["hits"] for t in runtime["tiers"]] == [t["hits"] for t in sim.tier_stats()]


@no_cuda
def test_without_cuda_the_uva_path_is_refused_in_one_line(table_dir):
    refusals = [lambda: device_view(torch.zeros((4, 8), dtype=torch.uint8)),
                lambda: DramTier(100, 10, 8, device="cuda", gather="uva"),
                lambda: open_table(hierarchy(False), table_dir[0], device="cpu", dram_gather="uva")]
    for refuse in refusals:
        with pytest.raises(EngramTierError, match="needs CUDA, which is not available here") as err:
            refuse()
        assert "\n" not in str(err.value)


def test_an_unknown_gather_is_refused_naming_the_choices():
    with pytest.raises(EngramTierError, match="unknown gather 'zero-copy'.*copy, uva"):
        DramTier(100, 10, 8, gather="zero-copy")
