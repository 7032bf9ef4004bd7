"""The zero-copy (UVA) gather: bit-identical to a host gather, and refused cleanly where it cannot run."""

import pytest
import torch

from engramtier.errors import EngramTierError
from engramtier.tiers.uva import device_view, gather_rows, gather_then_copy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("row_bytes", [1, 160, 264])
def test_uva_gather_equals_host_gather(row_bytes):
    g = torch.Generator().manual_seed(row_bytes)
    host = torch.randint(0, 256, (5000, row_bytes), dtype=torch.uint8, generator=g).pin_memory()
    view = device_view(host)
    for ids in (torch.randint(0, 5000, (777,), generator=g), torch.tensor([3, 3, 3, 4999, 0]),
                torch.empty(0, dtype=torch.int64)):
        got = gather_rows(view, ids.cuda())
        assert got.is_cuda and torch.equal(got.cpu(), host[ids])
        staging = torch.empty((ids.numel(), row_bytes), dtype=torch.uint8).pin_memory()
        out = torch.empty((ids.numel(), row_bytes), dtype=torch.uint8, device="cuda")
        assert torch.equal(gather_then_copy(host, ids, staging, out).cpu(), host[ids])


@pytest.mark.gpu
@cuda
def test_bf16_rows_gather_as_bytes():
    rows = torch.randn(300, 80, dtype=torch.bfloat16).pin_memory()
    view = device_view(rows.view(torch.uint8))
    ids = torch.tensor([299, 0, 7, 7])
    assert torch.equal(gather_rows(view, ids.cuda()).view(torch.bfloat16).cpu(), rows[ids])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_uva_path_is_refused_in_one_line():
    with pytest.raises(EngramTierError, match="needs CUDA") as err:
        device_view(torch.zeros((4, 8), dtype=torch.uint8))
    assert "\n" not in str(err.value)


def test_gather_then_copy_on_cpu_is_a_plain_gather():
    host = torch.arange(40, dtype=torch.uint8).reshape(10, 4)
    ids = torch.tensor([9, 1, 1])
    staging, out = torch.empty((8, 4), dtype=torch.uint8), torch.empty((8, 4), dtype=torch.uint8)
    assert torch.equal(gather_then_copy(host, ids, staging, out), host[ids])
