"""Where the Engram layers get their rows: the interface, and the flat in-memory implementation.

The model computes every Engram layer's row ids at the start of a forward pass and asks its source
for each layer's rows at once (`prefetch`), then collects them (`wait`) only when that layer runs.
A tiered source (tiers/) uses the gap to move rows up its hierarchy; the flat source below has
every row at hand and simply gathers immediately.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engramtier.errors import EngramTierError


class RowHandle(Protocol):
    def wait(self) -> torch.Tensor:
        """The requested rows, uint8 [..., row_bytes], on the compute device."""


class RowSource(Protocol):
    row_bytes: int
    n_rows: int

    def prefetch(self, row_ids: torch.Tensor) -> RowHandle:
        """Start fetching the rows of a LongTensor of global row ids (any shape)."""


class ReadyRows:
    """A handle whose rows were already gathered."""

    def __init__(self, rows: torch.Tensor):
        self._rows = rows

    def wait(self) -> torch.Tensor:
        return self._rows


class FlatRowSource:
    """Every row in one uint8 tensor [n_rows, row_bytes] (host memory, a memory map, or a GPU).

    Gathers on the tensor's device and moves the result to ``device`` (default: the same device).
    """

    def __init__(self, rows: torch.Tensor, device: torch.device | str | None = None):
        if rows.dtype != torch.uint8 or rows.dim() != 2:
            raise EngramTierError(f"flat row source: rows must be a uint8 tensor [n_rows, row_bytes], got {rows.dtype}{list(rows.shape)}")
        self.rows = rows
        self.n_rows, self.row_bytes = rows.shape
        self.device = torch.device(device) if device is not None else rows.device

    def prefetch(self, row_ids: torch.Tensor) -> ReadyRows:
        flat = row_ids.reshape(-1).to(self.rows.device)
        gathered = self.rows.index_select(0, flat).to(self.device, non_blocking=True)
        return ReadyRows(gathered.view(*row_ids.shape, self.row_bytes))
