"""One error type for every bad input a user can hand us.

The command line catches `EngramTierError` and prints its message as a single line, so the message
must say what is wrong, where (a file, a key, an argument) and what to do about it.
"""

import difflib
from typing import Iterable


class EngramTierError(Exception):
    """Bad input or a refused operation; `str(err)` is the one line shown to the user."""


def refuse_unknown(names: Iterable, valid: Iterable, where: str = "", what: str = "key") -> None:
    """Refuse the first of ``names`` (keys of a config table, or values) not in ``valid``, naming the
    closest valid one: the usual cause is a typo."""
    valid = tuple(valid)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            prefix = f"{where}: " if where else ""
            raise EngramTierError(f"{prefix}unknown {what} '{name}': {hint}choose one of {', '.join(valid)}")
