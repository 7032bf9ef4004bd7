"""`replay --engram-only`: DeepSeek-V4.1-Flash's two Engram layers alone (a seeded stand-in backbone) over a
tiered table of its 264-byte rows, random or built before; the simulator's hits equal the runtime's."""

from __future__ import annotations

import json
import shutil

import pytest

from engramtier.cli import main
from engramtier.model.run import load_model
from engramtier.serve.replay import forward_inputs, random_run, text_batches
from engramtier.trace.build import StepPlan
from engramtier.trace.sources import sample_text_dir

PLAN = ["--mode", "decode", "--requests", "3", "--seq-len", "16", "--prompt-len", "4", "--max-tokens", "200",
        "--warmup-steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    shutil.copy(sample_text_dir() / "tutorial-appetite.rst.txt", folder)
    return folder


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "flash-small"
    assert main(["build-table", str(path), "--random", "--preset", "dsv41-flash", "--table-size", "101", "--quiet"]) == 0
    return path


def _replay(tmp_path, name, *argv) -> dict:
    out = tmp_path / name
    assert main(["replay", "--engram-only", "--out", str(out), *PLAN, *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    summary["records"] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return summary


def test_dsv41_and_demo_layers_read_the_same_rows_of_264_bytes(table, text, tmp_path, capsys):
    runs = {v: _replay(tmp_path, v, "--table", str(table), "--text", str(text), "--variant", v, "--d-model", "32",
                       "--hc-mult", "4") for v in ("dsv41", "demo")}
    assert "backbone: a stand-in backbone" in capsys.readouterr().out
    plan = StepPlan(mode="decode", requests=3, seq_len=16, prompt_len=4)
    model = load_model(tmp_path / "dsv41" / "model").model
    batches = text_batches(load_model(tmp_path / "dsv41" / "model").tokenizer, text, plan, 200)
    planned = sum(len(list(forward_inputs(b, plan))) for b in batches)
    for variant, summary in runs.items():
        layers = summary["layers"]
        assert layers == {"variant": variant, "layer_ids": [1, 14], "d_model": 32, "hc_mult": 4, "rows_per_token": 48,
                          "row_format": "fp8_e4m3", "row_dim": 256, "row_bytes": 264}
        assert summary["engram_only"] and summary["simulated"]["hits_equal"] and summary["steps"] == planned
        assert sum(r["requests"] for r in summary["records"]) == summary["tiered"]["tokens"] * 48
        assert all(t["capacity_bytes"] == 264 * t["capacity_rows"] for t in summary["tiers"])
        assert summary["tiered"]["tokens_per_s"] > 0 and summary["tiered"]["stall_seconds"] >= 0
    # the layers differ, the rows they read do not: the same lookups, hits and bytes in every tier
    counts = {v: [(t["lookups"], t["hits"], t["served_bytes"]) for t in s["tiers"]] for v, s in runs.items()}
    assert counts["dsv41"] == counts["demo"] and counts["dsv41"][-1][2] > 0
    assert model.config.engram.fingerprint == runs["dsv41"]["table"]["fingerprint"]


def test_without_a_table_a_random_one_of_the_preset_shape_is_built(tmp_path, capsys):
    text = tmp_path / "img.txt"
    text.write_text("A picture <｜image｜> of a cat, then <｜image｜> another one of a dog sleeping. " * 4)
    summary = _replay(tmp_path, "r", "--text", str(text), "--table-size", "101", "--image-token", "129279")
    config = load_model(tmp_path / "r" / "model").model.config
    assert config.engram.image_id is not None and config.engram.table_sizes == (101, 101, 101)
    assert summary["table"]["fingerprint"] == config.engram.fingerprint and summary["simulated"]["hits_equal"]
    assert (tmp_path / "r" / "model" / "table.lmdb" / "data.mdb").is_file()


def test_refusals(table, text, tmp_path, capsys):
    def refused(argv, message):
        assert main(["replay", "--out", str(tmp_path / "o"), "--text", str(text), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    refused(["--engram-only", "--layers", "6", "--hash-heads", "2"], "--layers, --hash-heads shape a random transformer")
    refused(["--image-token", "129279"], "--image-token shapes --engram-only's random table")
    refused(["--engram-only", "--table", str(table), "--image-token", "129279"], "leave --image-token out")
    trained = random_run(tmp_path / "trained", text, tokenizer="bpe:300", seq_len=16, d_model=16, n_layers=2,
                         n_heads=2, engram_layers=(1,), table_size=101, hash_heads=2, row_dim=16)
    refused(["--engram-only", "--run", str(trained), "--variant", "demo"], "has its own --variant")
    refused(["--engram-only", "--run", str(trained), "--device", "cpu"], "a trained model's Engram layers run inside")


@pytest.mark.parametrize("variant", ["demo", "dsv41"])
def test_a_random_transformer_model_of_each_variant_replays_bitwise_equal(text, tmp_path, variant):
    out = tmp_path / variant
    assert main(["replay", "--text", str(text), "--out", str(out), "--variant", variant, "--hc-mult", "2",
                 "--tokenizer", "bpe:300", "--d-model", "32", "--layers", "2", "--heads", "2", "--engram-layers", "1",
                 "--table-size", "101", "--hash-heads", "2", "--max-tokens", "200", "--seq-len", "32",
                 "--warmup-steps", "1", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bitwise_equal"] and summary["simulated"]["hits_equal"]
    config = load_model(out / "model").model.config
    assert (config.variant, config.hc_mult, config.backbone) == (variant, 2, "transformer")
