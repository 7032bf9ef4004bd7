"""Partitioned: one tier's capacity split across n-gram orders, each share kept by its own inner policy.

Higher orders draw several times the distinct rows of bigrams (`engramtier stats` shows reuse and
Zipf alpha per order), so in one shared cache their long tail can push out bigram rows that would
have hit again. Partitioning gives every order a fixed number of rows: a key is routed, by its row id's
sub-table (`engramtier.trace.layout`), to its order's sub-policy, which never holds more than its
share. Orders without a share are declined (their rows are served from the tier below).

``shares`` is either a table ``{2 = 0.3, 3 = 0.7}`` (fractions of the capacity, rounded down to rows,
adding up to at most 1; orders left out get none) or ``"profile"``: capacity goes, ``QUANTA`` slices at
a time, to the order whose hit curve gains most per row over its next extension (the best ratio over
every longer extension, so that a plateau followed by a rise is not mistaken for a dead end). The
curves are the exact LRU hits of each order's own request stream (`engramtier.cache.mrc.lru_mrc`) over
the trace in the policy context, or, without one, the hits of a static cache of each order's most
requested rows under the context's profile. They are LRU (or static) curves whatever ``inner`` is: a
proxy for other inner policies.

Speed: this is a plain Python policy around compiled inner policies, so the engine runs its Python
drivers and every operation is a Python call into numba (see ``bench_order_aware.py``: roughly a
microsecond per lookup, where compiled built-ins take tens of nanoseconds). Its hit counts are exact,
and the simulator and the runtime share it through the one engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engramtier.cache.mrc import lru_mrc
from engramtier.cache.policy import PolicyContext, check_policy, make_policy, register
from engramtier.errors import EngramTierError
from engramtier.trace.layout import SubtableLayout

QUANTA = 512  # profile shares are allocated in slices of capacity / QUANTA rows


class Partitioned:
    """Routes each key to the sub-policy of its part (``part_of_key``, -1: no share, declined)."""

    def __init__(self, parts: list[Any], part_of_key: np.ndarray | RowOrders, rows: dict[int, int]):
        self.parts = parts
        self.part_of_key = part_of_key
        self.rows = rows  # order -> rows of its share, reported in `describe`
        self._last = -1  # the part of the last hit, for `hit_victim`

    def lookup(self, key, t):
        p = self.part_of_key[key]
        if p < 0 or not self.parts[p].lookup(key, t):
            return False
        self._last = p
        return True

    def admit(self, key, t):
        p = self.part_of_key[key]
        return key if p < 0 else self.parts[p].admit(key, t)

    def remove(self, key):
        p = self.part_of_key[key]
        return p >= 0 and self.parts[p].remove(key)

    def contains(self, key):
        p = self.part_of_key[key]
        return p >= 0 and self.parts[p].contains(key)

    def occupancy(self):
        return sum(part.occupancy() for part in self.parts)

    def hit_victim(self):
        return -1 if self._last < 0 else self.parts[self._last].hit_victim()

    def part_occupancy(self) -> dict[int, int]:
        """Rows held per order now."""
        return {o: self.parts[i].occupancy() for i, o in enumerate(self.rows)}


class RowOrders:
    """The n-gram order of a table's row ids, through its layout, computed when asked: in the runtime,
    keys are row ids of a table too large to tabulate. Indexed like the table it stands for, by one id
    or an array of them; ``part_of_order`` (order -> part) turns orders into parts."""

    def __init__(self, layout: SubtableLayout, part_of_order: np.ndarray | None = None) -> None:
        self.layout, self.part_of_order = layout, part_of_order
        self.size = layout.n_rows

    def __getitem__(self, keys: Any) -> Any:
        orders = self.layout.order_of(np.atleast_1d(np.asarray(keys, np.int64)))
        found = orders if self.part_of_order is None else self.part_of_order[orders]
        return found if np.ndim(keys) else int(found[0])


def order_of_keys(ctx: PolicyContext) -> np.ndarray | RowOrders:
    """The n-gram order of every key (int8), through the context's layout; computed when asked where
    keys are a table's row ids (``ctx.hashed``)."""
    if ctx.layout is None:
        raise EngramTierError(
            "policy 'partitioned': needs the table's sub-table layout to tell orders apart; use a trace built "
            "from tokens (its meta records the layout) or pass PolicyContext(layout=...)"
        )
    row_ids = ctx.global_ids()
    if row_ids is None and ctx.hashed:
        return RowOrders(ctx.layout)
    keys = np.arange(ctx.n_keys, dtype=np.int64) if row_ids is None else row_ids
    return ctx.layout.order_of(keys)


def fixed_rows(shares: dict, capacity: int, orders: range) -> dict[int, int]:
    """Rows per order from fractions of ``capacity``, refused unless they name known orders and add up
    to at most 1."""
    out = {}
    for key, share in shares.items():
        try:
            order = int(key)
        except (TypeError, ValueError):
            order = None
        if order not in orders:
            raise EngramTierError(
                f"policy 'partitioned': shares name order {key!r}, but the table has orders "
                f"{', '.join(map(str, orders))}"
            )
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise EngramTierError(f"policy 'partitioned': the share of order {order} must lie in [0, 1], got {share!r}")
        out[order] = share
    if sum(out.values()) > 1 + 1e-9:
        raise EngramTierError(f"policy 'partitioned': shares add up to {sum(out.values()):g}, more than the whole capacity (1)")
    starved = [o for o, share in out.items() if share > 0 and int(share * capacity) == 0]
    if starved:
        raise EngramTierError(f"policy 'partitioned': order {starved[0]}'s share {out[starved[0]]:g} of {capacity} rows "
                              "rounds to 0 rows; give it a larger share or the tier more rows")
    return {o: int(out[o] * capacity) for o in sorted(out)}


def order_hit_curves(ctx: PolicyContext, order_of_key: np.ndarray, orders: range) -> dict[int, np.ndarray]:
    """Per order, hits at 0, 1, 2, ... rows (up to its distinct rows): exact LRU over the context's trace,
    else a static cache of its most requested rows under the profile."""

    keys = ctx.trace_keys()
    curves = {}
    for o in orders:
        if keys is not None:
            stream = keys[order_of_key[keys] == o]
            hits = lru_mrc(stream).hits if stream.size else np.empty(0, np.int64)
        elif ctx.profile is not None:
            counts = np.asarray(ctx.profile, np.float64)[: order_of_key.size]
            counts = counts[order_of_key[np.arange(counts.size)] == o]
            hits = np.cumsum(np.sort(counts[counts > 0])[::-1])
        else:
            raise EngramTierError(
                "policy 'partitioned': shares = \"profile\" needs the trace (simulate or sweep a trace file) or a "
                "frequency profile (PolicyContext(profile=...)); or give fixed shares such as {2 = 0.3, 3 = 0.7}"
            )
        curves[o] = np.concatenate([[0], hits]).astype(np.float64)
    return curves


def profile_rows(curves: dict[int, np.ndarray], capacity: int) -> dict[int, int]:
    """Greedy allocation of ``capacity`` rows in slices, each to the order gaining most hits per row."""
    quantum = max(1, capacity // QUANTA)
    rows = {o: 0 for o in curves}

    def hits(o: int, size: np.ndarray | int) -> np.ndarray:
        curve = curves[o]
        return curve[np.minimum(size, curve.size - 1)]

    left = capacity
    while left >= quantum:
        best, best_rate, best_take = None, 0.0, 0
        for o in curves:
            takes = np.arange(quantum, left + 1, quantum)
            gains = (hits(o, rows[o] + takes) - hits(o, rows[o])) / takes
            j = int(np.argmax(gains))
            if gains[j] > best_rate:
                best, best_rate, best_take = o, float(gains[j]), int(takes[j])
        if best is None:  # no order gains from more rows: every distinct row fits already
            break
        rows[best] += best_take
        left -= best_take
    if left and rows:  # the remainder of the slicing goes to the order that gained most
        rows[max(rows, key=rows.get)] += left
    return rows


@register("partitioned")
def build(capacity: int, ctx: PolicyContext, inner: str = "lru", shares: Any = "profile") -> Partitioned:
    if not isinstance(inner, str):
        raise EngramTierError(f"policy 'partitioned': inner must name a policy, got {inner!r}")
    if inner == "partitioned":
        raise EngramTierError("policy 'partitioned': inner must be another policy, not 'partitioned'")
    try:
        check_policy(inner)
    except EngramTierError as err:
        raise EngramTierError(f"policy 'partitioned': inner: {err}") from None
    order_of_key = ctx.derived("order_of_key", order_of_keys)
    orders = ctx.layout.orders
    if shares == "profile":
        curves = ctx.derived("order_hit_curves", lambda c: order_hit_curves(c, order_of_key, orders))
        rows = profile_rows(curves, capacity)
    elif isinstance(shares, dict):
        rows = fixed_rows(shares, capacity, orders)
    else:
        raise EngramTierError(
            f"policy 'partitioned': shares must be \"profile\" or a table of fractions per order such as "
            f"{{2 = 0.3, 3 = 0.7}}, got {shares!r}"
        )
    rows = {o: r for o, r in rows.items() if r > 0}
    if not rows:
        raise EngramTierError(f"policy 'partitioned': no order gets a row of the tier's {capacity}; give the tier more "
                              "rows or larger shares")
    part_of_order = np.full(max(orders) + 1, -1, np.int8)
    parts = []
    for i, (o, r) in enumerate(rows.items()):
        try:
            parts.append(make_policy(inner, r, ctx))
        except EngramTierError as err:
            raise EngramTierError(f"policy 'partitioned': order {o}'s share of {r} rows: {err}") from None
        part_of_order[o] = i
    if isinstance(order_of_key, RowOrders):
        return Partitioned(parts, RowOrders(ctx.layout, part_of_order), rows)
    return Partitioned(parts, part_of_order[order_of_key], rows)
