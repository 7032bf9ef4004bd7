"""The `engramtier` command.

Each subpackage that offers commands has a ``commands.py`` exposing ``register(subparsers)``; this
module only assembles them and owns the one error path: a bad argument, an ``EngramTierError`` or an
``OSError`` on a file the user named becomes one line on stderr and exit status 2. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from engramtier import __version__
from engramtier.errors import EngramTierError

# In this order: the simulator's commands (trace, analysis) never import torch, and a run imports only the
# modules up to the one that registers its command (`build_parser`), so they start in well under a second.
_COMMAND_MODULES = (
    "engramtier.trace.commands",
    "engramtier.analysis.commands",
    "engramtier.model.commands",
    "engramtier.tiers.commands",
    "engramtier.tiers.remote.commands",
    "engramtier.serve.commands",
    "engramtier.serve.server",
)


# What to do about an OSError, by its errno: the line names the path and the cause, then this.
_OS_ADVICE = {
    errno.ENOSPC: "free disk space or choose another folder",
    errno.EFBIG: "the file outgrew the size limit (ulimit -f); raise it or write less",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a folder on the path is a file; check the path",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (not the whole usage) and points to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def os_error_line(err: OSError) -> str:
    """One line for an OSError: the path(s) it concerns, the system's cause and what to do."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    cause = err.strerror or str(err)
    advice = _OS_ADVICE.get(err.errno, "check the path and try again")
    return f"{paths}: {cause}; {advice}" if paths else f"{cause}; {advice}"


def _clear_progress_bars() -> None:
    """Erase the progress bars still drawn (an interrupted command's), so the line that follows starts a line."""
    if "tqdm" in sys.modules:
        for bar in list(sys.modules["tqdm"].tqdm._instances):
            bar.leave = False
            bar.close()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; given the ``command`` a run names, of the commands registered up to
    and including its module's (the rest are never imported)."""
    parser = OneLineParser(
        prog="engramtier",
        description="Memory-hierarchy simulator and runtime for Engram conditional-memory tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"engramtier {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
        if command in subparsers.choices:
            break
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument already reported in one line
        return done.code
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        args.run(args)
    except EngramTierError as err:
        print(f"engramtier {args.command}: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"engramtier {args.command}: error: out of memory; use a smaller table, trace or size", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"engramtier {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _clear_progress_bars()
        print(f"engramtier {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
