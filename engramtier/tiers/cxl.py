"""The cxl tier: a dram tier on slower, cheaper memory, real where the host has it, modeled where not.

A CXL Type-3 memory expander appears to Linux as a NUMA node with memory and no CPUs. When such a node
exists (``binding="auto"`` or ``"numa"``), the slab is mmap'ed and bound to it with libnuma before any
page is touched, and reads cost what the hardware costs. Otherwise (``"auto"`` on an ordinary host, or
``"modeled"``), the slab is ordinary DRAM and every read is held until the time the `TierModel`
charges for it has passed: ``model.fetch_seconds(n_rows, row_bytes)`` measured from the start of the
read, so a read takes at least the modeled time and never less than its real work. The wait sleeps
for all but the last `_SPIN_S` of it (giving the core back) and spins on the clock for the rest,
because sleep wakes up tens of microseconds late while modeled reads are often shorter than that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import mmap
import time
from pathlib import Path
from typing import Any

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.tiers.base import default_model
from engramtier.tiers.dram import DramTier

_SPIN_S = 100e-6
NODE_ROOT = Path("/sys/devices/system/node")


def cpuless_numa_nodes(root: Path = NODE_ROOT) -> list[int]:
    """NUMA nodes that have memory but no CPUs: where a CXL expander's memory shows up."""
    nodes = []
    for node in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            cpus = (node / "cpulist").read_text().strip()
            meminfo = (node / "meminfo").read_text()
        except OSError:
            continue
        total_kb = next((int(line.split()[3]) for line in meminfo.splitlines() if "MemTotal:" in line), 0)
        if not cpus and total_kb > 0:
            nodes.append(int(node.name[4:]))
    return nodes


def wait_until(deadline: float) -> None:
    """Return at ``time.perf_counter() >= deadline``: sleep while far from it, spin when close."""
    remaining = deadline - time.perf_counter()
    if remaining > 2 * _SPIN_S:
        time.sleep(remaining - _SPIN_S)
    while time.perf_counter() < deadline:
        pass


class CxlTier(DramTier):
    """Cache tier on CXL memory.

    ``binding``: "auto" (a CPU-less NUMA node if the host has one, else modeled), "numa" (require
    one; ``node`` picks which) or "modeled". ``latency_s`` / ``bandwidth_Bps`` override the default
    cxl `TierModel` for modeled reads.
    """

    name = "cxl"

    def __init__(self, n_table_rows: int, capacity_rows: int, row_bytes: int, *, binding: str = "auto",
                 node: int | None = None, latency_s: float | None = None, bandwidth_Bps: float | None = None,
                 model: Any = None, **dram_options: Any) -> None:
        model = model or default_model(self.name)
        overrides = {k: v for k, v in (("latency_s", latency_s), ("bandwidth_Bps", bandwidth_Bps)) if v is not None}
        if overrides:
            model = dataclasses.replace(model, **overrides)
        self.numa_node, self.binding_note = self._choose_node(binding, node)
        super().__init__(n_table_rows, capacity_rows, row_bytes, model=model, **dram_options)

    @staticmethod
    def _choose_node(binding: str, node: int | None) -> tuple[int | None, str]:
        if binding not in ("auto", "numa", "modeled"):
            raise EngramTierError(f"cxl tier: binding must be 'auto', 'numa' or 'modeled', got '{binding}'")
        if binding == "modeled":
            return None, "modeled: binding='modeled'"
        nodes = cpuless_numa_nodes()
        if node is not None and node not in nodes:
            raise EngramTierError(
                f"cxl tier: NUMA node {node} is not a CPU-less memory node (found: {nodes or 'none'})"
            )
        if not nodes:
            if binding == "numa":
                raise EngramTierError(
                    f"cxl tier: binding='numa' but {NODE_ROOT} lists no CPU-less memory node; "
                    "use binding='modeled' on hosts without CXL memory"
                )
            return None, "modeled: this host has no CPU-less NUMA node (no CXL memory)"
        if _libnuma() is None:
            if binding == "numa":
                raise EngramTierError("cxl tier: binding='numa' needs libnuma.so.1; install libnuma1")
            return None, f"modeled: CPU-less NUMA node {nodes[0]} found but libnuma is not installed"
        chosen = nodes[0] if node is None else node
        return chosen, f"numa: slab bound to CPU-less node {chosen}"

    def _allocate_slab(self) -> np.ndarray:
        if self.numa_node is None:
            return super()._allocate_slab()
        nbytes = self.capacity_rows * self.row_bytes
        self._mapping = mmap.mmap(-1, max(nbytes, 1))
        slab = np.frombuffer(self._mapping, np.uint8, count=nbytes).reshape(self.capacity_rows, self.row_bytes)
        # Binding an untouched mapping decides where each page lands at its first fault.
        _libnuma().numa_tonode_memory(ctypes.c_void_p(slab.ctypes.data), ctypes.c_size_t(nbytes),
                                      ctypes.c_int(self.numa_node))
        slab.fill(0)
        self.slab_pinned = False  # copies to a GPU leave through the runtime's pinned staging buffer
        return slab

    @property
    def modeled(self) -> bool:
        return self.numa_node is None

    def direct_rows(self) -> np.ndarray | None:
        return None if self.modeled else self.slab  # a modeled read waits for its modeled time

    def _gather(self, slots: np.ndarray, out: Any) -> None:
        if not self.modeled:
            super()._gather(slots, out)
            return
        deadline = time.perf_counter() + self.model.fetch_seconds(slots.size, self.row_bytes)
        super()._gather(slots, out)
        wait_until(deadline)

    def stats(self) -> dict:
        return {**super().stats(), "modeled": self.modeled, "numa_node": self.numa_node,
                "binding": self.binding_note}


def _libnuma() -> Any:
    path = ctypes.util.find_library("numa")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    if lib.numa_available() < 0:
        return None
    lib.numa_tonode_memory.restype = None
    lib.numa_tonode_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib
