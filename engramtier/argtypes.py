"""Argument types for the command line: each refuses a value out of its range while the arguments are
parsed, so `--workers 0` or `--shards 2` is one line before anything is imported or read.

Every number has an upper bound too: an integer at most `MAX_INT` (2**62, so that sums and products of
a few stay inside numpy's int64 instead of overflowing into a traceback or a wrong result), a float a
bound of its own where one exists (a learning rate). What an argument makes a command allocate is
bounded by the memory estimates of `engramtier.memory`, not here.

argparse turns the ``ArgumentTypeError`` raised here into "argument --workers: must be >= 1, got 0".
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from engramtier.errors import MAX_INT


def _number(kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> Callable[[str], int | float]:
    """A parser of one ``kind`` (int or float) number in [low, high] (``low_open``: (low, high]); an
    integer's ``high`` is at most `MAX_INT`."""
    what = "an integer" if kind is int else "a number"
    if kind is int:
        high = MAX_INT if high is None else min(high, MAX_INT)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high if kind is int else f'{high:g}'}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1)
nonnegative_int = _number(int, 0)
seed = _number(int, 0, 2**63 - 1)
positive_float = _number(float, 0.0, low_open=True)
nonnegative_float = _number(float, 0.0)
fraction = _number(float, 0.0, 1.0, low_open=True)
learning_rate = _number(float, 0.0, 10.0, low_open=True)  # beyond, Adam's updates overflow float32
row_bytes = _number(int, 1, 1 << 20)  # a row of a MiB is a typo: Engram rows are 160-264 B
row_dim = _number(int, 1, 1 << 19)  # values per row: bf16 rows of at most a MiB
page_kib = _number(int, 1, 1 << 20)  # an LMDB page of at most a GiB (a value holds at most 4 GiB)


def int_list(text: str) -> list[int]:
    """Comma-separated non-negative integers (layer ids), at least one, each at most `MAX_INT`."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got '{text}'")
    if min(values) < 0 or max(values) > MAX_INT:
        raise argparse.ArgumentTypeError(f"expected integers in 0..{MAX_INT}, got '{text}'")
    return values


def name_list(valid: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A parser of a comma-separated, non-empty subset of ``valid``."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(valid)}, got '{text}'")
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(f"unknown '{name}'; choose from {', '.join(valid)}")
        return names

    return parse


def size_list(text: str) -> list[str | int]:
    """Comma-separated sizes, each rows (an integer) or bytes ("16MiB"), at least one."""
    sizes = [int(s) if s.strip().isdigit() else s.strip() for s in text.split(",") if s.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes such as 1000,16MiB, got '{text}'")
    if any(isinstance(s, int) and s > MAX_INT for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes in rows must be at most {MAX_INT}, got '{text}'")
    return sizes
