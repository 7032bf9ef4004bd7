"""Replay a row trace through a tier hierarchy step by step and charge each step its fetch time.

Per step (one forward pass): the step's unique rows are looked up through the hierarchy (see
`engramtier.cache.engine`); each tier serves its hits, which cost what the tier's `TierModel` says
(the top tier's hits included: an HBM gather is not free). Tiers are independent devices, so with
``overlap="parallel"`` the step waits for the slowest tier; ``"serial"`` adds them up. The Engram
layer's rows are known before the forward pass starts, so the fetch overlaps the compute that precedes
the layer (``compute_window_s``); only what exceeds it stalls the step:

    stall = max(0, fetch - window)      step seconds = step compute + stall

Writes of promoted and demoted rows into other tiers are counted but not charged: they are off the
critical path (the row is already on its way to the GPU). Steps go through the compiled drivers in
chunks of about ``chunk_requests`` requests, so Python runs once per chunk, not per row or step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from engramtier.cache.engine import COUNTERS, Engine, unique_per_step
from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.policy import PolicyContext
from engramtier.errors import EngramTierError
from engramtier.trace.rowtrace import RowTrace

OVERLAPS = ("parallel", "serial")


@dataclass
class SimResult:
    """Per-step arrays (``served`` and ``fetch_s`` are ``[tiers, steps]``, the store last) and per-tier
    totals of one run; `summary` and `to_dict` are JSON-ready."""

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

    def tier_stats(self) -> list[dict[str, Any]]:
        """Per tier: lookups, hits, hit rate (of the lookups that reached it), share of all lookups it
        served, bytes read, rows promoted (admitted from below), demoted (admitted from above), evicted
        and declined."""
        row_bytes = self.config["row_bytes"]
        total = max(int(self.unique.sum()), 1)
        return [
            {**t, "hit_rate": t["hits"] / t["lookups"] if t["lookups"] else 0.0, "served_share": t["hits"] / total,
             "bytes_read": t["hits"] * row_bytes}
            for t in self.tier_totals
        ]

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
            "config": self.config,
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
                "served": dict(zip(names, self.served.tolist())),
                "tier_fetch_s": dict(zip(names, self.fetch_s.tolist())),
            },
        }


def simulate(trace: RowTrace, hierarchy: Hierarchy, *, compute_window_s, step_compute_s=None,
             overlap: str = "parallel", progress: bool = True, chunk_requests: int = 1 << 20) -> SimResult:
    """Replay ``trace`` through ``hierarchy``; ``compute_window_s`` (seconds, a float or one per step)
    hides the prefetch, ``step_compute_s`` (default: the window) is the step's compute time."""
    trace.validate()
    if overlap not in OVERLAPS:
        raise EngramTierError(f"simulate: unknown overlap '{overlap}'; choose one of {', '.join(OVERLAPS)}")
    if int(chunk_requests) != chunk_requests or chunk_requests < 1:
        raise EngramTierError(f"simulate: chunk_requests must be a positive whole number, got {chunk_requests}")
    n_steps, row_bytes = trace.n_steps, trace.row_bytes
    window = _per_step(compute_window_s, n_steps, "compute_window_s")
    compute = window if step_compute_s is None else _per_step(step_compute_s, n_steps, "step_compute_s")
    rows_per_token = _rows_per_token(trace.meta)
    capacities = hierarchy.capacities(trace.n_table_rows, row_bytes)
    ctx = PolicyContext(n_keys=trace.n_table_rows, keys=trace.rows, step_starts=trace.step_starts)
    engine = Engine(hierarchy.build_policies(ctx, row_bytes), hierarchy.mode, trace.n_table_rows)

    starts = trace.step_starts
    requests = np.diff(starts)
    unique = np.empty(n_steps, np.int64)
    served = np.empty((len(hierarchy.tiers), n_steps), np.int64)
    bounds = _chunk_bounds(starts, int(chunk_requests))
    longest = int(np.max(starts[bounds[1:]] - starts[bounds[:-1]]))
    keys_buf, ts_buf = np.empty(longest, np.int64), np.empty(longest, np.int64)
    unique_starts = np.empty(int(np.max(np.diff(bounds))) + 1, np.int64)
    stamp = np.full(trace.n_table_rows, -1, np.int64)
    lookups_before = 0
    with tqdm(total=n_steps, unit="step", disable=not progress, desc="simulate") as bar:
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            lo, hi = int(starts[a]), int(starts[b])
            step_unique = unique_starts[: b - a + 1]
            n = unique_per_step(trace.rows[lo:hi], starts[a : b + 1] - lo, lo, stamp, lookups_before,
                                keys_buf, ts_buf, step_unique)
            lookups_before += n
            unique[a:b] = np.diff(step_unique)
            served[:, a:b] = engine.feed(keys_buf[:n], ts_buf[:n], step_unique)
            bar.update(b - a)

    fetch = np.stack([tier.model.fetch_seconds(served[i], row_bytes) for i, tier in enumerate(hierarchy.tiers)])
    step_fetch = fetch.max(axis=0) if overlap == "parallel" else fetch.sum(axis=0)
    stall = np.maximum(step_fetch - window, 0.0)
    tier_totals = [
        {"name": tier.name, "policy": tier.policy, "capacity_rows": rows, "model": tier.model.name,
         **dict(zip(COUNTERS, engine.counters[i].tolist()))}
        for i, (tier, rows) in enumerate(zip(hierarchy.caches, capacities))
    ]
    tier_totals.append({"name": hierarchy.store.name, "policy": None, "capacity_rows": trace.n_table_rows,
                        "model": hierarchy.store.model.name,
                        **dict.fromkeys(COUNTERS, 0), "lookups": engine.store_lookups, "hits": engine.store_lookups})
    config = {
        "hierarchy": hierarchy.to_dict(),
        "overlap": overlap,
        "n_table_rows": trace.n_table_rows,
        "row_bytes": row_bytes,
        "trace_meta": _json_ready(trace.meta),
    }
    return SimResult(config, tier_totals, requests, unique, served, fetch, window, compute, step_fetch,
                     stall, compute + stall, rows_per_token)


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
