"""The TieredTable: an Engram table served from a hierarchy of tiers, behind the model's `RowSource`.

A step is one forward pass. The model asks for every Engram layer's rows at forward entry, one
`prefetch` per layer, all before it computes anything (`EngramLM._request_rows`); the table collects
``layers_per_step`` consecutive calls into one step, so that a step holds the rows of a forward pass in
the order of a trace file (per token, its rows in (layer, order, head) order) and the runtime makes
the decisions a simulation of that trace makes. The step itself (decide, then move the bytes) is
`engramtier.tiers.step`; its measures are `engramtier.tiers.records`.

Where a step runs: reading rows out of memory takes microseconds, so a thread hand-off (tens of
microseconds of wake-ups) would cost more than it hides. When no earlier step is still running, the
caller's thread decides the step at once, and if its rows are all in the caches it moves them too and
`wait` finds them ready. A step that reads the store (disk, network) is moved on the table's worker
thread, overlapping whatever the caller computes before `wait`; once a step is on the worker, the
steps after it queue behind it there, in order. Time the caller spends running a step itself counts
as stall, like time blocked in `wait`; on a GPU, `wait` adds the time the compute stream sat idle
(CUDA events around it).

Hit counts are the engine's, so they equal the simulator's on the same row trace exactly; bytes
read are what the tiers actually read. Offline policies (belady, lookahead) need the future of the
trace: pass it in ``ctx``. Cache tiers declared ``warm`` open holding a profile's hottest rows
(`engramtier.cache.warm`, the simulator's own warm start), copied from the store into their slabs
before the first step, like a static hot set.

A tier with ``on_late = "drop"`` (a deadline-bounded fetch, `engramtier.cache.deadline`) needs the
step's ``compute_window_s``: per step, the rows its model says miss the window are the simulator's
count exactly, the last ones that tier serves in the engine's order, and they are zero rows in what
`wait` returns. The reads themselves are emulated by that count, not cut off by a clock: the rows are
still gathered and cached as the policies say (the late fetch completes after the step), so a clock
could only make the runtime disagree with the simulation it is meant to reproduce.

`speculate` runs a step nobody waits for: a guess at the next step's rows (the top-k candidates of
`engramtier.model.speculation`), decided by the same engine in its place between the demand steps and
fetched into the caches, not delivered. A recorded trace holds it too, so it simulates to the same hits.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from engramtier.cache.engine import Engine, running, tier_report
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import PolicyContext, held_keys
from engramtier.cache.simulator import OVERLAPS
from engramtier.cache.warm import warm_rows
from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.base import Tier
from engramtier.tiers.records import StepLog, StepRecord
from engramtier.tiers.slab import SlabTier
from engramtier.tiers.step import StepPipeline
from engramtier.trace.rowtrace import RowTrace


class _StepRows:
    """The rows of one step, shared by its layers' handles: (rows, CUDA event or None) when the step ran
    on the caller's thread, else the worker's future of them; and the rows once collected."""

    __slots__ = ("table", "record", "ready", "future", "grouped", "layer_shape", "rows")

    def __init__(self, table: "TieredTable") -> None:
        self.table = table
        self.record: StepRecord | None = None
        self.ready: tuple[torch.Tensor, Any] | None = None
        self.future: Future | None = None
        self.grouped = False
        self.layer_shape: tuple[int, ...] = ()
        self.rows: torch.Tensor | None = None

    def collect(self) -> torch.Tensor:
        if self.rows is not None:
            return self.rows
        if self.ready is None and self.future is None:
            raise self.table._incomplete_step()
        if self.table.cuda:
            stream = torch.cuda.current_stream(self.table.device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            rows, event = self.ready or self.future.result()
            stream.wait_event(event)
            rows.record_stream(stream)  # made on the fetch stream, used on this one
            end.record(stream)
            self.record.cuda_stall = [*self.record.cuda_stall, (begin, end)]
        elif self.ready is not None:
            rows = self.ready[0]
        else:
            start = time.perf_counter()
            rows, _ = self.future.result()
            self.record.stall_s += time.perf_counter() - start
        if self.grouped:
            rows = rows.view(*self.layer_shape[:-1], self.table.layers_per_step, self.layer_shape[-1], self.table.row_bytes)
        elif len(self.layer_shape) != 1:  # one dimension of ids: the rows come as [ids, row_bytes] already
            rows = rows.view(*self.layer_shape, self.table.row_bytes)
        self.rows = rows
        return rows


class RowsHandle:
    """One `prefetch` call's rows: `wait` returns uint8 [*row_ids.shape, row_bytes] on the compute device."""

    __slots__ = ("step_rows", "layer")

    def __init__(self, step_rows: _StepRows, layer: int) -> None:
        self.step_rows, self.layer = step_rows, layer

    def wait(self) -> torch.Tensor:
        rows = self.step_rows.collect()
        return rows.select(-3, self.layer) if self.step_rows.grouped else rows


class TieredTable:
    """An Engram table in a hierarchy of tiers (`Hierarchy`: caches fastest first, then the store).

    ``store``: the tier holding every row (`engramtier.tiers.open.open_store`); ``caches``: the cache
    tiers, one `SlabTier` per cache of the hierarchy with its capacity (`engramtier.tiers.open`
    builds them). The table knows its tiers only by their interface and owns them from here on (`close`
    closes them). ``device``: where `wait` delivers rows (default cuda if available).
    ``layers_per_step``: consecutive `prefetch` calls forming one step (the model's number of Engram
    layers). ``ctx``: the policies' `PolicyContext` (the trace for offline policies, a profile for static
    placement); online policies key their maps by row id in hashed maps sized by their capacity.
    ``record_trace``: keep every step's row ids, so that `recorded_trace` can be simulated.
    ``compute_window_s`` and ``overlap``: a step's prefetch window and how tiers share it, as in
    `simulate`; needed only when a tier drops late rows (``on_late = "drop"``). ``report``: facts the
    table's stats carry along (e.g. how a dram tier's rows reach the device). ``stable_rows`` (CUDA):
    a step's rows land in one device buffer per step size, valid until the next step starts, so that a
    captured CUDA graph reading them replays with each step's rows (`engramtier.tiers.step`).
    """

    def __init__(self, hierarchy: Hierarchy, store: Tier, caches: Sequence[SlabTier], *, device: Any = None,
                 layers_per_step: int = 1, ctx: PolicyContext | None = None, record_trace: bool = False,
                 compute_window_s: float | None = None, overlap: str = "parallel",
                 report: dict | None = None, stable_rows: bool = False) -> None:
        self.hierarchy, self.store, self.caches = hierarchy, store, list(caches)
        self.n_rows, self.row_bytes = store.n_table_rows, store.row_bytes
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.report = dict(report or {})
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngramTierError(f"tiered table: device {self.device} requested but CUDA is not available; use --device cpu")
        if int(layers_per_step) != layers_per_step or layers_per_step < 1:
            raise EngramTierError(f"tiered table: layers_per_step must be a positive whole number, got {layers_per_step}")
        self.layers_per_step = int(layers_per_step)
        deadline = self._deadline_of(compute_window_s, overlap)
        ctx = ctx or PolicyContext(n_keys=self.n_rows)
        if ctx.n_keys != self.n_rows:
            raise EngramTierError(
                f"tiered table: the policy context is for {ctx.n_keys} rows, the table has {self.n_rows}"
            )
        self.capacities = self.hierarchy.capacities(self.n_rows, self.row_bytes)
        if [tier.capacity_rows for tier in self.caches] != self.capacities:
            raise EngramTierError(f"tiered table: the cache tiers hold {[t.capacity_rows for t in self.caches]} rows, "
                                  f"the hierarchy says {self.capacities}; build them with engramtier.tiers.open")
        ctx = dataclasses.replace(ctx, hashed=True)
        self.engine = Engine(self.hierarchy.build_policies(ctx, self.row_bytes), self.hierarchy.mode, self.n_rows,
                             self.hierarchy.build_admissions(ctx, self.row_bytes))
        self._warm_held = self.engine.warm(warm_rows(self.hierarchy, self.capacities, self.n_rows))
        if stable_rows and not self.cuda:
            raise EngramTierError("tiered table: stable_rows keeps a step's rows in device buffers for CUDA graphs; "
                                  "it needs a cuda device")
        self._preload()  # before the slot plans, which take the slots left free as theirs to hand out
        self._pipeline = StepPipeline(self.hierarchy, self.engine, self.caches, store, self.device, deadline, stable_rows)
        self._lossy = deadline is not None
        self._log = StepLog(record_trace)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tiered-fetch")
        self._queued: Future | None = None  # the last step handed to the worker
        self._pending: list[torch.Tensor] = []
        self._group: _StepRows | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._pipeline.warm_up()

    def _deadline_of(self, window: Any, overlap: str) -> tuple[float, str] | None:
        """(window seconds, overlap) when a tier drops late rows, else None; refused if it has no window."""
        refuse_unknown([overlap], OVERLAPS, "tiered table", "overlap")
        lossy = self.hierarchy.lossy_tier
        if lossy is None:
            return None
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not (math.isfinite(window) and window >= 0):
            raise EngramTierError(f"tiered table: tier '{lossy}' drops late rows (on_late = 'drop'), so it needs "
                                  f"compute_window_s, the step's prefetch window in seconds >= 0; got {window!r}")
        return float(window), overlap

    def _preload(self) -> None:
        """Copy in the rows a policy holds from the start (a static hot set, a warm start), from the store."""
        for tier, policy in zip(self.caches, self.engine.policies, strict=True):
            with running(policy):
                keys = held_keys(policy, self.n_rows) if policy.occupancy() else None
            if keys is not None:
                rows = np.empty((keys.size, self.row_bytes), np.uint8)
                self.store.read(keys, rows)
                tier.write(keys, torch.from_numpy(rows).to(tier.device) if tier.slab_on_device else rows)

    # --- the RowSource protocol ---------------------------------------------------------------------

    def prefetch(self, row_ids: torch.Tensor) -> RowsHandle:
        """Start fetching the rows of a LongTensor of global row ids (any shape); the step starts once
        ``layers_per_step`` calls have arrived (or at the first `wait` on an incomplete one)."""
        self._check_usable()
        if not isinstance(row_ids, torch.Tensor):
            row_ids = torch.as_tensor(row_ids)
        if self._pending and row_ids.shape != self._pending[0].shape:
            raise EngramTierError(
                f"tiered table: the layers of one step must ask for equally shaped ids, got {tuple(row_ids.shape)} "
                f"after {tuple(self._pending[0].shape)}"
            )
        if not self._pending:
            self._group = _StepRows(self)
        self._pending.append(row_ids)
        handle = RowsHandle(self._group, len(self._pending) - 1)
        if len(self._pending) == self.layers_per_step:
            self._submit()
        return handle

    def speculate(self, row_ids: torch.Tensor) -> None:
        """Start fetching rows that a coming step may need (global row ids, any shape) into the caches,
        as a step of their own: the policies decide it like any step, nothing waits for it, and no
        tier drops its late rows (nobody is late for them). Called between steps, not between the
        layers of one."""
        self._check_usable()
        if self._pending:
            raise EngramTierError(
                f"tiered table: speculate was called after {len(self._pending)} of a step's {self.layers_per_step} "
                "layers asked for their rows; speculate before a step's first prefetch or after its last")
        self._start(torch.as_tensor(row_ids), StepRecord(speculative=True))

    def _check_usable(self) -> None:
        if self._closed:
            raise EngramTierError("tiered table: it was closed; open a new TieredTable")
        if self._failed is not None:
            raise EngramTierError(f"tiered table: an earlier step failed ({self._failed}); open a new TieredTable")

    def _submit(self) -> None:
        group, pending = self._group, self._pending
        self._pending = []
        group.grouped = self.layers_per_step > 1
        group.layer_shape = tuple(pending[0].shape)
        group.record = StepRecord()
        self._start(torch.stack(pending, dim=-2) if group.grouped else pending[0], group.record, group)

    def _start(self, ids: torch.Tensor, record: StepRecord, rows: _StepRows | None = None) -> None:
        """Record a step and run it: here when nothing is queued on the worker and its rows are cached,
        else on the worker (see the module docstring); a demand step's ``rows`` get its result."""
        if ids.dtype is not torch.int64 or ids.is_cuda or ids.requires_grad:
            ids = ids.detach().to("cpu", torch.int64)
        host_ids = ids.numpy().reshape(-1)
        pipeline = self._pipeline
        pipeline.check(host_ids)
        if pipeline.stable_rows and rows is not None:  # the consumer has queued all it does with earlier rows
            released = torch.cuda.Event()
            released.record(torch.cuda.current_stream(self.device))
            pipeline.release(released)
        record.requests, record.submitted = host_ids.size, time.perf_counter()
        self._log.start(record, host_ids)
        if self._queued is not None and self._queued.done():
            self._queued = None  # asked once: a done future's lock is not free
        if rows is not None and self._queued is None:
            try:
                self._note_decision(record, pipeline.decide(host_ids, False))
                if not pipeline.reads_store:
                    rows.ready = pipeline.move()
                    record.fetch_s = time.perf_counter() - record.submitted
                    record.stall_s += record.fetch_s
                    return
            except BaseException as err:
                self._failed = err
                raise
            self._queued = self._worker.submit(self._move, record, record.submitted)
        else:
            self._queued = self._worker.submit(self._decide_and_move, host_ids.copy(), record)
        if rows is not None:
            rows.future = self._queued

    def _note_decision(self, record: StepRecord, served: list[int]) -> None:
        record.unique, record.served = self._pipeline.u, served
        if self._pipeline.late_rows is not None:
            record.dropped = self._pipeline.late_rows.tolist()

    def _incomplete_step(self) -> EngramTierError:
        return EngramTierError(
            f"tiered table: a step's rows were awaited after {len(self._pending)} of its {self.layers_per_step} "
            "layers asked for theirs; prefetch every Engram layer of a forward pass before waiting on any"
        )

    # --- steps on the worker thread -----------------------------------------------------------------

    def _decide_and_move(self, ids: np.ndarray, record: StepRecord) -> tuple[torch.Tensor | None, Any]:
        start = time.perf_counter()
        self._guard(lambda: self._note_decision(record, self._pipeline.decide(ids, record.speculative)))
        return self._move(record, start)

    def _move(self, record: StepRecord, start: float) -> tuple[torch.Tensor | None, Any]:
        rows = self._guard(self._pipeline.move)
        record.fetch_s = time.perf_counter() - start
        return rows

    def _guard(self, work: Any) -> Any:
        """Run ``work``, remembering a failure: the policies and slots are then out of step, so no later step may run."""
        if self._failed is not None:
            raise EngramTierError(f"tiered table: an earlier step failed ({self._failed}); open a new TieredTable")
        try:
            return work()
        except BaseException as err:
            self._failed = err
            raise

    # --- results ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Wait for every started step and close the last one's step time (call after the last forward)."""
        if self._pending:
            raise self._incomplete_step()
        self._worker.submit(lambda: None).result()  # steps run in order: every earlier one has ended
        self._log.close_step_time(time.perf_counter())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._log.settle_cuda()

    def recorded_trace(self, meta: dict | None = None) -> RowTrace:
        """The row ids of every step so far as a `RowTrace` (needs ``record_trace=True``)."""
        return self._log.recorded_trace(self.n_rows, self.row_bytes, meta)

    def step_records(self, since: int = 0) -> list[dict]:
        """One JSON-ready dict per step from step ``since`` on: requests, unique rows, rows served per tier,
        fetch, stall and step seconds; a speculative step (`speculate`) says so, and has no stall and no
        step time of its own. A server asking again and again asks for the steps it has not seen."""
        return self._log.step_records([t.name for t in self.hierarchy.tiers], self._lossy, since)

    def forget_steps(self, upto: int) -> None:
        """Keep the records of steps before step ``upto`` only in the totals of `stats` (call after
        `finish`): a server that has published its steps' records keeps no record per step."""
        self._log.retire(upto)

    def tier_stats(self) -> list[dict]:
        """Per tier, fastest first: the engine's counters (the simulator's), ``served_bytes`` (hits x row
        bytes, the simulator's ``bytes_read``), and what the tier really read (``bytes_read``, ``rows_read``:
        a row is read from the fastest tier that holds it when the step starts, which can be a tier above
        the one the policies say served it, and demoted rows are read to be copied down) and wrote, plus
        what the tier reports of itself (`Tier.report`)."""
        tiers = [*self.caches, self.store]
        facts = [{"name": spec.name, "storage": tier.name, "policy": spec.policy,
                  "capacity_rows": tier.capacity_rows if tier is not self.store else self.n_rows, "warm_rows": held,
                  **counts}
                 for spec, tier, counts, held in zip(self.hierarchy.tiers, tiers, self.engine.tier_counts(),
                                                     [*self._warm_held, 0], strict=True)]
        out = []
        for t, tier in zip(tier_report(facts, self.row_bytes), tiers, strict=True):
            moved = tier.stats()
            out.append({**t, "bytes_read": moved["bytes_read"], "rows_read": moved["rows_read"],
                        "rows_written": moved["rows_written"], "emulated": moved.get("emulated", False), **tier.report()})
        return out

    def stats(self) -> dict:
        """JSON-ready totals: per tier (`tier_stats`) and per run (steps, requests, stall, fetch, step
        seconds). ``steps`` counts demand steps; requests, lookups, fetch seconds and the tiers' counts
        include the ``speculative_steps``."""
        return {
            **self._log.totals(),
            "mode": self.hierarchy.mode,
            "device": str(self.device),
            **self.report,
            "row_bytes": self.row_bytes,
            "n_table_rows": self.n_rows,
            "fingerprint": self.store.manifest.get("fingerprint"),
            "tiers": self.tier_stats(),
            "hierarchy": self.hierarchy.to_dict(),
            **({"dropped_rows": self._log.dropped_rows()} if self._lossy else {}),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.shutdown(wait=True)
        self._pipeline.close()
        for tier in [*self.caches, self.store]:
            tier.close()

    def __enter__(self) -> "TieredTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
