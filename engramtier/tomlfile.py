"""Reading the TOML files users write (experiments, hierarchies), with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

from engramtier.errors import EngramTierError


def read_toml(path: str | Path, expected: str) -> dict:
    """The parsed document at ``path``; ``expected`` says what the file should be, for the error line
    when it is missing (e.g. "an experiment .toml")."""
    path = Path(path)
    if not path.is_file():
        raise EngramTierError(f"{path}: no such file; give the path of {expected}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise EngramTierError(f"{path}: malformed TOML: {err}") from None
