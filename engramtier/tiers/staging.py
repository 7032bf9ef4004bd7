"""A step's rows on their way to the compute device: the one owner of the host-to-device copy.

Host tiers (dram, cxl, nvme, an emulated gpu) fill a host buffer; tiers that read into device memory
(a real gpu tier, a dram tier with ``gather="uva"``) fill the front of a device buffer, and `upload`
copies the host part in behind them. Where CUDA exists the host buffer is pinned (page-locked) and the
copy runs on a side stream, so it is a DMA off the compute stream. Both buffers are reused from step
to step, growing to the largest step and never shrinking, so a step allocates nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Grow:
    """A reused array that grows (never shrinks): `take(n)` is a view of its first ``n`` rows."""

    def __init__(self, dtype: Any, row_shape: tuple[int, ...] = (), pinned: bool = False) -> None:
        self.dtype, self.row_shape, self.pinned = dtype, row_shape, pinned
        self.array = self._allocate(0)

    def _allocate(self, n: int) -> np.ndarray:
        if self.pinned:  # page-locked, so that copies to the GPU are DMAs off the compute stream
            dtype = torch.from_numpy(np.empty(0, self.dtype)).dtype
            return torch.empty((n, *self.row_shape), dtype=dtype, pin_memory=True).numpy()
        return np.empty((n, *self.row_shape), self.dtype)

    def take(self, n: int) -> np.ndarray:
        if self.array.shape[0] < n:
            self.array = self._allocate(max(n, 2 * self.array.shape[0]))
        return self.array[:n]


class Staging:
    """Rows of ``row_bytes`` staged for ``device``: `host` rows, `device` rows, and the copy between.

    ``stream`` is the side stream the device buffer is allocated and filled on (None without CUDA,
    where the host buffer is what is delivered and nothing is copied). The copy is asynchronous, so
    with CUDA there are two host buffers, used by turns (`flip`): a step fills one while the copy of
    the step before may still read the other, and only the step after next must wait for that copy.
    """

    def __init__(self, row_bytes: int, device: torch.device) -> None:
        self.row_bytes = row_bytes
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        turns = 2 if self.stream is not None else 1
        self._turns = [Grow(np.uint8, (row_bytes,), pinned=self.stream is not None) for _ in range(turns)]
        self._host = self._turns[0]
        self.on_device = torch.empty((0, row_bytes), dtype=torch.uint8, device=device)  # grown by `device`

    def flip(self) -> None:
        """Take the other host buffer (with CUDA): the next step fills it while the last one's copy runs."""
        self._turns.append(self._turns.pop(0))
        self._host = self._turns[0]

    def host(self, n: int) -> np.ndarray:
        """The first ``n`` host rows (pinned where CUDA exists)."""
        return self._host.take(n)

    @property
    def host_rows(self) -> np.ndarray:
        """Every host row there is (the buffer `host` hands out views of, until it grows)."""
        return self._host.array

    def device(self, n: int) -> torch.Tensor:
        """The first ``n`` device rows, the buffer grown to hold them."""
        if self.on_device.shape[0] < n:
            with torch.cuda.stream(self.stream):
                self.on_device = torch.empty((max(n, 2 * self.on_device.shape[0]), self.row_bytes),
                                             dtype=torch.uint8, device=self.on_device.device)
        return self.on_device[:n]

    def upload(self, lo: int, hi: int) -> None:
        """Copy host rows ``lo:hi`` into the same device rows, on ``stream``."""
        rows = self.device(hi)
        with torch.cuda.stream(self.stream):
            rows[lo:].copy_(torch.from_numpy(self._host.array[lo:hi]), non_blocking=True)
