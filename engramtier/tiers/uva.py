"""Zero-copy gather: the GPU reads table rows straight out of pinned host memory over UVA.

The dram tier's copy path gathers a step's rows on the CPU into a pinned staging buffer, then copies
that buffer to the device: the bytes cross host memory twice and the gather costs CPU time. Under
unified virtual addressing (every 64-bit CUDA system) pinned host memory is addressable from the
device too, so a gather kernel on the GPU can read the rows where they lie and write them into device
memory: one pass over the bus, no CPU gather, no staging (the trick vLLM's CPU-offload path uses).

`device_view` describes a pinned host tensor as a CUDA tensor over the same memory; `gather_rows` is
then an ordinary `index_select` launched on the device, whose loads travel over PCIe (or NVLink-C2C).
torch pins memory with ``cudaHostAlloc``, and under UVA such memory has the same address on the device
as on the host, so the host pointer is the device pointer.
"""

from __future__ import annotations

import torch

from engramtier.errors import EngramTierError
from engramtier.tiers.gpu import resolve_device

# Widest word first: a warp loading 8-byte words pulls 256 contiguous bytes per request over the bus,
# where byte loads would pull 32; rows are gathered in the widest word that divides them and their addresses.
_WORDS = ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2), (torch.uint8, 1))


def require_cuda(where: str) -> None:
    """Refuse, in one line naming ``where``, a zero-copy path on a machine without CUDA."""
    if not torch.cuda.is_available():
        raise EngramTierError(f"{where}: the zero-copy (uva) gather needs CUDA, which is not available here; "
                              "use the copy gather")


class _PinnedMemory:
    """Pinned host bytes described as CUDA memory (``__cuda_array_interface__``); holding ``host`` keeps
    the memory alive for as long as the device view built on it."""

    def __init__(self, host: torch.Tensor) -> None:
        self.host = host
        self.__cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "|u1", "strides": None,
                                         "data": (host.data_ptr(), False), "version": 3}


def device_view(host: torch.Tensor, device: torch.device | str = "cuda") -> torch.Tensor:
    """A CUDA tensor over the memory of ``host`` (pinned, contiguous, at least 1-D; any dtype), same
    dtype and shape; its reads travel over the bus on demand. Refused in one line without CUDA or on
    memory that is not pinned."""
    require_cuda("zero-copy view")
    if host.device.type != "cpu" or not host.is_pinned():
        raise EngramTierError(f"zero-copy view: the rows are not pinned host memory ({host.device}); allocate them "
                              "with pin_memory=True")
    if host.dim() == 0 or not host.is_contiguous():
        raise EngramTierError(f"zero-copy view: the rows must be a contiguous tensor of rows, got shape "
                              f"{tuple(host.shape)} with strides {host.stride()}")
    device = resolve_device(device, "zero-copy view")  # torch keeps a tensor in place only on its very device
    with torch.cuda.device(device):
        view = torch.as_tensor(_PinnedMemory(host.view(torch.uint8)), device=device)
    if view.data_ptr() != host.data_ptr():  # torch copied the rows to the device instead of mapping them
        raise EngramTierError(f"zero-copy view: the pinned rows belong to another GPU than {device}; "
                              "pin them while that device is current")
    return view.view(host.dtype)


def gather_rows(view: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``ids`` (int64 on the view's device) of the 2-D view, gathered by the GPU into ``out``
    (contiguous, on that device; allocated when None), on the current stream."""
    if out is None:
        out = torch.empty((ids.numel(), view.shape[1]), dtype=view.dtype, device=view.device)
    row_bytes = view.shape[1] * view.element_size()
    word = next(w for w, size in _WORDS if row_bytes % size == 0 and view.data_ptr() % size == 0
                and out.data_ptr() % size == 0)
    torch.index_select(view.view(word), 0, ids, out=out.view(word))
    return out
