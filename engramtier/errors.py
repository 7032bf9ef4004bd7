"""One error type for every bad input a user can hand us.

The command line catches `EngramTierError` and prints its message as a single line, so the message
must say what is wrong, where (a file, a key, an argument) and what to do about it.
"""

import difflib
import math
import reprlib
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
            hint = f"did you mean '{_printable(close[0])}'? " if close else ""
            prefix = f"{where}: " if where else ""
            raise EngramTierError(f"{prefix}unknown {what} '{_printable(name)}': {hint}choose one of "
                                  f"{', '.join(map(_printable, valid))}")


MAX_INT = 2**62  # the largest integer any count or size may be: sums and products of a few stay in int64


def check_number(value, what: str, *, integer: bool = False, low=None, high=None, low_open: bool = False):
    """``value`` when it is a number in [low, high] (``low_open``: (low, high]), else one line naming
    ``what`` (e.g. "experiment.toml: [trace] 'seed'"). A bool is no number (TOML's ``true`` is not 1),
    NaN and infinities never pass, ``integer`` refuses a float even when whole (``4.0``), and an integer
    without a ``high`` is at most `MAX_INT` (TOML integers are unbounded in Python): a file says what it
    means, and a value read from one must not turn into garbage (or an overflow) several steps later."""
    if integer and high is None and isinstance(value, int) and not isinstance(value, bool) and value > MAX_INT:
        high = MAX_INT
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        kind += f" in {'(' if low_open else '['}{_shown(low)}, {_shown(high)}]"
    elif low is not None:
        kind += f" {'>' if low_open else '>='} {_shown(low)}"
    elif high is not None:
        kind += f" <= {_shown(high)}"
    ok = (isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
          and (isinstance(value, int) or math.isfinite(value))
          and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high))
    if not ok:
        raise EngramTierError(f"{what} must be {kind}, got {reprlib.repr(value)}")
    return value


def _printable(name) -> str:
    """A name as typed, control characters escaped (a newline as \\n) so that a message stays one line."""
    text = str(name)
    return text if text.isprintable() else repr(text)[1:-1]


def _shown(bound) -> str:
    return f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"
