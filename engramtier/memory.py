"""What memory a command may take, and the one refusal when its arguments ask for more.

Several commands hold memory that grows with an argument: the rows of a decode trace's pending
requests (``--requests``), a prefill step (``--batch`` x ``--seq-len``), a trace file's chunk
(``--chunk-rows``), a synthetic vocabulary (``--vocab``), a random table (``--rows`` x ``--dim``), a
model's Engram table (``--table-size`` x ``--row-dim``), a miss-ratio curve's largest size. Each
estimates what it will hold from its arguments, before allocating, and calls `check_memory`: an
estimate that does not fit what the machine can give is one line naming the estimate, the memory
available and what to change, instead of a process that grows until the kernel kills it (and other
processes with it).

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
    ``memory.max``; v1 ``memory.limit_in_bytes`` of the mounted memory hierarchy): the limit less what is
    charged, the reclaimable page cache not counted; None when no limit applies or none can be read."""
    rooms = []
    try:
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
        group = CGROUP_ROOT / line[3:].strip().lstrip("/")
        for directory in (group, *group.parents):
            if not directory.is_relative_to(CGROUP_ROOT):
                break
            rooms.append(_room(directory, "memory.max", "memory.current", "inactive_file"))
    except (OSError, StopIteration):
        pass
    rooms.append(_room(CGROUP_ROOT / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


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
