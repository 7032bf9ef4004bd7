"""Training on the shipped sample text: loss goes down, the run directory reloads, refusals."""

import json

import numpy as np
import pytest
import torch

from engramtier import cli
from engramtier.errors import EngramTierError
from engramtier.model.run import load_model
from engramtier.model.train import TrainConfig, evaluate, split_documents, tokenize_corpus, train
from engramtier.trace.sources import sample_text_dir

TINY = dict(tokenizer="bpe:512", steps=80, batch_size=8, seq_len=32, lr=1e-2, table_lr=5e-2, warmup_steps=5,
            eval_every=0, eval_tokens=4096, log_every=1, d_model=32, n_layers=2, n_heads=2, engram_layers=(1,),
            table_size=211, hash_heads=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread and lose much when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(TrainConfig(text=str(sample_text_dir()), out=str(out), **TINY), progress=False)
    return out, summary


def test_a_few_steps_lower_the_loss(run):
    out, summary = run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["step"] == 0 and abs(first["train_loss"] - np.log(512)) < 0.3  # an untrained model is uniform
    assert summary["val_loss"] < first["train_loss"] - 0.75
    assert summary["final_train_loss"] < first["train_loss"] - 0.75
    assert summary["params"]["table"] == sum(json.loads((out / "table" / "manifest.json").read_text())["subtable_sizes"]) * 32


def test_run_directory_reloads_to_the_same_model(run):
    out, summary = run
    for name in ("config.json", "model.safetensors", "table/manifest.json", "table/table.bin", "tokenizer.json",
                 "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    loaded = load_model(out, verify=True)
    assert loaded.table.fingerprint == loaded.model.config.engram.fingerprint == summary["fingerprint"]
    # the reported loss is the saved model's: re-evaluating the reloaded model gives it again
    cfg = TrainConfig(**summary["train_config"])
    _, _, data = tokenize_corpus(cfg.text, str(out / "tokenizer.json"), out / "again", cfg.val_fraction, cfg.seq_len)
    assert evaluate(loaded.model, data.val, cfg.seq_len, cfg.eval_tokens, cfg.batch_size, "cpu", rows=loaded.rows) == summary["val_loss"]


def test_a_table_for_other_hashing_is_refused(run, tmp_path):
    out, _ = run
    edited = tmp_path / "edited"
    edited.mkdir()
    for item in out.iterdir():
        if item.is_file():
            (edited / item.name).write_bytes(item.read_bytes())
    (edited / "table").symlink_to(out / "table")
    config = json.loads((out / "config.json").read_text())
    config["engram"]["seed"] = 1
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngramTierError, match="was built for hash config .* the model uses .*: rebuild the table"):
        load_model(edited)


def test_baseline_run_and_the_command_line(tmp_path, capsys):
    out = tmp_path / "baseline"
    args = ["train", "--text", str(sample_text_dir()), "--out", str(out), "--no-engram", "--quiet",
            "--tokenizer", "bpe:512", "--steps", "3", "--batch-size", "2", "--seq-len", "16", "--d-model", "32",
            "--layers", "1", "--heads", "2", "--eval-tokens", "256"]
    assert cli.main(args) == 0
    assert "validation loss" in capsys.readouterr().out
    loaded = load_model(out)
    assert loaded.table is None and loaded.model.table is None and not (out / "table").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_config"]["steps"] == 3 and summary["params"]["table"] == 0
    logits = loaded.model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 512)


def test_command_line_refusals(tmp_path, capsys):
    assert cli.main(["train", "--text", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["train", "--text", str(sample_text_dir()), "--out", str(tmp_path / "o"), "--tokenizer", "bpe:many"]) == 2
    assert "write bpe:N" in capsys.readouterr().err
    with pytest.raises(EngramTierError, match="config.json is missing"):
        load_model(tmp_path)


def test_held_out_documents_are_chosen_by_content():
    docs = [f"document number {i} " * 20 for i in range(200)]
    train_docs, val_docs = split_documents(docs, 0.1)
    assert 5 <= len(val_docs) <= 40 and len(train_docs) + len(val_docs) == 200
    assert split_documents(list(reversed(docs)), 0.1)[1] == list(reversed(val_docs))  # order does not matter
    train_docs, val_docs = split_documents(["just one document " * 10], 0.1)  # too few: hold out its end
    assert len(train_docs) == len(val_docs) == 1 and val_docs[0] and train_docs[0].startswith("just one")


@pytest.mark.parametrize("variant", ["demo", "dsv41"])
def test_other_variants_train_from_the_command_line_and_reload(tmp_path, capsys, variant):
    out = tmp_path / variant
    args = ["train", "--text", str(sample_text_dir()), "--out", str(out), "--quiet", "--variant", variant,
            "--tokenizer", "bpe:512", "--steps", "20", "--batch-size", "4", "--seq-len", "16", "--d-model", "32",
            "--layers", "2", "--heads", "2", "--engram-layers", "1", "--table-size", "211", "--hash-heads", "2",
            "--hc-mult", "2", "--eval-tokens", "256", "--lr", "1e-2", "--table-lr", "5e-2"]
    assert cli.main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss"] < records[0]["train_loss"] - 0.3
    loaded = load_model(out)
    assert loaded.model.config.variant == variant
    assert loaded.model.config.norm_eps == (1e-6 if variant == "dsv41" else 1e-5)  # DeepSeek's, for its layer
    assert type(loaded.model.blocks[1].engram).variant == variant


def test_a_config_saved_without_a_variant_loads_as_the_classic_layer(run, tmp_path):
    out, _ = run
    config = json.loads((out / "config.json").read_text())
    assert config.pop("variant") == "classic" and config.pop("backbone") == "transformer"
    old = tmp_path / "old"
    old.mkdir()
    for item in out.iterdir():
        if item.is_file():
            (old / item.name).write_bytes(item.read_bytes())
    (old / "table").symlink_to(out / "table")
    (old / "config.json").write_text(json.dumps(config))  # as engramtier wrote it before the variants
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    again, before = load_model(old), load_model(out)
    assert again.model.config.variant == "classic" and type(again.model.blocks[1].engram).variant == "classic"
    assert torch.equal(again.model(ids, rows=again.rows), before.model(ids, rows=before.rows))
