"""Run directories: the one place every command writes what it did and what it found.

    RUN/engramtier-run.json   which command wrote the folder, with which arguments (every run has it)
    RUN/config.json      command, arguments, experiment config, hash fingerprint, machine, version, time,
                         the stages planned and those finished (a trained model's folder holds its model
                         config here instead)
    RUN/results.jsonl    one JSON object per experiment point (or per step), appended as they finish
    RUN/summary.json     the numbers a reader wants first
    RUN/figures/NAME.png and NAME.svg
    RUN/report.html, RUN/report.md   written by `engramtier report RUN`

A run directory is self-describing: `engramtier report` needs nothing but the folder, and a result
read a year later still says which code, settings and machine produced it.

A folder is claimed (`claim`) before a command writes anything into it, and never at the cost of what
it holds: a new or empty folder is taken; a folder holding a run is taken only to run that same
command with the same arguments again (finishing or redoing it: what it held is its own output), or
with ``--force``, which empties it first; a folder holding anything else, or another run without
``--force``, is refused in one line, untouched. A claim locks the folder for the command's life
(`fcntl.flock`), so a second writer is refused rather than interleaving its results. A command that
is refused after claiming a new folder, before recording any result, removes it again (`RunDir` as a
context manager).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from engramtier import __version__
from engramtier.errors import EngramTierError
from engramtier.outputs import atomic_output, write_text_atomic
from engramtier.provenance import machine_info

CONFIG, RESULTS, SUMMARY, FIGURES = "config.json", "results.jsonl", "summary.json", "figures"
MARKER, LOCK = "engramtier-run.json", ".engramtier.lock"
FIGURE_FORMATS = ("png", "svg")
REPORTS = ("report.html", "report.md")
MODEL_FILES = ("model.safetensors",)  # a trained (or imported) model's folder
IGNORED_ARGUMENTS = ("force", "quiet", "run")  # what may differ between two runs of "the same" command


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


class Claim:
    """A folder claimed for one command's output: ``path``, whether this command made it (``fresh``),
    and the lock held on it until `release` (or the process ends). As a context manager it releases
    the lock at the end, and when the command is refused (an error, not an interruption) after making
    the folder and before ``recorded()`` says it holds a result, it removes the folder again."""

    def __init__(self, path: Path, fresh: bool, lock_fd: int) -> None:
        self.path, self.fresh, self._lock_fd = path, fresh, lock_fd
        self.recorded = lambda: False

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
        if exc_type is not None and self.fresh and not issubclass(exc_type, KeyboardInterrupt) and not self.recorded():
            shutil.rmtree(self.path, ignore_errors=True)


def _comparable(arguments: Any) -> Any:
    return {k: v for k, v in to_json(arguments).items() if k not in IGNORED_ARGUMENTS} \
        if isinstance(arguments, dict) else arguments


def _held_run(folder: Path) -> dict | None:
    """What run ``folder`` holds: its marker, or, for folders from before markers, a run's config.json
    ({command, arguments}) or a trained model ({command: train}); None when it holds no run."""
    for name in (MARKER, CONFIG):
        try:
            held = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(held, dict) and isinstance(held.get("command"), str):
            return {"command": held["command"], "arguments": held.get("arguments")}
    if any((folder / name).exists() for name in MODEL_FILES):
        return {"command": "train", "arguments": None}
    return None


def claim(path: str | Path | None, command: str, arguments: dict, force: bool | None = False,
          option: str = "--out") -> Claim:
    """Claim ``path`` (None: a fresh ``runs/<command>-<time>``) for a run of ``command`` with
    ``arguments``, or refuse in one line, leaving it untouched (see the module docstring); ``force``
    None: the command has no --force to offer."""
    if path is None:
        path = default_run_path(command)
    if not str(path).strip():
        raise EngramTierError(f"{option}: the path is empty; give a folder for the run (or leave {option} out)")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise EngramTierError(f"{option} {folder}: is a file, not a run directory; give another {option}")
    fresh = not folder.exists()
    if not fresh:
        _check_not_locked(folder, option)
        _check_takeover(folder, command, arguments, force, option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as err:
        raise EngramTierError(f"{option} {folder}: {err.strerror}; choose a writable folder") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise EngramTierError(f"{option} {folder}: another engramtier command is writing this run directory now; "
                              "wait for it to end or give another folder") from None
    if not fresh and force and _comparable(arguments) != _comparable((_held_run(folder) or {}).get("arguments")):
        for entry in folder.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    write_text_atomic(folder / MARKER, json.dumps({"command": command, "arguments": to_json(arguments)}, indent=2) + "\n")
    return Claim(folder, fresh, lock_fd)


def _check_not_locked(folder: Path, option: str) -> None:
    """Refuse a folder another command holds the lock of (before looking at what it holds: that is being written)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except OSError:
        return  # no lock file: nobody has claimed the folder since it was made
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise EngramTierError(f"{option} {folder}: another engramtier command is writing this run directory now; "
                              "wait for it to end or give another folder") from None
    finally:
        os.close(fd)


def _check_takeover(folder: Path, command: str, arguments: dict, force: bool | None, option: str) -> None:
    """Refuse to take a folder that holds something other than this same run (unless ``force`` and it
    holds a run)."""
    if not [e for e in folder.iterdir() if e.name != LOCK]:
        return
    held = _held_run(folder)
    if held is None:
        raise EngramTierError(f"{option} {folder}: holds files that are not an engramtier run; give a new or empty folder")
    same = held["command"] == command and held["arguments"] is not None \
        and _comparable(held["arguments"]) == _comparable(arguments)
    if same or force:
        return
    what = "a trained model" if held["command"] == "train" else f"a {held['command']} run"
    offer = "" if force is None else ", or add --force to replace it (its files are deleted)"
    raise EngramTierError(f"{option} {folder}: holds {what}; give a new folder{offer}")


class RunDir:
    """A run directory being written (`create`, a context manager holding its claim) or read (`open`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._claim: Claim | None = None

    @classmethod
    def create(cls, path: str | Path | None, command: str, arguments: dict, config: dict | None = None,
               fingerprint: str | None = None, *, force: bool = False, stages: Iterable[str] = ("run",)) -> "RunDir":
        """Claim the folder (`claim`; ``None`` is a fresh one under ``./runs``) and write ``config.json``
        with the ``stages`` the command will run. A folder holding this same run loses its results,
        summary, figures, CSV curves and reports, so nothing stale joins the new run."""

        taken = claim(path, command, arguments, force)
        run = cls(taken.path)
        run._claim = taken
        taken.recorded = lambda: bool(run.results())
        (run.path / FIGURES).mkdir(exist_ok=True)
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
            "stages": list(stages),
            "stages_done": [],
        })
        return run

    def stage_done(self, stage: str) -> None:
        """Record that ``stage`` finished (`missing_stages` then leaves it out)."""
        config = self.config()
        self._write(CONFIG, {**config, "stages_done": [*config.get("stages_done", []), stage]})

    def missing_stages(self) -> list[str]:
        """The stages the run planned and did not finish (its command was interrupted or failed); runs
        from before stages were recorded report none."""
        config = self.config()
        done = set(config.get("stages_done", []))
        return [s for s in config.get("stages", []) if s not in done]

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Release the claim (`Claim`: a new folder of a refused command that recorded no result is removed)."""
        if self._claim is not None:
            self._claim.__exit__(exc_type, exc, tb)

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


def add_out_options(p, default: str = "runs/<command>-<time>") -> None:
    """--out and --force: where a run goes, and whether it may replace another run there (`engramtier.rundir`)."""
    p.add_argument("--out", metavar="DIR", help=f"run directory (default: {default}); a folder holding another run "
                   "is refused, one holding this same run (same command and arguments) is run again")
    p.add_argument("--force", action="store_true", help="replace the run the --out folder holds (its files are "
                   "deleted first); a folder holding files that are not a run is refused even so")
