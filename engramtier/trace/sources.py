"""Token sources: where the canonical token ids of a row trace come from.

A source yields *documents*, each an int64 array of compressed (canonical) token ids that the model
would see as one sequence, and knows the hash config its ids are hashed under: real text goes
through a `CompressedTokenizer` and carries that tokenizer's compression digest, so a trace built
from it addresses exactly the rows of a model built with the same settings; a synthetic Zipf stream
has a vocabulary of its own. Sources are iterators, so arbitrarily long inputs stream through.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from engramtier.documents import GZIP_SUFFIX, STDIN, files_under, no_such_path, text_documents
from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig
from engramtier.model.tokenizer import load_compressed_tokenizer

_TOKENIZE_BATCH_CHARS = 1 << 20  # texts handed to the tokenizer at once (its batch call is parallel)


def sample_text_dir() -> Path:
    """The shipped sample of real text (Python 3.11 documentation sources, PSF licence)."""
    return Path(str(resources.files("engramtier") / "data" / "sample_text"))


class TokenSource(Protocol):
    def documents(self) -> Iterator[np.ndarray]:
        """Compressed token ids, one int64 array per document."""

    def hash_config(self, table_sizes: tuple[int, ...], layer_ids: tuple[int, ...], n_heads: int,
                    seed: int) -> HashConfig:
        """The addressing of this source's ids under the given table shape."""

    def describe(self) -> dict:
        """JSON-ready provenance recorded in the trace's meta."""

    def max_tokens(self) -> int | None:
        """At most how many tokens `documents` yields, None when that is unknown (standard input, compressed
        files): what a trace build holds at once is bounded by it (`engramtier.trace.build.build_memory`)."""

    def held_bytes(self) -> dict[str, float]:
        """Memory the source itself holds while it yields, keyed by the advice that lowers it."""


# --------------------------------------------------------------------------------------------- text


class TextSource:
    """Documents read from files, directories, JSONL or stdin, tokenized and compressed."""

    def __init__(self, paths: list[str], tokenizer: str = "deepseek", field: str = "text",
                 engram_pad: int | None = None, image_token: int | None = None):
        """``engram_pad``: the base id that stands for positions before a sequence's start (None: the
        tokenizer's default); ``image_token``: the base id of the image token hashing blocks (None: none)."""

        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise EngramTierError("no text sources given; name files, directories, JSONL files or '-'")
        for path in self.paths:  # fail before the tokenizer loads and the output file opens
            if path != STDIN and not Path(path).exists():
                raise no_such_path(path)
        self.field = field
        self.tokenizer_name = tokenizer
        self.tokenizer = load_compressed_tokenizer(tokenizer, engram_pad, image_token)

    def documents(self) -> Iterator[np.ndarray]:
        batch: list[str] = []
        size = 0
        for _, text in text_documents(self.paths, self.field):
            batch.append(text)
            size += len(text)
            if size >= _TOKENIZE_BATCH_CHARS:
                yield from self._encode(batch)
                batch, size = [], 0
        if batch:
            yield from self._encode(batch)

    def _encode(self, texts: list[str]) -> Iterator[np.ndarray]:
        for ids in self.tokenizer.encode_batch(texts):
            if ids.size:
                yield ids

    def hash_config(self, table_sizes, layer_ids, n_heads, seed) -> HashConfig:
        return HashConfig.for_tokenizer(self.tokenizer, self.tokenizer_name, table_sizes, layer_ids, n_heads, seed)

    def max_tokens(self) -> int | None:
        """The bytes of the files named (a token takes a byte of text at least); None with standard input
        or compressed files, whose size says nothing."""
        total = 0
        for item in self.paths:
            path = Path(item)
            files = files_under(path) if path.is_dir() else [path]
            if item == STDIN or any(f.suffix.lower() == GZIP_SUFFIX or not f.is_file() for f in files):
                return None
            total += sum(f.stat().st_size for f in files)
        return total

    def held_bytes(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        return {"kind": "text", "paths": self.paths, "field": self.field, "tokenizer": self.tokenizer_name,
                "engram_pad": self.tokenizer.pad_base_id,
                **({"image_token": self.tokenizer.image_base_id} if self.tokenizer.image_base_id is not None else {})}


# -------------------------------------------------------------------------------------------- zipf


MAX_ZIPF_VOCAB = 1 << 26  # the synthetic source keeps 24 bytes per id (its CDF and rank permutation): 1.5 GiB


class ZipfSource:
    """A synthetic stream of ``n_tokens`` ids drawn i.i.d. with P(rank r) ∝ r^-alpha over ``vocab``.

    Ranks map to ids through a seeded permutation, so frequent ids are spread over the vocabulary as
    in a real tokenizer. The stream is cut into documents of ``doc_len`` tokens. Id ``vocab`` is
    reserved as the pad id (never drawn), so the hash vocabulary holds ``vocab + 1`` ids. Sampling is
    inverse-CDF by binary search, vectorised over blocks; any alpha >= 0 works (numpy's own zipf
    needs alpha > 1 and an unbounded support).
    """

    block = 1 << 20

    def __init__(self, alpha: float, vocab: int, n_tokens: int, seed: int = 0, doc_len: int = 4096):
        problems = []
        if not alpha >= 0:
            problems.append(f"alpha must be >= 0, got {alpha}")
        if not 1 <= vocab <= MAX_ZIPF_VOCAB:
            problems.append(f"vocabulary must be in 1..{MAX_ZIPF_VOCAB}, got {vocab}")
        if n_tokens < 1:
            problems.append(f"token count must be >= 1, got {n_tokens}")
        if doc_len < 1:
            problems.append(f"document length must be >= 1, got {doc_len}")
        if problems:
            raise EngramTierError("synthetic Zipf source: " + "; ".join(problems))
        self.alpha, self.vocab, self.n_tokens, self.seed, self.doc_len = float(alpha), int(vocab), int(n_tokens), int(seed), int(doc_len)

    def documents(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        cdf = np.cumsum(np.arange(1, self.vocab + 1, dtype=np.float64) ** -self.alpha)
        cdf /= cdf[-1]
        id_of_rank = rng.permutation(self.vocab).astype(np.int64)
        per_block = max(1, self.block // self.doc_len) * self.doc_len  # whole documents per block
        left = self.n_tokens
        while left > 0:
            n = min(per_block, left)
            ids = id_of_rank[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), self.vocab - 1)]
            left -= n
            yield from np.split(ids, np.arange(self.doc_len, n, self.doc_len))

    def hash_config(self, table_sizes, layer_ids, n_heads, seed) -> HashConfig:
        return HashConfig(vocab_size=self.vocab + 1, pad_id=self.vocab, table_sizes=tuple(table_sizes),
                          layer_ids=tuple(layer_ids), n_heads=n_heads, seed=seed, tokenizer="synthetic-zipf")

    def max_tokens(self) -> int:
        return self.n_tokens

    def held_bytes(self) -> dict[str, float]:
        """The rank CDF (float64), the rank -> id permutation (int64) and its int64 draft, per vocabulary id."""
        return {"lower the synthetic vocabulary (--vocab)": 24 * self.vocab}

    def describe(self) -> dict:
        return {"kind": "synthetic-zipf", "alpha": self.alpha, "vocab": self.vocab, "tokens": self.n_tokens,
                "seed": self.seed, "doc_len": self.doc_len}
