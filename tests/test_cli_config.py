"""Experiment TOML mistakes refused through the command line: one line on stderr, exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from configs import gpu_dram_nvme, hierarchy, zipf_trace

from engramtier.analysis.config import load_config
from engramtier.analysis.sweep import simulate_point
from engramtier.cli import main
from engramtier.trace.tracefile import load_trace

HIERARCHY = hierarchy(gpu_dram_nvme("{gpu}", 2000, dram_policy="fifo"), mode="inclusive")

GOOD = zipf_trace(zipf_alpha=1.0, batch=2) + HIERARCHY.format(gpu="32KiB") + """
[timing]
window_s = 1e-4

[sweep]
sizes = [100, "64KiB"]
"""


def _fail(tmp_path, capsys, text: str, *command: str) -> str:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    args = [a.replace("CONFIG", str(path)) for a in command] or ["sweep", str(path), "--quiet", "--out",
                                                                  str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_malformed_toml_names_file_and_line(tmp_path, capsys):
    text = GOOD.replace("vocab = 500", "vocab 500")
    line = text.splitlines().index("vocab 500") + 1
    err = _fail(tmp_path, capsys, text)
    assert "exp.toml" in err and "malformed TOML" in err and f"line {line}" in err


@pytest.mark.parametrize("typo, right, where", [
    ("capacity = \"32KiB\"", "capacty = \"32KiB\"", "capacity"),
    ("sizes = [100", "sizs = [100", "sizes"),
    ("window_s = 1e-4", "window_sec = 1e-4", "window_s"),
    ("[timing]", "[timming]", "timing"),
    ("zipf_alpha = 1.0", "zipf_alfa = 1.0", "zipf_alpha"),
])
def test_unknown_key_suggests_the_closest(tmp_path, capsys, typo, right, where):
    text = GOOD.replace(typo, right, 1)
    assert text != GOOD
    err = _fail(tmp_path, capsys, text)
    bad = right.split(" =")[0].strip("[]")
    assert f"unknown key '{bad}'" in err and f"did you mean '{where}'" in err and "exp.toml" in err


@pytest.mark.parametrize("text", [
    HIERARCHY.format(gpu="2 GiBs"),
    GOOD.replace('sizes = [100, "64KiB"]', 'sizes = [100, "2 GiBs"]'),
])
def test_size_that_does_not_parse(tmp_path, capsys, text):
    if "[trace]" not in text:
        text = GOOD.split("[hierarchy]")[0] + text + "\n[timing]\nwindow_s = 1e-4\n"
    err = _fail(tmp_path, capsys, text)
    assert "'2 GiBs' does not parse" in err and "exp.toml" in err
    assert "tier 'gpu' capacity" in err or "sizes[1]" in err


@pytest.mark.parametrize("old, new, message", [
    ("window_s = 1e-4", "", "give exactly one of window_s"),
    ("window_s = 1e-4", "window_s = 1e-4\nwindow_per_token_s = 1e-6", "give exactly one of window_s"),
    ("window_s = 1e-4", "window_s = \"fast\"", "[timing]: 'window_s' (seconds) must be a finite number"),
    ("window_s = 1e-4", "window_s = -1.0", "'window_s' (seconds) must be a finite number >= 0, got -1.0"),
    ("sizes = [100, \"64KiB\"]", "sizes = [100]\nworkers = \"all\"", "'workers' must be an integer >= 1"),
    ("source = \"zipf\"", "source = \"zip\"", "did you mean 'zipf'"),
    ("policy = \"fifo\"", "policy = \"fifoo\"", "did you mean 'fifo'"),
    ("sizes = [100, \"64KiB\"]", "sizes = [100]\ntier_sizes = { hbm = [10] }", "unknown key 'hbm'"),
    ("heads = 2", "heads = \"two\"", "'heads' must be an integer"),
])
def test_other_mistakes(tmp_path, capsys, old, new, message):
    err = _fail(tmp_path, capsys, GOOD.replace(old, new, 1))
    assert message in err


def test_trace_preset_sets_defaults_that_keys_override(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(GOOD.replace('source = "zipf"', 'source = "zipf"\npreset = "dsv41-flash"')
                    .replace("layers = [1]\nheads = 2\nmax_ngram = 2\n", ""))
    trace = load_config(path).trace
    assert (trace.preset, trace.layers, trace.heads, trace.max_ngram) == ("dsv41-flash", (1, 14), 8, 4)
    assert (trace.table_size, trace.row_bytes, trace.engram_pad) == (1009, 264, 2)  # table_size is the file's
    path.write_text(GOOD)
    trace = load_config(path, preset="engram-27b").trace  # --preset replaces the file's shape keys
    assert (trace.preset, trace.layers, trace.max_ngram, trace.table_size) == ("engram-27b", (2, 15), 3, 2_262_400)
    assert trace.vocab == 500 and trace.source == "zipf"


@pytest.mark.parametrize("old, new, message", [
    ('source = "zipf"', 'source = "zipf"\npreset = "dsv4"', "unknown preset 'dsv4': choose one of dsv41-flash"),
    ('source = "zipf"', 'source = "zipf"\npreset = 4', "'preset' must be a preset name"),
    ('source = "zipf"', 'source = "file"\nfile = "x.trace"\npreset = "engram-27b"', "drop 'preset'"),
    ('source = "zipf"', 'source = "zipf"\nengram_pad = -1', "'engram_pad' (a base token id) must be an integer >= 0"),
    ('source = "zipf"', 'source = "zipf"\nimage_token = 1.5', "'image_token' (a base token id) must be an integer >= 0"),
])
def test_preset_mistakes(tmp_path, capsys, old, new, message):
    err = _fail(tmp_path, capsys, GOOD.replace(old, new, 1))
    assert message in err and "[trace]" in err


def test_preset_option_refusals(tmp_path, capsys):
    err = _fail(tmp_path, capsys, GOOD, "sweep", "CONFIG", "--preset", "nope", "--out", str(tmp_path / "r"))
    assert err.endswith("--preset: unknown preset 'nope': choose one of dsv41-flash, engram-27b, engram-40b")
    err = _fail(tmp_path, capsys, GOOD, "simulate", "--hierarchy", "CONFIG", "some.trace", "--preset", "engram-27b")
    assert "drop --preset" in err


def test_missing_config_and_run_dir(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2
    assert "no such file; give the path of an experiment .toml" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such run directory" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "sweep", "mrc", "report", "quickstart"])
def test_help_has_examples(command, capsys):
    assert main([command, "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_simulate_with_hierarchy_file_matches_direct_simulation(tmp_path, capsys):
    trace_path = tmp_path / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.0", "--vocab", "500", "--tokens", "3000", "--seq-len", "100",
                 "--batch", "2", "--layers", "1", "--heads", "2", "--max-ngram", "2", "--table-size", "1009",
                 "-o", str(trace_path), "--quiet"]) == 0
    h_path = tmp_path / "h.toml"
    h_path.write_text(HIERARCHY.format(gpu="32KiB"))
    out = tmp_path / "run"
    assert main(["simulate", "--hierarchy", str(h_path), str(trace_path), "--window-s", "1e-4",
                 "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    trace = load_trace(trace_path)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["experiment"] == "step"]
    assert len(steps) == trace.n_steps
    # the per-step unique counts are those of the trace itself
    unique = [np.unique(trace.step(i)).size for i in range(trace.n_steps)]
    assert [s["unique"] for s in steps] == unique

    cfg = load_config(h_path, need_trace=False, overrides={"timing": {"window_s": 1e-4}})
    direct = simulate_point(trace, cfg.hierarchy, cfg.timing).summary()
    summary = json.loads((out / "summary.json").read_text())["simulation"]
    assert summary["stall_seconds"] == pytest.approx(direct["stall_seconds"])
    assert [t["hits"] for t in summary["tiers"]] == [t["hits"] for t in direct["tiers"]]
    assert (out / "report.html").is_file() and (out / "figures" / "step_timeline.svg").is_file()
