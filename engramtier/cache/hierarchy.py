"""A hierarchy of tiers, fastest first, as a user declares it (in Python or a TOML table).

Every tier but the last is a cache: a capacity (rows, or bytes such as ``"2GiB"``), a policy and a
`TierModel`. The last tier is the backing store: it holds every row of the table, so it takes no
policy and every lookup that reaches it hits; its capacity may be left out (the table) but never be
smaller than the table. ``mode`` says how the caches share rows (see `engramtier.cache.engine`):
``"inclusive"`` fills every cache a lookup missed, ``"exclusive"`` keeps each row in at most one.
A cache may also name an admission filter (``admission = "bloom" | "bloom:W" | "prob:P" |
"prob:P:SEED" | "tinylfu"``, `engramtier.cache.admission`), which decides before its policy whether a
missed row is kept; `build_admissions` makes one per cache tier for the engine.

Byte capacities become rows only against a table (``row_bytes``), so a `Hierarchy` is validated in
two stages: what can be checked alone on construction, the rest in `capacities` (sizes against the
table) and `build_policies` (policy parameters, delegated to `make_policy`). Policy names are checked
on construction from a file, where a ``"module:attribute"`` reference to a user's policy class is
imported (see `check_policy`): beside the file is one place its module may be.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engramtier.cache.admission import build as build_admission
from engramtier.cache.admission import parse as parse_admission
from engramtier.cache.policy import PolicyContext, check_params, check_policy, make_policy
from engramtier.cache.timing import TierModel, tier_model
from engramtier.errors import MAX_INT, EngramTierError, refuse_unknown
from engramtier.trace.tomlfile import read_toml

MODES = ("inclusive", "exclusive")
# What a step does with a tier's rows that cannot arrive within its compute window: wait for them (a
# stall), or drop them (the step reads zero rows instead; see `engramtier.cache.deadline`).
ON_LATE = ("wait", "drop")
# Where a cache tier's rows live (its `storage`): device memory, host DRAM, or CXL-attached memory.
CACHE_STORAGE = ("gpu", "dram", "cxl")
HIERARCHY_KEYS = ("mode", "tier")  # a hierarchy's keys, at a file's top or under [hierarchy]

SIZE_UNITS = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
_UNIT_OF = {unit.lower(): scale for unit, scale in SIZE_UNITS.items()}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"2GiB"``, ``"512 MiB"``, ``"1.5GB"`` or ``"160000B"``.

    Decimal (KB = 1000 B) and binary (KiB = 1024 B) units, case-insensitive; the result must be a
    whole number of bytes, at most `MAX_INT` (4 EiB): every size then stays inside int64 wherever it goes
    (rows of a cache, an LMDB map), instead of overflowing into a traceback several steps later.
    """
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    scale = _UNIT_OF.get(match.group(2).lower()) if match else None
    if scale is None:
        raise EngramTierError(
            f"size {text!r} does not parse: write a number and a unit, e.g. '2GiB' or '1.5 GB' "
            f"(units: {', '.join(SIZE_UNITS)})"
        )
    nbytes = Decimal(match.group(1)) * scale
    if nbytes != nbytes.to_integral_value():
        raise EngramTierError(f"size {text!r} is not a whole number of bytes")
    if nbytes > MAX_INT:
        raise EngramTierError(f"size {text!r} is more than {MAX_INT:,} bytes (4 EiB); give a smaller size")
    return int(nbytes)


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, three significant digits; 1000 and up take the next unit, so
    1023.9 KiB reads '1 MiB', not '1.02e+03 KiB')."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{int(n)} B" if i == 0 else f"{n:.3g} {units[i]}"


@dataclass(frozen=True)
class TierSpec:
    """One tier: ``capacity`` in rows (int) or bytes (a size string; None for the backing store: the
    whole table), the ``policy`` name and its ``params`` (None for the store), the read ``model``
    (a `TierModel` or the name of a default one), and ``storage``, which the runtime reads (the
    simulator reads only the model): for a cache tier, where its rows live, one of `CACHE_STORAGE`
    (default: the one its model names, see `cache_storage`); for the backing store, where the rows are
    when they are not in the local LMDB table (a remote store's backend and options, see
    `engramtier.tiers.remote`). ``warm``, for a cache:
    a frequency profile (a .npy of requests per table row, a trace file, or the counts as an array)
    whose hottest rows it opens holding (`engramtier.cache.warm`); None: it opens empty. ``on_late``: what a
    step does with this tier's rows that its model says cannot arrive within the step's compute window:
    ``"wait"`` (the default: the step stalls) or ``"drop"`` (a deadline-bounded, lossy fetch: the step
    goes on and reads zero rows in their place, see `engramtier.cache.deadline`). ``admission``, for a
    cache: a filter deciding which missed rows it keeps, in front of its policy (``"bloom"``,
    ``"prob:P"``, ``"tinylfu"``: `engramtier.cache.admission`); None: it keeps every row it misses."""

    name: str
    capacity: int | str | None
    policy: str | None
    params: Mapping[str, Any]
    model: TierModel | str
    storage: Mapping[str, Any] | str = field(default_factory=dict)
    warm: str | os.PathLike | np.ndarray | None = field(default=None, compare=False)
    on_late: str = "wait"
    admission: str | None = None

    def __post_init__(self) -> None:
        where = f"tier '{self.name}'"
        if not isinstance(self.name, str) or not self.name:
            raise EngramTierError(f"tier name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.on_late, str) or self.on_late not in ON_LATE:
            raise EngramTierError(f"{where}: on_late must be one of {', '.join(repr(r) for r in ON_LATE)} (what a step "
                                  f"does with rows that miss its window), got {self.on_late!r}")
        if self.admission is not None:
            parse_admission(self.admission, where)
        if isinstance(self.capacity, str):
            try:
                parse_size(self.capacity)  # refuse a bad size now, not when the table is known
            except EngramTierError as err:
                raise EngramTierError(f"{where} capacity: {err}") from None
        elif self.capacity is not None and (isinstance(self.capacity, bool) or not isinstance(self.capacity, int)):
            raise EngramTierError(
                f"{where}: capacity must be rows (an integer) or a size string such as '2GiB', got {self.capacity!r}"
            )
        elif self.capacity is not None and self.capacity <= 0:
            raise EngramTierError(f"{where}: capacity must be positive, got {self.capacity} rows")
        if not isinstance(self.params, Mapping):
            raise EngramTierError(f"{where}: params must be a table of policy parameters, got {self.params!r}")
        for key, value in self.params.items():  # a number, a flag, a name, or a table of numbers (shares)
            scalar = isinstance(value, (bool, int, float, str))
            table = isinstance(value, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in value.values())
            if not (scalar or table):
                raise EngramTierError(
                    f"{where}: params.{key} must be a number, true/false, a name or a table of numbers, got {value!r}"
                )
        if self.warm is not None and not isinstance(self.warm, (str, os.PathLike, np.ndarray)):
            raise EngramTierError(f"{where}: warm must be a profile's path (.npy of counts per row, or a trace file) "
                                  f"or an array of counts, got {self.warm!r}")
        if isinstance(self.storage, str):
            refuse_unknown([self.storage], CACHE_STORAGE, where, "storage (where the rows live)")
        elif not isinstance(self.storage, Mapping):
            raise EngramTierError(f"{where}: storage must be where a cache tier's rows live ({', '.join(CACHE_STORAGE)}) "
                                  f"or, for the backing store, a table (backend, url, ...); got {self.storage!r}")
        if not isinstance(self.model, TierModel):
            try:
                object.__setattr__(self, "model", tier_model(self.model))
            except EngramTierError as err:
                raise EngramTierError(f"{where}: {err}") from None

    @property
    def cache_storage(self) -> str | None:
        """Where this cache tier's rows live: its ``storage``, else what its model names (``hbm``: gpu);
        None when neither says."""
        if isinstance(self.storage, str):
            return self.storage
        name = {"hbm": "gpu"}.get(self.model.name, self.model.name)
        return name if name in CACHE_STORAGE else None

    @property
    def lossy(self) -> bool:
        """True when a step drops this tier's late rows instead of waiting for them."""
        return self.on_late == "drop"

    def rows(self, row_bytes: int) -> int | None:
        """Capacity in rows of ``row_bytes`` (a byte size holds the rows that fit whole); None: the table."""
        if not isinstance(self.capacity, str):
            return self.capacity
        rows = parse_size(self.capacity) // row_bytes
        if rows == 0:
            raise EngramTierError(f"tier '{self.name}': capacity {self.capacity} holds no row of {row_bytes} bytes")
        return rows

    def to_dict(self) -> dict:
        d = {"name": self.name, "capacity": self.capacity, "policy": self.policy, "params": dict(self.params),
             "model": self.model.to_dict()}
        if self.warm is not None:
            d["warm"] = f"array of {self.warm.size} counts" if isinstance(self.warm, np.ndarray) else str(self.warm)
        d = {**d, "on_late": self.on_late} if self.lossy else d  # the default leaves a config as it was
        d = {**d, "admission": self.admission} if self.admission is not None else d
        storage = self.storage if isinstance(self.storage, str) else dict(self.storage)
        return {**d, "storage": storage} if storage else d


def _check_printable(at: str, name: Any) -> None:
    """Refuse a name that would break a one-line message (empty, or holding a newline or other control)."""
    if isinstance(name, str) and not (name and name.isprintable()):
        raise EngramTierError(f"{at} must be a non-empty name of printable characters, got {name!r}")


@dataclass(frozen=True)
class Hierarchy:
    """Tiers ordered fastest to slowest; the last is the backing store holding every row. ``where``
    says where it was declared (a TOML file and table), so that a capacity refused only once the
    table is known still names the file."""

    tiers: tuple[TierSpec, ...]
    mode: str = "inclusive"
    where: str = field(default="hierarchy", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(self.tiers))
        where = self.where
        if not self.tiers:
            raise EngramTierError(f"{where}: no tiers; list at least the backing store (the tier holding every row)")
        if self.mode not in MODES:
            raise EngramTierError(f"{where}: unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        names = [t.name for t in self.tiers]
        for name in names:
            if names.count(name) > 1:
                raise EngramTierError(f"{where}: two tiers are named '{name}'; give each tier its own name")
        for tier in self.caches:
            if tier.capacity is None or tier.policy is None:
                raise EngramTierError(
                    f"{where}: cache tier '{tier.name}' needs a capacity and a policy "
                    "(only the last tier, the backing store, goes without)"
                )
        for tier in self.caches:
            if isinstance(tier.storage, Mapping) and tier.storage:
                raise EngramTierError(
                    f"{where}: cache tier '{tier.name}' has a storage table, but only the last tier (the backing "
                    f"store) takes one; move it there (a cache tier's storage names where its rows live: "
                    f"{', '.join(CACHE_STORAGE)})"
                )
        if isinstance(self.store.storage, str):
            raise EngramTierError(f"{where}: the last tier '{self.store.name}' is the backing store; its storage is a "
                                  f"table naming a remote store (backend, url, ...), not {self.store.storage!r}")
        if self.store.warm is not None:
            raise EngramTierError(f"{where}: the last tier '{self.store.name}' is the backing store and holds every row "
                                  "already; give warm to a cache tier")
        if self.store.admission is not None:
            raise EngramTierError(f"{where}: the last tier '{self.store.name}' is the backing store and serves every "
                                  f"row; give admission {self.store.admission!r} to a cache tier")
        if self.store.policy is not None:
            raise EngramTierError(
                f"{where}: the last tier '{self.store.name}' is the backing store holding every row and takes no "
                f"policy; remove policy '{self.store.policy}' or add a tier below it"
            )

    @property
    def caches(self) -> tuple[TierSpec, ...]:
        return self.tiers[:-1]

    @property
    def store(self) -> TierSpec:
        return self.tiers[-1]

    def with_warm(self, profile: str | os.PathLike | np.ndarray | None) -> "Hierarchy":
        """This hierarchy with every cache tier warm-started from ``profile`` (None: all cold)."""
        return dataclasses.replace(self, tiers=(*(dataclasses.replace(t, warm=profile) for t in self.caches),
                                                self.store))

    @property
    def cache_storage(self) -> str | None:
        """Where this cache tier's rows live: its ``storage``, else what its model names (``hbm``: gpu);
        None when neither says."""
        if isinstance(self.storage, str):
            return self.storage
        name = {"hbm": "gpu"}.get(self.model.name, self.model.name)
        return name if name in CACHE_STORAGE else None

    @property
    def lossy(self) -> bool:
        """True when some tier drops its late rows (``on_late = "drop"``)."""
        return self.lossy_tier is not None

    @property
    def lossy_tier(self) -> str | None:
        """The name of the first tier that drops its late rows, None when every tier waits for them."""
        return next((t.name for t in self.tiers if t.lossy), None)

    def capacities(self, n_table_rows: int, row_bytes: int) -> list[int]:
        """Rows each cache tier holds for a table of ``n_table_rows`` rows of ``row_bytes``; checks that
        no cache exceeds the table and that the store holds it all."""
        at = self._at()
        try:
            *rows, store_rows = (tier.rows(row_bytes) for tier in self.tiers)
        except EngramTierError as err:
            raise EngramTierError(at + str(err)) from None
        for tier, r in zip(self.caches, rows, strict=True):
            if r > n_table_rows:
                raise EngramTierError(
                    f"{at}tier '{tier.name}': capacity {tier.capacity} ({r} rows) exceeds the table's {n_table_rows} "
                    "rows; make it smaller or drop it (the last tier holds every row)"
                )
        if store_rows is not None and store_rows < n_table_rows:
            raise EngramTierError(
                f"{at}tier '{self.store.name}': the backing store holds {store_rows} rows but the table has "
                f"{n_table_rows}; the last tier must hold every row (leave its capacity out)"
            )
        return rows

    def build_policies(self, ctx: PolicyContext, row_bytes: int) -> list[Any]:
        """One fresh policy per cache tier, sized for the table of ``ctx.n_table_rows`` rows of ``row_bytes``."""
        policies = []
        for tier, rows in zip(self.caches, self.capacities(ctx.n_table_rows, row_bytes), strict=True):
            try:
                policies.append(make_policy(tier.policy, rows, ctx, **tier.params))
            except EngramTierError as err:
                raise EngramTierError(f"{self._at()}tier '{tier.name}': {err}") from None
        return policies

    def build_admissions(self, ctx: PolicyContext, row_bytes: int) -> list[tuple]:
        """One fresh admission filter per cache tier (`engramtier.cache.admission`), sized by its capacity
        and hashing rows by their global ids (``ctx.global_ids()``), for `Engine`."""
        filters = []
        for tier, rows in zip(self.caches, self.capacities(ctx.n_table_rows, row_bytes), strict=True):
            try:
                filters.append(build_admission(tier.admission, rows, ctx.global_ids() if tier.admission else None))
            except EngramTierError as err:
                raise EngramTierError(f"{self._at()}tier '{tier.name}': {err}") from None
        return filters

    def _at(self) -> str:
        """The prefix naming the file a refusal against the table comes from (none when built in code)."""
        return "" if self.where == "hierarchy" else f"{self.where}: "

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "hierarchy",
                  search: Sequence[Path | str] = ()) -> "Hierarchy":
        """Build from what a TOML file holds: ``{"mode": ..., "tier": [{"name", "capacity", "policy",
        "params", "model"}, ...]}``; ``model`` is a default's name or a table of `TierModel` fields.
        ``search``: where a policy reference's module may be besides sys.path (the file's directory); a
        relative ``warm`` path is taken from the first of them too."""
        refuse_unknown(d, ("mode", "tier"), where)
        tiers = d.get("tier")
        if not isinstance(tiers, list) or not tiers:
            raise EngramTierError(f"{where}: 'tier' must be a non-empty list of tier tables, fastest first")
        specs = []
        for i, t in enumerate(tiers):
            at = f"{where}: tier[{i}]"
            if not isinstance(t, Mapping):
                raise EngramTierError(f"{at} must be a table with name, capacity, policy, model, got {t!r}")
            refuse_unknown(t, tuple(f.name for f in dataclasses.fields(TierSpec)), at)
            if "name" not in t or "model" not in t:
                raise EngramTierError(
                    f"{at} needs a 'name' and a 'model' (a default model's name or a table of fields)"
                )
            model = t["model"]
            _check_printable(f"{at}.name", t["name"])
            _check_printable(f"{at}.model", model.get("name", "model") if isinstance(model, Mapping) else model)
            if isinstance(model, Mapping):
                refuse_unknown(model, tuple(f.name for f in dataclasses.fields(TierModel)), f"{at}.model")
                if not {"latency_s", "bandwidth_Bps"} <= set(model) or not isinstance(model.get("name", ""), str):
                    raise EngramTierError(f"{at}.model: needs latency_s and bandwidth_Bps (numbers; parallelism and a "
                                          f"name string are optional), got {model!r}")
                try:
                    model = TierModel(**{"name": t["name"], **model})
                except EngramTierError as err:
                    raise EngramTierError(f"{at}.model: {err}") from None
            warm = t.get("warm")
            if isinstance(warm, str) and search and not Path(warm).is_absolute():
                warm = str(Path(search[0]) / warm)
            try:
                spec = TierSpec(t["name"], t.get("capacity"), t.get("policy"), t.get("params", {}), model,
                                t.get("storage", {}), warm, t.get("on_late", "wait"), t.get("admission"))
            except EngramTierError as err:
                raise EngramTierError(f"{where}: {err}") from None
            if spec.policy is not None and i < len(tiers) - 1:  # the store's policy is refused below
                check_policy(spec.policy, f"{where}: tier '{spec.name}'", search)
                try:
                    check_params(spec.policy, spec.params)
                except EngramTierError as err:
                    raise EngramTierError(f"{where}: tier '{spec.name}': {err}") from None
            specs.append(spec)
        return cls(tuple(specs), d.get("mode", "inclusive"), where)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "tier": [t.to_dict() for t in self.tiers]}


def hierarchy_section(doc: Mapping[str, Any]) -> dict:
    """``doc`` with its hierarchy under ``"hierarchy"``: a file may hold it there (an experiment file's
    ``[hierarchy]``) or at its top (``mode`` and ``[[tier]]`` tables, a hierarchy file), and every
    command reads both, so one file serves simulate, sweep, replay and generate alike."""
    if "hierarchy" in doc or "tier" not in doc:
        return dict(doc)
    rest = {k: v for k, v in doc.items() if k not in HIERARCHY_KEYS}
    return {**rest, "hierarchy": {k: doc[k] for k in HIERARCHY_KEYS if k in doc}}


def load_hierarchy(path: Any) -> Hierarchy:
    """The hierarchy of a TOML file: ``mode`` and ``[[tier]]`` tables at its top, or under
    ``[hierarchy]`` (an experiment file's section); the file's other sections are not read here."""
    read = read_toml(path, "a hierarchy .toml with [[tier]] tables, fastest first")
    doc = hierarchy_section(read)
    if "hierarchy" not in doc:
        raise EngramTierError(f"{path}: no hierarchy; declare the tiers with [[tier]] tables (or [[hierarchy.tier]])")
    if not isinstance(doc["hierarchy"], Mapping):
        raise EngramTierError(f"{path}: 'hierarchy' must be a table ([hierarchy]), got {doc['hierarchy']!r}")
    return Hierarchy.from_dict(doc["hierarchy"], where=f"{path}: [hierarchy]" if "hierarchy" in read else str(path),
                               search=(Path(path).parent,))
