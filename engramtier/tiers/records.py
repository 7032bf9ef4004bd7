"""What a tiered table's steps asked for, what served them and what they cost: the runtime's measures.

Kept apart from the step pipeline (`engramtier.tiers.step`), which only moves rows, and from the
table (`engramtier.tiers.tiered`), which only schedules steps: a record is made when a step starts,
filled when it is fetched and when the caller waits for it, and read by `step_records` and the totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

BYTES_READ_NOTE = ("bytes read is what each tier actually read, served bytes its hits x row bytes; they differ "
                   "because a row is read from the fastest tier holding it when its step starts (which can be "
                   "above the tier the policies say served it), and rows demoted into a tier are read to be "
                   "copied down")


def distribution(values) -> dict:
    """Mean and percentiles of per-step seconds: medians and spreads resist the outlier steps (a page
    fault, a scheduler hiccup) that a mean or a total lets dominate a short run."""
    v = np.asarray(values, np.float64)
    p10, p50, p90, p99 = np.percentile(v, [10, 50, 90, 99])
    return {"mean": float(v.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def served_above_store(records: list[dict]) -> float:
    """The share of these `TieredTable.step_records`' unique rows that a cache tier served (the store
    is the last tier); 0 for steps without rows."""
    unique = sum(r["unique"] for r in records)
    store = sum(list(r["served"].values())[-1] for r in records)
    return 1 - store / unique if unique else 0.0


def sized_tiers(tiers: list[dict], row_bytes: int) -> list[dict]:
    """`TieredTable.tier_stats` with each tier's size in bytes beside its size in rows."""
    return [{**t, "capacity_bytes": t["capacity_rows"] * row_bytes} for t in tiers]


@dataclass(slots=True)
class StepRecord:
    """What one step asked for, what served it, and what it cost. ``stall_s`` is the time the caller
    was held: blocked in `wait`, or running the step itself on its own thread (see `TieredTable`);
    ``cuda_stall`` the CUDA event pairs around its waits, turned into seconds by `StepLog.settle_cuda`."""

    requests: int = 0
    submitted: float = 0.0
    speculative: bool = False
    unique: int = 0
    served: list[int] | tuple = ()
    fetch_s: float = 0.0
    stall_s: float = 0.0
    step_s: float | None = None
    cuda_stall: list[tuple[Any, Any]] | tuple = ()
    dropped: list[int] | tuple = ()


TOTALS = ("steps", "speculative_steps", "requests", "lookups", "fetch_seconds", "stall_seconds", "step_seconds",
          "dropped_rows")


def _sums(records: list[StepRecord]) -> dict:
    """`TOTALS` over ``records``."""
    speculative = sum(r.speculative for r in records)
    return {"steps": len(records) - speculative, "speculative_steps": speculative,
            "requests": sum(r.requests for r in records), "lookups": sum(r.unique for r in records),
            "fetch_seconds": float(sum(r.fetch_s for r in records)),
            "stall_seconds": float(sum(r.stall_s for r in records)),
            "step_seconds": float(sum(r.step_s for r in records if r.step_s is not None)),
            "dropped_rows": sum(sum(r.dropped) for r in records)}


class StepLog:
    """The steps' records, in order, and (``record_trace``) their row ids. A server that has published
    the records of its steps `retire`s them, so that a table serving for days keeps its totals, not a
    record per step; ``first`` is the number of the oldest record kept."""

    def __init__(self, record_trace: bool) -> None:
        self.steps: list[StepRecord] = []
        self.first = 0
        self._retired = dict.fromkeys(TOTALS, 0)
        self.trace: list[np.ndarray] | None = [] if record_trace else None
        self._demand: StepRecord | None = None  # the last demand step

    def start(self, record: StepRecord, ids: np.ndarray) -> None:
        """A step begins at ``record.submitted``; a demand step closes the previous one's step time."""
        if not record.speculative:
            self.close_step_time(record.submitted)
            self._demand = record
        self.steps.append(record)
        if self.trace is not None:
            self.trace.append(ids.copy())

    def close_step_time(self, now: float) -> None:
        """A demand step's time runs until the next demand step starts (speculative steps lie inside it)."""
        if self._demand is not None and self._demand.step_s is None:
            self._demand.step_s = now - self._demand.submitted

    def settle_cuda(self) -> None:
        """Turn each step's CUDA event pairs into stall seconds (after a device synchronisation)."""
        for record in self.steps:
            if record.cuda_stall:
                record.stall_s += sum(b.elapsed_time(e) / 1e3 for b, e in record.cuda_stall)
                record.cuda_stall = ()

    def recorded_trace(self, n_rows: int, row_bytes: int, meta: dict | None = None) -> RowTrace:
        if self.trace is None:
            raise EngramTierError("tiered table: no trace was recorded; open it with record_trace=True")
        if not self.trace:
            raise EngramTierError("tiered table: no step ran yet, so there is no trace to return")
        starts = np.zeros(len(self.trace) + 1, np.int64)
        np.cumsum([ids.size for ids in self.trace], out=starts[1:])
        return RowTrace(np.concatenate(self.trace), starts, n_rows, row_bytes, dict(meta or {}))

    def retire(self, upto: int) -> None:
        """Keep the records of steps before ``upto`` only in the totals (after `close_step_time`, so that
        their times are final)."""
        n = min(upto - self.first, len(self.steps))
        if n <= 0:
            return
        for key, value in _sums(self.steps[:n]).items():
            self._retired[key] += value
        del self.steps[:n]
        self.first += n

    def step_records(self, names: Sequence[str], lossy: bool, since: int = 0) -> list[dict]:
        """One JSON-ready dict per step from step ``since`` on: requests, unique rows, rows served per tier,
        fetch, stall and step seconds; a speculative step says so, and has no stall and no step time of
        its own; ``lossy``: the rows each tier dropped too."""
        if since < self.first:
            raise EngramTierError(f"tiered table: the records of steps before step {self.first} were retired "
                                  f"(forget_steps); ask for steps from {self.first} on")
        steps = self.steps[since - self.first:]
        records = [{"step": i, "requests": r.requests, "unique": r.unique, "served": dict(zip(names, r.served, strict=True)),
                    "fetch_s": r.fetch_s, "stall_s": r.stall_s, "step_s": r.step_s, "speculative": r.speculative}
                   for i, r in enumerate(steps, start=since)]
        if not lossy:
            return records
        return [{**rec, "dropped": dict(zip(names, r.dropped or [0] * len(names), strict=True))}
                for rec, r in zip(records, steps, strict=True)]

    def totals(self) -> dict:
        """Per run, retired steps included: steps (demand), speculative steps, requests, lookups, fetch,
        stall and step seconds, and the stall fraction."""
        totals = {key: self._retired[key] + value for key, value in _sums(self.steps).items()}
        del totals["dropped_rows"]
        seconds = totals["step_seconds"]
        return {**totals, "stall_fraction": totals["stall_seconds"] / seconds if seconds > 0 else 0.0}

    def dropped_rows(self) -> int:
        return self._retired["dropped_rows"] + _sums(self.steps)["dropped_rows"]
