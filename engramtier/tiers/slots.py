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

from engramtier.cache import keymap
from engramtier.cache.diskcache import kernel
from engramtier.errors import EngramTierError
from engramtier.tiers.slab import SlabTier


@njit(inline="always")
def _take(index, id_of, row, s, mark, step, touched, before, n):
    """Row ``row`` takes slot ``s`` (free, or freed just now), listing the slot as touched; the new
    touched count."""
    if mark[s] != step:
        mark[s] = step
        touched[n] = s
        before[n] = id_of[s]
        n += 1
    id_of[s] = row
    keymap.insert(index, id_of, row, s)
    return n


@njit(inline="always")
def _vacate(index, id_of, row, mark, step, touched, before, n):
    """Free ``row``'s slot, listing it as touched; returns (the slot, the new touched count), or
    (-1, n) if ``row`` holds no slot (the map contradicts the policy)."""
    s = keymap.find(index, id_of, row)
    if s < 0:
        return -1, n
    if mark[s] != step:
        mark[s] = step
        touched[n] = s
        before[n] = id_of[s]
        n += 1
    keymap.delete(index, id_of, row)
    id_of[s] = -1
    return s, n


@kernel()
def plan_slots(events, hit, victim, exclusive_lower, index, id_of, free, n_free, mark, step, touched, before,
               after, arrive_slots, arrive_rows, leaving, counts):
    """Replay one cache tier's events of a step (an `Engine` stream) on its slot map (``index`` over
    ``id_of``, see `engramtier.tiers.slab`).

    A lookup the tier missed and admitted (``victim`` = what ``admit`` returned: -1, a victim, or the
    row itself when declined) takes the victim's slot or pops a free one; for an exclusive lower tier
    (``exclusive_lower``) a lookup hit frees the row's slot (the row moves up) and a DEMOTE event
    (-1 - row) is admitted the same way; a hit that evicted (``victim`` >= 0 on a hit, see
    `hit_victim`) frees the evicted row's slot. The free slots are ``free[:n_free[0]]``, a stack of
    slots freed, then the slots from ``n_free[1]`` on, never used yet; both are updated to the step's
    end. Each slot touched is listed once in ``touched`` with its row ``before`` and ``after`` the step
    (``mark[slot] == step`` once listed; ``step`` > 0); the map is left as it was, because the rows move
    only after the step's gather.

    The plan comes out as ``counts`` = [arrivals, leaving rows]: ``arrive_rows[i]`` takes slot
    ``arrive_slots[i]``, and ``leaving`` rows give up their slots (gone, or moved to another slot), what
    `engramtier.tiers.slab.remap` applies. Returns the index of the first event the map contradicts (a
    policy admitting into a full tier, a victim not held), or -1.
    """
    n = 0
    bad = -1
    for j in range(events.size):
        e = events[j]
        if e >= 0 and exclusive_lower:
            if hit[j]:
                s, n = _vacate(index, id_of, e, mark, step, touched, before, n)
                if s < 0:
                    bad = j
                    break
                free[n_free[0]] = s
                n_free[0] += 1
            continue
        if e >= 0:
            if hit[j]:
                if victim[j] >= 0:  # the hit evicted a row (see `hit_victim`): free its slot
                    s, n = _vacate(index, id_of, victim[j], mark, step, touched, before, n)
                    if s < 0:
                        bad = j
                        break
                    free[n_free[0]] = s
                    n_free[0] += 1
                continue
            k = e
        else:
            k = -1 - e
        v = victim[j]
        if v == k:
            continue
        if v < 0:
            if n_free[0] > 0:
                n_free[0] -= 1
                s = free[n_free[0]]
            elif n_free[1] < free.size:
                s = n_free[1]
                n_free[1] += 1
            else:
                bad = j
                break
        else:
            s, n = _vacate(index, id_of, v, mark, step, touched, before, n)
            if s < 0:
                bad = j
                break
        n = _take(index, id_of, k, s, mark, step, touched, before, n)
    n_arrive = n_leave = 0
    for i in range(n):
        a, b = id_of[touched[i]], before[i]
        after[i] = a
        if a >= 0 and a != b:
            arrive_slots[n_arrive] = touched[i]
            arrive_rows[n_arrive] = a
            n_arrive += 1
        if b >= 0 and b != a:
            leaving[n_leave] = b
            n_leave += 1
    for i in range(n):  # undo: forget the latest occupants, then restore those at the start
        if after[i] >= 0:
            keymap.delete(index, id_of, after[i])
    for i in range(n):
        id_of[touched[i]] = before[i]
        if before[i] >= 0:
            keymap.insert(index, id_of, before[i], touched[i])
    counts[0], counts[1] = n_arrive, n_leave
    return bad


class SlotPlan:
    """The runtime's bookkeeping for one cache tier: its free slots and the slot changes of a step
    (`arrive_slots`, `arrive_rows` and `leaving`, valid until the next `plan`)."""

    def __init__(self, tier: SlabTier, exclusive_lower: bool) -> None:
        self.tier = tier
        self.exclusive_lower = exclusive_lower
        # Slots are handed out lowest first. Those past the last one held have never been used, so they
        # are a count, not a list: at open the stack holds only the holes below it, and the stack and
        # the marks are memory the kernel maps as slots are first used (np.empty, np.zeros), not at open
        # (at 8M slots, 128 MiB the open would otherwise write).
        held = np.flatnonzero(tier.id_of >= 0)
        used = int(held[-1]) + 1 if held.size else 0
        holes = np.flatnonzero(tier.id_of[:used] < 0)[::-1]  # popped from the end: lowest first
        self.free = np.empty(tier.capacity_rows, np.int64)
        self.free[: holes.size] = holes
        self.n_free = np.array([holes.size, used], np.int64)
        self.mark = np.zeros(tier.capacity_rows, np.int64)  # steps count from 1
        self._capacity = 0
        self._counts = np.zeros(2, np.int64)
        self._reserve(1)
        self.clear()

    def plan(self, stream: Any, step: int, name: str) -> bool:
        """Plan the tier's events of a step (an `Engine` stream); returns whether any slot changes. The
        changes of a step stand until the next call (a tier that nothing reached is not asked: see
        `clear`)."""
        self._reserve(stream.events.size)
        bad = plan_slots(stream.events, stream.hit, stream.victim, self.exclusive_lower, self.tier.index,
                         self.tier.id_of, self.free, self.n_free, self.mark, step + 1, self._touched, self._before,
                         self._after, self._slots, self._rows, self._leaving, self._counts)
        if bad >= 0:
            raise EngramTierError(
                f"tiered table: tier '{name}': its policy's decision at step {step} (event {bad}) contradicts the "
                "tier's slots (a policy admitting beyond its capacity or evicting a row it does not hold); "
                "check the policy against the policy interface"
            )
        n_arrive, n_leave = self._counts.tolist()
        self.arrive_slots, self.arrive_rows, self.leaving = (
            self._slots[:n_arrive], self._rows[:n_arrive], self._leaving[:n_leave])
        return bool(n_arrive or n_leave)

    def _reserve(self, n_events: int) -> None:
        """Room for a step of ``n_events`` events: the buffers grow with the largest step, never shrink."""
        if n_events > self._capacity:
            self._capacity = max(n_events, 2 * self._capacity)
            self._touched, self._before, self._after, self._slots, self._rows, self._leaving = (
                np.empty(self._capacity, np.int64) for _ in range(6))
            self._nothing = (self._slots[:0], self._rows[:0], self._leaving[:0])

    def clear(self) -> None:
        """No slot changes (a step nothing reached this tier in)."""
        self.arrive_slots, self.arrive_rows, self.leaving = self._nothing
