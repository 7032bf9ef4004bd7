"""One step of the runtime: decide what serves each row and what moves, then move the bytes.

A step is one forward pass's row ids (every Engram layer's, see `engramtier.tiers.tiered`). It runs
in two halves, each a few compiled (numba, nogil) kernels over buffers reused from step to step:

`decide`
    1. dedup: the step's unique rows in first-occurrence order with their last request's position, as
       the simulator feeds them (`engramtier.trace.lookups`), through a hash map sized by the step,
       not by the table; each request remembers its unique row (``inv``);
    2. the same `Engine` the simulator runs says which tier serves each row and what each cache admits
       and evicts; a tier that drops late rows marks the rows its model says miss the window;
    3. each cache tier's slot plan (`engramtier.tiers.slots`) turns that into slot changes; rows demoted
       into a tier from outside the step join the step's *needed* rows;
    4. each needed row's source: the fastest tier holding it *now*, before any slot changes (the
       engine's contract: gather first, then apply in event order), found in the tiers' slot maps;
    5. the staging layout: which rows must pass through the staging buffer (see below).
`move`
    6. gather into staging, grouped by source, so each tier and the store fill one contiguous run
       (the store's reads go through its own reader threads);
    7. deliver: the step's rows in request order;
    8. apply: each cache tier gives up its leaving rows and writes its arriving rows into their planned
       slots, so each slab holds exactly what its policy holds at every step boundary.

On a CPU, a tier whose slab is plain host memory (`SlabTier.direct_rows`) is not staged: its rows are
delivered straight out of the slab (a memcpy per row, `engramtier.tiers.rowcopy`), so a step of cached
rows copies each row once, the way a flat table's gather does. Rows are staged when they come from the
store or a tier that must be read through `read` (a modeled CXL tier), and when they arrive in some tier
(a slot they are read from may be rewritten by the same step's apply). On a CUDA device every needed row
is staged, tiers that read into device memory first (they fill the front of the device staging), the
rest through pinned host memory and one copy; delivery is one gather on the device, ordered after the
step's copies by a CUDA event that the consumer's stream waits on, so nothing blocks the host on the
device but the next step's reuse of the pinned staging (it waits for the previous step's copies before
refilling it).

A large step on a CPU (`SHARED_MIN_ROWS` requests) runs 4 and the delivery of the rows read in place
on a helper thread, alongside 1-3 and 5 (`StepPipeline.decide`): sources are where the last step left
them, so they wait on no decision.

With ``stable_rows`` (for serving stacks that capture CUDA graphs), a step's rows land in one device
buffer per step size, its index in one pinned and one device buffer per size, and the device staging
only grows, so steps of one shape reuse the same addresses and a captured graph reading the rows
replays with each step's rows; the gather into the buffer waits (on the device) until the consumer's
stream has finished the work it queued on the previous step's rows (`release`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numba
import numpy as np
import torch
from numba import prange

from engramtier.cache import keymap
from engramtier.cache.deadline import late_keys, late_rows
from engramtier.cache.diskcache import kernel
from engramtier.cache.engine import Engine
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import hits_never_evict
from engramtier.cache.prefetch import PREFETCH_AHEAD, prefetch_address
from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier
from engramtier.tiers.rowcopy import copy_elements, copy_from_address
from engramtier.tiers.slab import SlabTier
from engramtier.tiers.slots import SlotPlan
from engramtier.tiers.staging import Staging

PARALLEL_MIN_ROWS = 1 << 15  # row copies of at least this many rows use all numba threads
SHARED_MIN_ROWS = 1 << 14  # steps of at least this many requests copy while they decide (see `decide`)
SHARED_CHUNKS = 64  # a large step's copies, shared by two threads, are claimed in this many chunks


@kernel()
def first_outside(ids, n_rows):
    """The index of the first of ``ids`` outside ``[0, n_rows)``, or -1."""
    for i in range(ids.size):
        if ids[i] < 0 or ids[i] >= n_rows:
            return i
    return -1


@kernel()
def clear(index, entries, m):
    """Empty a step map whose ``m`` filled entries ``entries`` lists."""
    for p in range(m):
        index[entries[p]] = -1


@kernel()
def dedup(ids, t0, index, needed, ts, inv, entries, stale):
    """The unique rows of ``ids`` in first-occurrence order into ``needed``, each with the trace
    position (``t0`` + index) of its last request into ``ts``; ``inv[i]`` = the unique row of
    request ``i``. ``index`` is the step's hashed key map over ``needed`` (`engramtier.cache.keymap`),
    emptied first of the previous step's ``stale`` entries; ``entries`` records the entries filled
    (for the next step). Returns the number of unique rows."""
    clear(index, entries, stale)
    u = 0
    for i in range(ids.size):
        if i + PREFETCH_AHEAD < ids.size:
            keymap.prefetch_home(index, ids[i + PREFETCH_AHEAD])
        row = ids[i]
        e = keymap.entry(index, needed, row)
        p = index[e]
        if p < 0:
            p = u
            needed[u] = row
            index[e] = u
            entries[u] = e
            u += 1
        ts[p] = t0 + i
        inv[i] = p
    return u


@kernel()
def add_rows(rows, index, needed, m, entries):
    """Append to the ``m`` needed rows those of ``rows`` not among them yet; returns the new count."""
    for i in range(rows.size):
        e = keymap.entry(index, needed, rows[i])
        if index[e] < 0:
            needed[m] = rows[i]
            index[e] = m
            entries[m] = e
            m += 1
    return m


@kernel()
def mark_rows(index, needed, rows, flags):
    """``flags[p] = True`` for the needed index ``p`` of each of ``rows`` (all needed)."""
    for i in range(rows.size):
        flags[index[keymap.entry(index, needed, rows[i])]] = True


def _find_sources(needed, lo, m, tier_indexes, tier_id_ofs, store, bases, row_bytes, src, slot, address):
    """Each needed row's (``lo:m``) source: the fastest cache tier whose slot map (``tier_indexes[t]`` over
    ``tier_id_ofs[t]``) holds it now, ``slot[j]`` its slot there; else the ``store``. ``address[j]``:
    where the row lies in memory when its source is direct (``bases[t]``, the slab's address, is not
    0), else 0. Rows are independent, so large steps share them among threads."""
    for j in prange(lo, m):
        if j + PREFETCH_AHEAD < m:  # the fastest tier holds most rows: only its entries are worth prefetching
            keymap.prefetch_home(tier_indexes[0], needed[j + PREFETCH_AHEAD])
        src[j] = store
        address[j] = 0
        for t in range(len(tier_indexes)):
            s = keymap.find(tier_indexes[t], tier_id_ofs[t], needed[j])
            if s >= 0:
                src[j] = t
                slot[j] = s
                if bases[t]:
                    address[j] = bases[t] + s * row_bytes
                break


find_sources_serial = kernel()(_find_sources)
find_sources_parallel = kernel(parallel=True)(_find_sources)


@kernel()
def layout(index, needed, m, arrivals, direct, src, stage_pos, order, bounds, reads):
    """The step's staging layout, and ``reads[g]``: the rows read from each source.

    Staging rows by group: group ``g`` < ``len(direct)`` holds the rows read from source ``g`` when it
    is not direct (tiers, then the store), the last group the rows of direct sources that arrive in
    some tier (``arrivals[t]``: the rows tier ``t`` takes in; they are copied out of their slab before
    the apply); other rows of direct sources are not staged (``stage_pos`` -1). ``order[p]`` is the
    needed row at staging row ``p``, ``bounds`` the groups' starts, then the total."""
    n_groups = direct.size + 1
    for g in range(n_groups + 1):
        bounds[g] = 0
    for g in range(direct.size):
        reads[g] = 0
    for j in range(m):
        stage_pos[j] = -1  # 1: arrives in some tier
        reads[src[j]] += 1
    staged = 0
    for t in range(len(arrivals)):
        rows = arrivals[t]
        staged += rows.size
        for i in range(rows.size):
            stage_pos[index[keymap.entry(index, needed, rows[i])]] = 1
    for g in range(direct.size):
        if not direct[g]:
            staged += reads[g]
    if staged == 0:  # every row is read in place and none arrives anywhere (a step of hits, on a CPU)
        return
    for j in range(m):
        g = src[j] if not direct[src[j]] else (n_groups - 1 if stage_pos[j] > 0 else -1)
        stage_pos[j] = g
        if g >= 0:
            bounds[g + 1] += 1
    for g in range(n_groups):
        bounds[g + 1] += bounds[g]
    for j in range(m):
        g = stage_pos[j]
        if g >= 0:
            p = bounds[g]
            bounds[g] += 1
            order[p] = j
            stage_pos[j] = p
    for g in range(n_groups - 1, 0, -1):  # the fill moved each start to the next group's: move them back
        bounds[g] = bounds[g - 1]
    bounds[0] = 0


@kernel()
def gather_direct(address, order, lo, hi, row_bytes, staging):
    """Staging rows ``lo:hi`` (rows of direct sources that arrive somewhere) out of their slabs."""
    for p in range(lo, hi):
        copy_from_address(staging, p * row_bytes, address[order[p]], row_bytes)


def _deliver(inv, n, address, stage_pos, staging, row_bytes, late, rest, out):
    """``out`` (flat bytes) row ``i`` = request ``i``'s row: straight out of its slab when its source is
    direct (``address``), prefetched a few rows ahead (slab rows are scattered), else from staging; a
    late row (``late`` non-empty and set) is zeros. A row of a direct source that arrives in some tier
    is staged too, but its slab still holds it until the step's apply. ``rest``: only the rows not
    read from slabs (`deliver_shared` has copied those)."""
    for i in prange(n):
        if not rest and i + PREFETCH_AHEAD < n:
            ahead = address[inv[i + PREFETCH_AHEAD]]
            if ahead:
                prefetch_address(ahead)
        j = inv[i]
        d = i * row_bytes
        if late.size and late[j]:
            for b in range(row_bytes):  # a slice assignment here would keep numba from sharing the loop
                out[d + b] = 0
        elif address[j]:
            if not rest:
                copy_from_address(out, d, address[j], row_bytes)
        else:
            copy_elements(out, d, staging, stage_pos[j] * row_bytes, row_bytes)


# One source, two builds: threads pay off only for large steps (a parallel launch costs tens of µs).
deliver_serial = kernel()(_deliver)
deliver_parallel = kernel(parallel=True)(_deliver)


@kernel()
def deliver_shared(address, n, row_bytes, claimed, from_end, out):
    """``out`` (flat bytes) row ``i`` = the row at ``address[i]`` where that is not 0 (request ``i``'s
    row read from a slab), chunk by chunk (``claimed.size`` chunks), while another thread runs the same
    from the other end (``from_end``). Each claims a chunk before copying it and stops at the first
    chunk the other claimed, so they meet wherever the other's work ends; both may claim one chunk at
    the same moment and copy it twice, the same bytes, which is harmless. Every chunk is copied by a
    thread that claimed it, so once both have returned the rows are all there."""
    k = claimed.size
    for c in range(k):
        chunk = k - 1 - c if from_end else c
        if claimed[chunk]:
            return
        claimed[chunk] = 1
        hi = (chunk + 1) * n // k
        for i in range(chunk * n // k, hi):
            if i + PREFETCH_AHEAD < hi and address[i + PREFETCH_AHEAD]:
                prefetch_address(address[i + PREFETCH_AHEAD])
            if address[i]:
                copy_from_address(out, i * row_bytes, address[i], row_bytes)


@kernel()
def unique_sources(inv, n, request_src, request_slot, request_address, src, slot, address):
    """The sources found per request (on the helper thread, see `StepPipeline.decide`) per unique row:
    ``src[inv[i]] = request_src[i]`` and so on (a row's requests all found the same)."""
    for i in range(n):
        j = inv[i]
        src[j], slot[j], address[j] = request_src[i], request_slot[i], request_address[i]


@kernel()
def staging_rows(index, needed, rows, stage_pos, out):
    """``out[i]`` = the staging row of needed row ``rows[i]``."""
    for i in range(rows.size):
        out[i] = stage_pos[index[keymap.entry(index, needed, rows[i])]]


@kernel()
def request_rows(inv, n, stage_pos, out):
    """``out[i]`` = the staging row of request ``i``'s row (the device gather's index)."""
    for i in range(n):
        out[i] = stage_pos[inv[i]]


class StepPipeline:
    """Runs steps over ``caches`` (fastest first, `SlabTier`s) and ``store``, with ``engine`` deciding.

    ``deadline``: (window seconds, overlap) when a tier drops late rows. ``device``: where rows are
    delivered. One step at a time: `check` and `decide`, then `move`, which leaves the policies, slot
    maps and slabs in step. `decide` also tells whether `move` will read the store (`reads_store`),
    the slow part worth overlapping with compute.
    """

    def __init__(self, hierarchy: Hierarchy, engine: Engine, caches: Sequence[SlabTier], store: Tier,
                 device: torch.device, deadline: tuple[float, str] | None, stable_rows: bool = False) -> None:
        self.hierarchy, self.engine, self.caches, self.store = hierarchy, engine, list(caches), store
        self.n_rows, self.row_bytes, self.device = store.n_table_rows, store.row_bytes, device
        self.deadline = deadline
        exclusive = hierarchy.mode == "exclusive"
        self.plans = [SlotPlan(tier, exclusive and i > 0) for i, tier in enumerate(self.caches)]
        self.names = [spec.name for spec in hierarchy.caches]
        self.staging = Staging(self.row_bytes, device)
        self.fetch_stream = self.staging.stream  # every device operation of a step runs on it
        self.stable_rows = stable_rows
        self._stable: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # (size, turn)
        self._events: list[Any] = []  # the device work of the last two steps, oldest first
        self._turn = 0  # which of the two pinned buffers this step fills (`Staging.flip`)
        self._released: Any = None  # the consumer is done with the previous step's rows
        self.device_tiers = self._count_device_tiers()
        # On a CPU, a tier whose slab is host memory copied by plain loads is read in place (see module doc).
        host = device.type != "cuda"
        views = [tier.direct_rows() if host else None for tier in self.caches]
        # where each direct tier's slab lies: the tiers keep their slabs, which never move
        self._bases = np.array([v.ctypes.data if v is not None else 0 for v in views] + [0], np.int64)
        self.direct = np.array([v is not None for v in views] + [False], np.bool_)  # the store is read through read()
        self._staged_sources = np.flatnonzero(~self.direct)
        self._direct_tiers = [v is not None for v in views]
        self.store_source = len(self.caches)
        nobody = (keymap.hashed_index(1), np.full(1, -1, np.int64))  # stands in for the tiers of a cacheless table
        self._tier_indexes = tuple(t.index for t in self.caches) or (nobody[0],)
        self._tier_id_ofs = tuple(t.id_of for t in self.caches) or (nobody[1],)
        self._no_arrivals = (np.empty(0, np.int64),) * max(1, len(self.caches))
        # tiers a step whose lookups all hit leaves as they were (no slot plan to make): a policy whose hits
        # never evict, in a tier whose hits keep their rows (an exclusive lower tier's hits move up)
        self._tier_plans = [(plan, name, hits_never_evict(policy) and not plan.exclusive_lower)
                            for policy, plan, name in zip(engine.policies, self.plans, self.names, strict=True)]
        self._map = keymap.hashed_index(1)
        self._requests_cap = self._needed_cap = 0
        self._reserve(1, 1)
        self._bounds = np.zeros(len(self.caches) + 3, np.int64)
        self._reads = np.zeros(len(self.caches) + 1, np.int64)
        self._step_starts = np.zeros(2, np.int64)
        self._requests = 0  # requests before this step: its trace position t0
        self._plans_made = 0
        # needed rows per request at most: its own, and in an exclusive hierarchy the rows each lower tier
        # takes from the one above (victims from outside the step)
        self._needed_per_request = len(self.caches) if exclusive else 1
        self.n = self.m = self.u = 0
        self.speculative = False
        self.late_rows: np.ndarray | None = None
        self.late_keys = np.empty(0, np.int64)
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="step-copy")  # shares a large step's copies
        self._claimed = np.zeros(SHARED_CHUNKS, np.int64)
        self._sources: Future | None = None  # the helper's finding of a step's sources
        self._delivery: Future | None = None  # then its copying
        self._delivered: np.ndarray | None = None  # what it copies into: the step's rows, flat

    def _count_device_tiers(self) -> int:
        """How many leading cache tiers read straight into device memory (a real gpu tier, uva dram
        tiers): their rows fill the front of the step's device staging, the rest comes through the host."""
        on_device = [tier.reads_into_device for tier in self.caches]
        n = on_device.index(False) if False in on_device else len(on_device)
        if True in on_device[n:]:
            name = self.hierarchy.caches[n + on_device[n:].index(True)].name
            raise EngramTierError(f"tier '{name}': a uva dram tier reads into device memory, so only gpu or uva tiers "
                                  "may come before it; move it up or use dram_gather 'copy'")
        return n

    def _reserve(self, n: int, m: int) -> None:
        """Room for a step of ``n`` requests and at most ``m`` needed rows: buffers and the step map only
        grow, so steps of one shape allocate nothing."""
        if n > self._requests_cap:
            self._requests_cap = max(n, 2 * self._requests_cap)
            self._inv, self._select, self._request_src, self._request_slot, self._request_address = (
                np.empty(self._requests_cap, np.int64) for _ in range(5))
        if m > self._needed_cap:
            self._needed_cap = cap = max(m, 2 * self._needed_cap)
            self._needed, self._entries, self._ts, self._src, self._slot, self._stage_pos, self._order, \
                self._positions, self._address = (np.empty(cap, np.int64) for _ in range(9))
            self._late = np.zeros(cap, np.bool_)
            self._map = keymap.hashed_index(cap)
            self.m = 0  # a fresh map: no entries of the last step to clear

    # --- decide -------------------------------------------------------------------------------------

    def check(self, ids: np.ndarray) -> None:
        """Refuse a step whose row ids lie outside the table (before it changes anything)."""
        bad = first_outside(ids, self.n_rows)
        if bad >= 0:
            raise EngramTierError(f"tiered table: row id {int(ids[bad])} lies outside the table's {self.n_rows} rows; "
                                  "the model and table differ")

    def decide(self, ids: np.ndarray, speculative: bool) -> list[int]:
        """Decide a step of row ids (int64, any order, `check`ed); returns the rows each tier served
        (the store last).

        A large step delivered on the host overlaps its copies with the decisions. Its rows' sources
        are where they were at the last step's end, so a helper thread finds each request's source
        while this one dedups the step and runs the engine, then copies the rows that come straight out
        of slabs while this one makes the slot plans (which wait for the sources: they edit the slot
        maps, and put them back) and the staging layout, and then joins the copying from the other end
        (`deliver_shared`). The rows that must be staged, and late rows, follow in `move`."""
        n = ids.size
        self._reserve(n, max(1, self._needed_per_request * n))
        self._sources = self._delivery = None
        if not speculative and self.fetch_stream is None and n >= SHARED_MIN_ROWS and numba.get_num_threads() > 1:
            self._start_delivery(ids)
        try:
            u = int(dedup(ids, self._requests, self._map, self._needed, self._ts, self._inv, self._entries, self.m))
            self._requests += n
            self._step_starts[1] = u
            served_rows, m = self._plan(n, u, speculative)
        finally:
            if self._delivery is not None:
                self._join_delivery()
        self.n, self.u, self.m, self.speculative = n, u, m, speculative
        return served_rows

    def _plan(self, n: int, u: int, speculative: bool) -> tuple[list[int], int]:
        """The engine's decisions on the step's ``u`` unique rows (of ``n`` requests), each cache tier's
        slot plan, the needed rows' sources (those of the first ``u`` may be the helper's, see `decide`),
        and the staging layout; returns (rows each tier served, needed rows)."""
        needed = self._needed
        served = self.engine.feed(needed[:u], self._ts[:u], self._step_starts, checked=True)  # ids passed `check`
        found = 0
        if self._sources is not None:
            self._sources.result()
            unique_sources(self._inv, n, self._request_src, self._request_slot, self._request_address, self._src,
                           self._slot, self._address)
            found = u
        self.late_rows = None
        if self.deadline is not None and not speculative:
            dropped = late_rows(self.hierarchy, served, self.row_bytes, *self.deadline)[:, 0]
            self.late_rows, self.late_keys = dropped, late_keys(self.engine.streams, dropped)
        step = self._plans_made
        self._plans_made += 1
        m = u
        arrivals = self._no_arrivals
        served_rows = served[:, 0].tolist()
        # streams and served rows end with the store's, which has no slots to plan
        for (plan, name, kept), stream, hits in zip(self._tier_plans, self.engine.streams, served_rows, strict=False):
            lookups = stream.events.size
            if not lookups or (kept and hits == lookups):
                plan.clear()
            elif plan.plan(stream, step, name):
                arrivals = tuple(p.arrive_rows for p in self.plans)
                if plan.arrive_rows.size:  # rows demoted into a tier from outside the step are needed too
                    m = int(add_rows(plan.arrive_rows, self._map, needed, m, self._entries))
        self._find_sources(found, m)
        layout(self._map, needed, m, arrivals, self.direct, self._src, self._stage_pos, self._order, self._bounds,
               self._reads)
        return served_rows, m

    def _find_sources(self, lo: int, m: int) -> None:
        """Sources of needed rows ``lo:m``."""
        find = find_sources_parallel if m - lo >= PARALLEL_MIN_ROWS and self._delivery is None else find_sources_serial
        find(self._needed, lo, m, self._tier_indexes, self._tier_id_ofs, self.store_source, self._bases, self.row_bytes,
             self._src, self._slot, self._address)

    def _start_delivery(self, ids: np.ndarray) -> None:
        """On the helper thread: find each request's source, then copy the rows read from slabs (see
        `decide`)."""
        self._delivered = np.empty(ids.size * self.row_bytes, np.uint8)
        self._claimed[:] = 0
        self._sources = self._helper.submit(
            find_sources_serial, ids, 0, ids.size, self._tier_indexes, self._tier_id_ofs, self.store_source, self._bases,
            self.row_bytes, self._request_src, self._request_slot, self._request_address)
        self._delivery = self._helper.submit(self._deliver_shared, False)

    def _deliver_shared(self, from_end: bool) -> None:
        if self._sources.exception() is None:  # no rows to copy where their sources were not found
            deliver_shared(self._request_address, self._delivered.size // self.row_bytes, self.row_bytes, self._claimed,
                           from_end, self._delivered)

    def _join_delivery(self) -> None:
        """Copy rows from the other end until meeting the helper thread, then wait for it."""
        try:
            self._deliver_shared(True)
        finally:
            self._delivery.result()

    @property
    def reads_store(self) -> bool:
        """Whether the decided step reads rows from the store (slow: worth overlapping with compute)."""
        return bool(self._reads[self.store_source])

    def warm_up(self) -> None:
        """Run an empty step and an empty read of every tier, so that compiling (the engine's drivers),
        loading kernels from numba's cache and starting reader threads happen now, not in the first
        step's stall."""
        nothing = np.empty(0, np.int64)
        self.check(nothing)
        self.decide(nothing, speculative=False)
        self.move()
        for i, tier in enumerate([*self.caches, self.store]):
            tier.read(nothing, torch.empty((0, self.row_bytes), dtype=torch.uint8, device=self.device)
                      if i < self.device_tiers else np.empty((0, self.row_bytes), np.uint8))

    # --- move ---------------------------------------------------------------------------------------

    def move(self) -> tuple[torch.Tensor | None, Any]:
        """Move the decided step's rows; returns (its rows in request order on the device, or None for a
        speculative step; a CUDA event recorded after the step's device work, or None)."""
        if self.fetch_stream is not None:
            self.staging.flip()
            self._turn ^= 1
            if len(self._events) == 2:  # that step's copies have left the pinned buffers this step refills
                self._events.pop(0).synchronize()
        staging, on_device = self._gather()
        rows = None if self.speculative else self._deliver(staging)
        self._apply(staging, on_device)
        event = None
        if self.fetch_stream is not None:
            event = torch.cuda.Event()
            event.record(self.fetch_stream)
            self._events.append(event)
        return rows, event

    def _gather(self) -> tuple[np.ndarray, int]:
        """Read the staged rows, group by group; returns (host staging, rows at its front read on the device)."""
        bounds, reads = self._bounds.tolist(), self._reads.tolist()
        order, slot = self._order, self._slot
        total = bounds[-1]
        staging = self.staging.host(total)
        on_device = 0
        for t, tier in enumerate(self.caches):
            lo, hi = bounds[t], bounds[t + 1]
            if self._direct_tiers[t]:
                if reads[t]:
                    tier.count_direct_reads(reads[t])
            elif hi > lo:
                if t < self.device_tiers:
                    with torch.cuda.stream(self.fetch_stream):
                        tier.read_slots(slot[order[lo:hi]], self.staging.device(total)[lo:hi])
                    on_device = hi
                else:
                    tier.read_slots(slot[order[lo:hi]], staging[lo:hi])
        store = self.store_source
        lo, hi = bounds[store], bounds[store + 1]
        if hi > lo:
            self.store.read(self._needed[order[lo:hi]], staging[lo:hi])
        lo, hi = bounds[store + 1], bounds[store + 2]
        if hi > lo:
            gather_direct(self._address, order, lo, hi, self.row_bytes, self.staging.host_rows)
        if self.fetch_stream is not None and on_device < total:
            self.staging.upload(on_device, total)
        return staging, on_device

    def _late_flags(self) -> np.ndarray:
        """Per needed row, whether a tier drops it."""
        late = self._late[: self.m]
        late[:] = False
        if self.late_keys.size:
            mark_rows(self._map, self._needed, self.late_keys, late)
        return late

    def _deliver(self, staging: np.ndarray) -> torch.Tensor:
        """The step's rows in request order, a fresh tensor on the compute device (late rows zeros)."""
        n = self.n
        late = self._late[:0] if self.late_rows is None else self._late_flags()
        if self.fetch_stream is None:
            out, rest = self._delivered, True  # the rows read from slabs are there already (see `decide`)
            if out is None:
                out, rest = np.empty(n * self.row_bytes, np.uint8), False
            self._delivered = None
            if not rest or late.size or self._reads[self._staged_sources].any():
                kernel = deliver_parallel if n >= PARALLEL_MIN_ROWS else deliver_serial
                kernel(self._inv, n, self._address, self._stage_pos, self.staging.host_rows, self.row_bytes, late, rest,
                       out)
            return torch.from_numpy(out.reshape(n, self.row_bytes))
        select = self._select[:n]
        request_rows(self._inv, n, self._stage_pos, select)
        with torch.cuda.stream(self.fetch_stream):
            if self.stable_rows:
                host_index, index, rows = self._stable_buffers(n)
                host_index.numpy()[:] = select
                index.copy_(host_index, non_blocking=True)
                if self._released is not None:
                    self.fetch_stream.wait_event(self._released)
                torch.index_select(self.staging.on_device, 0, index, out=rows)
            else:
                index = torch.from_numpy(select).to(self.device, non_blocking=True)
                rows = self.staging.on_device.index_select(0, index)
            if late.size and late.any():
                zero = late[self._inv[:n]]
                rows[torch.from_numpy(zero).to(self.device)] = 0
            return rows

    def close(self) -> None:
        """Stop the helper thread."""
        self._helper.shutdown(wait=True)

    def release(self, event: Any) -> None:
        """``event``, recorded on the consumer's stream, follows all its work on the rows delivered so
        far: `stable_rows` buffers are rewritten only after it."""
        self._released = event

    def _stable_buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pinned host index, device index and device rows of steps of ``n`` rows (`stable_rows`); the
        pinned index by turns, like the staging (`Staging.flip`), the rest one per size."""
        turn = self._turn
        if (n, turn) not in self._stable:
            rows = self._stable[n, 1 - turn][2] if (n, 1 - turn) in self._stable else \
                torch.empty((n, self.row_bytes), dtype=torch.uint8, device=self.device)
            index = self._stable[n, 1 - turn][1] if (n, 1 - turn) in self._stable else \
                torch.empty(n, dtype=torch.int64, device=self.device)
            self._stable[n, turn] = (torch.empty(n, dtype=torch.int64, pin_memory=True), index, rows)
        return self._stable[n, turn]

    def _apply(self, staging: np.ndarray, on_device: int) -> None:
        """Evict what leaves each cache tier, write what arrives into its planned slot."""
        downloaded = False
        for tier, plan in zip(self.caches, self.plans, strict=True):
            rows = plan.arrive_rows
            if not rows.size and not plan.leaving.size:
                continue
            positions = self._positions[: rows.size]
            staging_rows(self._map, self._needed, rows, self._stage_pos, positions)
            if not tier.slab_on_device and rows.size and self.fetch_stream is not None and not downloaded \
                    and on_device and positions.min() < on_device:
                # rows a device tier read are on the device only: bring that part of the staging home
                staging[:on_device] = self.staging.on_device[:on_device].cpu().numpy()
                downloaded = True
            if tier.slab_on_device:
                with torch.cuda.stream(self.fetch_stream):
                    tier.apply_plan(plan.leaving, plan.arrive_slots, rows, self.staging.on_device, positions)
            else:
                tier.apply_plan(plan.leaving, plan.arrive_slots, rows, staging, positions)
