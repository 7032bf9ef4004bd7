"""The hierarchy engine: each cache tier is a compiled driver over an ordered stream of events.

The simulator and the runtime feed the same `Engine` with a step (or many steps) of *lookups*: the
step's unique row ids in first-occurrence order (`engramtier.trace.lookups.unique_per_step`), because one forward pass fetches
a row once however often its tokens ask for it. Each lookup carries ``t``, the trace position of its
row's *last* request in the step, which is what offline policies need (see `policies.belady`).

Lookups are resolved one at a time, each to the end, in this order. This sequential model decides;
the runtime may batch a step's data movement, provided it gathers the step's rows before applying
the step's fills and evictions in event order (a later fill of the same step may evict a row that an
earlier lookup hit).

inclusive (fill on miss, no back-invalidation)
    A lookup descends until a tier hits; every cache it missed admits the row on the way (tier ``i``
    admits right after its miss; nothing below depends on it). A victim is just dropped, and a row
    evicted from a lower tier stays in the tiers above: inclusion is not enforced (no
    back-invalidation), which is what a fill-on-miss hierarchy without directory traffic does.
    Tier ``i`` therefore sees exactly the lookups that missed tiers ``< i``, in order.

exclusive (a victim hierarchy)
    A row lives in at most one cache. A lookup that misses tier 0 descends: a hit at tier ``i > 0``
    removes the row there (it moves up), a miss goes on; the store always hits. When the row arrives,
    tier 0 admits it; tier 0's victim (or the row itself, if tier 0 declines it) is demoted to tier 1,
    which admits it and demotes its own victim (or the declined row) to tier 2, and so on; the store
    drops what reaches it (it holds every row already).

Both modes separate tier by tier: tier ``i`` consumes only what tier ``i - 1`` emits, so each driver
runs over its whole input before the next tier starts, specialised by numba to one policy type. A
tier's stream holds two kinds of events, a row id ``k >= 0`` for LOOKUP(k) and ``-1 - v`` for
DEMOTE(v), each with its ``t`` (a demotion carries the ``t`` of the lookup that caused it). Tier 0
emits, for a lookup it misses, LOOKUP(k) *then* DEMOTE(victim): the fill happens when the row
arrives, after the tiers below served it, so tier 1 must remove ``k`` (a hit) before it admits tier 0's
victim, which could otherwise evict ``k`` from under the lookup. Each later tier keeps that order:
per input event it emits at most one event (a missed LOOKUP forwarded, or the DEMOTE of its victim).

Drivers take the policy (or a built-in's bare state tuple), their input events, output buffers and a
counters row, and can be called again on the next chunk: all state lives in the policy. One source
(`make_drivers`) is compiled per built-in policy type with its operations inlined, compiled once over
method calls for other jitclass policies, and run as Python for a plain-Python policy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from numba import njit

from engramtier.cache import admission
from engramtier.cache.diskcache import inlined, kernel
from engramtier.cache.hierarchy import MODES
from engramtier.cache.policy import check_keys, held_among, held_keys, inline_ops, is_compiled, method_remove, remove_keys
from engramtier.cache.prefetch import PREFETCH_AHEAD
from engramtier.cache.references import user_code
from engramtier.errors import EngramTierError

# Per-tier counters, one int64 row per cache tier (see `Engine.counters`): LOOKUP events seen, hits,
# rows admitted from below (promoted) or from above (demoted), victims pushed out (evicted), and
# admissions the policy refused (declined).
COUNTERS = ("lookups", "hits", "promoted", "demoted", "evicted", "declined")
LOOKUPS, HITS, PROMOTED, DEMOTED, EVICTED, DECLINED = range(len(COUNTERS))


@inlined
def count_admission(counters, column, key, victim):
    """Count what ``admit(key)`` returned: declined (``victim == key``), or admitted into ``column``
    (PROMOTED from below, DEMOTED from above) and maybe evicting ``victim``."""
    if victim == key:
        counters[DECLINED] += 1
    else:
        counters[column] += 1
        if victim >= 0:
            counters[EVICTED] += 1


def make_drivers(lookup, admit, remove, hit_victim, prefetch, observe, admits, note_victim):
    """The cache-tier drivers (and the warm-start loop) over a ``target`` that the operations ``lookup(target, key, t)``,
    ``admit(target, key, t)``, ``remove(target, key)``, ``hit_victim(target)`` and ``prefetch(target,
    key)`` act on, and an admission filter ``adm`` that ``observe(adm, key)``, ``admits(adm, key)`` and
    ``note_victim(adm, key)`` act on (`engramtier.cache.admission`), as plain Python functions
    (compile them with `numba.njit`).

    One source serves every kind of policy: a built-in `compiled_policy` passes its `inlined` functions
    and its bare state tuple, so the whole tier is one loop without calls or reference counting that
    also prefetches each key's entry `PREFETCH_AHEAD` events ahead; any other policy passes functions
    that call its methods (`METHOD_OPS`). The filter sees every lookup that reaches the tier and is
    asked before each admission; a row it refuses is declined without reaching the policy.
    """

    def fill_tier(target, adm, events, ts, step_starts, demote, hit, victim, out_events, out_ts, out_starts,
                  hits_per_step, counters):
        """A tier that looks rows up and admits what it misses: every inclusive tier, and exclusive
        tier 0 (``demote``: its victims, or rows it declines, go down as DEMOTE events). ``events``
        are lookups.

        Per input event: ``hit``, and ``victim`` = what ``admit`` returned (the key itself when the
        filter ``adm`` or the policy declined it), or on a hit what the hit evicted (`hit_victim`,
        usually -1; demoted like any victim). Misses are forwarded as LOOKUPs into ``out_*``; returns
        the number of output events.
        """
        n_out = 0
        last = step_starts[step_starts.size - 1]
        for s in range(step_starts.size - 1):
            out_starts[s] = n_out
            n_hits = 0
            for j in range(step_starts[s], step_starts[s + 1]):
                if j + PREFETCH_AHEAD < last:
                    prefetch(target, events[j + PREFETCH_AHEAD])
                k = events[j]
                t = ts[j]
                observe(adm, k)
                if lookup(target, k, t):
                    hit[j] = True
                    n_hits += 1
                    v = hit_victim(target)
                    victim[j] = v
                    if v >= 0:
                        note_victim(adm, v)
                        counters[EVICTED] += 1
                        if demote:
                            out_events[n_out] = -1 - v
                            out_ts[n_out] = t
                            n_out += 1
                    continue
                hit[j] = False
                out_events[n_out] = k
                out_ts[n_out] = t
                n_out += 1
                v = admit(target, k, t) if admits(adm, k) else k
                if v != k:
                    note_victim(adm, v)
                victim[j] = v
                count_admission(counters, PROMOTED, k, v)
                if demote and v >= 0:
                    out_events[n_out] = -1 - v
                    out_ts[n_out] = t
                    n_out += 1
            hits_per_step[s] = n_hits
            counters[HITS] += n_hits
        out_starts[step_starts.size - 1] = n_out
        counters[LOOKUPS] += last - step_starts[0]
        return n_out

    def victim_tier(target, adm, events, ts, step_starts, hit, victim, out_events, out_ts, out_starts,
                    hits_per_step, counters):
        """Exclusive tier ``i > 0``: a LOOKUP hit removes the row (it moves to tier 0), a miss is
        forwarded; a DEMOTE is offered to the filter ``adm`` and admitted, and the victim (or the
        declined row) is demoted further.

        Per input event: ``hit`` (LOOKUPs only) and ``victim`` = what ``admit`` returned for a DEMOTE
        (-1 for a LOOKUP). Returns the number of output events.
        """
        n_out = 0
        last = step_starts[step_starts.size - 1]
        for s in range(step_starts.size - 1):
            out_starts[s] = n_out
            n_hits = 0
            for j in range(step_starts[s], step_starts[s + 1]):
                if j + PREFETCH_AHEAD < last:
                    ahead = events[j + PREFETCH_AHEAD]
                    prefetch(target, ahead if ahead >= 0 else -1 - ahead)
                e = events[j]
                t = ts[j]
                victim[j] = -1
                hit[j] = False
                if e >= 0:
                    counters[LOOKUPS] += 1
                    observe(adm, e)
                    if remove(target, e):
                        note_victim(adm, -1)  # the row moved up: the tier has room
                        hit[j] = True
                        n_hits += 1
                        continue
                    out_events[n_out] = e
                else:
                    k = -1 - e
                    v = admit(target, k, t) if admits(adm, k) else k
                    if v != k:
                        note_victim(adm, v)
                    victim[j] = v
                    count_admission(counters, DEMOTED, k, v)
                    if v < 0:
                        continue
                    out_events[n_out] = -1 - v
                out_ts[n_out] = t
                n_out += 1
            hits_per_step[s] = n_hits
            counters[HITS] += n_hits
        out_starts[step_starts.size - 1] = n_out
        return n_out

    def warm_tier(target, keys):
        """A warm start (`engramtier.cache.warm`): admit ``keys`` in order, each admitted one then looked
        up once, as if it had been requested again; victims of either are dropped (nothing is below yet).
        ``t`` is -1: before the trace (offline policies are refused a warm start). The admission filter is
        bypassed: a profile chose these rows. Returns the rows declined."""
        declined = 0
        for j in range(keys.size):
            k = keys[j]
            if admit(target, k, -1) == k:
                declined += 1
            elif lookup(target, k, -1):
                hit_victim(target)
        return declined

    return fill_tier, victim_tier, warm_tier


def _method_lookup(policy, key, t):
    return policy.lookup(key, t)


def _method_admit(policy, key, t):
    return policy.admit(key, t)


def _method_hit_victim(policy):
    return policy.hit_victim()


def _no_prefetch(policy, key):
    pass


METHOD_OPS = (_method_lookup, _method_admit, method_remove, _method_hit_victim, _no_prefetch)
_PYTHON_DRIVERS = make_drivers(*METHOD_OPS, *admission.OPS)
_DRIVERS: dict[Any, tuple[Any, Any, Any]] = {}  # numba type of a policy -> its compiled (fill, victim, warm)


_ENGRAMTIERS_OWN = nullcontext()  # reusable: made once, as a small step enters it for every tier


def running(policy: Any) -> AbstractContextManager:
    """Where the engine runs ``policy``'s code: a plain-Python policy's is its user's (`user_code`:
    whatever it raises becomes one line naming it); a compiled one's errors are engramtier's own."""
    return _ENGRAMTIERS_OWN if is_compiled(policy) else user_code(f"policy {type(policy).__name__}")


class CheckedPolicy:
    """A plain-Python policy as the Python drivers call it, for keys ``0 <= key < n_keys``.

    What its ``admit`` and ``hit_victim`` return is checked right where it is returned: the tiers below
    (compiled policies) and the runtime's slot maps index arrays by it without bounds checks."""

    __slots__ = ("policy", "n_keys", "lookup", "remove")

    def __init__(self, policy: Any, n_keys: int) -> None:
        self.policy, self.n_keys = policy, n_keys
        self.lookup, self.remove = policy.lookup, policy.remove

    def admit(self, key: int, t: int) -> int:
        victim = self.policy.admit(key, t)
        if self._is_key(victim) and (victim == -1 or victim == key):
            return victim
        return self._held_key(victim, f"admit({key}, t={t})", "-1 (nothing evicted), the key itself (declined) or the "
                              "key it evicted")

    def hit_victim(self) -> int:
        victim = self.policy.hit_victim()
        return victim if self._is_key(victim) and victim == -1 else self._held_key(
            victim, "hit_victim()", "-1 or the key the last hit evicted")

    @staticmethod
    def _is_key(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    def _held_key(self, victim: Any, call: str, allowed: str) -> int:
        """``victim`` if it is a key, else the one-line refusal naming the policy and what it returned."""
        if self._is_key(victim) and 0 <= victim < self.n_keys:
            return victim
        raise EngramTierError(f"policy {type(self.policy).__name__}: {call} returned {victim!r}; it must return "
                              f"{allowed}, a key in [0, {self.n_keys})")


def drivers_for(policy: Any, n_keys: int) -> tuple[Any, Any, Any, Any]:
    """(target, fill driver, victim driver, warm loop) for ``policy`` over keys ``0 <= key < n_keys``: its
    bare state and drivers specialised to it for a `compiled_policy`, the policy with method-calling
    drivers for other jitclasses (compiled), and a `CheckedPolicy` with the same drivers run as Python
    for plain Python policies; compiled drivers are built once per policy type."""
    if not is_compiled(policy):
        return (CheckedPolicy(policy, n_keys), *_PYTHON_DRIVERS)
    ops = inline_ops(policy)
    kind = type(policy) if ops is not None else policy._numba_type_
    if kind not in _DRIVERS:
        if ops is None:
            methods = (njit(inline="always")(f) for f in METHOD_OPS)
            _DRIVERS[kind] = tuple(njit(nogil=True)(d) for d in make_drivers(*methods, *admission.OPS))
        else:
            _DRIVERS[kind] = tuple(kernel(_nrt=False)(d) for d in make_drivers(*ops, *admission.OPS))
    return (policy if ops is None else policy.state, *_DRIVERS[kind])


@njit(nogil=True)
def store_tier(events, step_starts, hits_per_step):
    """The backing store: it serves every LOOKUP that reaches it and drops the DEMOTEs (it holds every
    row already). Returns the lookups served."""
    for s in range(step_starts.size - 1):
        n_hits = 0
        for j in range(step_starts[s], step_starts[s + 1]):
            if events[j] >= 0:
                n_hits += 1
        hits_per_step[s] = n_hits
    return hits_per_step.sum()


def tier_report(tiers: Sequence[Mapping[str, Any]], row_bytes: int) -> list[dict[str, Any]]:
    """The one per-tier report of a hierarchy, the simulator's and the runtime's: each of ``tiers``
    (fastest first, the store last: what its caller knows of it and its `Engine.tier_counts`) with the
    hit rate of the lookups that reached it, its share of all lookups (every lookup reaches the first
    tier) and ``served_bytes``, the bytes of the rows it served (hits x row bytes)."""
    total = max(tiers[0]["lookups"], 1) if tiers else 1
    return [{**t, "hit_rate": t["hits"] / t["lookups"] if t["lookups"] else 0.0, "served_share": t["hits"] / total,
             "served_bytes": t["hits"] * row_bytes} for t in tiers]


@dataclass(slots=True)
class Stream:
    """The events one tier consumed in the last `Engine.feed`: views into reused buffers, valid until
    the next feed. ``hit`` and ``victim`` are the driver's per-event outputs (None for the store)."""

    events: np.ndarray
    ts: np.ndarray
    step_starts: np.ndarray
    hit: np.ndarray | None = None
    victim: np.ndarray | None = None


class Engine:
    """Runs a hierarchy's cache ``policies`` (fastest first; the store below them is implicit) over
    consecutive chunks of steps for a table of ``n_keys`` rows. ``counters[i]`` accumulates tier
    ``i``'s `COUNTERS`; ``streams`` holds each tier's input of the last feed (the store's last), for
    the runtime to turn decisions into copies. ``admissions``: each cache tier's admission filter
    (`engramtier.cache.admission.build`; None, or a None entry: the tier admits every row it misses).

    In exclusive mode a policy that starts with rows (a preloaded hot set) gives up those already
    held by a tier above it, so the hierarchy starts exclusive too."""

    def __init__(self, policies: Sequence[Any], mode: str, n_keys: int,
                 admissions: Sequence[tuple | None] | None = None) -> None:
        if mode not in MODES:
            raise EngramTierError(f"engine: unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        self.policies = list(policies)
        self.mode = mode
        self.n_keys = int(n_keys)
        admissions = [None] * len(self.policies) if admissions is None else list(admissions)
        if len(admissions) != len(self.policies):
            raise EngramTierError(f"engine: {len(admissions)} admission filters for {len(self.policies)} cache tiers")
        self.admissions = [admission.build(None, 1) if a is None else a for a in admissions]
        if mode == "exclusive":
            for i, lower in enumerate(self.policies):
                with running(lower):
                    held = held_keys(lower, n_keys) if lower.occupancy() else None
                for upper in self.policies[:i] if held is not None else ():
                    with running(upper), running(lower):
                        remove_keys(lower, held_among(upper, held))  # rows held above leave the tier below
        self._drivers = [drivers_for(policy, self.n_keys) for policy in self.policies]
        # jitclasses called through their methods (not `compiled_policy` built-ins): their victims are checked per feed
        self._check_victims = [is_compiled(p) and inline_ops(p) is None for p in self.policies]
        self.counters = np.zeros((len(self.policies), len(COUNTERS)), np.int64)
        self.store_lookups = 0
        self.streams: list[Stream] = []
        self.first_tier = 0  # the hierarchy index of policies[0] (see `split`)
        self._plan_runs()
        self._capacity = -1  # events each buffer holds
        self._step_capacity = -1

    def split(self, at: int) -> tuple["Engine", "Engine"]:
        """Two engines over this one's tiers ``[:at]`` and ``[at:]``, sharing its policies and counters.

        Tier ``at`` consumes only what tier ``at - 1`` emits (the upper engine's store stream), so the
        halves can run a chunk each on two threads, the lower one a chunk behind, with the results of
        this engine. The upper engine's ``store_lookups`` counts what it passes down."""
        if not 0 < at < len(self.policies) + 1:
            raise EngramTierError(f"engine: cannot split {len(self.policies)} cache tiers at {at}")
        halves = []
        for first, stop in ((0, at), (at, len(self.policies))):
            half = Engine.__new__(Engine)
            half.policies, half.mode, half.first_tier, half.n_keys = self.policies[first:stop], self.mode, first, self.n_keys
            half.admissions = self.admissions[first:stop]
            half._drivers, half._check_victims = self._drivers[first:stop], self._check_victims[first:stop]
            half.counters, half.store_lookups, half.streams = self.counters[first:stop], 0, []
            half._capacity = half._step_capacity = -1
            half._plan_runs()
            halves.append(half)
        return halves[0], halves[1]

    def feed(self, keys: np.ndarray, ts: np.ndarray, step_starts: np.ndarray, checked: bool = False) -> np.ndarray:
        """Resolve the lookups ``keys`` (int64, unique within each step) at positions ``ts``, cut into
        steps by ``step_starts`` (indices into ``keys``, then ``keys.size``). Returns the rows each
        tier served per step, int64 ``[len(policies) + 1, steps]``, the store last.

        The batch is checked once here (keys in the table, steps inside it); the compiled drivers then
        index by it unchecked. ``checked``: the caller built the batch itself from keys it checked, as
        contiguous int64 arrays (the runtime's step, `engramtier.tiers.step`), and the checks, which
        cost half a small step's engine time, are skipped."""
        if not checked:
            keys, ts, step_starts = self._checked_batch(keys, ts, step_starts)
        n_steps = step_starts.size - 1
        if 2 * keys.size > self._capacity or n_steps >= self._step_capacity:
            self._reserve(2 * keys.size, n_steps + 1)  # an exclusive tier emits at most two events per input
        served = np.empty((len(self.policies) + 1, n_steps), np.int64)
        streams = self.streams = []
        events, ts_in, starts = keys, ts, step_starts
        for i, (policy, driver, leading, flags, counters) in enumerate(self._runs):
            out_events, out_ts, out_starts, hit, victim = self._buffers[i]
            n = events.size
            out_starts = out_starts[: n_steps + 1]
            tier_served = served[i]
            if not n:  # nothing reaches this tier: it serves nothing and passes nothing down
                tier_served[:] = 0
                out_starts[:] = 0
            else:
                with running(policy):
                    n = driver(*leading, events, ts_in, starts, *flags, hit, victim, out_events, out_ts, out_starts,
                               tier_served, counters)
            if self._check_victims[i]:
                self._refuse_bad_victims(i, events, victim[: events.size])
            streams.append(Stream(events, ts_in, starts, hit[: events.size], victim[: events.size]))
            events, ts_in, starts = out_events[:n], out_ts[:n], out_starts
        if events.size:
            self.store_lookups += int(store_tier(events, starts, served[-1]))
        else:
            served[-1] = 0
        streams.append(Stream(events, ts_in, starts))
        return served

    def warm(self, keysets: Sequence[np.ndarray | None]) -> list[int]:
        """Start each cache tier holding its ``keysets`` entry (keys coldest first, None: it stays cold;
        see `engramtier.cache.warm`), through its policy's own admit path; returns the keys each holds
        afterwards. Counters are untouched: a warm start is not a lookup.

        A policy's ``admit`` is for rows it does not hold, so keys a tier holds already (a tier that
        started with rows, or ran lookups before) are left where they are, and a key given twice is
        refused."""
        if len(keysets) != len(self.policies):
            raise EngramTierError(f"engine: {len(keysets)} warm key sets for {len(self.policies)} cache tiers")
        held = []
        for i, (policy, (target, _, _, warm_driver), keys) in enumerate(
                zip(self.policies, self._drivers, keysets, strict=True)):
            with running(policy):
                if keys is not None and keys.size:
                    keys = np.ascontiguousarray(keys, np.int64).reshape(-1)
                    check_keys("engine: warm start", keys, self.n_keys)
                    unique, counts = np.unique(keys, return_counts=True)
                    if counts.max() > 1:
                        raise EngramTierError(f"engine: warm start: key {int(unique[counts.argmax()])} appears "
                                              f"{int(counts.max())} times in cache tier {i}'s keys; give each row once")
                    if policy.occupancy():
                        keys = keys[~np.isin(keys, held_among(policy, keys))]
                    warm_driver(target, keys)
                held.append(int(policy.occupancy()))
        return held

    def tier_counts(self) -> list[dict[str, int]]:
        """Per tier, fastest first and the store last: the `COUNTERS` so far (every store lookup hits)."""
        counts = [dict(zip(COUNTERS, c.tolist(), strict=True)) for c in self.counters]
        return [*counts, {**dict.fromkeys(COUNTERS, 0), "lookups": self.store_lookups, "hits": self.store_lookups}]

    def _checked_batch(self, keys: Any, ts: Any, step_starts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``feed``'s arguments as contiguous int64, refused unless every key lies in the table, ``ts``
        matches ``keys`` and ``step_starts`` rises from 0 to ``keys.size``."""
        keys, ts, step_starts = (np.ascontiguousarray(a, np.int64).reshape(-1) for a in (keys, ts, step_starts))
        # a lower half (`split`) is fed the events the half above passed down: DEMOTE(k) is -1 - k
        check_keys("engine", keys if self.first_tier == 0 else np.where(keys >= 0, keys, -1 - keys), self.n_keys)
        if ts.size != keys.size:
            raise EngramTierError(f"engine: {ts.size} trace positions for {keys.size} lookups; give one per lookup")
        if step_starts.size < 1 or step_starts[0] != 0 or step_starts[-1] != keys.size or np.any(np.diff(step_starts) < 0):
            raise EngramTierError(f"engine: step_starts must rise from 0 to the {keys.size} lookups (each step's "
                                  "first lookup, then the total)")
        return keys, ts, step_starts

    def _refuse_bad_victims(self, tier: int, events: np.ndarray, victims: np.ndarray) -> None:
        """What a policy called through its methods returned (see `CheckedPolicy`), checked for a whole feed before
        the next tier reads it: -1, the event's key, or a key of the table."""
        keys = np.where(events >= 0, events, -1 - events)
        bad = ~((victims == -1) | (victims == keys) | ((victims >= 0) & (victims < self.n_keys)))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise EngramTierError(f"policy {type(self.policies[tier]).__name__}: returned {int(victims[j])} for key "
                                  f"{int(keys[j])}; admit must return -1, the key itself or a key in [0, {self.n_keys}), "
                                  "hit_victim -1 or such a key")

    def _plan_runs(self) -> None:
        """What `feed` calls for each cache tier, worked out once: (its policy, its driver, the driver's
        leading arguments (the policy's operations, its admission), its mode flags, its counters). The
        hierarchy's first tier (and every tier of an inclusive one) is filled by lookups, an exclusive
        lower tier by the victims of the tier above."""
        exclusive = self.mode == "exclusive"
        self._runs = []
        for i, (policy, (target, fill, victim_driver, _), adm) in enumerate(
                zip(self.policies, self._drivers, self.admissions, strict=True)):
            driver, flags = (fill, (exclusive,)) if self.first_tier + i == 0 or not exclusive else (victim_driver, ())
            self._runs.append((policy, driver, (target, adm), flags, self.counters[i]))

    def _reserve(self, n_events: int, n_starts: int) -> None:
        """Grow the per-tier event buffers (never shrink them), so that feeds of similar size reuse them."""
        if n_events <= self._capacity and n_starts <= self._step_capacity:
            return
        self._capacity = max(n_events, self._capacity)
        self._step_capacity = max(n_starts, self._step_capacity)
        c, s = self._capacity, self._step_capacity
        self._buffers = [
            (np.empty(c, np.int64), np.empty(c, np.int64), np.empty(s, np.int64), np.empty(c, np.bool_),
             np.empty(c, np.int64))
            for _ in self.policies
        ]
