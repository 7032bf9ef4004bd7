"""`engramtier quickstart --tiny` end to end: the run directory holds real, checkable numbers."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
from reference_policies import python_cache_hits

from engramtier.cli import main
from engramtier.rundir import RunDir
from engramtier.trace.tracefile import load_trace

FIGURES = {"zipf_rank", "mrc_shards", "hit_rate_vs_size", "step_timeline", "stall_heatmap", "cxl_swap", "cost_frontier"}


pytestmark = pytest.mark.slow  # the whole pipeline on real text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    assert main(["quickstart", "--tiny", "--quiet", "--out", str(out)]) == 0
    return RunDir.open(out)


def test_run_directory_holds_everything(run):
    for name in ("config.json", "results.jsonl", "summary.json", "report.html", "report.md", "trace.trace"):
        assert (run.path / name).is_file(), name
    assert set(run.figures()) == FIGURES
    config = run.config()
    assert config["command"] == "quickstart" and config["machine"]["cpu_count"] >= 1
    assert config["fingerprint"] == load_trace(run.path / "trace.trace").meta["fingerprint"]


def test_hit_rates_are_real(run):
    records = [r for r in run.results() if r["experiment"] == "hit_rate"]
    trace = load_trace(run.path / "trace.trace")
    policies = {r["policy"] for r in records}
    assert {"lru", "s3fifo", "belady", "static"} <= policies
    for r in records:
        assert 0 < r["hit_rate"] < 1 and r["requests"] == trace.n_rows
    lru = sorted((r["size_rows"], r["hits"]) for r in records if r["policy"] == "lru")
    assert all(a[1] <= b[1] for a, b in pairwise(lru)) and lru[0][1] < lru[-1][1]
    for size, hits in lru:
        assert hits == python_cache_hits(trace.rows, size, recency=True)
    by_size = {}
    for r in records:
        by_size.setdefault(r["size_rows"], {})[r["policy"]] = r["hits"]
    for hits in by_size.values():  # Belady is optimal among demand-fetch policies
        assert hits["belady"] >= max(hits["lru"], hits["s3fifo"])


def test_summary_and_report_agree_with_results(run):
    summary = run.summary()
    trace = load_trace(run.path / "trace.trace")
    assert summary["trace"]["requests"] == trace.n_rows and summary["trace"]["steps"] == trace.n_steps
    sim = summary["simulation"]
    steps = [r for r in run.results() if r["experiment"] == "step"]
    assert len(steps) == trace.n_steps
    assert sim["lookups"] == sum(np.unique(trace.step(i)).size for i in range(trace.n_steps))
    assert sim["lookups"] == sum(t["hits"] for t in sim["tiers"])  # each lookup served by exactly one tier
    assert 0 < sim["stall_fraction"] < 1
    assert sim["stall_seconds"] == pytest.approx(sum(s["stall_s"] for s in steps))

    html = (run.path / "report.html").read_text()
    assert html.count("<svg") == len(FIGURES) and "<img" not in html
    for name in FIGURES:
        assert f"id='{name}'" in html
    assert f"{sim['stall_fraction']:.4g}" in html
    assert f"{summary['hit_rate']['lru'][next(iter(summary['hit_rate']['lru']))]:.4g}" in html
    md = (run.path / "report.md").read_text()
    assert all(f"figures/{name}.png" in md for name in FIGURES)
    json.dumps(summary)  # the summary is plain JSON
