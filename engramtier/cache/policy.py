"""The one policy interface shared by the simulator (cache/) and the runtime (tiers/).

A policy decides which rows one tier keeps. Rows are dense integer keys ``0 <= key < n_keys`` (global
row ids of an Engram table), so policies index plain arrays instead of hash tables. Every built-in
policy is a numba ``jitclass`` with these methods, which the drivers below call in compiled loops:

    lookup(key, t) -> bool    a request for ``key`` at trace position ``t``; on a hit the policy
                              updates its state (recency, frequency...) and returns True; on a miss it
                              returns False and changes nothing the caller can observe
    admit(key, t) -> int      after a miss: insert ``key``; returns the evicted key, -1 when nothing
                              was evicted, or ``key`` itself when the policy declines to keep it
                              (admission filters, bypass)
    remove(key) -> bool       drop ``key`` if present (an exclusive hierarchy promotes a row out of a
                              lower tier); True if it was present
    contains(key) -> bool     membership without any state change
    occupancy() -> int        rows held now

``t`` is the position in the full trace; offline policies (Belady, lookahead) use it to find the
next use of a key. A user policy is any plain Python class with the same five methods: the drivers
run their own Python source (``driver.py_func``) for it, slower but with identical semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numba import njit

from engramtier.errors import EngramTierError


@dataclass
class PolicyContext:
    """What a policy may know about the workload when it is built.

    ``keys`` is the full request trace (needed only by offline policies), ``step_starts`` the
    index of each step's first request plus the total (len = steps + 1), and ``profile`` a per-key
    access count used by static placement. Derived arrays are computed once and cached here so that
    sweeping many sizes does not recompute them.
    """

    n_keys: int
    keys: np.ndarray | None = None
    step_starts: np.ndarray | None = None
    profile: np.ndarray | None = None
    _derived: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def derived(self, name: str, compute: Callable[["PolicyContext"], np.ndarray]) -> np.ndarray:
        if name not in self._derived:
            self._derived[name] = compute(self)
        return self._derived[name]

    def require_keys(self, policy: str) -> np.ndarray:
        if self.keys is None:
            raise EngramTierError(
                f"policy '{policy}' is offline and needs the whole trace: build it through the "
                "simulator (or pass PolicyContext(keys=...))"
            )
        return self.keys


PolicyBuilder = Callable[..., Any]
_REGISTRY: dict[str, PolicyBuilder] = {}


def register(name: str) -> Callable[[PolicyBuilder], PolicyBuilder]:
    """Register ``builder(capacity, ctx, **params) -> policy`` under ``name``."""

    def wrap(builder: PolicyBuilder) -> PolicyBuilder:
        if name in _REGISTRY:
            raise ValueError(f"policy '{name}' registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def policy_names() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def make_policy(name: str, capacity: int, ctx: PolicyContext, **params: Any) -> Any:
    """Build the policy called ``name`` holding at most ``capacity`` rows."""
    _load_builtins()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EngramTierError(
            f"unknown policy '{name}': {hint}choose one of {', '.join(sorted(_REGISTRY))}"
        )
    if int(capacity) != capacity or capacity <= 0:
        raise EngramTierError(f"policy '{name}': capacity must be a positive number of rows, got {capacity}")
    if capacity > ctx.n_keys:
        raise EngramTierError(
            f"policy '{name}': capacity {capacity} rows exceeds the table's {ctx.n_keys} rows; "
            "make the tier smaller or leave it out (the last tier holds every row)"
        )
    return _REGISTRY[name](int(capacity), ctx, **params)


def is_compiled(policy: Any) -> bool:
    """True for numba jitclass instances (compiled drivers), False for plain Python policies."""
    return type(policy).__module__.startswith("numba.")


def _load_builtins() -> None:
    # Importing the package registers every built-in policy module.
    import engramtier.cache.policies  # noqa: F401


# Not cached on disk: numba cannot cache functions specialised on jitclass types.
@njit(nogil=True)
def _replay(policy, keys, hits):
    n_hits = 0
    for t in range(keys.size):
        k = keys[t]
        if policy.lookup(k, t):
            hits[t] = True
            n_hits += 1
        else:
            hits[t] = False
            policy.admit(k, t)
    return n_hits


def replay(policy: Any, keys: np.ndarray, hits: np.ndarray | None = None) -> int:
    """Run a single-tier cache over ``keys``; fills ``hits`` (bool per request) and returns the hit count."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    if hits is None:
        hits = np.empty(keys.size, dtype=np.bool_)
    driver = _replay if is_compiled(policy) else _replay.py_func
    return int(driver(policy, keys, hits))
