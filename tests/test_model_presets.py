"""Named presets: DeepSeek-V4.1-Flash's published row counts, and `--preset` in trace, build-table and TOML."""

from __future__ import annotations

import json
import time
from collections import namedtuple

import pytest

from engramtier.cli import main
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.presets import PRESETS, get_preset
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.tiers.nvme import NvmeTier
from engramtier.trace.tracefile import TraceReader

KNOWN = "choose one of dsv41-flash, engram-27b, engram-40b"


def preset_hasher(name: str, table_size: int | None = None) -> NgramHasher:
    p = get_preset(name)
    tok = load_compressed_tokenizer(p.tokenizer, p.engram_pad)
    sizes = (table_size or p.table_size,) * (p.max_ngram - 1)
    return NgramHasher(HashConfig.for_tokenizer(tok, p.tokenizer, sizes, p.layers, p.heads, seed=p.seed))


def test_dsv41_flash_has_the_published_row_counts():
    load_compressed_tokenizer("deepseek")
    start = time.perf_counter()
    hasher = preset_hasher("dsv41-flash")
    assert time.perf_counter() - start < 2  # 48 primes near 16M (about 20 ms)
    per_layer = hasher.primes.reshape(hasher.n_layers, -1).sum(axis=1).tolist()
    assert per_layer == [384_006_168, 384_016_682] and hasher.n_rows == 768_022_850
    assert hasher.rows_per_token == 2 * 3 * 8 and get_preset("dsv41-flash").row_bytes == 264
    assert hasher.config.pad_id == load_compressed_tokenizer("deepseek").lookup[2]


@pytest.mark.parametrize("name, engram_params", [("engram-27b", 5.79e9), ("engram-40b", 18.53e9)])
def test_paper_presets_match_the_papers_engram_parameters(name, engram_params):
    hasher = preset_hasher(name)
    assert hasher.config.layer_ids == (2, 15) and hasher.rows_per_token == 2 * 2 * 8
    assert PRESETS[name].row_bytes == 160
    assert hasher.n_rows * 80 == pytest.approx(engram_params, rel=1e-3)


def one_error_line(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "a.txt"
    path.write_text("Only Alexander the Great could tame the horse Bucephalus. " * 30)
    return path


def test_trace_with_a_preset_records_it(text, tmp_path, capsys):
    out = tmp_path / "flash.trace"
    assert main(["trace", str(text), "-o", str(out), "--preset", "dsv41-flash", "--quiet"]) == 0
    assert "table of 768,022,850 rows" in capsys.readouterr().out
    with TraceReader(out) as trace:
        meta = trace.meta
        assert trace.n_table_rows == 768_022_850 and trace.row_bytes == 264
    assert meta["preset"] == "dsv41-flash" and meta["layer_ids"] == [1, 14] and meta["max_ngram"] == 4
    tok = load_compressed_tokenizer("deepseek")
    assert meta["tokenizer"] == "deepseek" and meta["tokenizer_digest"] == tok.digest
    assert meta["hash_config"]["pad_id"] == tok.lookup[2] and meta["source"]["engram_pad"] == 2
    assert meta["fingerprint"] == preset_hasher("dsv41-flash").config.fingerprint


def test_explicit_options_override_the_preset(text, tmp_path, capsys):
    out = tmp_path / "small.trace"
    assert main(["trace", str(text), "-o", str(out), "--preset", "dsv41-flash", "--table-size", "1009",
                 "--row-bytes", "160", "--quiet"]) == 0
    capsys.readouterr()
    with TraceReader(out) as trace:
        meta, row_bytes = trace.meta, trace.row_bytes
    assert meta["layer_ids"] == [1, 14] and meta["rows_per_token"] == 48 and row_bytes == 160
    assert meta["fingerprint"] == preset_hasher("dsv41-flash", 1009).config.fingerprint
    assert main(["trace", str(text), "-o", str(out), "--quiet", "--table-size", "1009"]) == 0
    with TraceReader(out) as trace:
        assert trace.meta["preset"] is None and trace.meta["layer_ids"] == [1, 15]


def test_build_table_with_a_preset(tmp_path, capsys):
    out = tmp_path / "flash"
    assert main(["build-table", str(out), "--random", "--preset", "dsv41-flash", "--table-size", "1009",
                 "--quiet"]) == 0
    hasher = preset_hasher("dsv41-flash", 1009)
    assert json.loads(capsys.readouterr().out)["rows"] == hasher.n_rows
    with NvmeTier(out, expect_fingerprint=hasher.config.fingerprint) as tier:
        m = tier.manifest
    assert m["preset"] == "dsv41-flash" and (m["format"], m["dim"], m["row_bytes"]) == ("fp8_e4m3", 256, 264)
    assert m["subtable_sizes"] == hasher.subtable_sizes.tolist()
    assert m["hash_config"]["tokenizer"] == "deepseek" and m["hash_config"]["tokenizer_digest"]


def test_build_table_refuses_a_preset_that_does_not_fit_the_disk(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("engramtier.tiers.lmdb_table.shutil.disk_usage", lambda path: usage(2**40, 2**40 - 2**30, 2**30))
    out = tmp_path / "flash"
    one_error_line(capsys, ["build-table", str(out), "--random", "--preset", "dsv41-flash"],
                   "needs about 192.", "1.0 GiB free", "--table-size")
    assert not out.exists()


def test_preset_refusals(text, tmp_path, capsys):
    out = str(tmp_path / "x")
    one_error_line(capsys, ["trace", str(text), "-o", out, "--preset", "dsv41-flahs"], "unknown preset 'dsv41-flahs'",
                   "did you mean 'dsv41-flash'", KNOWN)
    one_error_line(capsys, ["build-table", out, "--random", "--preset", "flash"], "unknown preset 'flash'", KNOWN)
    one_error_line(capsys, ["build-table", out, "--random", "--preset", "engram-27b", "--rows", "10"],
                   "--rows conflicts with --preset")
    one_error_line(capsys, ["build-table", out, "--random", "--rows", "10", "--table-size", "10"], "without --preset")
    one_error_line(capsys, ["build-table", out, "--from-table", out, "--preset", "engram-27b"], "keeps its own shape")
    assert not (tmp_path / "x").exists()
