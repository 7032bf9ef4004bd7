"""Zero-copy gather: the GPU reads table rows straight out of pinned host memory over UVA.

The DRAM tier's usual path gathers the rows a step needs on the CPU into a pinned staging buffer, then
copies that buffer to the device: every byte crosses host memory twice. Under unified virtual
addressing (every 64-bit CUDA system) pinned host memory is also addressable from the device, so a
gather kernel on the GPU can read the rows where they lie and write them into device memory: one
pass over PCIe/NVLink-C2C, no CPU time, no staging (what vLLM's CPU-offload path does).

`device_view` exposes a pinned host tensor of row bytes as a CUDA tensor over the same memory;
`gather_rows` is then an ordinary `index_select` launched on the device.
"""

from __future__ import annotations

import torch

from engramtier.errors import EngramTierError


class _PinnedRows:
    """A pinned uint8 [rows, row_bytes] host buffer described as CUDA memory (``__cuda_array_interface__``):
    under UVA the host address of pinned memory is valid on the device."""

    def __init__(self, host: torch.Tensor) -> None:
        self.host = host  # keeps the memory alive as long as the view
        self.__cuda_array_interface__ = {"shape": tuple(host.shape), "typestr": "|u1", "data": (host.data_ptr(), False),
                                         "strides": None, "version": 3}


def device_view(host: torch.Tensor, device: torch.device | str = "cuda") -> torch.Tensor:
    """A CUDA uint8 tensor over the memory of ``host`` (pinned, contiguous uint8 [rows, row_bytes]);
    reads of it travel over the bus on demand. Refused in one line without CUDA or on unpinned memory."""
    if not torch.cuda.is_available():
        raise EngramTierError("zero-copy gather needs CUDA, which is not available here; use the copy path")
    if host.device.type != "cpu" or not host.is_pinned():
        raise EngramTierError("zero-copy gather reads pinned host memory: allocate the rows with pin_memory=True")
    if host.dtype != torch.uint8 or host.dim() != 2 or not host.is_contiguous():
        raise EngramTierError(f"zero-copy gather takes contiguous uint8 [rows, row_bytes] rows, got {host.dtype} "
                              f"{tuple(host.shape)}")
    with torch.cuda.device(torch.device(device)):
        return torch.as_tensor(_PinnedRows(host), device=device)


def gather_rows(view: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Rows ``ids`` (a device int64 tensor) of the host rows behind ``view``, gathered by the GPU into
    ``out`` (device memory, [len(ids), row_bytes]; allocated when None) on the current stream."""
    return torch.index_select(view, 0, ids, out=out)


def gather_then_copy(host: torch.Tensor, ids: torch.Tensor, staging: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The usual path, for comparison: gather on the CPU into pinned ``staging``, then one async copy."""
    n = ids.numel()
    torch.index_select(host, 0, ids, out=staging[:n])
    out[:n].copy_(staging[:n], non_blocking=True)
    return out[:n]
