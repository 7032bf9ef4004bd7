"""`engramtier trace | stats | export` through `engramtier.cli.main`, including the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from configs import hierarchy, tier

from engramtier.cli import main
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.trace.export import ORACLE_RECORD
from engramtier.trace.stats import trace_stats
from engramtier.trace.tracefile import TraceReader, load_trace

SMALL_TABLE = ["--table-size", "1009", "--heads", "2", "--layers", "1", "--quiet"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    (root / "one.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    (root / "two.md").write_text("# Heading\n\nThe lazy dog sleeps; the quick fox runs.\n" * 10)
    return root


def test_trace_stats_export_round(text_dir, tmp_path, capsys):
    out = tmp_path / "t.trace"
    assert main(["trace", str(text_dir), "-o", str(out), "--batch", "2", "--seq-len", "64", *SMALL_TABLE]) == 0
    assert "fingerprint" in capsys.readouterr().out
    trace = load_trace(out)
    tok = load_compressed_tokenizer("deepseek")
    n_tokens = sum(tok.encode(p.read_text()).size for p in sorted(text_dir.iterdir()))
    assert trace.rows.size == n_tokens * trace.meta["rows_per_token"] and trace.meta["rows_per_token"] == 2 * 2
    assert trace.meta["source"]["kind"] == "text" and trace.meta["tokenizer"] == "deepseek"
    assert np.diff(trace.step_starts).max() == 2 * 64 * 4

    assert main(["stats", str(out), "--json", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved == json.loads(json.dumps(trace_stats(trace).stats_dict()))
    assert f"requests        {trace.rows.size}" in printed and "zipf alpha" in printed

    assert main(["export", str(out), "--format", "oracle", "-o", str(tmp_path / "t.bin")]) == 0
    np.testing.assert_array_equal(np.fromfile(tmp_path / "t.bin", ORACLE_RECORD)["id"], trace.rows)
    assert main(["export", str(out), "--format", "csv", "-o", str(tmp_path / "t.csv")]) == 0
    assert len((tmp_path / "t.csv").read_text().splitlines()) == trace.rows.size + 1


def test_decode_and_synthetic_zipf(tmp_path):
    out = tmp_path / "z.trace"
    assert main(["trace", "--synthetic-zipf", "1.1", "--vocab", "500", "--tokens", "3000", "-o", str(out),
                 "--mode", "decode", "--requests", "4", "--seq-len", "100", "--prompt-len", "10", "--max-ngram", "2",
                 "--row-bytes", "264", *SMALL_TABLE]) == 0
    with TraceReader(out) as reader:
        assert reader.row_bytes == 264 and reader.n_rows == 3000 * 2
        assert reader.meta["plan"] == {"mode": "decode", "batch": 8, "seq_len": 100, "requests": 4, "prompt_len": 10}
        first = next(reader.steps())
        assert first.size == 4 * 10 * 2  # the first step reads the four requests' prompts


def test_decode_memory_follows_the_requests_served_not_requests(tmp_path):
    """--requests 1e9 once held a slot per request up front (24 GB before the kernel killed it): slots open
    as requests arrive, so a billion slots over a few thousand tokens cost what the tokens cost."""
    out = tmp_path / "d.trace"
    assert main(["trace", "--synthetic-zipf", "1.1", "--vocab", "500", "--tokens", "3000", "-o", str(out),
                 "--mode", "decode", "--requests", "1000000000", "--seq-len", "100", "--max-ngram", "2",
                 "--quiet", *SMALL_TABLE]) == 0
    with TraceReader(out) as reader:
        assert reader.n_rows == 3000 * 2 and reader.n_steps == 100  # all 30 requests decode together


def test_help_has_examples(capsys):
    for command in ("trace", "stats", "export"):
        assert main([command, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out


def one_error_line(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"engramtier {argv[0]}: error: "), err
    for w in words:
        assert w in err, err


def test_bad_input_is_one_line(text_dir, tmp_path, capsys):
    out = str(tmp_path / "x.trace")
    one_error_line(capsys, ["trace", str(tmp_path / "missing"), "-o", out], "does not exist")  # checked up front
    (tmp_path / "empty.txt").write_text("")
    one_error_line(capsys, ["trace", str(tmp_path / "empty.txt"), "-o", out, "--quiet"], "empty.txt is a file with no text")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{oops}\n')
    one_error_line(capsys, ["trace", str(tmp_path / "bad.jsonl"), "-o", out, *SMALL_TABLE], "bad.jsonl line 2 is not valid JSON")
    one_error_line(capsys, ["trace", str(text_dir), "-o", out, "--tokenizer", "nope", "--quiet"], "unknown tokenizer 'nope'")
    one_error_line(capsys, ["trace", "-o", out], "no input")
    one_error_line(capsys, ["trace", str(text_dir), "--synthetic-zipf", "1", "-o", out], "not both")
    one_error_line(capsys, ["trace", str(text_dir), "-o", out, "--batch", "0", *SMALL_TABLE], "--batch: must be >= 1")
    assert not (tmp_path / "x.trace").exists() and not (tmp_path / "x.trace.part").exists()
    (tmp_path / "junk.trace").write_bytes(b"definitely not a trace")
    one_error_line(capsys, ["stats", str(tmp_path / "junk.trace")], "not an engramtier trace file")
    one_error_line(capsys, ["export", str(tmp_path / "none.trace"), "--format", "csv", "-o", out], "does not exist")


def test_streamed_commands_refuse_damaged_and_old_traces_in_one_line(tmp_path, capsys):
    """`mrc` and `simulate --hierarchy` stream the file: a flipped header byte or a version-1 file is
    refused before anything runs."""
    import struct

    from engramtier.trace.rowtrace import RowTrace
    from engramtier.trace.tracefile import save_trace

    rows = np.random.default_rng(0).integers(0, 5000, 4000)
    save_trace(RowTrace(rows, np.arange(0, 4001, 100), 5000, 160), tmp_path / "good.trace")
    data = (tmp_path / "good.trace").read_bytes()
    at = data.index(b'"row_bytes"') + 3
    (tmp_path / "flipped.trace").write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    (tmp_path / "old.trace").write_bytes(data[:8] + struct.pack("<I", 1) + data[12:])
    (tmp_path / "h.toml").write_text(hierarchy([tier("dram", 100, "lru", "dram"), tier("nvme", model="nvme")])
                                     + "[timing]\nwindow_s = 0.001\ncompute_s = 0.001\n")
    out = str(tmp_path / "run")
    one_error_line(capsys, ["mrc", str(tmp_path / "flipped.trace"), "--out", out, "--quiet"], "header is corrupt")
    one_error_line(capsys, ["mrc", str(tmp_path / "old.trace"), "--out", out, "--quiet", "--no-exact"], "version-1", "rebuild")
    one_error_line(capsys, ["simulate", "--hierarchy", str(tmp_path / "h.toml"), str(tmp_path / "flipped.trace"),
                            "--out", out, "--quiet"], "header is corrupt")
    assert main(["mrc", str(tmp_path / "good.trace"), "--out", out, "--quiet", "--no-exact", "--seeds", "1",
                 "--shards", "0.5"]) == 0
    assert "no exact curve (--no-exact)" in capsys.readouterr().out


def test_image_tokens_are_blocked_in_the_trace(tmp_path):
    """A trace with --image-token reads, per window, the rows of the hash config with the image id, which
    differ from those without it only at and after the images (docs/design.md's image rule)."""
    image = 129279  # <｜image｜> in DeepSeek's tokenizer
    text = tmp_path / "img.txt"
    text.write_text("<｜image｜> A cat sits on <｜image｜> the mat and looks at the dog.<｜image｜>")
    traces = {}
    for name, extra in (("plain", []), ("image", ["--image-token", str(image)])):
        out = tmp_path / f"{name}.trace"
        assert main(["trace", str(text), "-o", str(out), "--seq-len", "6", "--preset", "dsv41-flash",
                     "--table-size", "101", "--quiet", *extra]) == 0
        traces[name] = load_trace(out)
    from engramtier.model.hashing import HashConfig, NgramHasher

    with_image = HashConfig.from_dict(traces["image"].meta["hash_config"])
    tok = load_compressed_tokenizer("deepseek")
    assert with_image.image_id == tok.lookup[image] and traces["image"].meta["source"]["image_token"] == image
    assert traces["image"].meta["fingerprint"] == with_image.fingerprint != traces["plain"].meta["fingerprint"]
    ids = tok.encode(text.read_text())
    assert (ids == with_image.image_id).sum() == 3
    hasher = NgramHasher(with_image)
    windows = [ids[lo : lo + 6] for lo in range(0, ids.size, 6)]  # each window its own sequence
    np.testing.assert_array_equal(traces["image"].rows, np.concatenate([hasher.hash(w).reshape(-1) for w in windows]))
    per_token = traces["image"].meta["rows_per_token"]
    differ = (traces["image"].rows != traces["plain"].rows).reshape(ids.size, per_token).any(axis=1)
    is_image = ids == with_image.image_id
    near = np.zeros(ids.size, bool)  # an image among the last N = 4 tokens of the position's window
    for t in range(ids.size):
        near[t] = is_image[max(t - 3, t - t % 6) : t + 1].any()
    assert differ[is_image].all() and not differ[~near].any()
