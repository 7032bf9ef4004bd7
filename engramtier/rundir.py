"""Run directories: the one place every command writes what it did and what it found.

    RUN/config.json      command, arguments, experiment config, hash fingerprint, machine, version, time
    RUN/results.jsonl    one JSON object per experiment point (or per step), appended as they finish
    RUN/summary.json     the numbers a reader wants first
    RUN/figures/NAME.png and NAME.svg
    RUN/report.html, RUN/report.md   written by `engramtier report RUN`

A run directory is self-describing: `engramtier report` needs nothing but the folder, and a result
read a year later still says which code, settings and machine produced it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from engramtier import __version__
from engramtier.errors import EngramTierError
from engramtier.outputs import atomic_output, write_text_atomic

CONFIG, RESULTS, SUMMARY, FIGURES = "config.json", "results.jsonl", "summary.json", "figures"
FIGURE_FORMATS = ("png", "svg")
REPORTS = ("report.html", "report.md")


def default_run_path(command: str, root: str | Path = "runs") -> Path:
    """``runs/<command>-<YYYYmmdd-HHMMSS>``, with a suffix when that folder exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{command}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{command}-{stamp}-{n}"
    return path


def to_json(obj: Any) -> Any:
    """``obj`` made JSON-ready: numpy scalars and arrays become numbers and lists, paths and the rest text."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class RunDir:
    """A run directory being written (`create`) or read (`open`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path | None, command: str, arguments: dict, config: dict | None = None,
               fingerprint: str | None = None) -> "RunDir":
        """Make the folder (``None``: a fresh one under ``./runs``) and write ``config.json``. A folder
        used before loses its results, summary, figures, CSV curves and reports, so nothing stale joins the new run."""
        from engramtier.provenance import machine_info

        run = cls(default_run_path(command) if path is None else path)
        if run.path.exists() and not run.path.is_dir():
            raise EngramTierError(f"{run.path} is a file, not a run directory; pass another --out")
        (run.path / FIGURES).mkdir(parents=True, exist_ok=True)
        for stale in [*(run.path / FIGURES).glob("*.*"), *run.path.glob("*.csv"),
                      *(run.path / name for name in (SUMMARY, *REPORTS))]:
            stale.unlink(missing_ok=True)
        (run.path / RESULTS).write_text("")
        run._write(CONFIG, {
            "command": command,
            "arguments": arguments,
            "config": config,
            "fingerprint": fingerprint,
            "machine": machine_info(),
            "engramtier": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory; a folder without ``config.json`` is refused."""
        run = cls(path)
        if not run.path.is_dir():
            raise EngramTierError(f"{run.path}: no such run directory; give a folder written by an engramtier command")
        if not (run.path / CONFIG).is_file():
            raise EngramTierError(f"{run.path}: not a run directory (no {CONFIG}); give a folder written by an engramtier command")
        return run

    def _write(self, name: str, obj: Any) -> None:
        write_text_atomic(self.path / name, json.dumps(to_json(obj), indent=2) + "\n")

    def update_config(self, **fields: Any) -> None:
        """Add ``fields`` to ``config.json`` (e.g. the fingerprint once the trace is built)."""
        self._write(CONFIG, {**self.config(), **fields})

    def append(self, records: Iterable[dict]) -> None:
        """Append one JSON line per record to ``results.jsonl``."""
        with (self.path / RESULTS).open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(to_json(record)) + "\n")

    def write_summary(self, summary: dict) -> None:
        self._write(SUMMARY, summary)

    def save_figure(self, fig, name: str) -> list[Path]:
        """Save a matplotlib figure as ``figures/NAME.png`` and ``.svg`` and close it."""
        import matplotlib.pyplot as plt

        paths = []
        for fmt in FIGURE_FORMATS:
            path = self.path / FIGURES / f"{name}.{fmt}"
            with atomic_output(path, "figure") as part:
                fig.savefig(part, format=fmt, dpi=120 if fmt == "png" else None, bbox_inches="tight")
            paths.append(path)
        plt.close(fig)
        return paths

    def config(self) -> dict:
        return self._read(CONFIG)

    def summary(self) -> dict:
        return self._read(SUMMARY)

    def results(self) -> list[dict]:
        path = self.path / RESULTS
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def figures(self) -> list[str]:
        """Names of the saved figures (those with both formats), sorted."""
        folder = self.path / FIGURES
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.svg") if p.with_suffix(".png").is_file())

    def _read(self, name: str) -> dict:
        path = self.path / name
        if not path.is_file():
            raise EngramTierError(f"{self.path}: no {name}; the run did not finish, run its command again")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EngramTierError(f"{path}: not valid JSON ({err}); the run was cut short, run it again") from None
