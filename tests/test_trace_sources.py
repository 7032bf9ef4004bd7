"""Token sources: which documents are read from files, directories, JSONL and stdin; the synthetic
Zipf stream; and one clear error line for each kind of bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from engramtier.documents import html_to_text, text_documents
from engramtier.errors import EngramTierError
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.trace.sources import TextSource, ZipfSource, sample_text_dir


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("Plain text file.\n")
    (tmp_path / "b.md").write_text("# Title\n\nSome *markdown*.\n")
    (tmp_path / "sub" / "c.rst.txt").write_text("Section\n=======\n\nreST source.\n")
    (tmp_path / "sub" / "deeper" / "d.html").write_text(
        "<html><head><style>p {color: red}</style><script>var x = 1;</script></head>"
        "<body><p>Hello &amp; <b>welcome</b></p></body></html>")
    (tmp_path / "sub" / "ignored.py").write_text("print('not prose')\n")
    (tmp_path / "sub" / "blank.txt").write_text("  \n\n")
    (tmp_path / "e.jsonl").write_text(json.dumps({"text": "first record"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    return tmp_path


def test_directories_are_read_recursively_in_order(corpus):
    docs = dict(text_documents([corpus]))
    assert list(docs) == [
        str(corpus / "a.txt"), str(corpus / "b.md"), f"{corpus / 'e.jsonl'} line 1", f"{corpus / 'e.jsonl'} line 3",
        str(corpus / "sub" / "c.rst.txt"), str(corpus / "sub" / "deeper" / "d.html"),
    ]
    assert docs[str(corpus / "sub" / "deeper" / "d.html")] == "Hello & welcome"
    assert docs[f"{corpus / 'e.jsonl'} line 3"] == "second"


def test_named_files_jsonl_field_and_stdin(corpus, monkeypatch):
    (corpus / "f.jsonl").write_text(json.dumps({"body": "x y", "text": 3}) + "\n")
    assert [t for _, t in text_documents([corpus / "f.jsonl"], field="body")] == ["x y"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from standard input")))
    assert list(text_documents(["-", corpus / "a.txt"])) == [("<stdin>", "from standard input"),
                                                             (str(corpus / "a.txt"), "Plain text file.\n")]


def test_html_drops_tags_scripts_and_styles():
    assert html_to_text("<p>a<script>b</script>c<style>d</style><i>e</i></p>") == "ace"


def bad(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", b"", "file with no text"),
    ("spaces.md", b" \n\t\n", "file with no text"),
    ("nul.txt", b"text\x00more", "binary file"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": broken\n', "line 2 is not valid JSON"),
    ("nofield.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n', "line 3 has no field 'text'"),
    ("list.jsonl", b'["text"]\n', "line 1 has no field 'text'"),
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2 is not UTF-8"),
    ("number.jsonl", b'{"text": 5}\n', "field 'text' holds int, not text"),
])
def test_bad_files_give_one_line_naming_the_file(tmp_path, name, content, words):
    path = bad(tmp_path, name, content)
    with pytest.raises(EngramTierError) as err:
        list(text_documents([path]))
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_paths_empty_directories_and_empty_stdin(tmp_path, monkeypatch):
    with pytest.raises(EngramTierError, match="does not exist"):
        list(text_documents([tmp_path / "missing.txt"]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "blank.txt").write_text("\n")
    (tmp_path / "d" / "code.py").write_text("x = 1\n")
    with pytest.raises(EngramTierError, match=r"d is a directory with no non-empty .* files"):
        list(text_documents([tmp_path / "d"]))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"   ")))
    with pytest.raises(EngramTierError, match="standard input holds no text"):
        list(text_documents(["-"]))


def test_unknown_tokenizer_and_no_paths():
    with pytest.raises(EngramTierError, match="unknown tokenizer 'gpt9'"):
        TextSource(["-"], tokenizer="gpt9")
    with pytest.raises(EngramTierError, match="no text sources given"):
        TextSource([])


def test_text_source_tokenizes_each_document(corpus):
    tok = load_compressed_tokenizer("deepseek")
    source = TextSource([str(corpus)])
    docs = list(source.documents())
    want = [tok.encode(text) for _, text in text_documents([corpus])]
    assert len(docs) == len(want) == 6
    for got, exp in zip(docs, want, strict=True):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, exp)
    cfg = source.hash_config((1009, 1013), (1,), 2, 0)
    assert (cfg.vocab_size, cfg.pad_id, cfg.tokenizer) == (tok.vocab_size, tok.pad_id, "deepseek")
    assert cfg.tokenizer_digest  # the compression map is part of the addressing


def test_shipped_sample_text_is_real_prose():
    files = [p for p in sample_text_dir().iterdir() if p.name.endswith(".rst.txt")]
    assert len(files) >= 10
    assert 300_000 <= sum(p.stat().st_size for p in files) <= 600_000
    assert (sample_text_dir() / "SOURCE.md").is_file()
    assert "Python" in dict(text_documents([sample_text_dir()]))[str(sample_text_dir() / "tutorial-classes.rst.txt")]


def test_zipf_source_is_seeded_sized_and_zipfian():
    source = ZipfSource(1.0, vocab=1000, n_tokens=300_001, seed=4, doc_len=1000)
    docs = list(source.documents())
    assert [d.size for d in docs] == [1000] * 300 + [1]
    ids = np.concatenate(docs)
    assert ids.min() >= 0 and ids.max() < 1000
    np.testing.assert_array_equal(ids, np.concatenate(list(ZipfSource(1.0, 1000, 300_001, seed=4, doc_len=1000).documents())))
    assert not np.array_equal(ids, np.concatenate(list(ZipfSource(1.0, 1000, 300_001, seed=5, doc_len=1000).documents())))
    freq = np.sort(np.bincount(ids, minlength=1000))[::-1] / ids.size
    expected = 1.0 / np.arange(1, 1001)
    expected /= expected.sum()
    np.testing.assert_allclose(freq[:10], expected[:10], rtol=0.05)  # ranks 1-10: >= 4000 draws each
    cfg = source.hash_config((1009,), (0,), 1, 0)
    assert cfg.vocab_size == 1001 and cfg.pad_id == 1000  # the pad id is never drawn


def test_zipf_source_streams_in_blocks(monkeypatch):
    monkeypatch.setattr(ZipfSource, "block", 64)
    docs = list(ZipfSource(0.5, vocab=10, n_tokens=1000, seed=0, doc_len=30).documents())
    assert sum(d.size for d in docs) == 1000 and max(d.size for d in docs) == 30


@pytest.mark.parametrize("kwargs, words", [
    ({"alpha": -1.0}, "alpha must be >= 0"), ({"vocab": 0}, r"vocabulary must be in 1\.\.67108864, got 0"),
    ({"n_tokens": 0}, "token count"), ({"doc_len": 0}, "document length"),
])
def test_bad_zipf_parameters(kwargs, words):
    args = {"alpha": 1.0, "vocab": 10, "n_tokens": 10} | kwargs
    with pytest.raises(EngramTierError, match=words):
        ZipfSource(**args)


def test_a_file_of_nul_bytes_is_refused_at_its_first_chunk(tmp_path):
    """/dev/zero read as text: refused as binary after one chunk, never read whole (a sparse 64 GiB file
    here stands for it; reading it whole would take the machine's memory)."""
    zeros = tmp_path / "zeros.txt"
    with open(zeros, "wb") as f:
        f.truncate(64 << 30)
    with pytest.raises(EngramTierError, match="zeros.txt is a binary file"):
        next(text_documents([zeros]))


def test_a_document_larger_than_memory_can_tokenize_is_refused(tmp_path, monkeypatch):
    """What tokenizing a document holds grows ~64 bytes per byte of text: a document beyond what memory
    allows is one line, from a file, a JSONL line or standard input, before it is read whole."""
    monkeypatch.setattr("engramtier.memory.available_host_bytes", lambda: 64 << 10)  # a 1 KiB document limit
    big = "word " * 400
    (tmp_path / "big.txt").write_text(big)
    (tmp_path / "big.jsonl").write_text(json.dumps({"text": big}) + "\n")
    for path in ("big.txt", "big.jsonl"):
        with pytest.raises(EngramTierError, match=f"{path}.* more than .* memory"):
            list(text_documents([tmp_path / path]))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(big.encode())))
    with pytest.raises(EngramTierError, match="standard input holds more than"):
        list(text_documents(["-"]))
    (tmp_path / "small.txt").write_text("a few words of text")
    assert [text for _, text in text_documents([tmp_path / "small.txt"])] == ["a few words of text"]
