"""Documents of text read from files, directories, JSONL records and standard input: what a trace
tokenizes (`engramtier.trace.sources`) and what a model trains on (`engramtier.model.train`).

Text, Markdown, reST and HTML files (tags, scripts and styles dropped), JSONL records (one field of each
line), any of them gzip-compressed, a directory's files recursively in name order, and ``-`` for
standard input. Each document is read in chunks and refused in one line when it is binary (a NUL byte)
or larger than memory can tokenize (`document_limit`), so a device or pipe that never ends (/dev/zero)
is never read whole. A top-level helper, like `engramtier.memory`: training (model/) and traces
(trace/) both read documents, and neither may import the other's modules.
"""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from engramtier import memory
from engramtier.errors import EngramTierError

TEXT_MEMORY_PER_BYTE = 64  # memory while a document is decoded, tokenized and hashed, per byte of its text
_READ_CHUNK = 1 << 20
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")  # Python docs' ``.rst.txt`` ends in .txt
JSONL_SUFFIXES = (".jsonl",)
GZIP_SUFFIX = ".gz"  # any of the above compressed (Debian ships its docs so): read decompressed
STDIN = "-"


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


def no_such_path(path) -> EngramTierError:
    return EngramTierError(f"{path} does not exist; give text files, directories, JSONL files or '-' for stdin")


def files_under(directory: Path) -> list[Path]:
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
            raise no_such_path(path)
        files = files_under(path) if path.is_dir() else [path]
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
