"""Slot planning: the runtime's replay of a step's policy decisions on a cache tier's slot map.

The slot map itself (which row sits in which slot) belongs to the tier (`engramtier.tiers.slab`); this
module decides, before any row moves, which slots a step changes: an admitted row takes its victim's
slot or a free one, an exclusive lower tier frees the slot of a row that moves up. The plan is made
first and applied after the step's gather (see `engramtier.tiers.tiered`), because every row must be
read from where it is when the step starts. The kernels are numba (nogil), so planning runs in the
fetch thread without holding the GIL; the free-slot stack and the step's change lists are kept from
step to step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from engramtier.cache.policy import is_compiled
from engramtier.errors import EngramTierError
from engramtier.tiers.slab import SlabTier
from engramtier.tiers.staging import Grow


@njit(inline="always")
def _release(row, slot_of, id_of, free, n_free, mark, step, touched, before, n):
    """Free ``row``'s slot, listing the slot as touched; the new touched count, or -1 if ``row`` holds
    no slot (the map contradicts the policy)."""
    s = slot_of[row]
    if s < 0:
        return -1
    if mark[s] != step:
        mark[s] = step
        touched[n] = s
        before[n] = id_of[s]
        n += 1
    slot_of[row] = -1
    id_of[s] = -1
    free[n_free[0]] = s
    n_free[0] += 1
    return n


@njit(nogil=True, cache=True)
def plan_slots(events, hit, victim, exclusive_lower, slot_of, id_of, free, n_free, mark, step, touched,
               before, after):
    """Replay one cache tier's events of a step (an `Engine` stream) on its slot map.

    A lookup the tier missed and admitted (``victim`` = what ``admit`` returned: -1, a victim, or the
    row itself when declined) takes the victim's slot or pops a free one; for an exclusive lower tier
    (``exclusive_lower``) a lookup hit frees the row's slot (the row moves up) and a DEMOTE event
    (-1 - row) is admitted the same way; a hit that evicted (``victim`` >= 0 on a hit, see
    `hit_victim`) frees the evicted row's slot. ``free[:n_free[0]]`` is the stack of free slots, updated to
    the step's end. Each slot touched is listed once in ``touched`` with its row ``before`` and
    ``after`` the step (``mark[slot] == step`` once listed); ``slot_of``/``id_of`` are left as they
    were, because the rows move only after the step's gather. Returns (slots touched, -1), or the
    index of the first event the map contradicts (a policy admitting into a full tier, a victim not
    held).
    """
    n = 0
    bad = -1
    for j in range(events.size):
        e = events[j]
        if e >= 0 and exclusive_lower:
            if not hit[j]:
                continue
            n = _release(e, slot_of, id_of, free, n_free, mark, step, touched, before, n)
            if n < 0:
                bad = j
                break
            continue
        if e >= 0:
            if hit[j]:
                if victim[j] >= 0:  # the hit evicted a row (see `hit_victim`): free its slot
                    n = _release(victim[j], slot_of, id_of, free, n_free, mark, step, touched, before, n)
                    if n < 0:
                        bad = j
                        break
                continue
            k = e
        else:
            k = -1 - e
        v = victim[j]
        if v == k:
            continue
        if v < 0:
            if n_free[0] == 0:
                bad = j
                break
            n_free[0] -= 1
            s = free[n_free[0]]
        else:
            s = slot_of[v]
            if s < 0:
                bad = j
                break
            slot_of[v] = -1
        if mark[s] != step:
            mark[s] = step
            touched[n] = s
            before[n] = id_of[s]
            n += 1
        id_of[s] = k
        slot_of[k] = s
    for i in range(n):
        after[i] = id_of[touched[i]]
    for i in range(n):  # undo, latest occupants first, then the occupants at the start
        if after[i] >= 0:
            slot_of[after[i]] = -1
    for i in range(n):
        id_of[touched[i]] = before[i]
        if before[i] >= 0:
            slot_of[before[i]] = touched[i]
    return n, bad


@njit(nogil=True)
def _held_keys(policy, n_keys, out):
    n = 0
    for k in range(n_keys):
        if policy.contains(k):
            out[n] = k
            n += 1
    return n


def held_keys(policy: Any, n_keys: int) -> np.ndarray:
    """The rows a policy holds (a static hot set starts full), scanned once when the table opens."""
    out = np.empty(int(policy.occupancy()), np.int64)
    n = (_held_keys if is_compiled(policy) else _held_keys.py_func)(policy, n_keys, out)
    return out[:n]


class SlotPlan:
    """The runtime's bookkeeping for one cache tier: its free slots and the slot changes of a step."""

    def __init__(self, tier: SlabTier, exclusive_lower: bool) -> None:
        self.tier = tier
        self.exclusive_lower = exclusive_lower
        free = np.flatnonzero(tier.id_of < 0)[::-1]  # popped from the end: lowest slot first
        self.free = np.empty(tier.capacity_rows, np.int64)
        self.free[: free.size] = free
        self.n_free = np.array([free.size], np.int64)
        self.mark = np.full(tier.capacity_rows, -1, np.int64)
        self.touched, self.before, self.after = Grow(np.int64), Grow(np.int64), Grow(np.int64)
        self.n = 0

    def plan(self, stream: Any, step: int, name: str) -> None:
        n_events = stream.events.size
        touched, before, after = self.touched.take(n_events), self.before.take(n_events), self.after.take(n_events)
        self.n, bad = plan_slots(stream.events, stream.hit, stream.victim, self.exclusive_lower, self.tier.slot_of,
                                 self.tier.id_of, self.free, self.n_free, self.mark, step, touched, before, after)
        if bad >= 0:
            raise EngramTierError(
                f"tiered table: tier '{name}': its policy's decision at step {step} (event {bad}) contradicts the "
                "tier's slots (a policy admitting beyond its capacity or evicting a row it does not hold); "
                "check the policy against the policy interface"
            )

    def arrivals(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots, rows) that change occupant in the planned step."""
        touched, before, after = self.touched.array[: self.n], self.before.array[: self.n], self.after.array[: self.n]
        arrive = (after >= 0) & (after != before)
        return touched[arrive], after[arrive]

    def leaving(self) -> np.ndarray:
        """Rows that leave their slot in the planned step (gone, or moved to another slot)."""
        before, after = self.before.array[: self.n], self.after.array[: self.n]
        return before[(before >= 0) & (before != after)]
