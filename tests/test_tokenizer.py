"""Tokenizer compression: the canonical-key rules of DESIGN.md and the shipped base tokenizers."""

import json

import numpy as np
import pytest

from engramtier.errors import EngramTierError
from engramtier.model.tokenizer import (
    BaseTokenizer, CompressedTokenizer, canonical_key, load_base_tokenizer, load_compressed_tokenizer,
)


@pytest.mark.parametrize("raw, key", [
    (b"Apple", "apple"),
    (b" apple ", "apple"),
    (b"\xc3\x89clair", "eclair"),            # accents stripped after NFD
    ("\ufb01ne".encode(), "fine"),           # NFKC folds the ligature
    (b"a \t\n b", "a b"),                    # runs of whitespace collapse
    (b"\n\n", " "),                          # whitespace-only becomes one space
    ("\u0301".encode(), "\u0301"),           # empty after normalisation keeps the original text
    (b"\xe4\xbd", b"\xe4\xbd"),              # invalid UTF-8 keeps its raw bytes
])
def test_canonical_keys(raw, key):
    assert canonical_key(raw) == key


class ListTokenizer(BaseTokenizer):
    """A base tokenizer given as a list of token byte strings (None = hole in the id space)."""

    def __init__(self, pieces, pad=0):
        self.pieces, self.name, self.vocab_size, self.pad_token_id = pieces, "list", len(pieces), pad

    def token_bytes(self, token_id):
        return self.pieces[token_id]


def test_ids_are_numbered_by_first_appearance():
    pieces = [b"<pad>", b"The", b" the", b"\xe4", b"THE", None, b"\xe4", b"  ", b"\t", b"cat"]
    comp = CompressedTokenizer(ListTokenizer(pieces))
    # <pad>=0, the=1, raw \xe4=2, hole=3, space=4, cat=5
    assert comp.lookup.tolist() == [0, 1, 1, 2, 1, 3, 2, 4, 4, 5]
    assert comp.vocab_size == 6 and comp.base_vocab_size == 10
    assert comp.reduction == pytest.approx(0.4)


def test_deepseek_vocabulary_shrinks_about_as_the_paper_reports():
    comp = load_compressed_tokenizer("deepseek")
    assert comp.base_vocab_size == 129_280
    assert 0.21 < comp.reduction < 0.25  # the paper: 23% for a 128k tokenizer
    ids = comp.encode(" Apple apple")
    assert ids[0] == ids[1]
    assert comp.lookup.max() == comp.vocab_size - 1 and comp.lookup.min() == 0


@pytest.mark.parametrize("name", ["cl100k", "qwen"])
def test_other_shipped_tokenizers_compress(name):
    comp = load_compressed_tokenizer(name)
    assert comp.vocab_size < comp.base_vocab_size
    text = "Hello World hello world"
    assert comp.encode(text).tolist() == comp.compress(comp.encode_base_batch([text])[0]).tolist()
    assert 0 <= comp.pad_id < comp.vocab_size


def test_a_tokenizer_json_path_loads(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "Cat": 1, "cat": 2, "dog": 3, "[UNK]": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    comp = CompressedTokenizer(load_base_tokenizer(str(path)))
    assert comp.lookup.tolist() == [0, 1, 1, 2, 3]
    np.testing.assert_array_equal(comp.encode("Cat dog cat"), [1, 2, 1])


def test_unknown_or_broken_tokenizers_fail_in_one_line(tmp_path):
    with pytest.raises(EngramTierError, match="unknown tokenizer 'gpt5'.*deepseek"):
        load_base_tokenizer("gpt5")
    with pytest.raises(EngramTierError, match="does not exist"):
        load_base_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(EngramTierError, match="not a valid Hugging Face tokenizer.json") as err:
        load_base_tokenizer(str(bad))
    assert "\n" not in str(err.value)
