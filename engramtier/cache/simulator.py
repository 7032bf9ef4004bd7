"""Replay a row trace through a tier hierarchy step by step and charge each step its fetch time.

Per step (one forward pass): the step's unique rows are looked up through the hierarchy (see
`engramtier.cache.engine`); each tier serves its hits, which cost what the tier's `TierModel` says
(the top tier's hits included: an HBM gather is not free). Tiers are independent devices, so with
``overlap="parallel"`` the step waits for the slowest tier; ``"serial"`` adds them up. The Engram
layer's rows are known before the forward pass starts, so the fetch overlaps the compute that precedes
the layer (``compute_window_s``); only what exceeds it stalls the step:

    stall = max(0, fetch - window)      step seconds = step compute + stall

A tier with ``on_late = "drop"`` does not wait for rows that cannot arrive within the window: they
are dropped (the step reads zero rows) and only the rows that fit are charged (see
`engramtier.cache.deadline`); the summary then says what fraction of rows was dropped and how much
stall that saved against the same run waiting for them.

Writes of promoted and demoted rows into other tiers are counted but not charged: they are off the
critical path (the row is already on its way to the GPU). Steps go through the compiled drivers in
chunks of about ``chunk_requests`` requests, so Python runs once per chunk, not per row or step.

Policies see the trace's dense keys (`engramtier.trace.rowindex`), so their state, like everything
else here, scales with the rows the trace touches, not with the table; a trace file is streamed chunk
by chunk (only offline policies load it whole, when they are built). Cache tiers declared ``warm``
open holding a profile's hottest rows (`engramtier.cache.warm`); a warm row the trace never requests
gets a key past the trace's, so it takes its place in the cache as it does in the runtime.
`SimResult.first_steps` is the cold-start figure: the first steps' hit rates and stall.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engramtier.cache.deadline import late_rows
from engramtier.cache.engine import Engine, tier_report
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import PolicyContext
from engramtier.cache.warm import warm_rows
from engramtier.errors import EngramTierError
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.lookups import unique_per_step
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.tracefile import TraceReader, trace_chunks

OVERLAPS = ("parallel", "serial")


@dataclass
class SimResult:
    """Per-step arrays (``served``, ``fetch_s`` and ``dropped`` are ``[tiers, steps]``, the store last)
    and per-tier totals of one run; `summary` and `to_dict` are JSON-ready. ``dropped`` and
    ``waiting_stall_s`` (the stall had every tier waited) are None unless a tier drops late rows."""

    config: dict[str, Any]
    tier_totals: list[dict[str, Any]]
    requests: np.ndarray
    unique: np.ndarray
    served: np.ndarray
    fetch_s: np.ndarray
    window_s: np.ndarray
    compute_s: np.ndarray
    step_fetch_s: np.ndarray
    stall_s: np.ndarray
    step_s: np.ndarray
    rows_per_token: float | None = None
    dropped: np.ndarray | None = None
    waiting_stall_s: np.ndarray | None = None

    def tier_stats(self) -> list[dict[str, Any]]:
        """Per tier: lookups, hits, hit rate (of the lookups that reached it), share of all lookups it
        served, rows promoted (admitted from below), demoted (admitted from above), evicted and
        declined (see `tier_report`), and bytes read: in a simulation, the bytes of the rows served."""
        stats = [{**t, "bytes_read": t["served_bytes"]} for t in tier_report(self.tier_totals, self.config["row_bytes"])]
        if self.dropped is None:
            return stats
        return [{**t, "dropped": int(d)} for t, d in zip(stats, self.dropped.sum(axis=1).tolist(), strict=True)]

    def deadline_summary(self) -> dict[str, Any]:
        """What dropping late rows did: rows dropped (and their fraction of the lookups), the stall of
        the same run waiting for every row, and the stall saved against it."""
        dropped, lookups = int(self.dropped.sum()), int(self.unique.sum())
        waiting, stall = float(self.waiting_stall_s.sum()), float(self.stall_s.sum())
        return {"dropped_rows": dropped, "dropped_fraction": dropped / lookups if lookups else 0.0,
                "waiting_stall_seconds": waiting, "stall_saved_seconds": waiting - stall,
                "stall_saved_fraction": (waiting - stall) / waiting if waiting > 0 else 0.0}

    def summary(self) -> dict[str, Any]:
        seconds = float(self.step_s.sum())
        stall = float(self.stall_s.sum())
        requests = int(self.requests.sum())
        rate = ("tokens_per_s", requests / self.rows_per_token) if self.rows_per_token else ("requests_per_s", requests)
        return {
            "steps": int(self.requests.size),
            "requests": requests,
            "lookups": int(self.unique.sum()),
            "seconds": seconds,
            "compute_seconds": float(self.compute_s.sum()),
            "stall_seconds": stall,
            "stall_fraction": stall / seconds if seconds > 0 else 0.0,
            rate[0]: rate[1] / seconds if seconds > 0 else float("inf"),
            "tiers": self.tier_stats(),
            **({"deadline": self.deadline_summary()} if self.dropped is not None else {}),
            "config": self.config,
        }

    def first_steps(self, n: int) -> dict[str, Any]:
        """The cold-start figure of the first ``n`` steps (all, if fewer): each tier's share of their
        lookups (tier 0's is its hit rate), their stall and stall fraction."""
        if int(n) != n or n < 1:
            raise EngramTierError(f"simulate: the cold-start window must be a positive number of steps, got {n}")
        n = min(int(n), self.requests.size)
        lookups = int(self.unique[:n].sum())
        seconds, stall = float(self.step_s[:n].sum()), float(self.stall_s[:n].sum())
        return {
            "steps": n,
            "lookups": lookups,
            "served_share": {t["name"]: int(s) / max(lookups, 1)
                             for t, s in zip(self.tier_totals, self.served[:, :n].sum(axis=1), strict=True)},
            "stall_seconds": stall,
            "stall_fraction": stall / seconds if seconds > 0 else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        """`summary` plus every per-step array as lists (per-tier arrays keyed by tier name)."""
        names = [t["name"] for t in self.tier_totals]
        return {
            **self.summary(),
            "per_step": {
                "requests": self.requests.tolist(),
                "unique": self.unique.tolist(),
                "window_s": self.window_s.tolist(),
                "compute_s": self.compute_s.tolist(),
                "fetch_s": self.step_fetch_s.tolist(),
                "stall_s": self.stall_s.tolist(),
                "step_s": self.step_s.tolist(),
                "served": dict(zip(names, self.served.tolist(), strict=True)),
                "tier_fetch_s": dict(zip(names, self.fetch_s.tolist(), strict=True)),
                **({"dropped": dict(zip(names, self.dropped.tolist(), strict=True))} if self.dropped is not None else {}),
            },
        }


def simulate(trace: RowTrace | TraceReader, hierarchy: Hierarchy, *, compute_window_s, step_compute_s=None,
             overlap: str = "parallel", progress: bool = True, chunk_requests: int = 1 << 20) -> SimResult:
    """Replay ``trace`` (in memory, or a trace file streamed chunk by chunk) through ``hierarchy``;
    ``compute_window_s`` (seconds, a float or one per step) hides the prefetch, ``step_compute_s``
    (default: the window) is the step's compute time."""
    if isinstance(trace, RowTrace):
        trace.validate()
    elif trace.n_rows == 0:
        raise EngramTierError(f"simulate: {trace.path} holds no request; build it from non-empty text")
    if overlap not in OVERLAPS:
        raise EngramTierError(f"simulate: unknown overlap '{overlap}'; choose one of {', '.join(OVERLAPS)}")
    if int(chunk_requests) != chunk_requests or chunk_requests < 1:
        raise EngramTierError(f"simulate: chunk_requests must be a positive whole number, got {chunk_requests}")
    n_steps, row_bytes = trace.n_steps, trace.row_bytes
    window = _per_step(compute_window_s, n_steps, "compute_window_s")
    compute = window if step_compute_s is None else _per_step(step_compute_s, n_steps, "step_compute_s")
    longer = np.flatnonzero(window > compute)
    if longer.size:
        i = int(longer[0])
        raise EngramTierError(f"simulate: step {i}'s compute window ({float(window[i]):.4g} s) exceeds its compute "
                              f"({float(compute[i]):.4g} s): the window is the part of a step's compute before the "
                              "Engram layer; give a window no longer than the compute")
    rows_per_token = _rows_per_token(trace.meta)
    capacities = hierarchy.capacities(trace.n_table_rows, row_bytes)
    warm = warm_rows(hierarchy, capacities, trace.n_table_rows)
    n_keys, load_row_ids = trace.n_distinct, trace.row_ids
    if any(rows is not None for rows in warm):
        warm, outside = _warm_keys(trace.row_ids(), warm)
        n_keys += outside.size

        def load_row_ids() -> np.ndarray:
            return np.concatenate([trace.row_ids(), outside])
    ctx = PolicyContext(n_keys=n_keys, n_table_rows=trace.n_table_rows,
                        layout=SubtableLayout.from_meta(trace.meta, trace.n_table_rows, "simulate"),
                        load_trace=lambda: (trace.dense_keys(), trace.step_starts), load_row_ids=load_row_ids)
    engine = Engine(hierarchy.build_policies(ctx, row_bytes), hierarchy.mode, n_keys,
                    hierarchy.build_admissions(ctx, row_bytes))
    held = engine.warm(warm)

    requests = np.diff(trace.step_starts)
    unique = np.empty(n_steps, np.int64)
    served = np.empty((len(hierarchy.tiers), n_steps), np.int64)
    with tqdm(total=n_steps, unit="step", disable=not progress, desc="simulate") as bar:
        lookups = _lookup_chunks(trace, n_keys, int(chunk_requests))
        if len(engine.policies) >= 2 and (os.cpu_count() or 1) >= 2:
            _feed_on_two_threads(engine, lookups, unique, served, bar)
        else:
            for first, keys, ts, step_unique in lookups:
                steps = slice(first, first + step_unique.size - 1)
                unique[steps] = np.diff(step_unique)
                served[:, steps] = engine.feed(keys, ts, step_unique)
                bar.update(step_unique.size - 1)

    fetch, step_fetch, stall = _charge(hierarchy, served, row_bytes, window, overlap)
    dropped = waiting_stall = None
    if hierarchy.lossy:
        dropped = late_rows(hierarchy, served, row_bytes, window, overlap)
        waiting_stall = stall
        fetch, step_fetch, stall = _charge(hierarchy, served - dropped, row_bytes, window, overlap)
    facts = [{"name": tier.name, "policy": tier.policy, "capacity_rows": rows, "model": tier.model.name,
              "warm_rows": warm_held} for tier, rows, warm_held in zip(hierarchy.tiers, [*capacities, trace.n_table_rows],
                                                                        [*held, 0], strict=True)]
    tier_totals = [{**f, **counts} for f, counts in zip(facts, engine.tier_counts(), strict=True)]
    config = {
        "hierarchy": hierarchy.to_dict(),
        "overlap": overlap,
        "n_table_rows": trace.n_table_rows,
        "row_bytes": row_bytes,
        "trace_meta": _json_ready(trace.meta),
    }
    return SimResult(config, tier_totals, requests, unique, served, fetch, window, compute, step_fetch,
                     stall, compute + stall, rows_per_token, dropped, waiting_stall)


def _charge(hierarchy: Hierarchy, fetched: np.ndarray, row_bytes: int, window: np.ndarray, overlap: str):
    """Per tier and step the fetch seconds of the rows ``fetched`` ``[tiers, steps]``, each step's
    fetch (the slowest tier, or their sum) and its stall beyond the window."""
    fetch = np.stack([tier.model.fetch_seconds(fetched[i], row_bytes) for i, tier in enumerate(hierarchy.tiers)])
    step_fetch = fetch.max(axis=0) if overlap == "parallel" else fetch.sum(axis=0)
    return fetch, step_fetch, np.maximum(step_fetch - window, 0.0)


def _warm_keys(row_ids: np.ndarray, warm: list[np.ndarray | None]) -> tuple[list[np.ndarray | None], np.ndarray]:
    """The warm rows (global ids, `warm_rows`) as this simulation's keys: a row the trace requests is
    its dense key, one it never requests the key ``row_ids.size + j`` (``j``: its rank among those
    rows, returned sorted), so that it fills its place in the cache as it does in the runtime."""
    listed = [rows for rows in warm if rows is not None]
    outside = np.setdiff1d(np.concatenate(listed), row_ids)
    sorter = np.argsort(row_ids, kind="stable")
    keys: list[np.ndarray | None] = []
    for rows in warm:
        if rows is None:
            keys.append(None)
            continue
        at = sorter[np.searchsorted(row_ids, rows, sorter=sorter).clip(max=row_ids.size - 1)]
        keys.append(np.where(row_ids[at] == rows, at, row_ids.size + np.searchsorted(outside, rows)))
    return keys, outside


def _lookup_chunks(trace: RowTrace | TraceReader, n_keys: int, chunk_requests: int):
    """(first step, lookups, their positions, each step's first lookup) per run of whole steps of at
    most about ``chunk_requests`` requests; the arrays are reused by the next run."""
    stamp = np.full(n_keys, -1, np.int64)
    buffers = _StepBuffers()
    lookups_before = 0
    for chunk in _read_ahead(trace_chunks(trace, dense=True)):
        starts = chunk.step_starts
        bounds = _chunk_bounds(starts, chunk_requests)
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            lo, hi = int(starts[a]), int(starts[b])
            keys_buf, ts_buf, step_unique = buffers.reserve(hi - lo, b - a + 1)
            n = unique_per_step(chunk.rows[lo:hi], starts[a : b + 1] - lo, chunk.first_row + lo, stamp,
                                lookups_before, keys_buf, ts_buf, step_unique)
            lookups_before += n
            yield chunk.first_step + a, keys_buf[:n], ts_buf[:n], step_unique


def _read_ahead(chunks):
    """The items of ``chunks``, each next one already being produced on a worker thread while the
    caller works on the current one: decompressing and decoding a trace chunk releases the GIL, so
    reading the file overlaps tier 0 instead of preceding it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def _feed_on_two_threads(engine: Engine, lookups, unique: np.ndarray, served: np.ndarray, bar) -> None:
    """Tier 0 (with decoding and de-duplication) on this thread, the tiers below on another, one run of
    steps behind: the compiled drivers release the GIL, and tier 1 sees only what tier 0 passed down,
    so the results are those of `Engine.feed` while decoding and tier 0 overlap the tiers below."""
    upper, lower = engine.split(1)

    def feed_lower(first: int, events: np.ndarray, ts: np.ndarray, starts: np.ndarray) -> None:
        served[1:, first : first + starts.size - 1] = lower.feed(events, ts, starts)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for first, keys, ts, step_unique in lookups:
            n = step_unique.size - 1
            unique[first : first + n] = np.diff(step_unique)
            served[0, first : first + n] = upper.feed(keys, ts, step_unique)[0]
            down = upper.streams[-1]  # copied: the next feed of the upper tier reuses its buffers
            events, down_ts, down_starts = down.events.copy(), down.ts.copy(), down.step_starts.copy()
            if pending is not None:
                pending.result()
            pending = pool.submit(feed_lower, first, events, down_ts, down_starts)
            bar.update(n)
        if pending is not None:
            pending.result()
    engine.store_lookups += lower.store_lookups


class _StepBuffers:
    """The lookup buffers of a chunk of steps, grown to the largest chunk seen and reused."""

    def __init__(self):
        self.keys = self.ts = self.step_starts = np.empty(0, np.int64)

    def reserve(self, n_requests: int, n_starts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.keys.size < n_requests:
            self.keys, self.ts = np.empty(n_requests, np.int64), np.empty(n_requests, np.int64)
        if self.step_starts.size < n_starts:
            self.step_starts = np.empty(n_starts, np.int64)
        return self.keys, self.ts, self.step_starts[:n_starts]


def _per_step(value, n_steps: int, what: str) -> np.ndarray:
    """A float or one value per step as a float64 array of ``n_steps`` finite seconds >= 0."""
    seconds = np.asarray(value, dtype=np.float64)
    if seconds.ndim == 0:
        seconds = np.full(n_steps, float(seconds))
    if seconds.shape != (n_steps,):
        raise EngramTierError(
            f"simulate: {what} must be one number or one per step ({n_steps}), got shape {seconds.shape}"
        )
    if not np.all(np.isfinite(seconds)) or np.any(seconds < 0):
        raise EngramTierError(f"simulate: {what} must hold finite seconds >= 0")
    return seconds


def _rows_per_token(meta: dict[str, Any]) -> float | None:
    value = meta.get("rows_per_token")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise EngramTierError(f"simulate: trace meta rows_per_token must be a positive number, got {value!r}")
    return float(value)


def _chunk_bounds(step_starts: np.ndarray, chunk_requests: int) -> np.ndarray:
    """Step indices cutting the trace into runs of whole steps of at most ``chunk_requests`` requests
    (a single longer step makes a chunk of its own)."""
    n_steps = step_starts.size - 1
    bounds = [0]
    while bounds[-1] < n_steps:
        a = bounds[-1]
        b = int(np.searchsorted(step_starts, step_starts[a] + chunk_requests, side="right")) - 1
        bounds.append(min(max(b, a + 1), n_steps))
    return np.asarray(bounds, np.int64)


def _json_ready(obj: Any) -> Any:
    """``obj`` with numpy values turned into lists and numbers, anything else unknown into text."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
