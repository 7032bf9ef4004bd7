"""Row traces: the global row ids an Engram model reads, in request order, cut into steps.

A step is one forward pass (a prefill batch, or one decode token for each running request); the
simulator charges fetch time per step and the runtime prefetches per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.trace.rowindex import dense_keys


@dataclass
class RowTrace:
    """An in-memory row trace.

    rows         int64 global row ids in request order
    step_starts  int64 index of each step's first request, then ``rows.size`` (len = steps + 1)
    n_table_rows rows in the table the ids address (ids must lie in ``[0, n_table_rows)``)
    row_bytes    bytes per row (160 for bf16[80]; 264 for fp8_e4m3[256] + scales)
    meta         free-form provenance: hash fingerprint, config, source

    Policies and statistics index the *dense keys* of the rows (`dense_keys`, `row_ids`; see
    `engramtier.trace.rowindex`), computed once when first asked for (a trace file stores them).
    """

    rows: np.ndarray
    step_starts: np.ndarray
    n_table_rows: int
    row_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)
    _dense: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def dense_keys(self) -> np.ndarray:
        """Each request's dense key: its row's place in the order the trace first requests rows."""
        if self._dense is None:
            self._dense = dense_keys(self.rows)
        return self._dense[0]

    def row_ids(self) -> np.ndarray:
        """The distinct row ids in key order: dense key ``k`` is row ``row_ids()[k]``."""
        self.dense_keys()
        return self._dense[1]

    @property
    def n_distinct(self) -> int:
        return int(self.row_ids().size)

    @property
    def n_steps(self) -> int:
        return int(self.step_starts.size - 1)

    @property
    def n_rows(self) -> int:
        """Requests in the trace (the name a `TraceReader` gives the same count)."""
        return int(self.rows.size)

    def step(self, i: int) -> np.ndarray:
        return self.rows[self.step_starts[i] : self.step_starts[i + 1]]

    def validate(self, where: str = "row trace") -> "RowTrace":
        """Refuse traces the simulator cannot replay, with one line saying what is wrong."""
        if self.rows.size == 0:
            raise EngramTierError(f"{where}: the trace is empty; build it from non-empty text or a longer synthetic stream")
        if self.rows.dtype != np.int64 or self.step_starts.dtype != np.int64:
            raise EngramTierError(f"{where}: rows and step_starts must be int64 arrays")
        lo, hi = int(self.rows.min()), int(self.rows.max())
        if lo < 0 or hi >= self.n_table_rows:
            bad = lo if lo < 0 else hi
            raise EngramTierError(
                f"{where}: row id {bad} lies outside the table's {self.n_table_rows} rows; "
                "the trace was built for another table configuration"
            )
        s = self.step_starts
        if s.size < 2 or s[0] != 0 or s[-1] != self.rows.size or np.any(np.diff(s) < 0):
            raise EngramTierError(f"{where}: step boundaries are not a non-decreasing cover of the {self.rows.size} requests")
        if self.row_bytes <= 0:
            raise EngramTierError(f"{where}: row_bytes must be positive, got {self.row_bytes}")
        return self
