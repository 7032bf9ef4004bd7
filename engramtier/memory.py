"""What memory a command may take, and the one refusal when its arguments ask for more.

Some commands hold memory that grows with their arguments or inputs rather than with the table:
a trace build holds the tokens of a decode's pending requests (``--requests`` x ``--seq-len``) or a
prefill step (``--batch`` x ``--seq-len``), the writer's chunk (``--chunk-rows``), the step counts
(``--tokens``) and a synthetic vocabulary (``--vocab``), see `engramtier.trace.build.build_memory`; a
text document is read whole before it is tokenized (`engramtier.documents.read_document`); an LMDB
build packs a batch of pages (``--batch-pages``). Each estimates what it will hold before allocating
and calls `check_memory`: an estimate that does not fit what the machine can give is one line naming
the estimate, the memory available and what to change, instead of a process that grows until the
kernel kills it (and other processes with it). Tier capacities are checked against the same reading
(`engramtier.tiers.slab`).

What the machine can give is the kernel's MemAvailable, lowered to the room left under the memory
limit of the process's cgroup (a container's ``memory.max``), where there is one. It lives at the top
of the package because trace/, model/ and tiers/ all ask, and none may import the others' modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from engramtier.errors import EngramTierError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")  # which group this process is in, per hierarchy


def available_host_bytes() -> int:
    """Bytes the kernel can give this process without swapping: MemAvailable from /proc/meminfo, or
    less when the process's cgroup allows less (`cgroup_room`)."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = cgroup_room()
    return available if room is None else min(available, room)


def cgroup_room() -> int | None:
    """The memory left under the tightest limit of this process's cgroup and its ancestors (v2
    ``memory.max``; v1 ``memory.limit_in_bytes`` of the memory controller's hierarchy): the limit less what
    is charged, the reclaimable page cache not counted; None when no limit applies or none can be read."""
    rooms = []
    for directory, files in _cgroup_directories():
        for parent in (directory, *directory.parents):
            if not parent.is_relative_to(CGROUP_ROOT):
                break
            rooms.append(_room(parent, *files))
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


V2_FILES = ("memory.max", "memory.current", "inactive_file")
V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _cgroup_directories() -> list[tuple[Path, tuple[str, str, str]]]:
    """This process's cgroup directories that may hold a memory limit, from /proc/self/cgroup: the v2
    group (``0::/path``) and the v1 memory controller's group (``N:memory:/path``), each with its files."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        controllers, group = fields[1], fields[2].strip().lstrip("/")
        if controllers == "":
            found.append((CGROUP_ROOT / group, V2_FILES))
        elif "memory" in controllers.split(","):
            found.append((CGROUP_ROOT / controllers / group, V1_FILES))
    return found


def _room(directory: Path, limit_file: str, used_file: str, cache_key: str) -> int | None:
    """Limit less charged memory less reclaimable cache in one cgroup directory; None without a limit."""
    try:
        limit = (directory / limit_file).read_text().strip()
        used = int((directory / used_file).read_text())
        stat = dict(x.split() for x in (directory / "memory.stat").read_text().splitlines())
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= 2**62:  # v1 writes "no limit" as a page-rounded 2**63
        return None
    return max(0, int(limit) - used + int(stat.get(cache_key, 0)))


def gib(nbytes: float) -> str:
    """``nbytes`` for a message: "12.3 GiB" (MiB to PiB)."""
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes / 2**20:.1f} MiB"


def check_memory(what: str, parts: Mapping[str, float]) -> None:
    """Refuse, in one line, to go on with ``what`` (a command) when the memory it would hold, the sum of
    ``parts`` (bytes, keyed by the advice that lowers each: "lower --requests"), exceeds what is
    available; the line gives the advice of the largest part."""
    total = sum(parts.values())
    available = available_host_bytes()
    if total > available:
        advice = max(parts, key=parts.get)
        raise EngramTierError(f"{what} would hold about {gib(total)} of memory, but only {gib(available)} are "
                              f"available; {advice}")
