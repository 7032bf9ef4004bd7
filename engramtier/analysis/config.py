"""Experiment files: one TOML that says which trace, which hierarchy, what timing, what to sweep, what it costs.

    [trace]      where the row trace comes from (the shipped sample text, text files, a synthetic
                 Zipf stream or an existing trace file) and the table it addresses (``preset = "NAME"``:
                 a published model's shape, `engramtier.model.presets`; keys given override it)
    [hierarchy]  ``mode`` and ``[[hierarchy.tier]]`` tables, read by `Hierarchy.from_dict`
    [timing]     the compute that hides the prefetch, per step or per token
    [sweep]      policies x one-tier sizes (hit rates); sizes per cache tier (stall); CXL latencies
    [cost]       $/GB per tier model and the stall budget of the cost frontier
    [plan]       an HBM budget shared by the KV cache and the Engram gpu tier, and the batches to try
                 (`engramtier plan`, `engramtier.analysis.plan`)

Every mistake is refused with one line naming the file, the key and what to write instead: a user
who typed ``capacty`` learns it should be ``capacity`` before anything runs. Sizes are rows (an
integer) or bytes (a string such as ``"2GiB"``), turned into rows once the trace's ``row_bytes`` is
known. Relative paths are read relative to the TOML file.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from engramtier.analysis.cost import DEFAULT_USD_PER_GB
from engramtier.cache.hierarchy import Hierarchy, hierarchy_section, parse_size
from engramtier.cache.policy import check_policy
from engramtier.cache.tomlfile import read_toml
from engramtier.errors import EngramTierError, check_number, refuse_unknown
from engramtier.model.hashing import MAX_HEADS, MAX_NGRAM, MAX_TABLE_SIZE, uniform_shape_problems
from engramtier.model.presets import SHAPE_KEYS, get_preset
from engramtier.trace.build import MODES
from engramtier.trace.sources import MAX_ZIPF_VOCAB

TRACE_SOURCES = ("sample", "text", "zipf", "file")


def size_to_rows(size: int | str, row_bytes: int, where: str, n_table_rows: int | None = None) -> int:
    """Rows in ``size``: an integer is rows, a string is bytes ("64MiB") holding whole rows; with
    ``n_table_rows``, more rows than the table has are refused (a cache larger than its table)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise EngramTierError(f"{where}: a size is rows (an integer) or bytes (a string such as '2GiB'), got {size!r}")
    if isinstance(size, str):
        try:
            rows = parse_size(size) // row_bytes
        except EngramTierError as err:
            raise EngramTierError(f"{where}: {err}") from None
    else:
        rows = size
    if rows <= 0:
        raise EngramTierError(f"{where}: size {size!r} holds no row of {row_bytes} bytes; give a larger size")
    if n_table_rows is not None and rows > n_table_rows:
        raise EngramTierError(f"{where}: size {size!r} is {rows:,} rows, more than the table's {n_table_rows:,}; "
                              f"give at most {n_table_rows} rows ({n_table_rows * row_bytes:,} bytes)")
    return rows


@dataclass(frozen=True)
class TraceConfig:
    """Where the row trace comes from; the names follow `engramtier trace`'s options."""

    source: str = "sample"
    preset: str | None = None
    paths: tuple[str, ...] = ()
    file: str | None = None
    tokenizer: str = "deepseek"
    field: str = "text"
    mode: str = "prefill"
    batch: int = 8
    seq_len: int = 2048
    requests: int = 32
    prompt_len: int = 0
    layers: tuple[int, ...] = (1, 15)
    heads: int = 8
    max_ngram: int = 3
    table_size: int = 1_000_003
    seed: int = 0
    row_bytes: int = 160
    engram_pad: int | None = None
    image_token: int | None = None
    zipf_alpha: float = 1.0
    vocab: int = 100_000
    tokens: int = 1_000_000


@dataclass(frozen=True)
class TimingConfig:
    """Seconds of compute per step that hide the prefetch (``window``) and that a step takes without
    stalls (``compute``). The window is given per step (``window_s``) or per token; the compute per
    step, per token, or both: ``compute_s + compute_per_token_s * tokens``, a fixed cost per forward
    pass (reading the weights) plus the tokens' work, which is what makes a larger batch faster."""

    window_s: float | None = None
    window_per_token_s: float | None = None
    compute_s: float | None = None
    compute_per_token_s: float | None = None
    overlap: str = "parallel"

    def per_step(self, tokens_per_step) -> tuple[Any, Any]:
        """(window, compute) seconds for steps of ``tokens_per_step`` tokens (a number or an array)."""
        window = self.window_s if self.window_s is not None else self.window_per_token_s * tokens_per_step
        if self.compute_s is None and self.compute_per_token_s is None:
            return window, None
        per_token = 0.0 if self.compute_per_token_s is None else self.compute_per_token_s * tokens_per_step
        return window, (self.compute_s or 0.0) + per_token


@dataclass(frozen=True)
class SweepConfig:
    """``policies`` x ``sizes``: one-tier hit rates; ``tier_sizes``: sizes per cache tier of the
    hierarchy, every combination simulated for stall; ``cxl_latencies_ns``: a CXL tier of
    ``cxl_capacity`` inserted above the store at each latency."""

    policies: tuple[str, ...] = ("lru", "s3fifo", "wtinylfu", "belady", "static")
    sizes: tuple[int | str, ...] = ()
    tier_sizes: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict)
    cxl_capacity: int | str | None = None
    cxl_latencies_ns: tuple[float, ...] = ()
    cxl_policy: str | None = None
    shards_rate: float = 0.01
    shards_seeds: int = 5
    workers: int | None = None


@dataclass(frozen=True)
class CostConfig:
    """$/GB per tier (keyed by tier name or tier model name) and the stall-fraction budget."""

    usd_per_gb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_USD_PER_GB))
    stall_budget: float = 0.05


@dataclass(frozen=True)
class PlanConfig:
    """An HBM budget (bytes) shared by the KV cache and the Engram tier named ``tier`` (default: the
    first cache tier), the backbone's KV bytes per token, the context each sequence reserves KV for
    (``context_len``, default [trace] seq_len; or a ``mix`` of (context_len, share) pairs, whose mean
    is reserved), and the splits to try: ``batches`` (sequences in flight) or ``kv_fractions`` (of
    the budget given to KV, each made the largest whole batch that fits)."""

    hbm_budget: int | str = 0
    kv_bytes_per_token: int | str = 0
    context_len: int | None = None
    mix: tuple = ()
    batches: tuple[int, ...] = ()
    kv_fractions: tuple[float, ...] = ()
    tier: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    path: str
    trace: TraceConfig
    hierarchy: Hierarchy
    timing: TimingConfig
    sweep: SweepConfig
    cost: CostConfig
    plan: PlanConfig | None = None

    def to_dict(self) -> dict:
        d = {"path": self.path, "trace": _plain(self.trace), "hierarchy": self.hierarchy.to_dict(),
             "timing": _plain(self.timing), "sweep": _plain(self.sweep), "cost": _plain(self.cost)}
        return d if self.plan is None else {**d, "plan": _plain(self.plan)}

    def check_stages(self, stages: Iterable[str], n_table_rows: int | None = None, row_bytes: int | None = None) -> None:
        """Refuse, naming the file and key, what would make one of ``stages`` fail halfway: a [sweep]
        list it sweeps left empty and, once the table is known (``n_table_rows`` rows of ``row_bytes``),
        a size larger than the table. Run before the trace is built and again once it is open, so that
        the last stage's mistake does not surface only after the other stages have run."""
        sw, where, stages = self.sweep, f"{self.path}: [sweep]", set(stages)
        swept = {"hit_rate": ("sizes", [(f"sizes[{i}]", s) for i, s in enumerate(sw.sizes)]),
                 "stall": ("tier_sizes", [(f"tier_sizes.{name}[{i}]", s) for name, sizes in sw.tier_sizes.items()
                                          for i, s in enumerate(sizes)]),
                 "cxl": ("cxl_latencies_ns", [("cxl_capacity", sw.cxl_capacity)] if sw.cxl_latencies_ns else [])}
        for stage, (key, sizes) in swept.items():
            if stage not in stages:
                continue
            if not sizes:
                raise EngramTierError(f"{where} {key} is empty, so stage {stage} has nothing to sweep; "
                                      f"give {key} or leave {stage} out of --stages")
            if n_table_rows is not None:
                for name, size in sizes:
                    size_to_rows(size, row_bytes, f"{where} {name}", n_table_rows)
        if n_table_rows is not None and stages & {"simulate", "stall", "cxl"}:
            self.hierarchy.capacities(n_table_rows, row_bytes)


SECTIONS = ("trace", "hierarchy", "timing", "sweep", "cost", "plan")


def load_config(path, need_trace: bool = True, overrides: Mapping[str, Mapping] | None = None,
                preset: str | None = None) -> ExperimentConfig:
    """Read and check an experiment TOML; ``need_trace=False`` lets a hierarchy-only file through,
    ``overrides`` (section -> keys, e.g. from command-line options) replace the file's values, and
    ``preset`` (--preset) replaces [trace]'s preset and every table-shape key of the file with its own."""
    path = Path(path)
    doc = read_toml(path, "an experiment .toml")
    for section, values in (overrides or {}).items():
        if isinstance(doc.get(section, {}), Mapping):  # anything else is refused by parse_config
            doc[section] = {**doc.get(section, {}), **values}
    if preset is not None and isinstance(doc.get("trace", {}), Mapping):
        get_preset(preset)  # an unknown --preset is refused as such, not as the file's
        doc["trace"] = {**{k: v for k, v in doc.get("trace", {}).items() if k not in SHAPE_KEYS}, "preset": preset}
    return parse_config(doc, path, need_trace)


def parse_config(doc: Mapping[str, Any], path: Path, need_trace: bool = True) -> ExperimentConfig:
    where = str(path)
    doc = hierarchy_section(doc)
    refuse_unknown(doc, SECTIONS, where)
    for name in SECTIONS:
        if name in doc and not isinstance(doc[name], Mapping):
            raise EngramTierError(f"{where}: '{name}' must be a table ([{name}]), got {doc[name]!r}")
    if "hierarchy" not in doc:
        raise EngramTierError(f"{where}: no [hierarchy] section; declare the tiers with [[hierarchy.tier]] tables "
                              "(or [[tier]] tables at the top, as a hierarchy file)")
    if need_trace and "trace" not in doc:
        raise EngramTierError(f"{where}: no [trace] section; say where the trace comes from (source = \"sample\")")
    trace = _trace_config(doc.get("trace", {}), path)
    hierarchy = Hierarchy.from_dict(doc["hierarchy"], f"{where}: [hierarchy]", (path.parent,))
    timing = _timing_config(doc.get("timing", {}), f"{where}: [timing]")
    sweep = _sweep_config(doc.get("sweep", {}), hierarchy, f"{where}: [sweep]", path.parent)
    cost = _cost_config(doc.get("cost", {}), f"{where}: [cost]")
    plan = _plan_config(doc["plan"], hierarchy, f"{where}: [plan]") if "plan" in doc else None
    return ExperimentConfig(str(path), trace, hierarchy, timing, sweep, cost, plan)


def _typed(table: Mapping[str, Any], cls, where: str) -> dict:
    """``table``'s keys checked against ``cls``'s fields, lists made tuples, and a value whose default
    is text or a list checked to be one (numbers are checked with their bounds, by `check_number`)."""
    refuse_unknown(table, [f.name for f in fields(cls)], where)
    defaults = cls()
    out = {}
    for key, value in table.items():
        kind = type(getattr(defaults, key))
        if kind in _KINDS and not isinstance(tuple(value) if isinstance(value, list) else value, kind):
            raise EngramTierError(f"{where}: '{key}' must be {_KINDS[kind]}, got {reprlib.repr(value)}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


_KINDS = {str: "a string", tuple: "a list"}

# [trace]'s integers and their bounds: the shape's limits are the hasher's, the vocabulary's what the
# synthetic source can hold in memory, the seed what a uint64 hash seed takes as a signed integer.
_TRACE_INTEGERS = (("batch", 1, None), ("seq_len", 1, None), ("requests", 1, None), ("prompt_len", 0, None),
                   ("heads", 1, MAX_HEADS), ("max_ngram", 2, MAX_NGRAM), ("table_size", 2, MAX_TABLE_SIZE),
                   ("seed", 0, 2**63 - 1), ("row_bytes", 1, None), ("vocab", 1, MAX_ZIPF_VOCAB), ("tokens", 1, None))


def _trace_config(table: Mapping[str, Any], path: Path) -> TraceConfig:
    where = f"{path}: [trace]"
    cfg = TraceConfig(**_typed(_with_preset(table, where), TraceConfig, where))
    if cfg.file is not None and not isinstance(cfg.file, str):
        raise EngramTierError(f"{where}: 'file' must be a path string, got {reprlib.repr(table.get('file'))}")
    if cfg.preset is not None and cfg.source == "file":
        raise EngramTierError(f"{where}: a trace file (source = \"file\") has its own table shape; drop 'preset'")
    refuse_unknown([cfg.source], TRACE_SOURCES, where, "source")
    refuse_unknown([cfg.mode], MODES, where, "mode")
    if cfg.source == "text" and not cfg.paths:
        raise EngramTierError(f"{where}: source = \"text\" needs paths = [\"notes/\", ...]")
    if not all(isinstance(p, str) for p in cfg.paths):
        raise EngramTierError(f"{where}: 'paths' must be a list of path strings, got {reprlib.repr(list(cfg.paths))}")
    if cfg.source == "file" and not cfg.file:
        raise EngramTierError(f"{where}: source = \"file\" needs file = \"run.trace\"")
    for key, low, high in _TRACE_INTEGERS:
        check_number(getattr(cfg, key), f"{where}: '{key}'", integer=True, low=low, high=high)
    if cfg.engram_pad is not None:
        check_number(cfg.engram_pad, f"{where}: 'engram_pad' (a base token id)", integer=True, low=0)
    if cfg.image_token is not None:
        check_number(cfg.image_token, f"{where}: 'image_token' (a base token id)", integer=True, low=0)
    check_number(cfg.zipf_alpha, f"{where}: 'zipf_alpha'", low=0, low_open=True)
    if not all(isinstance(l, int) and not isinstance(l, bool) for l in cfg.layers):
        raise EngramTierError(f"{where}: 'layers' must be a list of layer numbers such as [1, 15], "
                              f"got {reprlib.repr(list(cfg.layers))}")
    problems = uniform_shape_problems(cfg.table_size, cfg.max_ngram, cfg.layers, cfg.heads)
    if problems:
        raise EngramTierError(f"{where}: " + "; ".join(problems))
    base = path.parent
    resolve = lambda p: str(p if Path(p).is_absolute() else base / p)  # noqa: E731
    return replace(cfg, paths=tuple(resolve(p) for p in cfg.paths), file=cfg.file and resolve(cfg.file))


def _with_preset(table: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """[trace] with its preset's shape under the keys the file gives (those win)."""
    name = table.get("preset")
    if name is None:
        return table
    if not isinstance(name, str):
        raise EngramTierError(f"{where}: 'preset' must be a preset name such as \"dsv41-flash\", got {name!r}")
    return {**get_preset(name, where).trace_settings(), **table}


def _timing_config(table: Mapping[str, Any], where: str) -> TimingConfig:
    cfg = TimingConfig(**_typed(table, TimingConfig, where))
    for name in ("window_s", "window_per_token_s", "compute_s", "compute_per_token_s"):
        if getattr(cfg, name) is not None:
            check_number(getattr(cfg, name), f"{where}: '{name}' (seconds)", low=0)
    given = [k for k in ("window_s", "window_per_token_s") if getattr(cfg, k) is not None]
    if len(given) != 1:
        raise EngramTierError(f"{where}: give exactly one of window_s (seconds per step) or window_per_token_s "
                              f"(seconds per token), got {', '.join(given) or 'neither'}")
    if cfg.window_s is not None and cfg.compute_s is not None and cfg.compute_per_token_s is None \
            and cfg.window_s > cfg.compute_s:
        raise EngramTierError(f"{where}: window_s {cfg.window_s} exceeds compute_s {cfg.compute_s}: the window is the "
                              "part of a step's compute before the Engram layer; give window_s <= compute_s")
    if cfg.overlap not in ("parallel", "serial"):
        raise EngramTierError(f"{where}: overlap must be \"parallel\" or \"serial\", got {cfg.overlap!r}")
    return cfg


def _sweep_config(table: Mapping[str, Any], hierarchy: Hierarchy, where: str, base: Path) -> SweepConfig:
    cfg = SweepConfig(**_typed(table, SweepConfig, where))
    for i, size in enumerate(cfg.sizes):
        _check_size(size, f"{where} sizes[{i}]")
    if not isinstance(cfg.tier_sizes, Mapping):
        raise EngramTierError(f"{where}: tier_sizes must be a table of tier name = [sizes], e.g. {{ gpu = [\"64MiB\"] }}")
    caches = [t.name for t in hierarchy.caches]
    refuse_unknown(cfg.tier_sizes, caches, f"{where} tier_sizes")
    tier_sizes = {}
    for name, sizes in cfg.tier_sizes.items():
        if not isinstance(sizes, list) or not sizes:
            raise EngramTierError(f"{where}: tier_sizes.{name} must be a non-empty list of sizes")
        for i, size in enumerate(sizes):
            _check_size(size, f"{where} tier_sizes.{name}[{i}]")
        tier_sizes[name] = tuple(sizes)
    if cfg.cxl_latencies_ns and cfg.cxl_capacity is None:
        raise EngramTierError(f"{where}: cxl_latencies_ns needs cxl_capacity (rows or a size such as \"1GiB\")")
    if cfg.cxl_capacity is not None:
        _check_size(cfg.cxl_capacity, f"{where} cxl_capacity")
    for i, latency in enumerate(cfg.cxl_latencies_ns):
        check_number(latency, f"{where} cxl_latencies_ns[{i}] (nanoseconds)", low=0)
    check_number(cfg.shards_rate, f"{where}: 'shards_rate' (the fraction of keys sampled)", low=0, high=1,
                 low_open=True)
    check_number(cfg.shards_seeds, f"{where}: 'shards_seeds'", integer=True, low=1)
    if cfg.workers is not None:
        check_number(cfg.workers, f"{where}: 'workers'", integer=True, low=1)
    if any(not isinstance(p, str) for p in cfg.policies):
        raise EngramTierError(f"{where}: policies must be a list of policy names, e.g. [\"lru\", \"s3fifo\"]")
    if cfg.sizes and not cfg.policies:
        raise EngramTierError(f"{where}: sizes are swept for each of 'policies', but it is empty; "
                              "list at least one, e.g. policies = [\"lru\"]")
    for policy in cfg.policies + ((cfg.cxl_policy,) if cfg.cxl_policy else ()):
        check_policy(policy, where, (base,))  # a "module:attribute" reference may sit beside the file
    return replace(cfg, tier_sizes=tier_sizes)


def _check_size(size, where: str) -> None:
    """Refuse a size that does not parse now; it becomes rows once the trace's row_bytes is known."""
    size_to_rows(size, 1, where)


def _cost_config(table: Mapping[str, Any], where: str) -> CostConfig:
    refuse_unknown(table, [f.name for f in fields(CostConfig)], where)
    prices = dict(DEFAULT_USD_PER_GB)
    given = table.get("usd_per_gb", {})
    if not isinstance(given, Mapping):
        raise EngramTierError(f"{where}: usd_per_gb must be a table such as {{ hbm = 15.0, dram = 4.0 }}")
    for name, price in given.items():
        prices[name] = float(check_number(price, f"{where}: usd_per_gb.{name} (dollars per GB)", low=0))
    budget = check_number(table.get("stall_budget", CostConfig().stall_budget),
                          f"{where}: 'stall_budget' (a stall fraction)", low=0, high=1)
    return CostConfig(prices, float(budget))


def _plan_config(table: Mapping[str, Any], hierarchy: Hierarchy, where: str) -> PlanConfig:
    cfg = PlanConfig(**_typed(table, PlanConfig, where))
    for key, what in (("hbm_budget", "the HBM bytes KV cache and Engram tier share, e.g. \"80GiB\""),
                      ("kv_bytes_per_token", "the backbone's KV bytes per token, e.g. 131072 or \"128KiB\"")):
        if key not in table:
            raise EngramTierError(f"{where}: '{key}' is missing; give {what}")
        _check_bytes(getattr(cfg, key), f"{where}: '{key}'")
    if cfg.context_len is not None:
        check_number(cfg.context_len, f"{where}: 'context_len' (tokens)", integer=True, low=1)
    if cfg.context_len is not None and cfg.mix:
        raise EngramTierError(f"{where}: give context_len or mix, not both")
    for i, pair in enumerate(cfg.mix):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise EngramTierError(f"{where}: mix[{i}] must be [context_len, share], e.g. [4096, 0.25]")
        check_number(pair[0], f"{where}: mix[{i}] context_len (tokens)", integer=True, low=1)
        check_number(pair[1], f"{where}: mix[{i}] share", low=0, high=1, low_open=True)
    if cfg.mix and abs(sum(p[1] for p in cfg.mix) - 1) > 1e-6:
        raise EngramTierError(f"{where}: the shares of mix add up to {sum(p[1] for p in cfg.mix):g}; make them add up to 1")
    if bool(cfg.batches) == bool(cfg.kv_fractions):
        raise EngramTierError(f"{where}: give exactly one of batches (sequences in flight, e.g. [1, 8, 32]) or "
                              "kv_fractions (of the budget given to KV, e.g. [0.1, 0.5, 0.9])")
    for i, b in enumerate(cfg.batches):
        check_number(b, f"{where}: batches[{i}] (sequences)", integer=True, low=1)
    for i, f in enumerate(cfg.kv_fractions):
        check_number(f, f"{where}: kv_fractions[{i}]", low=0, high=1, low_open=True)
    caches = [t.name for t in hierarchy.caches]
    if not caches:
        raise EngramTierError(f"{where}: the hierarchy has no cache tier to give HBM to; add a gpu tier above the store")
    if cfg.tier is not None:
        refuse_unknown([cfg.tier], caches, where, "tier")
    return replace(cfg, tier=cfg.tier or caches[0], mix=tuple(tuple(p) for p in cfg.mix))


def _check_bytes(size, where: str) -> None:
    """Refuse a byte count that is neither a positive integer nor a size string such as "80GiB"."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise EngramTierError(f"{where}: give bytes (an integer) or a size such as \"80GiB\", got {size!r}")
    size_to_rows(size, 1, where)


def _plain(obj) -> dict:
    return {f.name: (dict(v) if isinstance(v := getattr(obj, f.name), Mapping) else list(v) if isinstance(v, tuple) else v)
            for f in fields(obj)}
