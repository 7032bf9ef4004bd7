"""Reading the TOML files users write (experiments, hierarchies), with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

from engramtier.errors import EngramTierError


def read_toml(path: str | Path, expected: str) -> dict:
    """The parsed document at ``path``; ``expected`` says what the file should be, for the error line
    when it is missing or not TOML (e.g. "an experiment .toml")."""
    path = Path(path)
    if not path.is_file():
        raise EngramTierError(f"{path}: no such file; give the path of {expected}")
    raw = path.read_bytes()
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        from engramtier.trace.tracefile import MAGIC  # only a file that is no TOML gets here: keep the usual path light

        if raw.startswith(MAGIC):
            raise EngramTierError(f"{path} is a trace file, not {expected}; a trace goes after the TOML, as in "
                                  f"`engramtier simulate --hierarchy H.toml {path}`") from None
        if isinstance(err, UnicodeDecodeError):
            raise EngramTierError(f"{path} is not UTF-8 text (bad byte at offset {err.start}), so not {expected}; "
                                  "save it as UTF-8") from None
        raise EngramTierError(f"{path}: malformed TOML: {err}") from None
