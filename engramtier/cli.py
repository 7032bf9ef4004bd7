"""The `engramtier` command.

Each subpackage that offers commands has a ``commands.py`` exposing ``register(subparsers)``; this
module only assembles them and turns an ``EngramTierError`` into one line on stderr (exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engramtier import __version__
from engramtier.errors import EngramTierError

_COMMAND_MODULES = (
    "engramtier.trace.commands",
    "engramtier.model.commands",
    "engramtier.cache.commands",
    "engramtier.tiers.commands",
    "engramtier.tiers.runtime_commands",
    "engramtier.tiers.remote_commands",
    "engramtier.analysis.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engramtier",
        description="Memory-hierarchy simulator and runtime for Engram conditional-memory tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"engramtier {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        args.run(args)
    except EngramTierError as err:
        print(f"engramtier {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"engramtier {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
