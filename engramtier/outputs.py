"""Output files: refused before any work when they cannot be written, and never left half-written.

A command that runs for minutes and then fails to write its result wastes the user's time, and a
reader that finds a truncated file cannot tell it from a complete one. So every file a command writes
is checked up front (`check_output_file`) and written through `atomic_output`, which never destroys
anything but the file the user named:

- a new path or a regular file is written to a temporary ``NAME.<pid>-<n>.part`` beside it (its
  writer's own, so two commands writing the same name never share one) and renamed over ``NAME``
  only once complete; the temporary file is removed on any error, a later writer of ``NAME`` removes
  those of writers no longer running (killed by ``kill -9``), and the result gets the mode the file
  had (or the umask's, for a new one);
- a symbolic link is followed: the file it points to is replaced that way and the link stays a link;
- a character device (such as ``/dev/null``) or a FIFO, directly or through a link, is written in
  place as a stream, never renamed over (it stays what it is), when the writer writes in order
  (``stream_ok``); a writer that seeks refuses it in one line; block devices (a disk), sockets and
  directories are always refused, and so is a file without any write permission (as `cp` would);
- an output that is one of the command's own inputs (the same file, by device and inode, through any
  link) is refused: writing it would destroy what is being read.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from engramtier.errors import EngramTierError

PathLike = str | os.PathLike


def _special(mode: int) -> str | None:
    """What kind of special file ``mode`` is, or None for a regular file."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def check_output_file(path: PathLike, option: str, *, inputs: Iterable[PathLike] = (),
                      stream_ok: bool = True) -> Path:
    """Where the output named ``path`` will be written (a link's target), or one line saying why it
    cannot be: ``option`` names it in the message, ``inputs`` are the command's input files (never
    overwritten), ``stream_ok`` says whether the writer can write a special file in place."""
    if not str(path).strip():
        raise EngramTierError(f"{option}: the path is empty; give a file name")
    named = Path(path)
    final = Path(os.path.realpath(named))  # a link's target: that file is replaced, the link stays
    if final.is_dir():
        raise EngramTierError(f"{option} {named}: is a directory; give a file name (e.g. {named / 'out'})")
    try:
        mode = os.stat(final).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise EngramTierError(f"{option} {named}: {err.strerror}; choose another path") from None
    kind = _special(mode) if mode is not None else None
    if kind in ("a socket", "a block device") or (kind and not stream_ok):
        raise EngramTierError(f"{option} {named}: is {kind}; give a regular file"
                              + (" (this output is written out of order, not as a stream)" if stream_ok is False
                                 and kind not in ("a socket", "a block device") else ""))
    if mode is not None and not kind and not mode & 0o222:
        raise EngramTierError(f"{option} {named}: is read-only; make it writable (chmod u+w) or choose another path")
    check_inputs_are_not(final, inputs, option, named)
    folder = final.parent
    if not folder.is_dir():
        raise EngramTierError(f"{option} {named}: the folder {folder} does not exist; create it or choose another path")
    if not kind and not os.access(folder, os.W_OK | os.X_OK):
        raise EngramTierError(f"{option} {named}: the folder {folder} is not writable; choose another path")
    return final


def _same_file(a: Path, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # b does not exist (yet): nothing to destroy
        return False


def check_inputs_are_not(output: PathLike, inputs: Iterable[PathLike], option: str, named: PathLike | None = None) -> None:
    """Refuse an ``output`` path that is one of ``inputs`` (by device and inode, through links);
    ``named``: what the user called the output, for the message."""
    for source in inputs:
        if _same_file(Path(output), source):
            raise EngramTierError(f"{option} {named or output}: is the input {source} itself; writing it would destroy "
                                  "what is being read, so give another output path")


def is_special(path: Path) -> bool:
    """Whether ``path`` (links followed) is a special file that is written in place."""
    try:
        return _special(os.stat(path).st_mode) is not None
    except OSError:
        return False


_TEMPORARY = re.compile(r"\.(\d+)-\d+\.(part|raw)$")


def temporary_beside(final: Path, suffix: str = ".part", folder: Path | None = None) -> Path:
    """A new empty file ``NAME.<pid>-<n><suffix>`` (suffix ".part" or ".raw") beside ``final`` (or in
    ``folder``), this process's own; those a dead process left of ``NAME`` are removed first."""
    folder = final.parent if folder is None else folder
    for old in folder.glob(f"{glob.escape(final.name)}.*{suffix}"):
        match = _TEMPORARY.search(old.name[len(final.name):])
        if match and not _alive(int(match.group(1))):
            old.unlink(missing_ok=True)
    for n in itertools.count():
        path = folder / f"{final.name}.{os.getpid()}-{n}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return path
        except FileExistsError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def replace_with(part: Path, final: Path) -> None:
    """Rename the complete ``part`` over ``final``, with the mode ``final`` had (or a new file's)."""
    try:
        mode = stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(part, mode)
    os.replace(part, final)


@contextmanager
def atomic_output(path: PathLike, option: str, *, inputs: Iterable[PathLike] = (),
                  stream_ok: bool = True) -> Iterator[Path]:
    """Yield the path to write: a temporary file that replaces ``path`` (a link's target) on success
    and is removed on any error; or, for a special file, that file itself (see the module docstring)."""
    final = check_output_file(path, option, inputs=inputs, stream_ok=stream_ok)
    if is_special(final):
        yield final
        return
    part = temporary_beside(final)
    try:
        yield part
    except OSError as err:
        part.unlink(missing_ok=True)
        if err.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    replace_with(part, final)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so a reader sees the old file or the whole new one."""
    with atomic_output(path, "output") as part:
        part.write_text(text, encoding="utf-8")
