"""`build-table --from-checkpoint`: a small checkpoint with DeepSeek-V4.1's names and dtypes becomes an LMDB
table row-identical to its tensors and a stand-in model of its Engram weights, which replay and generate
serve; a wrong name, dtype or row count is refused in one line before anything is written."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from checkpoint_fixture import HC, HIDDEN, TABLE_SIZE, engram_tensors, expected_rows, hash_config, write_checkpoint

from engramtier.cli import main
from engramtier.model.checkpoint import Checkpoint, CheckpointRows
from engramtier.model.hashing import NgramHasher
from engramtier.model.rows import RowFormat
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.run import load_model
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.open import open_for_model

IMPORT = ["--preset", "dsv41-flash", "--table-size", str(TABLE_SIZE), "--quiet"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(run directory, the checkpoint's tensors) of one import."""
    root = tmp_path_factory.mktemp("ckpt")
    tensors = engram_tensors(hash_config())
    write_checkpoint(root / "ckpt", tensors)
    assert main(["build-table", str(root / "run"), "--from-checkpoint", str(root / "ckpt"), *IMPORT]) == 0
    return root / "run", tensors


def _all_rows(path) -> np.ndarray:
    with NvmeTier(path) as tier:
        rows = np.empty((tier.n_table_rows, tier.row_bytes), np.uint8)
        tier.read(np.arange(tier.n_table_rows), rows)
        return rows, tier.manifest


def test_the_table_holds_the_checkpoint_rows_byte_for_byte(imported):
    run, tensors = imported
    config = hash_config()
    rows, manifest = _all_rows(run / "table.lmdb")
    np.testing.assert_array_equal(rows, expected_rows(tensors, config))  # row (L, r) at L's first row + r
    assert manifest["fingerprint"] == config.fingerprint and manifest["preset"] == "dsv41-flash"
    assert (manifest["format"], manifest["dim"], manifest["row_bytes"]) == ("fp8_e4m3", 256, 264)
    # and decoded, each row is its fp8 values times 2**(scale byte - 127), block by block of 32
    first = tensors[f"layers.{config.layer_ids[1]}.engram.embed.weight"][:5].double().numpy()
    scales = tensors[f"layers.{config.layer_ids[1]}.engram.embed.scale"][:5].view(torch.uint8).numpy()
    want = first * np.repeat(2.0 ** (scales.astype(np.float64) - 127), 32, axis=1)
    offset = len(tensors[f"layers.{config.layer_ids[0]}.engram.embed.weight"])
    got = RowFormat("fp8_e4m3", 256).decode(torch.from_numpy(rows[offset : offset + 5]), torch.float64).numpy()
    np.testing.assert_array_equal(got, want)


def test_the_model_file_holds_the_layers_weights_dequantised(imported):
    run, tensors = imported
    loaded = load_model(run)
    config = loaded.model.config
    assert (config.variant, config.backbone, config.d_model, config.hc_mult) == ("dsv41", "stand-in", HIDDEN, HC)
    assert config.norm_eps == 1e-6 and config.engram == hash_config() and loaded.rows is None  # the table is LMDB only
    for layer in config.engram.layer_ids:
        name, engram = f"layers.{layer}.engram.", loaded.model.blocks[layer].engram
        weight = tensors[name + "wkv.weight"].double().numpy()
        scale = 2.0 ** (tensors[name + "wkv.scale"].view(torch.uint8).numpy().astype(np.float64) - 127)
        blocks = scale[np.arange(weight.shape[0])[:, None] // 128, np.arange(weight.shape[1])[None, :] // 128]
        np.testing.assert_array_equal(engram.wkv.weight.detach().double().numpy(), weight * blocks)
        for part in ("q_weight", "k_weight"):
            assert torch.equal(getattr(engram, part).detach(), tensors[name + part].float())
    assert json.loads((run / "summary.json").read_text())["wkv"][str(config.engram.layer_ids[0])].endswith(
        "128x128 block scales (layers.1.engram.wkv.scale)")


@torch.no_grad()
def test_served_from_its_tiers_the_layers_read_the_checkpoint_rows(imported):
    run, tensors = imported
    loaded = load_model(run)
    model = loaded.model
    ids = torch.tensor(loaded.tokenizer.encode_base_batch(["The cat sat on the mat, and the dog sat too."])[0])[None]
    flat = FlatRowSource(torch.from_numpy(expected_rows(tensors, model.config.engram)), "cpu")
    with open_for_model(model, run / "table.lmdb") as table:
        tiered = model.hidden_states(ids, rows=table)
    assert torch.equal(tiered, model.hidden_states(ids, rows=flat))
    assert not torch.equal(tiered, model.tok_emb(ids).unsqueeze(2).expand(-1, -1, HC, -1))  # the layers did work


def test_replay_engram_only_and_generate_serve_the_imported_run(imported, tmp_path, capsys, monkeypatch):
    run, _ = imported
    assert main(["replay", "--engram-only", "--run", str(run), "--out", str(tmp_path / "r"), "--max-tokens", "300",
                 "--seq-len", "64", "--warmup-steps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "dsv41 layers [1, 14]" in out and "48 rows of 264 B per token" in out and "hit counts equal: yes" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["engram_only"] and summary["layers"]["row_bytes"] == 264 and summary["simulated"]["hits_equal"]
    records = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert sum(r["requests"] for r in records) == summary["tiered"]["tokens"] * 48  # every position's 2 x 24 rows
    assert main(["replay", "--run", str(run), "--out", str(tmp_path / "flat")]) == 2
    assert "replay that with --engram-only" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"The cat\n")))
    assert main(["generate", "--run", str(run), "--max-new-tokens", "3", "--device", "cpu", "--json"]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["generated_tokens"] == 3 and generated["table"]["row_bytes"] == 264


def test_rows_are_read_by_spans_for_ids_in_any_order(tmp_path):
    config = hash_config()
    tensors = engram_tensors(config, seed=3)
    want = expected_rows(tensors, config)
    boundary = len(tensors["layers.1.engram.embed.weight"])
    with Checkpoint(write_checkpoint(tmp_path / "ckpt", tensors)) as checkpoint:
        rows = CheckpointRows(checkpoint, NgramHasher(config), "dsv41-flash")
        assert rows.manifest["subtable_sizes"] == NgramHasher(config).subtable_sizes.tolist()
        scattered = np.random.default_rng(0).permutation(len(want))[:700]
        for ids in (np.arange(boundary - 50, boundary + 50), scattered, np.array([5, 4, 3, boundary, 2]),
                    np.arange(len(want))):
            out = np.zeros((ids.size, 264), np.uint8)
            rows.rows(ids, out)
            np.testing.assert_array_equal(out, want[ids])


def test_a_bf16_wkv_is_taken_as_it_is(tmp_path):
    tensors = engram_tensors(hash_config(), seed=1, wkv="bf16")
    write_checkpoint(tmp_path / "ckpt", tensors)
    assert main(["build-table", str(tmp_path / "run"), "--from-checkpoint", str(tmp_path / "ckpt"), *IMPORT]) == 0
    engram = load_model(tmp_path / "run").model.blocks[14].engram
    assert torch.equal(engram.wkv.weight.detach(), tensors["layers.14.engram.wkv.weight"].float())


def _refusal(tmp_path, capsys, tensors, *extra) -> str:
    write_checkpoint(tmp_path / "ckpt", tensors)
    code = main(["build-table", str(tmp_path / "run"), "--from-checkpoint", str(tmp_path / "ckpt"), *IMPORT, *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # refused before anything is written
    return err


def _changed(change):
    tensors = engram_tensors(hash_config(), seed=2)
    change(tensors)
    return tensors


def test_a_wrong_name_is_refused(tmp_path, capsys):
    def rename(t):
        t["layers.14.engram.embed.weights"] = t.pop("layers.14.engram.embed.weight")
    err = _refusal(tmp_path, capsys, _changed(rename))
    assert "no tensor 'layers.14.engram.embed.weight'" in err and "layers.14.engram.embed.weights" in err


def test_a_wrong_dtype_is_refused(tmp_path, capsys):
    def widen(t):
        t["layers.1.engram.embed.scale"] = t["layers.1.engram.embed.scale"].float()
    err = _refusal(tmp_path, capsys, _changed(widen))
    assert "'layers.1.engram.embed.scale' (Engram layer 1's row scales) is F32, expected F8_E8M0" in err


def test_a_wrong_row_count_is_refused(tmp_path, capsys):
    def shorten(t):
        for part in ("weight", "scale"):
            t[f"layers.1.engram.embed.{part}"] = t[f"layers.1.engram.embed.{part}"][:-1]
    err = _refusal(tmp_path, capsys, _changed(shorten))
    assert "'layers.1.engram.embed.weight' is shaped" in err and "--table-size" in err
    # a whole checkpoint against the full-size preset: the published row count of layer 1 is named
    err = _refusal(tmp_path, capsys, engram_tensors(hash_config()), "--table-size", "16000000")
    assert "(table size 16,000,000) gives layer 1 [384,006,168, 256]" in err


def test_other_engram_layers_and_a_wkv_scale_that_fits_no_blocks_are_refused(tmp_path, capsys):
    def extra_layer(t):
        t["layers.5.engram.q_weight"] = t["layers.1.engram.q_weight"]
    assert "holds Engram layers [1, 5, 14]" in _refusal(tmp_path / "a", capsys, _changed(extra_layer))

    def bad_scale(t):
        t["layers.14.engram.wkv.scale"] = t["layers.14.engram.wkv.scale"][:, :5].contiguous()
    assert "no grid of square blocks" in _refusal(tmp_path / "b", capsys, _changed(bad_scale))


def test_shape_options_go_with_the_sources_they_shape(tmp_path, capsys):
    table = tmp_path / "random"
    assert main(["build-table", str(table), "--random", "--preset", "dsv41-flash", "--table-size", "101",
                 "--image-token", "129279", "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with NvmeTier(table) as tier:
        assert tier.manifest["fingerprint"] == hash_config(129279).fingerprint != hash_config().fingerprint
    for argv, message in (
        (["--from-table", str(tmp_path / "flat"), "--image-token", "1"], "a --from-table table keeps its own shape"),
        (["--random", "--rows", "10", "--image-token", "1"], "without --preset give --rows"),
        (["--from-checkpoint", str(tmp_path), "--rows", "10"], "--rows shapes a --random table"),
        (["--from-checkpoint", str(tmp_path / "none")], "no such directory"),
        (["--from-checkpoint", str(tmp_path)], "holds no *.safetensors file"),
        (["--from-checkpoint", str(tmp_path / "bad")], "not a readable safetensors file"),
    ):
        assert main(["build-table", str(tmp_path / "out"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err
