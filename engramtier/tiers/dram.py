"""The dram tier: warm rows in a host slab, gathered by CPU threads and copied to the GPU asynchronously.

Where CUDA exists the slab and the staging buffers are pinned (page-locked), so the host-to-device copy
is a DMA that runs on a side stream while the default stream computes. A read for the device therefore
takes two hops: a gather of scattered slots into a contiguous staging buffer, then one copy. Two
staging buffers alternate so a gather can fill one while the previous copy drains the other; a buffer
is reused only after its copy's event has completed. Without a device, the "copy" is a view of the
staging buffer.

``gather="uva"`` takes one hop instead: the GPU gathers the rows out of the pinned slab itself, over
unified virtual addressing (`engramtier.tiers.uva`), with no CPU gather and no staging buffer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.base import default_model
from engramtier.tiers.gpu import resolve_device
from engramtier.tiers.slab import SlabTier, copy_rows
from engramtier.tiers.uva import device_view, gather_rows, require_cuda

GATHERS = ("copy", "uva")  # how rows reach the device: CPU gather + copy, or a GPU gather over UVA


class Transfer:
    """Rows on their way to where they were asked for; `wait` returns them as a tensor.

    On a CUDA device the copy runs on the tier's side stream; `wait` makes the caller's current
    stream wait for it (the host does not block), so kernels queued after `wait` see the rows.
    """

    def __init__(self, rows: torch.Tensor, event: Any = None) -> None:
        self.rows = rows
        self.event = event

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            torch.cuda.current_stream(self.rows.device).wait_event(self.event)
        return self.rows


class DramTier(SlabTier):
    """Host-memory cache tier; ``device`` (e.g. "cuda:0") enables asynchronous reads to that GPU.

    ``parallel_min_rows``: gathers of at least this many rows use all numba threads.
    ``pin``: page-lock the slab and staging buffers (default: when CUDA is available).
    ``gather``: "copy" (CPU gather into pinned staging, then an async copy) or "uva" (the GPU gathers
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
        self._staging: list[torch.Tensor] = [self._host_buffer(0)] * 2
        self._staging_events: list[Any] = [None, None]
        self._next_staging = 0
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _allocate_slab(self) -> np.ndarray:
        return self._host_buffer(self.capacity_rows).numpy()

    def _host_buffer(self, n_rows: int) -> torch.Tensor:
        return torch.empty((n_rows, self.row_bytes), dtype=torch.uint8, pin_memory=self.pin)

    def _gather(self, slots: np.ndarray, out: Any) -> None:
        if self._slab_on_device is not None and isinstance(out, torch.Tensor) and out.device.type == "cuda":
            self._check_device_out(out, slots.size)
            gather_rows(self._slab_on_device, torch.from_numpy(slots).to(self.device, non_blocking=True), out)
            return
        copy_rows(self.slab, slots, self._host_rows(out, slots.size, "out"), None, self.parallel_min_rows)

    def _scatter(self, slots: np.ndarray, rows: Any) -> None:
        copy_rows(self._host_rows(rows, slots.size, "rows"), None, self.slab, slots, self.parallel_min_rows)

    def read_async(self, ids: Any, out: torch.Tensor | None = None) -> Transfer:
        """Start reading ``ids`` to this tier's device; ``out`` (on that device) receives them if given.

        Without a device and without ``out`` the rows come back as a view of a staging buffer, valid
        until the second `read_async` after this one.
        """
        ids = self._ids(ids)
        slots = self._held_slots(ids)
        if self._stream is None:
            if out is None:
                _, out = self._take_staging(ids.size)
            self._gather(slots, out)
            self._count_read(ids.size)
            return Transfer(out)
        if out is None:
            out = torch.empty((ids.size, self.row_bytes), dtype=torch.uint8, device=self.device)
        self._check_device_out(out, ids.size)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # `out` may still be in use
        with torch.cuda.stream(self._stream):
            if self.gather == "uva":
                self._gather(slots, out)
            else:
                k, staging = self._take_staging(ids.size)
                self._gather(slots, staging)
                out.copy_(staging, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        if self.gather == "copy":
            self._staging_events[k] = event
        out.record_stream(self._stream)  # the caching allocator must not recycle `out` before the copy ends
        self._count_read(ids.size)
        return Transfer(out, event)

    def _check_device_out(self, out: torch.Tensor, n_rows: int) -> None:
        if out.device != self.device or out.shape != (n_rows, self.row_bytes) or out.dtype != torch.uint8 \
                or not out.is_contiguous():
            raise EngramTierError(
                f"{self.name} tier: out must be contiguous uint8 ({n_rows}, {self.row_bytes}) on {self.device}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )

    def _take_staging(self, n_rows: int) -> tuple[int, torch.Tensor]:
        """The next staging buffer (index, rows), grown to ``n_rows`` rows, once its last copy has ended."""
        k = self._next_staging
        self._next_staging ^= 1
        if self._staging_events[k] is not None:
            self._staging_events[k].synchronize()
            self._staging_events[k] = None
        if self._staging[k].shape[0] < n_rows:
            self._staging[k] = self._host_buffer(max(n_rows, 2 * self._staging[k].shape[0]))
        return k, self._staging[k][:n_rows]

    def stats(self) -> dict:
        return {**super().stats(), "slab_pinned": self.slab_pinned, "staging_pinned": self.pin,
                "device": str(self.device), "gather": self.gather}

    def close(self) -> None:
        if self._slab_on_device is not None:
            torch.cuda.synchronize(self.device)  # uva reads run on any stream; none may outlive the slab
        elif self._stream is not None:
            self._stream.synchronize()
        self._slab_on_device = None
        self.slab = np.empty((0, self.row_bytes), np.uint8)
        self._staging = [self._host_buffer(0)] * 2
