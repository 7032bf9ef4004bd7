"""Output files: refused before any work when they cannot be written, and never left half-written.

A command that runs for minutes and then fails to write its result wastes the user's time, and a
reader that finds a truncated file cannot tell it from a complete one. So every file a command writes
is checked up front (`check_output_file`) and written through `atomic_output`: to ``NAME.part`` beside
it, renamed over ``NAME`` only once complete, removed on any error.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from engramtier.errors import EngramTierError


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path, or one line saying why the file cannot be written (``option`` names it)."""
    if not str(path).strip():
        raise EngramTierError(f"{option}: the path is empty; give a file name")
    final = Path(path)
    if final.is_dir():
        raise EngramTierError(f"{option} {final}: is a directory; give a file name (e.g. {final / 'out'})")
    folder = final.parent
    if not folder.is_dir():
        raise EngramTierError(f"{option} {final}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EngramTierError(f"{option} {final}: the folder {folder} is not writable; choose another path")
    return final


@contextmanager
def atomic_output(path: str | os.PathLike, option: str) -> Iterator[Path]:
    """Yield the temporary path to write; on success it replaces ``path``, on any error it is removed."""
    final = check_output_file(path, option)
    part = final.with_name(final.name + ".part")
    try:
        yield part
    except OSError as err:
        part.unlink(missing_ok=True)
        if err.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(final)) from None
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so a reader sees the old file or the whole new one."""
    with atomic_output(path, "output") as part:
        part.write_text(text, encoding="utf-8")
