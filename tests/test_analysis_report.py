"""Run directories and reports: what is written, what the report embeds, and the `mrc` and `sweep` commands."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from configs import file_trace, gpu_over_nvme, hierarchy

from engramtier.analysis.report import write_report
from engramtier.cache.mrc import lru_mrc
from engramtier.cli import main
from engramtier.errors import EngramTierError
from engramtier.rundir import RunDir
from engramtier.trace.tracefile import load_trace


def _figure(value: float):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, value])
    ax.set_title(f"line to {value}")
    return fig


def test_run_dir_and_report_by_hand(tmp_path):
    run = RunDir.create(tmp_path / "r", "unit", {"x": 1}, {"answer": 42}, fingerprint="abc123")
    run.append([{"experiment": "p", "value": np.float64(0.25)}, {"experiment": "p", "value": np.int64(3)}])
    run.append([{"experiment": "q", "sizes": np.arange(3)}])
    run.save_figure(_figure(2.0), "first")
    run.save_figure(_figure(3.0), "second")
    summary = {"trace": {"requests": 123456, "zipf_alpha": 0.8125},
               "hit_rate": {"lru": {"1 MiB": 0.3125, "2 MiB": 0.4375}, "fifo": {"1 MiB": 0.25, "2 MiB": 0.375}},
               "extra": {"note": "kept as JSON"}}
    run.write_summary(summary)

    assert [r["value"] for r in run.results()[:2]] == [0.25, 3] and run.results()[2]["sizes"] == [0, 1, 2]
    assert run.figures() == ["first", "second"]
    config = run.config()
    assert config["command"] == "unit" and config["fingerprint"] == "abc123" and config["config"] == {"answer": 42}
    assert {"python", "numpy", "numba", "platform", "cpu_count"} <= set(config["machine"])

    html_path, md_path = write_report(run.path)
    html, md = html_path.read_text(), md_path.read_text()
    assert html.count("<svg") == 2 and "line to 2.0" in html and "line to 3.0" in html
    assert "<?xml" not in html and "src=" not in html  # self-contained: nothing to fetch
    for number in ("123,456", "0.8125", "0.3125", "0.4375", "0.375", "abc123", "kept as JSON"):
        assert number in html and number in md, number
    assert "| policy | 1 MiB | 2 MiB |" in md and "| lru | 0.3125 | 0.4375 |" in md
    assert "![first](figures/first.png)" in md
    assert config["machine"]["platform"] in html

    (run.path / "hit_rate.csv").write_text("policy,size_rows\n")
    with pytest.raises(EngramTierError, match="another engramtier command is writing this run directory"):
        RunDir.create(run.path, "unit", {"x": 1})  # the folder is locked while its run is written
    run.__exit__(None, None, None)
    with pytest.raises(EngramTierError, match="holds a unit run; give a new folder, or add --force"):
        RunDir.create(run.path, "unit", {"x": 2})
    assert run.results() and (run.path / "report.html").exists()  # a refusal leaves the run as it was
    with RunDir.create(run.path, "unit", {"x": 1}) as again:  # the same run again drops its old outputs
        assert again.figures() == [] and again.results() == [] and not (run.path / "report.html").exists()
        assert not (run.path / "hit_rate.csv").exists()
    with RunDir.create(run.path, "other", {}, force=True) as replaced:
        assert replaced.config()["command"] == "other" and not (run.path / "figures" / "first.svg").exists()


def test_unfinished_run_is_refused(tmp_path):
    with RunDir.create(tmp_path / "r", "unit", {}) as run:
        pass
    with pytest.raises(EngramTierError, match="no summary.json; the run did not finish"):
        write_report(run.path)
    (run.path / "summary.json").write_text("{not json")
    with pytest.raises(EngramTierError, match="not valid JSON"):
        write_report(run.path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EngramTierError, match="is a file, not a run directory"):
        RunDir.create(tmp_path / "file", "unit", {})


@pytest.fixture(scope="module")
def zipf_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "z.trace"
    assert main(["trace", "--synthetic-zipf", "0.9", "--vocab", "2000", "--tokens", "20000", "--seq-len", "200",
                 "--batch", "2", "--layers", "1", "--heads", "2", "--max-ngram", "2", "--table-size", "5003",
                 "-o", str(path), "--quiet"]) == 0
    return path


def test_mrc_command(zipf_trace, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["mrc", str(zipf_trace), "--shards", "0.2", "--seeds", "3", "--sizes", "10,100,1000,1KiB",
                 "--out", str(out), "--quiet"]) == 0
    assert "mean abs. error" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    trace = load_trace(zipf_trace)
    sizes = sorted({10, 100, 1000, 1024 // trace.row_bytes})  # "1KiB" holds 6 rows of 160 B
    exact = lru_mrc(trace.rows, sizes)
    assert [r["size_rows"] for r in records] == sizes
    assert [r["exact_miss_ratio"] for r in records] == pytest.approx(exact.miss_ratios.tolist())
    assert all(len(r["shards_miss_ratios"]) == 3 for r in records)
    assert (out / "figures" / "mrc_shards.svg").is_file() and (out / "report.html").is_file()
    assert main(["mrc", str(zipf_trace), "--sizes", "10,2 GiBs", "--out", str(tmp_path / "bad")]) == 2
    assert "'2 GiBs' does not parse" in capsys.readouterr().err


def test_sweep_command_stages(zipf_trace, tmp_path, capsys):
    config = tmp_path / "exp.toml"
    config.write_text(file_trace(zipf_trace.name) + hierarchy(gpu_over_nvme(50)) + """
[timing]
window_per_token_s = 1e-7

[sweep]
policies = ["lru", "fifo"]
sizes = [10, 100]
tier_sizes = { gpu = [20, 200] }
""")
    (tmp_path / zipf_trace.name).write_bytes(zipf_trace.read_bytes())  # relative to the TOML
    out = tmp_path / "s"
    assert main(["sweep", str(config), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"trace", "hit_rate", "stall", "cost", "timing_assumption"}  # [timing] has no compute
    assert "compute" in summary["timing_assumption"]
    assert set(RunDir.open(out).figures()) == {"hit_rate_vs_size", "stall_heatmap", "cost_frontier"}
    cost = summary["cost"]
    assert cost["frontier"] and cost["prices_usd_per_gb"]["hbm"] == 15.0
    assert main(["sweep", str(config), "--stages", "cost", "--out", str(tmp_path / "c")]) == 2
    assert "add stall or cxl" in capsys.readouterr().err
