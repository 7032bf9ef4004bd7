"""The HBM budget planner against brute force over simulate_point, its limits, its refusals and its command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from configs import gpu_dram_nvme, hierarchy, zipf_trace

from engramtier.analysis.config import TimingConfig, load_config
from engramtier.analysis.experiment import build_trace
from engramtier.analysis.plan import Budget, batched, check_plan, plan_splits
from engramtier.analysis.sweep import simulate_point, with_capacities
from engramtier.cli import main
from engramtier.errors import EngramTierError

SEQ_LEN, KV_PER_TOKEN, BUDGET = 32, 4096, 4 * 2**20  # one sequence reserves 128 KiB of the 4 MiB

CONFIG = zipf_trace(zipf_alpha=1.0, vocab=4000, tokens=6000, seq_len=SEQ_LEN, max_ngram=3, table_size=20011,
                    row_bytes=160) + hierarchy(gpu_dram_nvme("1MiB", "64KiB")) + f"""
[timing]
compute_s = 2e-4
compute_per_token_s = 5e-6
window_per_token_s = 5e-7

[sweep]
tier_sizes = {{ gpu = ["1MiB"], dram = ["512KiB", "2MiB"] }}

[plan]
hbm_budget = "4MiB"
kv_bytes_per_token = {KV_PER_TOKEN}
"""
BATCHES = "batches = [1, 4, 8, 16, 24, 31, 33]\n"  # 31 leaves 128 KiB for the gpu tier, 33 does not fit


def config(tmp_path: Path, text: str = CONFIG + BATCHES, **overrides):
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return load_config(path, overrides=overrides or None)


def build(trace_cfg, path):
    return build_trace(trace_cfg, path, progress=False)


def test_best_split_is_brute_force_over_simulate_point(tmp_path):
    cfg = config(tmp_path)
    records, best = plan_splits(cfg, build, progress=False)
    brute = {}
    for batch in (1, 4, 8, 16, 24, 31):
        trace = build(batched(cfg.trace, batch), tmp_path / f"brute-{batch}.trace")
        gpu_rows = (BUDGET - batch * SEQ_LEN * KV_PER_TOKEN) // 160
        result = simulate_point(trace, with_capacities(cfg.hierarchy, {"gpu": gpu_rows}), cfg.timing).summary()
        brute[batch] = result["tokens_per_s"]
        record = next(r for r in records if r["batch"] == batch)
        assert record["tier_rows"] == gpu_rows and record["tiers"][0]["capacity_rows"] == gpu_rows
        assert record["tokens_per_s"] == pytest.approx(result["tokens_per_s"])
        assert record["tokens_per_step"] == pytest.approx(6000 / trace.n_steps)
    assert best["record"]["batch"] == max(brute, key=brute.get)
    assert [r["batch"] for r in records if not r["feasible"]] == [33]
    # the trade-off is real: the largest batch stalls the most, and neither end is the fastest here
    stalls = [r["stall_fraction"] for r in records if r["feasible"]]
    assert stalls[-1] > stalls[0] and best["record"]["batch"] not in (1, 31)


def test_without_stall_the_largest_batch_wins(tmp_path):
    cfg = config(tmp_path, timing={"window_per_token_s": 1.0, "compute_per_token_s": 1.0})  # hides any fetch
    records, best = plan_splits(cfg, build, progress=False)
    feasible = [r for r in records if r["feasible"]]
    assert all(r["stall_fraction"] == 0 for r in feasible)
    rates = [r["tokens_per_s"] for r in feasible]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert best["record"]["batch"] == 31


def test_kv_fractions_become_whole_batches_and_a_full_budget_drops_the_tier(tmp_path):
    cfg = config(tmp_path, CONFIG + "kv_fractions = [0.1, 0.5, 1.0]\n")
    assert Budget.of(cfg.plan, cfg.trace).batches(cfg.plan) == [3, 16, 32]
    records, _ = plan_splits(cfg, build, progress=False)
    full = next(r for r in records if r["batch"] == 32)  # KV takes all 4 MiB: no gpu tier is left
    assert full["tier_rows"] == 0 and [t["name"] for t in full["tiers"]] == ["dram", "nvme"]


def test_step_compute_is_fixed_plus_per_token():
    assert TimingConfig(window_s=0.0, compute_s=1.0, compute_per_token_s=0.5).per_step(4) == (0.0, 3.0)


@pytest.mark.parametrize("plan, expected", [
    (BATCHES.replace("batches = [1, 4, 8, 16, 24, 31, 33]", "batches = [40, 64]"),
     "KV cache alone exceeds hbm_budget 4 MiB for every split: batch 40 needs 5 MiB"),
    (BATCHES + "kv_fractions = [0.5]\n", "give exactly one of batches"),
    ("", "give exactly one of batches"),
    (BATCHES + "mix = [[32, 0.5], [64, 0.4]]\n", "mix add up to 0.9"),
    (BATCHES + "tier = \"gpus\"\n", "unknown tier 'gpus': did you mean 'gpu'?"),
])
def test_bad_plans_are_one_line(tmp_path, capsys, plan, expected):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + plan)
    assert main(["plan", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, expected", [
    (["--hbm-budget", "4 GiBs"], "'hbm_budget': size '4 GiBs' does not parse"),
    (["--hbm-budget", "100"], "KV cache alone exceeds hbm_budget 100 B"),
])
def test_bad_budget_options_are_one_line(tmp_path, capsys, option, expected):
    path = tmp_path / "plan.toml"
    path.write_text(CONFIG + BATCHES)
    assert main(["plan", str(path), "--out", str(tmp_path / "run"), "--quiet", *option]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err, err


def test_a_trace_file_is_refused(tmp_path):
    cfg = config(tmp_path, trace={"source": "file", "file": "x.trace"})
    with pytest.raises(EngramTierError, match="a trace file holds rows, not tokens"):
        check_plan(cfg)


def test_command_writes_figure_summary_and_the_cheapest_other_tiers(tmp_path, capsys):
    path = tmp_path / "plan.toml"
    path.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["plan", str(path), "--out", str(out), "--quiet", "--batches", "2,8,24", "--hbm-budget", "8MiB"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    plan = summary["plan"]
    assert plan["hbm_budget_bytes"] == 8 * 2**20 and plan["splits"] == 3 and "re-cuts" in plan["approximation"]
    best = plan["best"]
    assert best["kv_bytes"] == best["batch"] * SEQ_LEN * KV_PER_TOKEN
    assert best["tier_bytes"] == (8 * 2**20 - best["kv_bytes"]) // 160 * 160
    assert f"best split: batch {best['batch']}" in printed and f"{best['tokens_per_s']:,.0f} tokens/s" in printed
    for fmt in ("png", "svg"):
        assert (out / "figures" / f"plan_tokens_per_s.{fmt}").stat().st_size > 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["batch"] for r in records if r["experiment"] == "plan") == [2, 8, 24]
    # the other tiers priced at the best split: dram swept, the gpu tier at the split's size
    priced = [r for r in records if r["experiment"] == "cost"]
    assert {p["capacities"]["dram"] for p in priced} == {512 * 1024 // 160, 2 * 2**20 // 160}
    assert {p["capacities"]["gpu"] for p in priced} == {best["tier_rows"]}
    assert "budget_met" in summary["cost"]
    assert ("cheapest within" in printed) or ("no hierarchy within" in printed)


def test_decode_splits_put_the_batch_in_flight(tmp_path):
    cfg = config(tmp_path, CONFIG + "batches = [2, 8]\n", trace={"mode": "decode"})
    records, _ = plan_splits(cfg, build, progress=False)
    for r in records:  # one token per request per step: the steps hold the batch (but the last ones)
        assert 0.9 * r["batch"] < r["tokens_per_step"] <= r["batch"]
