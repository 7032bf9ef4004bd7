"""Token sources: where the canonical token ids of a row trace come from.

A source yields *documents*, each an int64 array of compressed (canonical) token ids that the model
would see as one sequence, and knows the hash config its ids are hashed under: real text goes
through a `CompressedTokenizer` and carries that tokenizer's compression digest, so a trace built
from it addresses exactly the rows of a model built with the same settings; a synthetic Zipf stream
has a vocabulary of its own. Sources are iterators, so arbitrarily long inputs stream through.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Protocol

import numpy as np

from engramtier import memory
from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig

TEXT_MEMORY_PER_BYTE = 64  # memory while a document is decoded, tokenized and hashed, per byte of its text
_READ_CHUNK = 1 << 20
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")  # Python docs' ``.rst.txt`` ends in .txt
JSONL_SUFFIXES = (".jsonl",)
GZIP_SUFFIX = ".gz"  # any of the above compressed (Debian ships its docs so): read decompressed
STDIN = "-"
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


class _TextOfHTML(HTMLParser):
    """Collects the character data of an HTML page, leaving out scripts and style sheets."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOfHTML()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


def _kind_suffix(path: Path) -> str:
    """The suffix that says what a file holds: ``notes.rst.gz`` is reST (read decompressed)."""
    suffixes = [x.lower() for x in path.suffixes]
    return suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == GZIP_SUFFIX else path.suffix.lower()


def document_limit() -> int:
    """The most bytes one document may hold: its text, token ids and the tokenizer's encodings take
    about `TEXT_MEMORY_PER_BYTE` bytes of memory per byte, all at once."""
    return memory.available_host_bytes() // TEXT_MEMORY_PER_BYTE


def read_document(f: BinaryIO, where: str) -> bytes:
    """All of ``f``, read in chunks and refused as soon as a chunk holds a NUL byte (binary) or the
    bytes outgrow `document_limit`: a device or a pipe that never ends (/dev/zero, a stream without
    line breaks) is never read whole into memory."""
    limit = document_limit()
    chunks, size = [], 0
    while chunk := f.read(min(_READ_CHUNK, limit + 1 - size)):
        if b"\x00" in chunk:
            raise _binary(where)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise EngramTierError(
                f"{where} holds more than {memory.gib(limit)} of text in one document, more than the "
                f"{memory.gib(memory.available_host_bytes())} of memory available can tokenize at once (about "
                f"{TEXT_MEMORY_PER_BYTE} bytes per byte of text); split it into smaller files or JSONL lines"
            )
    return b"".join(chunks)


def _read_bytes(path: Path) -> bytes:
    try:
        with (gzip.open(path, "rb") if path.suffix.lower() == GZIP_SUFFIX else open(path, "rb")) as f:
            return read_document(f, str(path))
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise EngramTierError(f"{path} is not a readable gzip file ({err}); recompress it or leave it out") from None


def _binary(where: str) -> EngramTierError:
    return EngramTierError(f"{where} is a binary file (it holds NUL bytes); pass text, Markdown, reST, HTML or JSONL")


def decode_text(raw: bytes, where: str) -> str:
    """``raw`` as UTF-8 text, or one line saying why it is not text."""
    if b"\x00" in raw:
        raise _binary(where)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EngramTierError(
            f"{where} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8 or leave it out"
        ) from None


def _read_text_file(path: Path) -> str:
    text = decode_text(_read_bytes(path), str(path))
    return html_to_text(text) if _kind_suffix(path) in (".html", ".htm") else text


def _jsonl_documents(path: Path, field: str) -> Iterator[tuple[str, str]]:
    limit = document_limit()
    with (gzip.open(path, "rb") if path.suffix.lower() == GZIP_SUFFIX else open(path, "rb")) as f:
        for number, line in enumerate(iter(lambda: f.readline(limit + 1), b""), 1):  # a line is one document
            where = f"{path} line {number}"
            if len(line) > limit:
                raise EngramTierError(f"{where} is longer than {memory.gib(limit)}, more than the memory available "
                                      "can tokenize at once; split the record, or the file into lines")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise EngramTierError(f"{where} is not valid JSON ({err.msg} at column {err.colno}); fix or remove that line") from None
            except UnicodeDecodeError:
                raise EngramTierError(f"{where} is not UTF-8 text; convert the file to UTF-8") from None
            if not isinstance(record, dict) or field not in record:
                raise EngramTierError(f"{where} has no field '{field}'; choose the text field with --field")
            if not isinstance(record[field], str):
                raise EngramTierError(f"{where}: field '{field}' holds {type(record[field]).__name__}, not text")
            yield where, record[field]


def _missing(path) -> EngramTierError:
    return EngramTierError(f"{path} does not exist; give text files, directories, JSONL files or '-' for stdin")


def _files_under(directory: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    return sorted(p for p in directory.rglob("*") if p.is_file() and _kind_suffix(p) in suffixes)


def text_documents(paths: Iterable[str | Path], field: str = "text") -> Iterator[tuple[str, str]]:
    """(origin, text) of every document under ``paths``: files, directories (recursively, the
    suffixes in TEXT_SUFFIXES and JSONL_SUFFIXES, each optionally .gz), JSONL files (one document per line, text under
    ``field``) and ``-`` for standard input (one document). Whitespace-only documents are skipped, but
    a named file or directory that yields no text at all is an error: a typo should not make an
    empty trace."""
    for item in paths:
        if str(item) == STDIN:
            text = decode_text(read_document(sys.stdin.buffer, "standard input"), "standard input")
            if not text.strip():
                raise EngramTierError("standard input holds no text; pipe some text in or name files instead")
            yield "<stdin>", text
            continue
        path = Path(item)
        if not path.exists():
            raise _missing(path)
        files = _files_under(path) if path.is_dir() else [path]
        found = False
        for file in files:
            if _kind_suffix(file) in JSONL_SUFFIXES:
                docs = _jsonl_documents(file, field)
            else:
                docs = iter([(str(file), _read_text_file(file))])
            for origin, text in docs:
                if text.strip():
                    found = True
                    yield origin, text
        if not found:
            kinds = " ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
            what = f"directory with no non-empty {kinds} files" if path.is_dir() else "file with no text"
            raise EngramTierError(f"{path} is a {what}; point at files that hold text")


class TextSource:
    """Documents read from files, directories, JSONL or stdin, tokenized and compressed."""

    def __init__(self, paths: list[str], tokenizer: str = "deepseek", field: str = "text",
                 engram_pad: int | None = None, image_token: int | None = None):
        """``engram_pad``: the base id that stands for positions before a sequence's start (None: the
        tokenizer's default); ``image_token``: the base id of the image token hashing blocks (None: none)."""
        from engramtier.model.tokenizer import load_compressed_tokenizer

        self.paths = [str(p) for p in paths]
        if not self.paths:
            raise EngramTierError("no text sources given; name files, directories, JSONL files or '-'")
        for path in self.paths:  # fail before the tokenizer loads and the output file opens
            if path != STDIN and not Path(path).exists():
                raise _missing(path)
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
            files = _files_under(path) if path.is_dir() else [path]
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
