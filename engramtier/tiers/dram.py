"""The dram tier: warm rows in a host slab, gathered by CPU threads.

With ``gather="copy"`` a read is a CPU gather of scattered slots into host memory; the runtime gathers
into its pinned staging buffer and copies that to the GPU on a side stream (`engramtier.tiers.staging`,
the one owner of the host-to-device copy). ``gather="uva"`` takes one hop instead: the GPU gathers the
rows out of the pinned slab itself, over unified virtual addressing (`engramtier.tiers.uva`), with no
CPU gather and no staging copy. Where CUDA exists the slab is pinned (page-locked) by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.base import default_model
from engramtier.tiers.gpu import resolve_device
from engramtier.tiers.slab import SlabTier, copy_rows, host_slab
from engramtier.tiers.uva import device_view, gather_rows, require_cuda

GATHERS = ("copy", "uva")  # how rows reach the device: CPU gather + copy, or a GPU gather over UVA


class DramTier(SlabTier):
    """Host-memory cache tier; ``device`` (e.g. "cuda:0") is the GPU a uva gather delivers to.

    ``parallel_min_rows``: gathers of at least this many rows use all numba threads.
    ``pin``: page-lock the slab (default: when CUDA is available).
    ``gather``: "copy" (a CPU gather into host memory) or "uva" (the GPU gathers
    from the pinned slab; needs a CUDA ``device``). With "uva", `read` into a tensor on ``device`` is
    that GPU gather too, on the current stream; `read` into host memory stays a CPU gather.
    """

    name = "dram"

    def __init__(self, n_table_rows: int, capacity_rows: int, row_bytes: int, *, device: Any = None,
                 pin: bool | None = None, parallel_min_rows: int = 1 << 15, gather: str = "copy",
                 model: Any = None) -> None:
        refuse_unknown([gather], GATHERS, f"{self.name} tier", "gather")
        if gather == "uva":
            require_cuda(f"{self.name} tier")
            if device is None or torch.device(device).type != "cuda":
                raise EngramTierError(f"{self.name} tier: gather 'uva' delivers rows to a GPU, but the device is "
                                      f"{device or 'cpu'}; give a cuda device or use gather 'copy'")
        super().__init__(n_table_rows, capacity_rows, row_bytes, model or default_model(self.name))
        self.device = resolve_device(device if device is not None else "cpu", f"{self.name} tier")
        self.gather = gather
        self.pin = torch.cuda.is_available() if pin is None else bool(pin)
        self.parallel_min_rows = int(parallel_min_rows)
        self.slab_pinned = self.pin
        self.slab = self._allocate_slab()
        self._slab_on_device = device_view(torch.from_numpy(self.slab), self.device) if gather == "uva" else None
        self.reads_into_device = gather == "uva"

    def direct_rows(self) -> np.ndarray | None:
        return self.slab

    def _allocate_slab(self) -> np.ndarray:
        if self.pin:  # page-locked for DMA to the GPU
            return torch.empty((self.capacity_rows, self.row_bytes), dtype=torch.uint8, pin_memory=True).numpy()
        return host_slab(self.capacity_rows, self.row_bytes)

    def _gather(self, slots: np.ndarray, out: Any) -> None:
        if self._slab_on_device is not None and isinstance(out, torch.Tensor) and out.device.type == "cuda":
            self._check_device_out(out, slots.size)
            gather_rows(self._slab_on_device, torch.from_numpy(slots).to(self.device, non_blocking=True), out)
            return
        copy_rows(self.slab, slots, self._host_rows(out, slots.size, "out"), None, self.parallel_min_rows)

    def _scatter(self, slots: np.ndarray, rows: Any) -> None:
        copy_rows(self._host_rows(rows, slots.size, "rows"), None, self.slab, slots, self.parallel_min_rows)

    def _scatter_from(self, staging: np.ndarray, positions: np.ndarray, slots: np.ndarray) -> None:
        copy_rows(staging, positions, self.slab, slots, self.parallel_min_rows)

    def _check_device_out(self, out: torch.Tensor, n_rows: int) -> None:
        if out.device != self.device or out.shape != (n_rows, self.row_bytes) or out.dtype != torch.uint8 \
                or not out.is_contiguous():
            raise EngramTierError(
                f"{self.name} tier: out must be contiguous uint8 ({n_rows}, {self.row_bytes}) on {self.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )

    def stats(self) -> dict:
        return {**super().stats(), "slab_pinned": self.slab_pinned, "device": str(self.device), "gather": self.gather}

    def close(self) -> None:
        if self._slab_on_device is not None:
            torch.cuda.synchronize(self.device)  # uva reads run on any stream; none may outlive the slab
        self._slab_on_device = None
        self.slab = np.empty((0, self.row_bytes), np.uint8)
