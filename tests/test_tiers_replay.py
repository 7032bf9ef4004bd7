"""replay and generate: bitwise-equal outputs with a tiered table, the step order of a trace, exact
batched generation, and the command line's refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
from configs import gpu_dram_nvme, hierarchy_file

from engramtier.cache.hierarchy import load_hierarchy
from engramtier.cli import main
from engramtier.model.run import load_model
from engramtier.model.table import DATA_FILE
from engramtier.serve.generate import generate
from engramtier.serve.replay import forward_inputs, random_run, replay, text_batches
from engramtier.tiers.lmdb_table import FlatTableRows, build_lmdb_table
from engramtier.tiers.open import open_for_model
from engramtier.trace.build import StepPlan
from engramtier.trace.sources import sample_text_dir

SHAPE = dict(d_model=32, n_layers=3, n_heads=2, engram_layers=(0, 2), table_size=101, hash_heads=2, row_dim=16)
HIERARCHY = hierarchy_file(gpu_dram_nvme(40, "{dram_bytes}B", dram_policy="s3fifo"), mode="{mode}")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    for name in ("tutorial-appetite.rst.txt", "tutorial-interpreter.rst.txt", "tutorial-whatnow.rst.txt"):
        shutil.copy(sample_text_dir() / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, text):
    return random_run(tmp_path_factory.mktemp("run") / "model", text, tokenizer="bpe:300", seq_len=32, **SHAPE)


def hierarchy_file(tmp_path, mode="inclusive", dram_rows=120):
    path = tmp_path / f"{mode}-{dram_rows}.toml"
    path.write_text(HIERARCHY.format(mode=mode, dram_bytes=dram_rows * 32))  # bf16[16]: 32-byte rows
    return path


@pytest.mark.parametrize("mode,plan_args", [
    ("inclusive", ["--mode", "prefill", "--batch", "3", "--seq-len", "24"]),
    ("exclusive", ["--mode", "decode", "--requests", "3", "--seq-len", "12", "--prompt-len", "4"]),
])
def test_replay_command_is_bitwise_equal_and_predicted(run_dir, text, tmp_path, mode, plan_args):
    out = tmp_path / "out"
    argv = ["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(hierarchy_file(tmp_path, mode)),
            "--max-tokens", "400", "--device", "cpu", "--out", str(out), *plan_args]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["bitwise_equal"] and summary["simulated"]["hits_equal"]
    assert len(records) == summary["steps"] and all(r["equal"] for r in records)
    gpu, dram, nvme = summary["tiers"]
    assert dram["hits"] > 0 and nvme["hits"] > 0 and dram["evicted"] > 0
    assert sum(r["requests"] for r in records) == summary["table"]["requests"]
    assert summary["flat"]["tokens"] == summary["tiered"]["tokens"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "replay" and config["fingerprint"] == summary["table"]["fingerprint"]
    # the warm-up steps ran on a scratch table: the measured steps are exactly the plan's, on both paths
    plan = StepPlan(mode=plan_args[1], batch=3, requests=3, seq_len=int(plan_args[plan_args.index("--seq-len") + 1]),
                    prompt_len=4 if mode == "exclusive" else 0)
    batches = text_batches(load_model(run_dir).tokenizer, text, plan, 400)
    planned = sum(len(list(forward_inputs(b, plan))) for b in batches)
    assert summary["warmup_steps"] == 3
    assert summary["steps"] == summary["table"]["steps"] == summary["flat"]["steps"] == summary["tiered"]["steps"] \
        == planned
    for name, path in (("flat", summary["flat"]), ("tiered", summary["tiered"])):
        step, times = path["step_s"], [r[f"{name}_step_s"] for r in records]
        assert 0 < step["p10"] <= step["p50"] <= step["p90"] and step["p50"] == pytest.approx(np.median(times))
        assert path["time_to_first_token_s"] == times[0]
        assert path["median_tokens_per_s"] == pytest.approx(path["tokens"] / (path["steps"] * step["p50"]))
        assert path["tokens_per_s"] == pytest.approx(path["tokens"] / sum(times))
    stall = summary["tiered"]["stall_per_step_s"]
    assert 0 <= stall["p50"] <= stall["p99"] <= max(r["stall_s"] for r in records)
    assert stall["mean"] == pytest.approx(summary["tiered"]["stall_seconds"] / summary["steps"])
    assert [t["capacity_rows"] for t in summary["tiers"]] == [40, 120, summary["table"]["n_table_rows"]]
    assert all(t["capacity_bytes"] == 32 * t["capacity_rows"] for t in summary["tiers"])
    assert (out / "figures" / "replay_stall.png").is_file() and (out / "figures" / "replay_stall.svg").is_file()


def test_warm_up_leaves_the_measured_hits_alone(run_dir, text, tmp_path):
    """Hit counts with warm-up equal those without it: the warm-up steps touched no measured tier."""
    def tiers(warmup):
        out = tmp_path / f"w{warmup}"
        argv = ["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(hierarchy_file(tmp_path)),
                "--max-tokens", "200", "--device", "cpu", "--out", str(out), "--mode", "decode", "--requests", "2",
                "--seq-len", "12", "--warmup-steps", str(warmup)]
        assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["simulated"]["hits_equal"]
        return [(t["lookups"], t["hits"], t["evicted"]) for t in summary["tiers"]], summary["steps"]

    assert tiers(0) == tiers(5)


def test_report_of_a_replay_renders_tables_and_the_stall_figure(run_dir, text, tmp_path):
    out = tmp_path / "out"
    argv = ["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(hierarchy_file(tmp_path)),
            "--max-tokens", "200", "--seq-len", "24", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for heading in ("Replay: flat vs tiered table", "Stall of the tiered table", "Tiers"):
        assert f"<h2>{heading}</h2>" in page
    assert "<th>median step (s)</th>" in page and "<th>capacity_bytes</th>" in page and "served bytes" in page
    assert "<th>bitwise_equal</th>" not in page and "<h2>flat</h2>" not in page  # no raw JSON sections
    assert f"<td>{summary['tiers'][1]['capacity_bytes']:,}</td>" in page
    assert "<figure id='replay_stall'><svg" in page
    assert "](figures/replay_stall.png)" in (out / "report.md").read_text()


def test_replay_catches_a_table_with_other_bytes(run_dir, text, tmp_path, capsys):
    """Same manifest, one byte changed in every row: the check must fail, not pass vacuously."""
    altered = tmp_path / "altered"
    shutil.copytree(run_dir / "table", altered)
    rows = np.fromfile(altered / DATA_FILE, np.uint8).reshape(-1, 32)
    rows[:, 0] ^= 1
    rows.tofile(altered / DATA_FILE)
    build_lmdb_table(FlatTableRows(altered), tmp_path / "altered.lmdb", progress=False)
    argv = ["replay", "--run", str(run_dir), "--text", str(text), "--table", str(tmp_path / "altered.lmdb"),
            "--hierarchy", str(hierarchy_file(tmp_path)), "--max-tokens", "100", "--seq-len", "24",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "outputs differ from the flat table's from step 0 on" in capsys.readouterr().err


def test_a_forward_pass_is_one_step_in_trace_order(run_dir, text, tmp_path):
    """Each step's recorded rows are the hash of its tokens, per token all layers' rows (b, t, layer, k)."""
    loaded = load_model(run_dir)
    plan = StepPlan(mode="decode", requests=2, seq_len=9, prompt_len=3)
    batches = text_batches(loaded.tokenizer, text, plan, max_tokens=30)
    with open_for_model(loaded.model, _lmdb(run_dir, tmp_path), load_hierarchy(hierarchy_file(tmp_path)),
                        device="cpu", record_trace=True) as table:
        summary, _ = replay(loaded.model, loaded.rows, table, batches, plan)
        trace = table.recorded_trace()
    assert summary["bitwise_equal"]
    canonical = loaded.model.compress_lookup
    expected, starts = [], [0]
    for batch in batches:
        rows = loaded.model.hasher.hash_torch(canonical[batch])  # the whole window at once: [B, T, L, K]
        lo = 0
        for ids, _ in forward_inputs(batch, plan):
            step = rows[:, lo : lo + ids.shape[1]].reshape(-1)
            expected.append(step.numpy())
            starts.append(starts[-1] + step.numel())
            lo += ids.shape[1]
    np.testing.assert_array_equal(trace.rows, np.concatenate(expected))
    assert trace.step_starts.tolist() == starts


def _lmdb(run_dir, tmp_path):
    path = tmp_path / "t.lmdb"
    build_lmdb_table(FlatTableRows(run_dir / "table"), path, progress=False)
    return path


def test_batched_generation_is_exact(run_dir, tmp_path):
    """Ragged prompts in one batch with a tiered table give what each prompt alone gives with the flat table."""
    loaded = load_model(run_dir)
    prompts = ["Python is", "The interpreter reads a line", "x"]
    with open_for_model(loaded.model, _lmdb(run_dir, tmp_path), load_hierarchy(hierarchy_file(tmp_path)),
                        device="cpu") as table:
        texts, totals = generate(loaded.model, loaded.tokenizer, table, prompts, max_new_tokens=6, batch_size=3)
        table.finish()
        stats = table.stats()
    alone = [generate(loaded.model, loaded.tokenizer, loaded.rows, [p], max_new_tokens=6, batch_size=1)[0][0]
             for p in prompts]
    assert texts == alone
    assert totals["generated_tokens"] > 0 and stats["steps"] > 0 and stats["tiers"][2]["hits"] > 0
    sampled = generate(loaded.model, loaded.tokenizer, loaded.rows, prompts, max_new_tokens=6, top_k=20, seed=3)[0]
    again = generate(loaded.model, loaded.tokenizer, loaded.rows, prompts, max_new_tokens=6, top_k=20, seed=3)[0]
    assert sampled == again  # seeded


def test_replay_and_generate_serve_a_partitioned_tier(run_dir, text, tmp_path, capsys):
    """Order-aware placement in the runtime: the model's hashing tells the tiers each row's order."""
    spec = tmp_path / "partitioned.toml"
    spec.write_text(hierarchy_file(tmp_path).read_text().replace('policy = "lru"', 'policy = "partitioned"\n'
                                                                 'params = { shares = { 2 = 0.5, 3 = 0.5 } }', 1))
    out = tmp_path / "out"
    assert main(["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(spec), "--max-tokens", "200",
                 "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bitwise_equal"] and summary["simulated"]["hits_equal"] and summary["tiers"][0]["policy"] == "partitioned"
    capsys.readouterr()
    prompts = tmp_path / "p.txt"
    prompts.write_text("Python is\n")
    assert main(["generate", "--run", str(run_dir), "--prompts", str(prompts), "--device", "cpu", "--max-new-tokens", "3",
                 "--hierarchy", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["table"]["tiers"][0]["lookups"] > 0


def test_generate_command(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Python is\n\nThe interpreter\n")
    argv = ["generate", "--run", str(run_dir), "--prompts", str(prompts), "--max-new-tokens", "4", "--device", "cpu",
            "--hierarchy", str(hierarchy_file(tmp_path)), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [o["prompt"] for o in result["outputs"]] == ["Python is", "The interpreter"]
    assert [t["name"] for t in result["table"]["tiers"]] == ["gpu", "dram", "nvme"]
    assert result["steps"] == result["table"]["steps"] > 0 and 0 < result["time_to_first_token_s"]
    assert result["step_s"]["p10"] <= result["step_s"]["p50"] <= result["step_s"]["p90"]
    assert 0 <= result["stall_per_step_s"]["p50"] <= result["stall_per_step_s"]["p99"]
    assert result["table"]["tiers"][0]["capacity_bytes"] == 40 * 32
    assert main(argv[:-1]) == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "time to first token" in printed and "stall per step" in printed


def test_command_refusals(run_dir, text, tmp_path, capsys):
    def refused(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    base = ["--text", str(text), "--device", "cpu", "--out", str(tmp_path / "o"), "--max-tokens", "50"]
    refused(["replay", "--run", str(tmp_path / "nowhere"), *base], "config.json is missing")
    other = random_run(tmp_path / "other", text, tokenizer="bpe:300", seq_len=32, seed=1,
                       **{**SHAPE, "table_size": 103})
    refused(["replay", "--run", str(run_dir), "--table", str(_lmdb(other, tmp_path)), *base], "was built for hash fingerprint")
    refused(["replay", "--run", str(run_dir), "--table", str(tmp_path / "missing.lmdb"), *base], "no table at")
    big = hierarchy_file(tmp_path, dram_rows=10**6)
    refused(["replay", "--run", str(run_dir), "--hierarchy", str(big), *base], "exceeds the table's")
    refused(["replay", "--run", str(run_dir), "--hierarchy", str(tmp_path / "none.toml"), *base],
            "no such file; give the path of a hierarchy .toml")
    refused(["generate", "--run", str(run_dir), "--prompts", str(tmp_path / "none.txt")], "no such file")
    lossy = tmp_path / "lossy.toml"
    lossy.write_text(hierarchy_file(tmp_path).read_text() + 'on_late = "drop"\n')  # on the nvme store
    prompts = tmp_path / "p.txt"
    prompts.write_text("Python is\n")
    refused(["replay", "--run", str(run_dir), "--hierarchy", str(lossy), *base], "changes the outputs that replay checks")
    generate_argv = ["generate", "--run", str(run_dir), "--prompts", str(prompts), "--device", "cpu"]
    refused([*generate_argv, "--hierarchy", str(lossy)], "tier 'nvme' drops late rows (on_late = 'drop'); give --window-s")
    refused([*generate_argv, "--window-s", "0.001"], "no tier of the hierarchy drops late rows")


def test_generate_with_a_lossy_store_drops_late_rows(run_dir, tmp_path, capsys):
    """With a zero window every row the store serves is late: the summary counts them, as the table does."""
    lossy = tmp_path / "lossy.toml"
    lossy.write_text(hierarchy_file(tmp_path).read_text() + 'on_late = "drop"\n')
    prompts = tmp_path / "p.txt"
    prompts.write_text("Python is\n")
    argv = ["generate", "--run", str(run_dir), "--prompts", str(prompts), "--device", "cpu", "--max-new-tokens", "3",
            "--hierarchy", str(lossy), "--window-s", "0"]
    assert main([*argv, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["table"]
    assert table["dropped_rows"] == table["tiers"][-1]["hits"] > 0
    assert main(argv) == 0
    assert f"read as zero rows): {table['dropped_rows']}" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_on_gpu_is_bitwise_equal(run_dir, text, tmp_path):
    out = tmp_path / "gpu"
    argv = ["replay", "--run", str(run_dir), "--text", str(text), "--hierarchy", str(hierarchy_file(tmp_path)),
            "--max-tokens", "300", "--seq-len", "24", "--device", "cuda", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bitwise_equal"] and summary["simulated"]["hits_equal"] and not summary["tiers"][0]["emulated"]
