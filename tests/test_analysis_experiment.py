"""What an experiment assumes is said (step time without a compute figure, in one line), and one hierarchy
file serves every command."""

from __future__ import annotations

import json

import pytest
from configs import gpu_over_nvme, hierarchy

from engramtier.cache.hierarchy import load_hierarchy
from engramtier.cli import main

HIERARCHY = hierarchy(gpu_over_nvme(300)) + "[timing]\nwindow_per_token_s = 3e-6\n"


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("timing") / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "3000", "--tokens", "20000", "--table-size", "10007",
                 "--layers", "1", "--heads", "2", "--batch", "4", "--seq-len", "256", "-o", str(path), "--quiet"]) == 0
    return path


def simulate(tmp_path, trace, capsys, *options, text=HIERARCHY):
    hierarchy = tmp_path / "h.toml"
    hierarchy.write_text(text)
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    code = main(["simulate", "--hierarchy", str(hierarchy), str(trace), "--out", str(out), "--quiet", *options])
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text()) if code == 0 else None
    steps = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] if code == 0 else []
    return code, captured.err, summary, [s for s in steps if s["experiment"] == "step"]


def test_a_window_without_compute_is_stated_as_an_assumption(tmp_path, trace, capsys):
    code, err, summary, steps = simulate(tmp_path, trace, capsys)
    assert code == 0 and len(steps) > 1
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "no compute_s or compute_per_token_s" in notes[0] and "--compute-per-token-s" in notes[0]
    assert summary["timing_assumption"] in notes[0]
    sim = summary["simulation"]
    assert all(s["compute_s"] == s["window_s"] for s in steps)
    assert sim["compute_seconds"] == pytest.approx(sum(s["window_s"] for s in steps))


def test_a_compute_option_removes_the_assumption_and_changes_the_step_time(tmp_path, trace, capsys):
    _, _, assumed, _ = simulate(tmp_path, trace, capsys)
    code, err, given, _ = simulate(tmp_path, trace, capsys, "--compute-per-token-s", "5e-5")
    assert code == 0 and "note:" not in err and given["timing_assumption"] is None
    assert given["simulation"]["compute_seconds"] == pytest.approx(assumed["simulation"]["compute_seconds"] * 50 / 3)
    assert given["simulation"]["stall_seconds"] == pytest.approx(assumed["simulation"]["stall_seconds"])


def test_both_compute_options_are_one_line_refused(tmp_path, trace, capsys):
    code, err, _, _ = simulate(tmp_path, trace, capsys, "--compute-s", "1", "--compute-per-token-s", "5e-5")
    assert code == 2 and len(err.splitlines()) == 1 and "--compute-s or --compute-per-token-s, not both" in err


def test_the_runtime_hierarchy_format_simulates_identically(tmp_path, trace, capsys):
    """replay's hierarchy file (``mode`` and ``[[tier]]`` at the top) and an experiment file's
    ``[hierarchy]`` are one format: simulate takes both, the runtime's loader reads both."""
    top_level = HIERARCHY.replace("[hierarchy]\n", 'mode = "inclusive"\n').replace("[[hierarchy.tier]]", "[[tier]]")
    _, _, nested, _ = simulate(tmp_path, trace, capsys)
    code, err, flat, _ = simulate(tmp_path, trace, capsys, text=top_level)
    assert code == 0, err
    assert flat["simulation"]["tiers"] == nested["simulation"]["tiers"] and flat["simulation"]["tiers"][0]["hits"] > 0
    (tmp_path / "nested.toml").write_text(HIERARCHY)
    (tmp_path / "flat.toml").write_text(top_level)
    assert load_hierarchy(tmp_path / "nested.toml") == load_hierarchy(tmp_path / "flat.toml")


def test_simulate_warm_reports_cold_and_warm_first_steps_and_says_whether_the_profile_is_honest(
        tmp_path, trace, capsys):
    code, _, plain, _ = simulate(tmp_path, trace, capsys, "--first-steps", "3")
    assert code == 0 and plain["simulation"]["first_steps"]["steps"] == 3 and "warm_start" not in plain
    code, _, summary, _ = simulate(tmp_path, trace, capsys, "--warm", str(trace), "--first-steps", "3")
    assert code == 0
    warm = summary["warm_start"]
    assert warm["profile_is_the_measured_trace"] and "upper bound" in warm["note"]  # its own counts: said so
    assert warm["warm"]["served_share"]["gpu"] > warm["cold"]["served_share"]["gpu"]
    assert warm["warm"]["stall_seconds"] <= warm["cold"]["stall_seconds"] and warm["warm_rows"] == {"gpu": 300}
    assert warm["cold"] == summary["simulation"]["first_steps"]  # the main simulation is the cold one
    run = max(tmp_path.glob("run*"), key=lambda p: p.stat().st_mtime)
    assert (run / "figures" / "warm_start.png").is_file() and (run / "figures" / "warm_start.svg").is_file()
    code, err, _, _ = simulate(tmp_path, trace, capsys, "--warm", str(tmp_path / "nope.npy"))
    assert code != 0 and "nope.npy does not exist" in err and len(err.strip().splitlines()) == 1
