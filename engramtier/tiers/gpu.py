"""The gpu tier: hot rows in a preallocated device slab, gathered on the device.

The slab is allocated once at full capacity so serving never allocates on the hot path and an
oversized tier fails at start-up, not mid-run. The slot map stays on the host, where the policy runs;
only the slot numbers of a read cross to the device. Without CUDA the slab lives in host memory and
`stats()["emulated"]` is True, so the runtime and every test run anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engramtier.errors import EngramTierError
from engramtier.tiers.base import default_model
from engramtier.tiers.slab import SlabTier, copy_rows, host_slab


def resolve_device(device: Any, where: str) -> torch.device:
    """``device`` named as the tensors on it name theirs ("cuda" becomes "cuda:N", the current one): an
    unnumbered "cuda" compares unequal to every tensor's device. A CUDA device without CUDA is refused."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngramTierError(f"{where}: device {device} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


class GpuTier(SlabTier):
    """Device-memory cache tier; ``device`` defaults to cuda:0 when CUDA exists, else the CPU (emulated).

    Emulated, the slab is host memory copied by the dram tier's kernel: torch's CPU ``index_select``
    launches its thread pool even for a few thousand rows, which costs more than the copy itself.
    ``parallel_min_rows`` then has the dram tier's meaning.
    """

    name = "gpu"

    def __init__(self, n_table_rows: int, capacity_rows: int, row_bytes: int, *, device: Any = None,
                 parallel_min_rows: int = 1 << 15, model: Any = None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = resolve_device(device, "gpu tier")
        self.emulated = self.device.type != "cuda"
        self.parallel_min_rows = int(parallel_min_rows)
        super().__init__(n_table_rows, capacity_rows, row_bytes, model or default_model("hbm"))
        self.slab = torch.from_numpy(host_slab(self.capacity_rows, self.row_bytes)) if self.emulated else \
            torch.empty((self.capacity_rows, self.row_bytes), dtype=torch.uint8, device=self.device)
        self.reads_into_device = self.slab_on_device = not self.emulated

    def direct_rows(self) -> np.ndarray | None:
        return self.slab.numpy() if self.emulated else None

    def _slab_room(self) -> tuple[int, str | None]:
        if self.emulated:
            return 0, None
        return torch.cuda.mem_get_info(self.device)[0], f"{self.device} memory"

    def _device_rows(self, rows: Any, n: int, what: str) -> torch.Tensor:
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(self._host_rows(rows, n, what))
        if rows.dtype != torch.uint8 or tuple(rows.shape) != (n, self.row_bytes):
            raise EngramTierError(
                f"{self.name} tier: {what} must be uint8 of shape ({n}, {self.row_bytes}), "
                f"got {rows.dtype} {tuple(rows.shape)}"
            )
        return rows

    def _slots(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(slots).to(self.device, non_blocking=True)

    def _gather(self, slots: np.ndarray, out: Any) -> None:
        if self.emulated:
            copy_rows(self.slab.numpy(), slots, self._host_rows(out, slots.size, "out"), None, self.parallel_min_rows)
            return
        out = self._device_rows(out, slots.size, "out")
        if out.device != self.device:
            raise EngramTierError(f"{self.name} tier: out is on {out.device}; pass a tensor on {self.device}")
        torch.index_select(self.slab, 0, self._slots(slots), out=out)

    def _scatter(self, slots: np.ndarray, rows: Any) -> None:
        if self.emulated:
            if isinstance(rows, torch.Tensor):
                rows = rows.cpu()  # rows staged on a device reach the emulated slab through the host
            copy_rows(self._host_rows(rows, slots.size, "rows"), None, self.slab.numpy(), slots, self.parallel_min_rows)
            return
        rows = self._device_rows(rows, slots.size, "rows").to(self.device, non_blocking=True)
        self.slab.index_copy_(0, self._slots(slots), rows)

    def _scatter_from(self, staging: Any, positions: np.ndarray, slots: np.ndarray) -> None:
        if self.emulated:
            copy_rows(staging, positions, self.slab.numpy(), slots, self.parallel_min_rows)
            return
        self.slab.index_copy_(0, self._slots(slots), staging.index_select(0, self._slots(positions)))

    def stats(self) -> dict:
        return {**super().stats(), "device": str(self.device), "emulated": self.emulated}

    def close(self) -> None:
        self.slab = torch.empty((0, self.row_bytes), dtype=torch.uint8, device=self.device)
