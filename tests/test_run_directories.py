"""Run directories through the real command line (engramtier.rundir): a folder holding a run, a trained
model or other files is never cleared by another command, a refused command leaves a new folder
uncreated, a second writer is refused, and an interrupted run's report says what is missing."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from configs import gpu_over_nvme, hierarchy, zipf_trace

from engramtier.cli import main
from engramtier.rundir import LOCK, claim


def experiment_text(tokens: int = 3000, gpu_sizes: str = "20, 40") -> str:
    return zipf_trace(tokens=tokens) + hierarchy(gpu_over_nvme(20)) + f"""
[timing]
window_per_token_s = 1e-9

[sweep]
policies = ["lru", "fifo"]
sizes = [10, 40]
tier_sizes = {{ gpu = [{gpu_sizes}] }}
"""


def experiment(folder: Path, name: str = "exp.toml", tokens: int = 3000, gpu_sizes: str = "20, 40") -> Path:
    path = folder / name
    path.write_text(experiment_text(tokens, gpu_sizes))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its bytes (and the folder's own listing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished sweep run and its experiment file."""
    folder = tmp_path_factory.mktemp("runs")
    config = experiment(folder)
    assert main(["sweep", str(config), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run", config


def test_commands_never_clear_a_folder_holding_another_run(finished, tmp_path, capsys):
    run, config = finished
    before = snapshot(run)
    other = experiment(tmp_path, gpu_sizes="30")
    trace = tmp_path / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "500", "--tokens", "2000", "--table-size", "1009",
                 "--layers", "1", "--heads", "2", "--quiet", "-o", str(trace)]) == 0
    capsys.readouterr()
    for argv, words in [
        (["sweep", str(other), "--out", str(run), "--quiet"], "holds a sweep run"),
        (["simulate", str(config), "--out", str(run), "--quiet"], "holds a sweep run"),
        (["mrc", str(trace), "--out", str(run), "--quiet"], "holds a sweep run"),
        (["quickstart", "--tiny", "--out", str(run), "--quiet"], "holds a sweep run"),
        (["sweep", str(tmp_path / "missing.toml"), "--out", str(run)], "missing.toml"),
        (["sweep", str(config), "--out", "", "--quiet"], "the path is empty"),
    ]:
        assert words in refused(capsys, argv)
        assert snapshot(run) == before, argv


def test_a_trained_model_and_other_files_are_not_a_run_to_replace(finished, tmp_path, capsys):
    _, config = finished
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"d_model": 128}')  # a trained model's config: no command in it
    (model / "model.safetensors").write_bytes(b"weights")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for folder, words in ((model, "holds a trained model; give a new folder, or add --force"),
                          (mine, "holds files that are not an engramtier run")):
        before = snapshot(folder)
        assert words in refused(capsys, ["sweep", str(config), "--out", str(folder), "--quiet"])
        assert snapshot(folder) == before
    assert "not an engramtier run" in refused(capsys, ["sweep", str(config), "--out", str(mine), "--force", "--quiet"])
    assert (mine / "notes.txt").read_text() == "my notes"
    assert main(["sweep", str(config), "--out", str(model), "--force", "--quiet"]) == 0  # --force replaces a run
    assert not (model / "model.safetensors").exists() and (model / "summary.json").is_file()


def test_the_same_run_again_is_run_again(tmp_path):
    config = experiment(tmp_path)
    out = tmp_path / "run"
    assert main(["sweep", str(config), "--out", str(out), "--quiet"]) == 0
    first = json.loads((out / "summary.json").read_text())
    assert main(["sweep", str(config), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text()) == first
    assert json.loads((out / "config.json").read_text())["stages_done"] == ["trace", "hit_rate", "stall", "cost"]


def test_refusals_leave_no_new_folder(tmp_path, capsys):
    """Refused before the folder is claimed, or after (a text source that is not text is found while the
    trace is built): either way the folder the command would have made does not exist afterwards."""
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    text_config = tmp_path / "text.toml"
    text_config.write_text(experiment_text(tokens=1, gpu_sizes="20").replace(
        'source = "zipf"', f'source = "text"\npaths = ["{binary}"]'))
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[trace\n")
    for n, argv in enumerate([["simulate", str(text_config)], ["sweep", str(bad_toml)], ["simulate", str(bad_toml)],
                              ["mrc", str(binary)], ["plan", str(bad_toml)]]):
        out = tmp_path / f"new-{n}"
        refused(capsys, [*argv, "--out", str(out), "--quiet"])
        assert not out.exists(), argv


def test_a_second_writer_is_refused(finished, tmp_path, capsys):
    run, config = finished
    before = snapshot(run)
    lock = os.open(run / LOCK, os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a command writing the run holds it
    try:
        assert "another engramtier command is writing" in refused(capsys, ["sweep", str(config), "--out", str(run),
                                                                           "--quiet"])
    finally:
        os.close(lock)
    assert snapshot(run) == before
    with claim(tmp_path / "new", "sweep", {}):  # a fresh folder, claimed by a command still running
        assert "another engramtier command is writing" in refused(capsys, ["sweep", str(config), "--out",
                                                                           str(tmp_path / "new"), "--quiet"])


def test_an_interrupted_sweep_is_reported_incomplete(tmp_path, capsys):
    config = experiment(tmp_path, tokens=200_000, gpu_sizes=", ".join(str(s) for s in range(10, 400, 10)))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "engramtier.cli", "sweep", str(config), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while True:  # kill it once its first sweep stage is recorded as finished
        try:
            done = json.loads((out / "config.json").read_text()).get("stages_done", [])
        except (OSError, ValueError):
            done = []
        if "hit_rate" in done:
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "is incomplete: its command did not finish stage(s) stall" in err
    assert "INCOMPLETE" in (out / "report.html").read_text()


def test_successful_runs_warn_of_nothing(tmp_path, recwarn, capsys):
    config = experiment(tmp_path)
    trace = tmp_path / "z.trace"
    for argv in (["trace", "--synthetic-zipf", "1.0", "--vocab", "500", "--tokens", "2000", "--table-size", "1009",
                  "--layers", "1", "--heads", "2", "--quiet", "-o", str(trace)],
                 ["stats", str(trace), "--json", str(tmp_path / "s.json")],
                 ["export", str(trace), "--format", "csv", "-o", str(tmp_path / "z.csv")],
                 ["mrc", str(trace), "--out", str(tmp_path / "mrc"), "--quiet"],
                 ["sweep", str(config), "--out", str(tmp_path / "sweep"), "--quiet"],
                 ["report", str(tmp_path / "sweep")]):
        assert main(argv) == 0, capsys.readouterr().err
    assert [str(w.message) for w in recwarn] == []
    assert "warning" not in capsys.readouterr().err.lower()
