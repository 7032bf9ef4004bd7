"""The TOML several test files write into experiment and hierarchy files: a small synthetic trace and the
usual tiers. The functions return TOML text (tiers are dicts until a hierarchy renders them); a test adds
the tables that are its own ([timing], [sweep], [cost]...). A string value is written quoted, so a format
field (``"{gpu}"``) may stand for a size or a policy that the test fills in later."""

from __future__ import annotations

import json
from typing import Any

ZIPF_TRACE = {"source": "zipf", "zipf_alpha": 0.9, "vocab": 500, "tokens": 3000, "seq_len": 100, "layers": [1],
              "heads": 2, "max_ngram": 2, "table_size": 1009}


def _table(header: str, values: dict[str, Any]) -> str:
    """``values`` under ``header`` (none: top-level keys), leaving out those that are None."""
    lines = [f"{key} = {json.dumps(value)}\n" for key, value in values.items() if value is not None]
    return (header + "\n" if header else "") + "".join(lines)


def zipf_trace(**changes: Any) -> str:
    """[trace]: 3,000 Zipf tokens over a 1,009-row table (`ZIPF_TRACE`), with ``changes`` (None drops a key)."""
    return _table("[trace]", {**ZIPF_TRACE, **changes})


def file_trace(path: Any) -> str:
    """[trace]: the trace file at ``path`` (relative to the TOML file, or absolute)."""
    return _table("[trace]", {"source": "file", "file": str(path)})


def tier(name: str, capacity: Any = None, policy: str | None = None, model: str | None = None) -> dict[str, Any]:
    """One tier; the last of a hierarchy has no capacity or policy."""
    return {"name": name, "capacity": capacity, "policy": policy, "model": model}


def gpu_over_nvme(capacity: Any, policy: str = "lru") -> list[dict[str, Any]]:
    """A gpu tier (the hbm model) over the nvme store."""
    return [tier("gpu", capacity, policy, "hbm"), tier("nvme", model="nvme")]


def gpu_dram_nvme(gpu: Any, dram: Any, gpu_policy: str = "lru", dram_policy: str = "lru") -> list[dict[str, Any]]:
    """A gpu tier (hbm) over a dram tier over the nvme store."""
    return [tier("gpu", gpu, gpu_policy, "hbm"), tier("dram", dram, dram_policy, "dram"), tier("nvme", model="nvme")]


def hierarchy(tiers: list[dict[str, Any]], mode: str | None = None) -> str:
    """The [hierarchy] table of an experiment file."""
    return _table("[hierarchy]", {"mode": mode}) + "".join(_table("[[hierarchy.tier]]", t) for t in tiers)


def hierarchy_file(tiers: list[dict[str, Any]], mode: str | None = None) -> str:
    """A hierarchy file of its own (``--hierarchy``): ``mode`` and the [[tier]] tables at the top level."""
    return _table("", {"mode": mode}) + "".join(_table("[[tier]]", t) for t in tiers)
