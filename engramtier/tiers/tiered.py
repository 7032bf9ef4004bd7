"""The TieredTable: an Engram table served from a hierarchy of tiers, behind the model's `RowSource`.

A step is one forward pass. The model asks for every Engram layer's rows at forward entry, one
`prefetch` per layer, all before it computes anything (`EngramLM._request_rows`); the table collects
``layers_per_step`` consecutive calls into one step, so that a step holds the rows of a forward pass in
the order of a trace file (per token, its rows in (layer, order, head) order) and the runtime makes
the decisions a simulation of that trace makes. Per step, in a background thread:

1. dedup: the step's unique rows in first-occurrence order (`unique_per_step`, as the simulator);
2. decide: the same `Engine` the simulator runs, fed this step, its policies kept across steps, says
   which tier serves each row and which rows each cache admits and evicts;
3. plan slots: each cache tier's events are replayed on its slot map (`plan_slots`): an admitted row
   takes its victim's slot, or a free one; an exclusive tier frees the slot of a row that moves up;
4. gather: every row the step needs (its own, and rows demoted into a tier from outside the step) is
   read from the fastest tier that holds it *now*, before any slot changes: the engine's contract
   (gather first, then apply fills in event order), and byte-exact because every copy of a row is the
   same bytes. Reads are ordered by source tier, so each tier fills one contiguous run of a reused
   staging buffer (NVMe reads go through the store's reader threads; a real gpu tier, and a dram tier
   with ``dram_gather="uva"``, fill the front of the device staging directly);
5. apply: rows leaving a tier are evicted, arriving rows written into their planned slots, so each
   cache tier's slab holds exactly what its policy holds at every step boundary;
6. expand: the unique rows are copied out in request order, on the compute device.

`wait` returns them and records the stall: wall-clock time blocked on the CPU; on a GPU the time the
compute stream sat idle, from CUDA events around the wait. Hit counts are the engine's, so they equal
the simulator's on the same row trace exactly; bytes read are what the tiers actually read.

Offline policies (belady, lookahead) need the future of the trace: pass it in ``ctx``. Cache tiers
declared ``warm`` open holding a profile's hottest rows (`engramtier.cache.warm`, the simulator's own
warm start), copied from the store into their slabs before the first step, like a static hot set.

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

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from numba import njit

from engramtier.cache.deadline import late_keys, late_rows
from engramtier.cache.engine import Engine, tier_report
from engramtier.cache.hierarchy import Hierarchy, TierSpec
from engramtier.cache.policy import PolicyContext
from engramtier.cache.simulator import OVERLAPS
from engramtier.cache.warm import warm_rows
from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.base import Tier
from engramtier.tiers.cxl import CxlTier
from engramtier.tiers.dram import GATHERS, DramTier
from engramtier.tiers.gpu import GpuTier
from engramtier.tiers.remote import FailoverStore
from engramtier.tiers.slab import SlabTier, copy_rows
from engramtier.tiers.slots import SlotPlan, held_keys
from engramtier.tiers.staging import Grow, Staging
from engramtier.trace.lookups import unique_per_step
from engramtier.trace.rowtrace import RowTrace

# A cache tier's storage, by its name or its model's name (a TOML hierarchy says `model = "hbm"`).
STORAGE = {"gpu": GpuTier, "hbm": GpuTier, "dram": DramTier, "cxl": CxlTier}
PARALLEL_MIN_ROWS = 1 << 15  # row copies of at least this many rows use all numba threads
# What a remote store's tier report adds: where it is and how its outages went (see `FailoverStore`).
REMOTE_FACTS = ("backend", "where", "on_failure", "failures", "retries", "waited_s", "fallback_rows")


@njit(nogil=True, cache=True)
def _positions(stamp, keys, first, rank, out):
    """``out[i]`` = row of ``keys[i]`` in the staging buffer: its position among the step's needed rows
    (``stamp[key] - first``, see `unique_per_step`) through ``rank`` (needed row -> staging row)."""
    for i in range(keys.size):
        out[i] = rank[stamp[keys[i]] - first]


@dataclass
class StepRecord:
    """What one step asked for, what served it, and what it cost."""

    requests: int = 0
    submitted: float = 0.0
    unique: int = 0
    served: list[int] = field(default_factory=list)
    fetch_s: float = 0.0
    stall_s: float = 0.0
    step_s: float | None = None
    cuda_stall: list[tuple[Any, Any]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    speculative: bool = False


class _StepRows:
    """The rows of one step, shared by its layers' handles: the fetch's future of (rows, CUDA event or
    None), set when the step starts, and the rows once collected."""

    def __init__(self, table: "TieredTable") -> None:
        self.table = table
        self.record: StepRecord | None = None
        self.future: Future | None = None
        self.grouped = False
        self.layer_shape: tuple[int, ...] = ()
        self.rows: torch.Tensor | None = None

    def collect(self) -> torch.Tensor:
        if self.future is None:
            raise self.table._incomplete_step()
        if self.rows is not None:
            return self.rows
        device = self.table.device
        if device.type == "cuda":
            stream = torch.cuda.current_stream(device)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            rows, event = self.future.result()
            stream.wait_event(event)
            rows.record_stream(stream)  # made on the fetch stream, used on this one
            end.record(stream)
            self.record.cuda_stall.append((begin, end))
        else:
            start = time.perf_counter()
            rows, _ = self.future.result()
            self.record.stall_s += time.perf_counter() - start
        shape = (*self.layer_shape[:-1], self.table.layers_per_step, self.layer_shape[-1]) if self.grouped \
            else self.layer_shape
        self.rows = rows.view(*shape, self.table.row_bytes)
        return self.rows


class RowsHandle:
    """One `prefetch` call's rows: `wait` returns uint8 [*row_ids.shape, row_bytes] on the compute device."""

    def __init__(self, step_rows: _StepRows, layer: int) -> None:
        self.step_rows, self.layer = step_rows, layer

    def wait(self) -> torch.Tensor:
        rows = self.step_rows.collect()
        return rows.select(-3, self.layer) if self.step_rows.grouped else rows


class TieredTable:
    """An Engram table in a hierarchy of tiers (`Hierarchy`: caches fastest first, then the store).

    ``store``: the tier holding every row (see `open_store`): the table's LMDB copy (`NvmeTier`), or a
    remote store behind its failover rule (`FailoverStore`); the cache tiers are built from
    the hierarchy's specs: storage by tier name or model name (gpu/hbm, dram, cxl), capacity in rows or
    bytes, the named policy. ``device``: where `wait` delivers rows (default cuda if available); the
    gpu tier lives there (emulated in host memory on a CPU). ``layers_per_step``: consecutive
    `prefetch` calls forming one step (the model's number of Engram layers). ``ctx``: the policies'
    `PolicyContext` (the trace for offline policies, a profile for static placement).
    ``record_trace``: keep every step's row ids, so that `recorded_trace` can be simulated.
    ``dram_gather``: how a dram tier's rows reach a CUDA device: "copy" (a CPU gather into pinned
    staging, then one copy) or "uva" (the GPU gathers them out of the pinned slab, `engramtier.tiers.uva`).
    ``compute_window_s`` and ``overlap``: a step's prefetch window and how tiers share it, as in
    `simulate`; needed only when a tier drops late rows (``on_late = "drop"``).
    """

    def __init__(self, hierarchy: Hierarchy | Mapping[str, Any], store: Tier, *, device: Any = None,
                 layers_per_step: int = 1, ctx: PolicyContext | None = None, record_trace: bool = False,
                 dram_gather: str = "copy", compute_window_s: float | None = None,
                 overlap: str = "parallel") -> None:
        self.hierarchy = hierarchy if isinstance(hierarchy, Hierarchy) else Hierarchy.from_dict(hierarchy)
        self.store = store
        self.n_rows, self.row_bytes = store.n_table_rows, store.row_bytes
        self.device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngramTierError(f"tiered table: device {self.device} requested but CUDA is not available; use --device cpu")
        if int(layers_per_step) != layers_per_step or layers_per_step < 1:
            raise EngramTierError(f"tiered table: layers_per_step must be a positive whole number, got {layers_per_step}")
        self.layers_per_step = int(layers_per_step)
        refuse_unknown([dram_gather], GATHERS, "tiered table", "dram_gather")
        self.dram_gather = dram_gather
        self._deadline = self._deadline_of(compute_window_s, overlap)
        ctx = ctx or PolicyContext(n_keys=self.n_rows)
        if ctx.n_keys != self.n_rows:
            raise EngramTierError(
                f"tiered table: the policy context is for {ctx.n_keys} rows, the table has {self.n_rows}"
            )
        self.capacities = self.hierarchy.capacities(self.n_rows, self.row_bytes)
        self.engine = Engine(self.hierarchy.build_policies(ctx, self.row_bytes), self.hierarchy.mode, self.n_rows)
        self._warm_held = self.engine.warm(warm_rows(self.hierarchy, self.capacities, self.n_rows))
        self.caches: list[SlabTier] = []
        try:
            for spec, rows in zip(self.hierarchy.caches, self.capacities):
                self.caches.append(self._cache_tier(spec, rows))
            self._device_tiers = self._count_device_tiers()
            self._preload()
        except BaseException:
            for tier in self.caches:  # the store is the caller's until the table exists
                tier.close()
            raise
        exclusive = self.hierarchy.mode == "exclusive"
        self._plans = [SlotPlan(tier, exclusive and i > 0) for i, tier in enumerate(self.caches)]
        self._stamp = np.full(self.n_rows, -1, np.int64)
        self._first = 0  # offset of this step's needed rows in `_stamp` (see `unique_per_step`)
        self._requests = 0  # requests before this step: its trace position t0
        self._bounds = np.zeros(2, np.int64)
        self._unique_starts = np.zeros(2, np.int64)
        self._keys, self._ts, self._needed = Grow(np.int64), Grow(np.int64), Grow(np.int64)
        self._rank, self._select, self._arrival_index = Grow(np.int64), Grow(np.int64), Grow(np.int64)
        self._staging = Staging(self.row_bytes, self.device)
        self._fetch_stream = self._staging.stream  # every device operation of a step runs on it
        self._arrival_rows = Grow(np.uint8, (self.row_bytes,))
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tiered-fetch")
        self._pending: list[torch.Tensor] = []
        self._group: _StepRows | None = None
        self._steps: list[StepRecord] = []
        self._trace: list[np.ndarray] | None = [] if record_trace else None
        self._failed: BaseException | None = None
        self._closed = False
        self._warm_up()

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

    def _count_device_tiers(self) -> int:
        """How many leading cache tiers read straight into device memory (a real gpu tier, uva dram
        tiers): their rows fill the front of the step's device staging, the rest comes through the host."""
        on_device = [(isinstance(t, GpuTier) and not t.emulated) or (isinstance(t, DramTier) and t.gather == "uva")
                     for t in self.caches]
        n = on_device.index(False) if False in on_device else len(on_device)
        if True in on_device[n:]:
            name = self.hierarchy.caches[n + on_device[n:].index(True)].name
            raise EngramTierError(f"tier '{name}': a uva dram tier reads into device memory, so only gpu or uva tiers "
                                  "may come before it; move it up or use dram_gather 'copy'")
        return n

    def _warm_up(self) -> None:
        """Run every kernel of a step once on nothing, so that compiling (the engine's drivers) and loading
        them from numba's cache happen now and not in the first step's stall."""
        nothing, no_rows = np.empty(0, np.int64), np.empty((0, self.row_bytes), np.uint8)
        self.engine.feed(nothing, nothing, np.zeros(2, np.int64))
        for plan, stream in zip(self._plans, self.engine.streams):
            plan.plan(stream, -2, "warm-up")
        unique_per_step(nothing, np.zeros(2, np.int64), 0, self._stamp, 0, nothing, nothing, np.zeros(2, np.int64))
        _positions(self._stamp, nothing, 0, nothing, nothing)
        copy_rows(no_rows, nothing, no_rows, None, PARALLEL_MIN_ROWS)
        for i, tier in enumerate([*self.caches, self.store]):
            tier.read(nothing, torch.empty((0, self.row_bytes), dtype=torch.uint8, device=self.device)
                      if i < self._device_tiers else no_rows)

    def _cache_tier(self, spec: TierSpec, rows: int) -> SlabTier:
        kind = STORAGE.get(spec.name) or STORAGE.get(spec.model.name)
        if kind is None:
            raise EngramTierError(
                f"tiered table: cannot tell where cache tier '{spec.name}' lives; name it (or its model) one of "
                f"{', '.join(STORAGE)}"
            )
        options = {"model": spec.model, "parallel_min_rows": PARALLEL_MIN_ROWS}
        if kind is GpuTier and self.caches and self.device.type == "cuda":
            raise EngramTierError(f"tier '{spec.name}': a gpu tier must be the first (fastest) tier of the hierarchy")
        if kind is GpuTier:
            options["device"] = self.device if self.device.type == "cuda" else "cpu"
        if kind is DramTier:
            options["gather"] = self.dram_gather
            if self.dram_gather == "uva":
                options["device"] = self.device
        try:
            return kind(self.n_rows, rows, self.row_bytes, **options)
        except EngramTierError as err:
            raise EngramTierError(f"tier '{spec.name}': {err}") from None

    def _preload(self) -> None:
        """Copy in the rows a policy holds from the start (a static hot set, a warm start), from the store."""
        for tier, policy in zip(self.caches, self.engine.policies):
            if policy.occupancy():
                keys = held_keys(policy, self.n_rows)
                rows = np.empty((keys.size, self.row_bytes), np.uint8)
                self.store.read(keys, rows)
                on_device = isinstance(tier, GpuTier) and not tier.emulated
                tier.write(keys, torch.from_numpy(rows).to(tier.device) if on_device else rows)

    # --- the RowSource protocol ---------------------------------------------------------------------

    def prefetch(self, row_ids: torch.Tensor) -> RowsHandle:
        """Start fetching the rows of a LongTensor of global row ids (any shape); the step starts once
        ``layers_per_step`` calls have arrived (or at the first `wait` on an incomplete one)."""
        self._check_usable()
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
        group.future = self._start(torch.stack(pending, dim=-2) if group.grouped else pending[0], group.record)

    def _start(self, ids: torch.Tensor, record: StepRecord) -> Future:
        """Check a step's ids, record it (a demand step closes the previous one's step time) and queue its fetch."""
        host_ids = np.array(ids.detach().to("cpu").numpy(), dtype=np.int64).reshape(-1)  # a copy: the caller may reuse ids
        if host_ids.size and (host_ids.min() < 0 or host_ids.max() >= self.n_rows):
            bad = int(host_ids.min()) if host_ids.min() < 0 else int(host_ids.max())
            raise EngramTierError(
                f"tiered table: row id {bad} lies outside the table's {self.n_rows} rows; the model and table differ"
            )
        record.requests, record.submitted = int(host_ids.size), time.perf_counter()
        if not record.speculative:
            self._close_step_time(record.submitted)
        self._steps.append(record)
        if self._trace is not None:
            self._trace.append(host_ids)
        return self._worker.submit(self._fetch_or_fail, host_ids, record, len(self._steps) - 1)

    def _close_step_time(self, now: float) -> None:
        """A demand step's time runs until the next demand step starts (speculative steps lie inside it)."""
        demand = next((r for r in reversed(self._steps) if not r.speculative), None)
        if demand is not None and demand.step_s is None:
            demand.step_s = now - demand.submitted

    def _incomplete_step(self) -> EngramTierError:
        return EngramTierError(
            f"tiered table: a step's rows were awaited after {len(self._pending)} of its {self.layers_per_step} "
            "layers asked for theirs; prefetch every Engram layer of a forward pass before waiting on any"
        )

    # --- one step, in the fetch thread --------------------------------------------------------------

    def _fetch_or_fail(self, ids: np.ndarray, record: StepRecord, step: int) -> tuple[torch.Tensor, Any]:
        """`_fetch`, remembering a failure: the policies and slots are then out of step, so no later step may run."""
        if self._failed is not None:
            raise EngramTierError(f"tiered table: an earlier step failed ({self._failed}); open a new TieredTable")
        try:
            return self._fetch(ids, record, step)
        except BaseException as err:
            self._failed = err
            raise

    def _fetch(self, ids: np.ndarray, record: StepRecord, step: int) -> tuple[torch.Tensor | None, Any]:
        start = time.perf_counter()
        n = ids.size
        keys, ts = self._keys.take(n), self._ts.take(n)
        self._bounds[1] = n
        first = self._first
        u = int(unique_per_step(ids, self._bounds, self._requests, self._stamp, first, keys, ts, self._unique_starts))
        self._requests += n
        served = self.engine.feed(keys[:u], ts[:u], self._unique_starts)
        late = None
        if self._deadline is not None and not record.speculative:
            dropped = late_rows(self.hierarchy, served, self.row_bytes, *self._deadline)[:, 0]
            record.dropped, late = dropped.tolist(), late_keys(self.engine.streams, dropped)
        for i, (plan, stream) in enumerate(zip(self._plans, self.engine.streams)):
            plan.plan(stream, step, self.caches[i].name)
        arrivals = [plan.arrivals() for plan in self._plans]

        # rows demoted into a tier from outside this step are needed too; they get the next positions
        incoming = np.concatenate([rows for _, rows in arrivals]) if arrivals else np.empty(0, np.int64)
        extra = np.unique(incoming[self._stamp[incoming] < first])
        self._stamp[extra] = first + u + np.arange(extra.size)
        m = u + extra.size
        needed = self._needed.take(m)
        needed[:u] = keys[:u]
        needed[u:] = extra
        self._first = first + m

        staging, order, on_device = self._gather(needed)
        rank = self._rank.take(m)
        rank[order] = np.arange(m)
        rows = None if record.speculative else self._deliver(ids, staging, rank, first, n, late)
        self._apply(arrivals, staging, rank, first, on_device)
        event = None
        if self._fetch_stream is not None:
            event = torch.cuda.Event()
            event.record(self._fetch_stream)
            event.synchronize()  # the pinned staging is reused by the next step
        record.unique, record.served = u, served[:, 0].tolist()
        record.fetch_s = time.perf_counter() - start
        return rows, event

    def _gather(self, needed: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Read ``needed`` rows from the fastest tier holding each, ordered by tier into the staging
        buffer; returns (staging, order: staging row -> needed index, rows at the front read on the device)."""
        m = needed.size
        source = np.full(m, len(self.caches), np.int64)
        for i in range(len(self.caches) - 1, -1, -1):
            source[self.caches[i].slot_of[needed] >= 0] = i
        order = np.argsort(source, kind="stable")
        bounds = np.searchsorted(source[order], np.arange(len(self.caches) + 2))
        staging = self._staging.host(m)
        on_device = 0
        for i, tier in enumerate([*self.caches, self.store]):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if lo == hi:
                continue
            ids = needed[order[lo:hi]]
            if i < self._device_tiers:
                with torch.cuda.stream(self._fetch_stream):
                    tier.read(ids, self._staging.device(m)[lo:hi])
                on_device = hi
            else:
                tier.read(ids, staging[lo:hi])
        if self._fetch_stream is not None and on_device < m:
            self._staging.upload(on_device, m)
        return staging, order, on_device

    def _staging_rows(self, keys: np.ndarray, rank: np.ndarray, first: int) -> np.ndarray:
        index = self._arrival_index.take(keys.size)
        _positions(self._stamp, keys, first, rank, index)
        return index

    def _deliver(self, ids: np.ndarray, staging: np.ndarray, rank: np.ndarray, first: int, n: int,
                 late: np.ndarray | None) -> torch.Tensor:
        """The step's rows in request order, a fresh tensor on the compute device; the ``late`` rows
        (None: no tier drops) are zero rows."""
        select = self._select.take(n)
        _positions(self._stamp, ids, first, rank, select)
        zero = None
        if late is not None and late.size:
            is_late = np.zeros(staging.shape[0], np.bool_)
            is_late[rank[self._stamp[late] - first]] = True
            zero = is_late[select]
        if self._fetch_stream is None:
            out = np.empty((n, self.row_bytes), np.uint8)
            copy_rows(staging, select, out, None, PARALLEL_MIN_ROWS)
            if zero is not None:
                out[zero] = 0
            return torch.from_numpy(out)
        with torch.cuda.stream(self._fetch_stream):
            index = torch.from_numpy(select).to(self.device, non_blocking=True)
            rows = self._staging.on_device.index_select(0, index)
            if zero is not None:
                rows[torch.from_numpy(zero).to(self.device)] = 0
            return rows

    def _apply(self, arrivals: list, staging: np.ndarray, rank: np.ndarray, first: int, on_device: int) -> None:
        """Move the rows: evict what leaves each cache tier, write what arrives into its planned slot."""
        for tier, plan, (slots, keys) in zip(self.caches, self._plans, arrivals):
            leaving = plan.leaving()
            if leaving.size:
                tier.evict(leaving)
            if not keys.size:
                continue
            index = self._staging_rows(keys, rank, first)
            if isinstance(tier, GpuTier) and not tier.emulated:
                with torch.cuda.stream(self._fetch_stream):
                    rows = self._staging.on_device.index_select(0, torch.from_numpy(index).to(self.device))
                    tier.write_slots(slots, keys, rows)
                continue
            rows = self._arrival_rows.take(keys.size)
            copy_rows(staging, index, rows, None, PARALLEL_MIN_ROWS)
            from_device = index < on_device  # read by a device tier (gpu, uva dram): those bytes are on the device only
            if from_device.any():
                with torch.cuda.stream(self._fetch_stream):
                    picked = torch.from_numpy(index[from_device]).to(self.device)
                    rows[from_device] = self._staging.on_device.index_select(0, picked).cpu().numpy()
            tier.write_slots(slots, keys, rows)

    # --- results ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Wait for every started step and close the last one's step time (call after the last forward)."""
        if self._pending:
            raise self._incomplete_step()
        self._worker.submit(lambda: None).result()  # steps run in order: every earlier one has ended
        self._close_step_time(time.perf_counter())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            for record in self._steps:
                if record.cuda_stall:
                    record.stall_s = sum(b.elapsed_time(e) / 1e3 for b, e in record.cuda_stall)
                    record.cuda_stall = []

    def recorded_trace(self, meta: dict | None = None) -> RowTrace:
        """The row ids of every step so far as a `RowTrace` (needs ``record_trace=True``)."""
        if self._trace is None:
            raise EngramTierError("tiered table: no trace was recorded; open it with record_trace=True")
        if not self._trace:
            raise EngramTierError("tiered table: no step ran yet, so there is no trace to return")
        starts = np.zeros(len(self._trace) + 1, np.int64)
        np.cumsum([ids.size for ids in self._trace], out=starts[1:])
        return RowTrace(np.concatenate(self._trace), starts, self.n_rows, self.row_bytes, dict(meta or {}))

    def step_records(self) -> list[dict]:
        """One JSON-ready dict per step: requests, unique rows, rows served per tier, fetch, stall and step
        seconds; a speculative step (`speculate`) says so, and has no stall and no step time of its own."""
        names = [t.name for t in self.hierarchy.tiers]
        records = [{"step": i, "requests": r.requests, "unique": r.unique, "served": dict(zip(names, r.served)),
                    "fetch_s": r.fetch_s, "stall_s": r.stall_s, "step_s": r.step_s, "speculative": r.speculative}
                   for i, r in enumerate(self._steps)]
        if self._deadline is None:
            return records
        return [{**rec, "dropped": dict(zip(names, r.dropped or [0] * len(names)))} for rec, r in zip(records, self._steps)]

    def tier_stats(self) -> list[dict]:
        """Per tier, fastest first: the engine's counters (the simulator's), ``served_bytes`` (hits x row
        bytes, the simulator's ``bytes_read``), and what the tier really read (``bytes_read``, ``rows_read``:
        a row is read from the fastest tier that holds it when the step starts, which can be a tier above
        the one the policies say served it, and demoted rows are read to be copied down) and wrote."""
        tiers = [*self.caches, self.store]
        facts = [{"name": spec.name, "storage": tier.name, "policy": spec.policy,
                  "capacity_rows": tier.capacity_rows if tier is not self.store else self.n_rows, "warm_rows": held,
                  **counts}
                 for spec, tier, counts, held in zip(self.hierarchy.tiers, tiers, self.engine.tier_counts(),
                                                     [*self._warm_held, 0])]
        out = []
        for t, tier in zip(tier_report(facts, self.row_bytes), tiers):
            moved = tier.stats()
            out.append({
                **t, "bytes_read": moved["bytes_read"], "rows_read": moved["rows_read"],
                "rows_written": moved["rows_written"], "emulated": moved.get("emulated", False),
                **({"remote": {k: moved[k] for k in REMOTE_FACTS}} if isinstance(tier, FailoverStore) else {}),
            })
        return out

    def stats(self) -> dict:
        """JSON-ready totals: per tier (`tier_stats`) and per run (steps, requests, stall, fetch, step
        seconds). ``steps`` counts demand steps; requests, lookups, fetch seconds and the tiers' counts
        include the ``speculative_steps``."""
        steps = [r.step_s for r in self._steps if r.step_s is not None]
        seconds = float(sum(steps))
        stall = float(sum(r.stall_s for r in self._steps))
        speculative = sum(r.speculative for r in self._steps)
        return {
            "steps": len(self._steps) - speculative,
            "speculative_steps": speculative,
            "requests": sum(r.requests for r in self._steps),
            "lookups": sum(r.unique for r in self._steps),
            "fetch_seconds": float(sum(r.fetch_s for r in self._steps)),
            "stall_seconds": stall,
            "step_seconds": seconds,
            "stall_fraction": stall / seconds if seconds > 0 else 0.0,
            "mode": self.hierarchy.mode,
            "device": str(self.device),
            "dram_gather": self.dram_gather,
            "row_bytes": self.row_bytes,
            "n_table_rows": self.n_rows,
            "fingerprint": self.store.manifest.get("fingerprint"),
            "tiers": self.tier_stats(),
            "hierarchy": self.hierarchy.to_dict(),
            **({"dropped_rows": sum(sum(r.dropped) for r in self._steps)} if self._deadline is not None else {}),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._worker.shutdown(wait=True)
        self._close_tiers()

    def _close_tiers(self) -> None:
        for tier in [*self.caches, self.store]:
            tier.close()

    def __enter__(self) -> "TieredTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
