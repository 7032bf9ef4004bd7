"""Hit-rate curves as a CSV beside results.jsonl, and as a table on the terminal.

results.jsonl holds every record of a run, but a miss-ratio curve is wanted in a spreadsheet or in
pandas in one line, and whoever runs `sweep` or `mrc` wants the numbers on screen without opening a
file. Both take the same rows, one per (policy, size). Sizes are written compactly (6.6K rows, 1Mi
bytes) so that the shipped experiment's nine sizes fit in 80 columns.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from engramtier.outputs import atomic_output

CURVE_COLUMNS = ("policy", "size_rows", "size_bytes", "hit_rate", "miss_ratio")
HIT_RATE_CSV, MRC_CSV = "hit_rate.csv", "mrc.csv"
TABLE_WIDTH = 80
_CELL = 6  # "0.873", "256Mi", "1.6M": five characters and a space


def humanise(n: float, binary: bool = False) -> str:
    """A count in at most four characters and a unit: 1234 -> '1.2K', 35e6 -> '35M'; ``binary``
    counts in 1024s with an 'i' (1 << 20 -> '1Mi'), as bytes are sized."""
    base, suffix = (1024, "i") if binary else (1000, "")
    units = ("", "K", "M", "G", "T", "P")
    i = 0
    while abs(n) >= 999.5 and i < len(units) - 1:  # 999.5 would round to '1000': the next unit says it shorter
        n, i = n / base, i + 1
    text = f"{n:.1f}".removesuffix(".0") if abs(n) < 9.95 else f"{n:.0f}"
    return text + (units[i] + suffix if i else "")


def curve_row(policy: str, size_rows: int, row_bytes: int, hit_rate: float) -> dict:
    """One point of a curve, with the CSV's columns."""
    return {"policy": policy, "size_rows": int(size_rows), "size_bytes": int(size_rows) * row_bytes,
            "hit_rate": float(hit_rate), "miss_ratio": 1.0 - float(hit_rate)}


def write_curves_csv(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write ``rows`` (see `curve_row`) to ``path`` atomically: a reader sees the old file or the whole new one."""
    with atomic_output(path, "curve CSV") as part:
        with part.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CURVE_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: r[k] for k in CURVE_COLUMNS} for r in rows)
    return Path(path)


def read_curves_csv(path: str | Path) -> list[dict]:
    """The rows `write_curves_csv` wrote, with their numbers as numbers."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{"policy": r["policy"], "size_rows": int(r["size_rows"]), "size_bytes": int(r["size_bytes"]),
                 "hit_rate": float(r["hit_rate"]), "miss_ratio": float(r["miss_ratio"])} for r in csv.DictReader(f)]


def hit_rate_table(rows: Sequence[Mapping], width: int = TABLE_WIDTH) -> str:
    """Policies down, sizes across (rows above bytes), hit rates to three decimals. When not every size
    fits in ``width`` characters, evenly spaced ones do (the smallest and the largest always) and a last
    line says how many are shown."""
    sizes = sorted({(r["size_rows"], r["size_bytes"]) for r in rows})
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    rate = {(r["policy"], r["size_rows"]): r["hit_rate"] for r in rows}
    first = max(len("hit rate"), *map(len, policies))
    fit = max(2, (width - first) // (_CELL + 1))
    shown = sizes if len(sizes) <= fit else [sizes[i] for i in np.unique(np.linspace(0, len(sizes) - 1, fit).round().astype(int))]

    def line(label: str, cells: Iterable[str]) -> str:
        return f"{label:<{first}} " + " ".join(f"{c:>{_CELL}}" for c in cells)

    lines = [line("rows", (humanise(s) for s, _ in shown)), line("bytes", (humanise(b, binary=True) for _, b in shown)),
             line("hit rate", ("-" * _CELL for _ in shown))]
    lines += [line(p, (f"{rate[p, s]:.3f}" if (p, s) in rate else "-" for s, _ in shown)) for p in policies]
    if len(shown) < len(sizes):
        lines.append(f"({len(shown)} of {len(sizes)} sizes shown)")
    return "\n".join(lines)
