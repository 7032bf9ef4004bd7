"""Lookahead: Belady over the part of the future a serving system really knows.

Engram row ids depend only on tokens, so while step ``s`` runs, the rows of the next ``W`` steps are
known (their tokens are already scheduled). At a request in step ``s``, a cached key's next use is
*known* if it falls before the end of step ``s + W`` (``W = 0``: only the current step is known) and
*unknown* otherwise. The victim is the key with the farthest known next use, except that every
unknown key ranks farther than every known one, and among unknown keys the least recently used goes
first. A missed key is always admitted (as in `belady` without bypass). Steps are
``ctx.step_starts``; empty steps count as steps. ``t`` follows the contract of `belady`.

One max-heap holds every cached key with priority = its next use when known, and
``2n - (time of its last request)`` when unknown (``n`` = trace length, so any unknown key outranks
any known one and older ones outrank newer ones). As the window slides, the requests entering it are
walked in order: a cached unknown key met there gets that position as its priority, which is its
true next use, because it is the key's first request after the previous window end. Cost: O(log
capacity) per request and per position entering the window.

With ``W`` at least the number of steps this is Belady with ties among never-used-again keys broken
by recency (same hit count as `belady`); with ``W = 0`` and one request per step no next use is ever
known at eviction time, and it is exactly LRU.
"""

import numpy as np
from numba import int32, int64
from numba.experimental import jitclass

from engramtier.cache.nextuse import (
    heap_delete,
    heap_push,
    heap_replace_top,
    heap_set,
    next_request_after,
    next_use,
    occurrences,
    trace_keys,
)
from engramtier.cache.policy import PolicyContext, check_key, register
from engramtier.errors import EngramTierError


@jitclass([
    ("capacity", int64),
    ("size", int64),
    ("window_steps", int64),
    ("n_steps", int64),
    ("step", int64),
    ("window_end", int64),
    ("unknown_base", int64),
    ("n_requests", int64),
    ("keys", int64[:]),
    ("next_use", int64[:]),
    ("starts", int64[:]),
    ("positions", int64[:]),
    ("step_starts", int64[:]),
    ("where", int32[:]),
    ("heap_key", int64[:]),
    ("heap_pri", int64[:]),
])
class Lookahead:
    def __init__(self, capacity, n_keys, keys, next_use, starts, positions, step_starts, window_steps):
        self.capacity = capacity
        self.size = 0
        self.window_steps = window_steps
        self.n_steps = step_starts.size - 1
        self.step = 0
        self.window_end = 0
        self.n_requests = keys.size
        self.unknown_base = 2 * keys.size
        self.keys = keys
        self.next_use = next_use
        self.starts = starts
        self.positions = positions
        self.step_starts = step_starts
        self.where = np.full(n_keys, -1, np.int32)
        self.heap_key = np.empty(min(capacity, n_keys), np.int64)  # a heap holds each key at most once
        self.heap_pri = np.empty(min(capacity, n_keys), np.int64)

    def _slide(self, t):
        """Move the window to the step holding ``t``; give cached keys met in the new part their next use."""
        while self.step + 1 < self.n_steps and self.step_starts[self.step + 1] <= t:
            self.step += 1
        end = self.step_starts[min(self.step + 1 + self.window_steps, self.n_steps)]
        for p in range(self.window_end, end):
            i = self.where[self.keys[p]]
            if i >= 0 and self.heap_pri[i] >= self.n_requests:
                heap_set(self.heap_key, self.heap_pri, self.where, i, p, self.size)
        if end > self.window_end:
            self.window_end = end

    def _priority(self, key, t):
        nxt = next_request_after(key, t, self.keys, self.next_use, self.starts, self.positions)
        return nxt if nxt < self.window_end else self.unknown_base - t

    def lookup(self, key, t):
        check_key("lookahead", self.where.size, key)
        self._slide(t)
        i = self.where[key]
        if i < 0:
            return False
        heap_set(self.heap_key, self.heap_pri, self.where, i, self._priority(key, t), self.size)
        return True

    def admit(self, key, t):
        check_key("lookahead", self.where.size, key)
        self._slide(t)
        pri = self._priority(key, t)
        if self.size < self.capacity:
            heap_push(self.heap_key, self.heap_pri, self.where, self.size, key, pri)
            self.size += 1
            return -1
        return heap_replace_top(self.heap_key, self.heap_pri, self.where, self.size, key, pri)

    def remove(self, key):
        check_key("lookahead", self.where.size, key)
        i = self.where[key]
        if i < 0:
            return False
        heap_delete(self.heap_key, self.heap_pri, self.where, i, self.size)
        self.size -= 1
        return True

    def contains(self, key):
        check_key("lookahead", self.where.size, key)
        return self.where[key] >= 0

    @property
    def n_keys(self):
        return self.where.size

    def occupancy(self):
        return self.size

    def hit_victim(self):
        return -1


def _checked_step_starts(ctx: PolicyContext, n_requests: int) -> np.ndarray:
    if ctx.trace_keys() is None or ctx.step_starts is None:
        raise EngramTierError(
            "policy 'lookahead' needs the trace's step boundaries: build it through the simulator "
            "(or pass PolicyContext(step_starts=...))"
        )
    starts = np.ascontiguousarray(ctx.step_starts, dtype=np.int64)
    rising = starts.ndim == 1 and starts.size >= 2 and not np.any(np.diff(starts) < 0)
    if not rising or starts[0] != 0 or starts[-1] != n_requests:
        raise EngramTierError(
            f"policy 'lookahead': step_starts must rise from 0 to the trace length {n_requests} "
            "(each step's first request, then the total)"
        )
    return starts


@register("lookahead")
def build(capacity: int, ctx: PolicyContext, window_steps: int = 0) -> Lookahead:
    if int(window_steps) != window_steps or window_steps < 0:
        raise EngramTierError(
            f"policy 'lookahead': window_steps must be a whole number of steps >= 0, got {window_steps}"
        )
    keys = trace_keys(ctx, "lookahead")
    step_starts = _checked_step_starts(ctx, keys.size)
    starts, positions = occurrences(ctx, "lookahead")
    window = min(int(window_steps), step_starts.size - 1)  # a window past the last step sees everything
    return Lookahead(
        capacity, ctx.n_keys, keys, next_use(ctx, "lookahead"), starts, positions, step_starts, window
    )
