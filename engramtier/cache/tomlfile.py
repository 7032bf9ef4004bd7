"""Reading the TOML files users write (experiments, hierarchies), with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

from engramtier.errors import EngramTierError
from engramtier.trace.tracefile import MAGIC

MAX_TOML_BYTES = 16 << 20  # a config file is a few KiB; anything this large is some other file


def read_toml(path: str | Path, expected: str) -> dict:
    """The parsed document at ``path``; ``expected`` says what the file should be, for the error line
    when it is missing, unreadable or not TOML (e.g. "an experiment .toml").

    At most `MAX_TOML_BYTES` are read, so a trace or a table handed over by mistake is named as such
    instead of being loaded whole."""
    path = Path(path)
    if path.is_dir():
        raise EngramTierError(f"{path}: no such file (it is a directory); give the path of {expected}")
    if not path.is_file():
        raise EngramTierError(f"{path}: no such file; give the path of {expected}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TOML_BYTES + 1)
    except OSError as err:
        raise EngramTierError(f"{path}: cannot read it ({err.strerror}); give a readable path of {expected}") from None
    if len(raw) > MAX_TOML_BYTES or b"\0" in raw:  # no text: a trace's header holds NUL bytes too
        if raw.startswith(MAGIC):
            raise EngramTierError(f"{path} is a trace file, not {expected}; a trace goes after the TOML, as in "
                                  f"`engramtier simulate --hierarchy H.toml {path}`")
        raise EngramTierError(f"{path} is a binary file or larger than {MAX_TOML_BYTES >> 20} MiB, so not {expected}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EngramTierError(f"{path} is not UTF-8 text (bad byte at offset {err.start}), so not {expected}; "
                              "save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise EngramTierError(f"{path}: malformed TOML: {err}") from None
