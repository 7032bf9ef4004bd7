"""The one policy interface shared by the simulator (cache/) and the runtime (tiers/).

A policy decides which rows one tier keeps. Rows are integer keys ``0 <= key < n_keys``: a trace's
dense keys in the simulator, global row ids of an Engram table in the runtime. A built-in keeps what
it knows per key in arrays over its nodes (its capacity plus ghosts) and finds a key's node through a
key map (`engramtier.cache.keymap`): a dense array over the keys where they are few (a trace's), a
hash table sized by its nodes where they are a table's hundreds of millions of rows
(``PolicyContext.hashed``). Every policy offers these methods (a built-in's are compiled functions of
its state, `CompiledPolicy`; the drivers inline them into their loops):

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
    hit_victim() -> int       the row the last hit evicted, or -1: a hit can push a segmented
                              policy over its share (W-TinyLFU's protected segment overflowing into a
                              full probation); every other built-in returns -1

``t`` is the position in the full trace; offline policies (Belady, lookahead) use it to find the
next use of a key. A user policy is any plain Python class with the same six methods: the drivers
run their own Python source (``driver.py_func``) for it, slower but with identical semantics. It is
either registered under a name (`register`) or named where it lives, ``"module:attribute"``
(`check_policy`), so that a TOML file can use a policy no engramtier module imports.

Calling a jitclass method from a compiled loop costs a call plus atomic reference-count updates on
the instance and on every array it touches, several times the work of an LRU update. So the online
built-ins are made by `compiled_policy`: the whole state is a tuple of arrays, the six operations are
functions of that tuple compiled without reference counting (``_nrt=False``), the methods (of a
plain Python class, `CompiledPolicy`) call them, and `replay` and the engine's drivers
(`engine.make_drivers`) call them in one loop over the bare tuple, where LLVM inlines them. A user may
still write a policy as a jitclass: the drivers then call its methods.

Every compiled function a built-in's operations are made of (its own helpers, `_lists`, `nextuse`, the
key map, the admission filters' hooks) is `inlined`: compiled once per signature, kept on disk, and
inlined by LLVM into each loop that calls it, so a loop over a policy runs as if written out in one
piece while compiling it types only the loop. (numba's own ``inline='always'`` re-typed a policy's
whole operation tree inside each of its loops: most of a first run's compile time, for the same
replay speed, `benchmarks/bench_policies.py`.) Cold ones, like LHD's reconfiguration, stay calls.

Compiled code does not bound-check, so a key outside ``[0, n_keys)`` would read and write memory
that is not the policy's. Keys are checked where they cross into it: every method a built-in offers
to Python checks its key (`check_key`), and `replay` and the engine (`check_keys`) check a batch of
keys once before their compiled loops, which then run unchecked.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from numba import njit
from numba.np.numpy_support import as_dtype

from engramtier.cache import keymap
from engramtier.cache.diskcache import inlined, kernel
from engramtier.cache.prefetch import PREFETCH_AHEAD
from engramtier.cache.references import is_reference, refuse_non_policy, resolve_reference, user_code
from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.trace.layout import SubtableLayout


@dataclass
class PolicyContext:
    """What a policy may know about the workload when it is built.

    Keys are ``0 <= key < n_keys``: a table's global row ids, or a trace's dense keys (the rows it
    touches, numbered by first request, `engramtier.trace.rowindex`), so that policy state follows the trace, not a
    table of hundreds of millions of rows. Then ``n_table_rows`` is the table (capacities are checked
    against it; a tier may hold more rows than the trace touches) and ``row_ids[key]`` each key's
    global row id (for policies that hash rows, so that they hash the same as on global ids).

    ``keys`` is the full request trace (needed only by offline policies), ``step_starts`` the
    index of each step's first request plus the total (len = steps + 1), and ``profile`` a per-key
    access count used by static placement. ``layout`` is the table's sub-table layout (which order
    and head each global row id belongs to), for policies that treat n-gram orders apart; a trace built
    from tokens records it in its meta. ``hashed``: keys are a table's global row ids, far more than a
    policy may keep an entry for each (the runtime), so online policies keep hashed key maps sized by
    their nodes (`engramtier.cache.keymap`); offline and static policies, which are handed per-key
    knowledge (the trace, a profile), keep their arrays. A streamed trace passes ``load_trace`` (returning
    ``(keys, step_starts)``) and ``load_row_ids`` instead, so nothing is read whole unless a policy
    asks. Derived arrays are computed once and cached here so that sweeping many sizes does not
    recompute them.
    """

    n_keys: int
    keys: np.ndarray | None = None
    step_starts: np.ndarray | None = None
    profile: np.ndarray | None = None
    n_table_rows: int | None = None
    row_ids: np.ndarray | None = None
    layout: SubtableLayout | None = None
    hashed: bool = False
    load_trace: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    load_row_ids: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _derived: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.n_table_rows is None:
            self.n_table_rows = self.n_keys

    def derived(self, name: str, compute: Callable[["PolicyContext"], np.ndarray]) -> np.ndarray:
        if name not in self._derived:
            self._derived[name] = compute(self)
        return self._derived[name]

    def trace_keys(self) -> np.ndarray | None:
        """The whole request trace, loaded now if it was streamed; None when there is none."""
        if self.keys is None and self.load_trace is not None:
            self.keys, self.step_starts = self.load_trace()
        return self.keys

    def global_ids(self) -> np.ndarray | None:
        """``row_ids`` (loaded now if streamed), or None when keys are global row ids already."""
        if self.row_ids is None and self.load_row_ids is not None:
            self.row_ids = self.load_row_ids()
        return self.row_ids

    def require_keys(self, policy: str) -> np.ndarray:
        if self.trace_keys() is None:
            raise EngramTierError(
                f"policy '{policy}' is offline and needs the whole trace: build it through the "
                "simulator (or pass PolicyContext(keys=...))"
            )
        return self.keys


PolicyBuilder = Callable[..., Any]
_REGISTRY: dict[str, PolicyBuilder] = {}
# "module:attribute" references resolved so far -> their builders; apart from the registry, so that
# the names offered for a typo stay the registered ones.
_REFERENCES: dict[str, PolicyBuilder] = {}


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
    """Build the policy called ``name`` (a registered name or a ``"module:attribute"`` reference)
    holding at most ``capacity`` rows."""
    builder = _builder(name)
    if int(capacity) != capacity or capacity <= 0:
        raise EngramTierError(f"policy '{name}': capacity must be a positive number of rows, got {capacity}")
    if capacity > ctx.n_table_rows:
        raise EngramTierError(
            f"policy '{name}': capacity {capacity} rows exceeds the table's {ctx.n_table_rows} rows; "
            "make the tier smaller or leave it out (the last tier holds every row)"
        )
    check_params(name, params)
    if not is_reference(name):
        return builder(int(capacity), ctx, **params)
    with user_code(f"policy '{name}': building it"):
        policy = builder(int(capacity), ctx, **params)
    try:  # a builder function is checked only once it has built something
        refuse_non_policy(type(policy), f"its builder returned a {type(policy).__name__}, which")
    except EngramTierError as err:
        raise EngramTierError(f"policy '{name}': {err}") from None
    return policy


def check_params(name: str, params: dict) -> None:
    """Refuse parameters the builder does not take, the ones it needs left out, and a value of another kind
    than its parameter's default (a hierarchy file may give names and tables too, for policies that take
    them), so that builders compare numbers with numbers."""
    parameters = list(inspect.signature(_builder(name)).parameters.values())[2:]
    accepted = [p.name for p in parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise EngramTierError(
            f"policy '{name}': unknown parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) if accepted else 'no parameters'}"
        )
    missing = [p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               and p.name not in params]
    if missing:
        raise EngramTierError(f"policy '{name}': it needs parameter(s) {', '.join(missing)}, which have no default; add "
                              "them to the tier's params table (params = {" + ", ".join(f"{m} = ..." for m in missing) + "})")
    for key, parameter in inspect.signature(_builder(name)).parameters.items():
        if key not in params or parameter.default is inspect.Parameter.empty:
            continue
        default, value = parameter.default, params[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise EngramTierError(f"policy '{name}': params.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EngramTierError(f"policy '{name}': params.{key} must be a number, got {value!r}")


def _builder(name: str) -> PolicyBuilder:
    check_policy(name)
    return _REFERENCES[name] if is_reference(name) else _REGISTRY[name]


def check_policy(name: str, where: str = "", search: Sequence[Path | str] = ()) -> None:
    """Refuse ``name`` unless it is a registered policy or a ``"module:attribute"`` reference to one.

    A reference's module is imported from ``sys.path`` (PYTHONPATH, the current directory when run as
    ``python -m``), and failing that from the ``search`` directories (the directory of the TOML file
    naming it). The attribute is a policy class, built as ``Class(capacity, **params)``, or
    ``Class(capacity, ctx, **params)`` when its constructor's second parameter is named ``ctx``; or a
    builder function ``builder(capacity, ctx, **params)``, what `register` takes. The reference string
    is then the policy's name everywhere (results, summaries, plots). Resolved once per process.
    """
    prefix = f"{where}: " if where else ""
    if not is_reference(name):
        _load_builtins()
        refuse_unknown([name], sorted(_REGISTRY), where, "policy")
        return
    if name in _REFERENCES:
        return
    try:
        _REFERENCES[name] = resolve_reference(name, [Path(d).resolve() for d in search])
    except EngramTierError as err:
        raise EngramTierError(f"{prefix}policy '{name}': {err}") from None


def is_compiled(policy: Any) -> bool:
    """True for built-ins (`CompiledPolicy`) and numba jitclass instances (compiled drivers), False for
    plain Python policies."""
    return isinstance(policy, CompiledPolicy) or type(policy).__module__.startswith("numba.")


def _load_builtins() -> None:
    # Importing the package registers every built-in policy module.
    import engramtier.cache.policies  # noqa: F401


# built-in policy class -> replay loop over that policy's state tuple, and its inline operations
# (lookup, admit, remove, hit_victim, prefetch) for the engine's drivers (see `compiled_policy`)
_KERNELS: dict[Any, Any] = {}
_INLINE_OPS: dict[Any, tuple] = {}

def check_keys(where: str, keys: np.ndarray, n_keys: int) -> None:
    """Refuse a batch of keys (int64) holding one outside ``[0, n_keys)``, once, before a compiled loop
    indexes arrays by them."""
    if keys.size and (keys.min() < 0 or keys.max() >= n_keys):
        bad = int(keys.min()) if keys.min() < 0 else int(keys.max())
        raise EngramTierError(f"{where}: key {bad} lies outside the policy's keys [0, {n_keys}); keys are row ids "
                              "of the table the policies were built for (PolicyContext(n_keys=...))")


KEY_OUTSIDE = "); keys are row ids of the table it was built for (PolicyContext(n_keys=...))"  # ends a method's refusal


@njit(cache=True)
def check_key(name, n_keys, key):
    """`check_keys` for one key a jitclass policy's method receives from Python (cached on disk: its
    message's string operations take seconds to compile); built-ins check in Python (`CompiledPolicy`)."""
    if key < 0 or key >= n_keys:
        raise EngramTierError("policy " + name + ": key " + str(key) + " lies outside its keys [0, " + str(n_keys)
                              + KEY_OUTSIDE)


def key_space(policy: Any) -> int | None:
    """The number of keys a built-in policy was built for (its methods refuse others), None for any other
    policy."""
    return int(policy.n_keys) if is_compiled(policy) and hasattr(policy, "n_keys") else None


@inlined
def prefetch_key(state, key):
    """Start loading the entry of the state's key map (`INDEX`) that a lookup of ``key`` reads first."""
    keymap.prefetch_home(state[keymap.INDEX], key)


def inline_ops(policy: Any) -> tuple | None:
    """The inline (lookup, admit, remove, hit_victim, prefetch) functions of a `compiled_policy`
    instance, which act on its ``state`` tuple; None for any other policy."""
    return _INLINE_OPS.get(type(policy))


@inlined
def holds_key(state, key):
    """`contains` of the policies whose state begins with a key map (`engramtier.cache.keymap`) to their
    nodes or heap entries and each one's key: held exactly when the key has a node."""
    return keymap.find(state[keymap.INDEX], state[keymap.KEY_OF], key) >= 0


@inlined
def no_hit_victim(state):
    """`hit_victim` of the policies whose hits never evict."""
    return -1


def hits_never_evict(policy: Any) -> bool:
    """True for a `compiled_policy` whose hits never evict (its ``hit_victim`` is `no_hit_victim`): a step
    in which all its lookups hit leaves its rows where they were. False when that is not known."""
    ops = inline_ops(policy)
    return ops is not None and ops[3] is no_hit_victim


class CompiledPolicy:
    """A built-in policy as Python sees it: its ``state`` (a tuple of arrays) and the compiled operations
    on that state, one class per policy (`compiled_policy`).

    A plain class rather than a numba jitclass: a jitclass's constructor and each method it offers to
    Python are compiled again in every process that uses them (numba cannot cache them on disk), ~0.5 s
    apiece, for every policy a test worker, a subprocess or a command touches. Here every operation is
    a function of the state tuple cached on disk (`engramtier.cache.diskcache`), and a call from Python
    costs about what a jitclass method call did. Compiled loops never see the object: `replay`
    and the engine's drivers take its bare state and inline the operations."""

    __slots__ = ("state", "n_keys")
    name = ""
    state_type: Any = None
    # set on each subclass by `compiled_policy`: the compiled functions of the state its methods call
    _lookup = _admit = _remove = _contains = _occupancy = _hit_victim = _held_among = _remove_all = None

    def __init__(self, state: tuple, n_keys: int) -> None:
        self.state = tuple(state)
        self.n_keys = int(n_keys)
        expected = self.state_type.types
        if len(self.state) != len(expected) or not all(_fits(a, t) for a, t in zip(self.state, expected, strict=False)):
            raise EngramTierError(f"policy {self.name}: its state must be {len(expected)} arrays typed {self.state_type}")

    def _key(self, key: Any) -> int:
        key = operator.index(key)
        if not 0 <= key < self.n_keys:
            raise EngramTierError(f"policy {self.name}: key {key} lies outside its keys [0, {self.n_keys}" + KEY_OUTSIDE)
        return key

    def lookup(self, key: int, t: int) -> bool:
        return bool(self._lookup(self.state, self._key(key), operator.index(t)))

    def admit(self, key: int, t: int) -> int:
        return int(self._admit(self.state, self._key(key), operator.index(t)))

    def remove(self, key: int) -> bool:
        return bool(self._remove(self.state, self._key(key)))

    def contains(self, key: int) -> bool:
        return bool(self._contains(self.state, self._key(key)))

    def occupancy(self) -> int:
        return int(self._occupancy(self.state))

    def hit_victim(self) -> int:
        return int(self._hit_victim(self.state))

    def held_among(self, candidates: np.ndarray) -> np.ndarray:
        """The keys of ``candidates`` (int64, -1 for none) that the policy holds, in their order."""
        out = np.empty(candidates.size, np.int64)
        return out[:self._held_among(self.state, candidates, out)]

    def remove_all(self, keys: np.ndarray) -> None:
        """`remove` each of ``keys`` (int64, checked by the caller)."""
        self._remove_all(self.state, keys)


def _fits(array: Any, declared: Any) -> bool:
    """Whether ``array`` is a numpy array of the ``declared`` numba array type's dtype and dimensions
    (and C-contiguous where that is declared), as a jitclass field of that type would demand."""
    return (isinstance(array, np.ndarray) and array.ndim == declared.ndim and array.dtype == as_dtype(declared.dtype)
            and (declared.layout != "C" or array.flags.c_contiguous))


def compiled_policy(name: str, state_type: Any, lookup, admit, remove, contains, occupancy,
                    hit_victim=no_hit_victim) -> type[CompiledPolicy]:
    """The `CompiledPolicy` class ``name``, made as ``name(state, n_keys)`` around ``state`` (a tuple of
    arrays typed ``state_type`` whose first array is a key map and second each node's key
    (`engramtier.cache.keymap`): `replay` prefetches the map ahead of the requests) for keys
    ``0 <= key < n_keys``, which its methods check; the inlined loops do not.

    ``lookup(state, key, t)``, ``admit(state, key, t)``, ``remove(state, key)``, ``contains(state,
    key)``, ``occupancy(state)`` and ``hit_victim(state)`` are numba functions of the state alone,
    `inlined` for the built-ins. They are inlined into a loop for `replay` and into the engine's drivers,
    and each method calls an `inlined` copy of its function (loaded from disk); all are compiled without
    NRT (``_nrt=False``), since every helper taking the tuple would otherwise count every array in it.
    That is safe because they neither allocate nor keep arrays. Every compiled function here is cached
    on disk.
    """
    operations = {"_lookup": lookup, "_admit": admit, "_remove": remove, "_contains": contains, "_occupancy": occupancy,
                  "_hit_victim": hit_victim}
    methods = {slot: staticmethod(inlined(fn.py_func)) for slot, fn in operations.items()}

    held_among, remove_all = (kernel(_nrt=False)(loop) for loop in set_loops(contains, remove))

    @kernel(_nrt=False)
    def replay_loop(state, keys, hits):
        n_hits = 0
        for t in range(keys.size):
            if t + PREFETCH_AHEAD < keys.size:
                prefetch_key(state, keys[t + PREFETCH_AHEAD])
            k = keys[t]
            if lookup(state, k, t):
                hits[t] = True
                n_hits += 1
            else:
                hits[t] = False
                admit(state, k, t)
        return n_hits

    cls = type(name, (CompiledPolicy,), {"__slots__": (), "name": name, "state_type": state_type, **methods,
                                         "_held_among": staticmethod(held_among), "_remove_all": staticmethod(remove_all)})
    _KERNELS[cls] = replay_loop
    _INLINE_OPS[cls] = (lookup, admit, remove, hit_victim, prefetch_key)
    return cls


def set_loops(contains, remove) -> tuple[Any, Any]:
    """The loops ``held_among(target, candidates, out)`` (the keys of ``candidates``, int64 with -1 for
    none, that the target holds, in their order, into ``out``; returns how many) and ``remove_all(target,
    keys)`` over a ``target`` that ``contains(target, key)`` and ``remove(target, key)`` act on: a
    built-in's state and its operations, or a policy and `method_contains`, `method_remove`. Plain
    Python functions (compile them with numba)."""

    def held_among(target, candidates, out):
        n = 0
        for k in candidates:
            if k >= 0 and contains(target, k):
                out[n] = k
                n += 1
        return n

    def remove_all(target, keys):
        for k in keys:
            remove(target, k)

    return held_among, remove_all


def method_contains(policy, key):
    return policy.contains(key)


def method_remove(policy, key):
    return policy.remove(key)


# `set_loops` for policies that are not built-ins: calling their methods, in Python or in compiled code (a jitclass)
_PYTHON_SET_LOOPS = set_loops(method_contains, method_remove)
_JIT_SET_LOOPS = tuple(njit(nogil=True)(loop) for loop in set_loops(njit(inline="always")(method_contains),
                                                                     njit(inline="always")(method_remove)))


def _set_loops_of(policy: Any) -> tuple[Any, Any]:
    return _JIT_SET_LOOPS if is_compiled(policy) else _PYTHON_SET_LOOPS


def held_among(policy: Any, candidates: np.ndarray) -> np.ndarray:
    """The keys of ``candidates`` (int64, -1 for none) that ``policy`` holds, in their order."""
    if isinstance(policy, CompiledPolicy):
        return policy.held_among(candidates)
    out = np.empty(candidates.size, np.int64)
    return out[:_set_loops_of(policy)[0](policy, candidates, out)]


def held_keys(policy: Any, n_keys: int) -> np.ndarray:
    """The keys ``policy`` holds, ascending. A built-in is asked only about the keys its nodes have held
    (its state's `KEY_OF` array), so the scan follows its capacity, not ``n_keys``; any other policy is
    asked about every key."""
    built_in = isinstance(policy, CompiledPolicy)
    return np.unique(held_among(policy, policy.state[keymap.KEY_OF] if built_in else np.arange(n_keys, dtype=np.int64)))


def remove_keys(policy: Any, keys: np.ndarray) -> None:
    """`remove` each of ``keys`` (int64, within the policy's keys) from ``policy``, in compiled code where
    the policy is compiled."""
    if isinstance(policy, CompiledPolicy):
        policy.remove_all(keys)
    else:
        _set_loops_of(policy)[1](policy, keys)


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
    n_keys = key_space(policy)
    if n_keys is not None:
        check_keys(f"replay ({type(policy).__name__})", keys, n_keys)
    if hits is None:
        hits = np.empty(keys.size, dtype=np.bool_)
    elif not (isinstance(hits, np.ndarray) and hits.dtype == np.bool_ and hits.shape == (keys.size,)):
        raise EngramTierError(f"replay: hits must be a bool array of one entry per key ({keys.size}), got "
                              f"{getattr(hits, 'dtype', type(hits).__name__)} {getattr(hits, 'shape', '')}")
    loop = _KERNELS.get(type(policy))
    if loop is not None:
        return int(loop(policy.state, keys, hits))
    driver = _replay if is_compiled(policy) else _replay.py_func
    return int(driver(policy, keys, hits))
