"""A cache tier: a slab of ``capacity_rows`` slots plus the map saying which table row is in which slot.

The gpu, dram and cxl tiers differ only in where the slab lives and how rows are copied in and out;
the bookkeeping is here. ``id_of`` holds the row in each slot (-1 = free), and ``index`` finds a row's
slot: a hashed key map over the slots (`engramtier.cache.keymap`), so the map costs a few bytes per
slot whatever the table's size (DeepSeek-V4.1-Flash's 768M rows cost a 2 GiB tier nothing more than a
20-row table would). Its kernels (`find_slots`, `remap`) are numba, so the runtime's step calls them
in compiled code.

The tier does not choose what to keep: the runtime's policy picks victims and slots, then the runtime
applies its own plan (`remap`, then the copies). `write_slots` and `evict` are the checked forms for
other callers; `write` is the convenience form that reuses a row's slot or takes free ones.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from numba import prange

from engramtier.cache import keymap
from engramtier.cache.diskcache import kernel
from engramtier.errors import EngramTierError
from engramtier.memory import available_host_bytes
from engramtier.tiers.base import Tier, check_fits
from engramtier.tiers.rowcopy import copy_elements


@kernel()
def find_slots(index, id_of, ids, out):
    """``out[i]`` = the slot holding row ``ids[i]``, or -1; returns how many are held."""
    held = 0
    for i in range(ids.size):
        s = keymap.find(index, id_of, ids[i])
        out[i] = s
        held += s >= 0
    return held


@kernel()
def remap(index, id_of, leaving, slots, ids):
    """Apply planned slot changes to the map: the ``leaving`` rows (all held) give up their slots, then
    row ``ids[i]`` takes slot ``slots[i]``. A row moving between slots is in both."""
    for i in range(leaving.size):
        s = keymap.find(index, id_of, leaving[i])
        keymap.delete(index, id_of, leaving[i])
        id_of[s] = -1
    for i in range(ids.size):
        id_of[slots[i]] = ids[i]
        keymap.insert(index, id_of, ids[i], slots[i])


def _copy_rows(src, src_index, dst, dst_index):
    """``dst[dst_index[i]] = src[src_index[i]]`` for C-contiguous uint8 rows, a memcpy per row
    (`engramtier.tiers.rowcopy`). An empty index array means "row i" (identity), so gather and
    scatter share this one loop."""
    width = src.shape[1]
    n = src_index.size if src_index.size else dst_index.size
    for i in prange(n):
        s = src_index[i] if src_index.size else i
        d = dst_index[i] if dst_index.size else i
        copy_elements(dst, d * width, src, s * width, width)


# One source, two builds: the serial one wins on small batches (a parallel launch costs tens of
# microseconds, far more on a busy machine), the parallel one on large batches with idle cores.
_copy_rows_serial = kernel()(_copy_rows)
_copy_rows_parallel = kernel(parallel=True)(_copy_rows)
_NO_INDEX = np.empty(0, np.int64)


def host_slab(rows: int, row_bytes: int) -> np.ndarray:
    """An untouched host slab of ``rows`` rows. numpy asks the kernel for transparent huge pages on large
    arrays (torch's allocator does not), and rows are read at random, so 2 MiB pages spare a TLB miss
    on nearly every row read."""
    return np.empty((rows, row_bytes), np.uint8)


def copy_rows(src: np.ndarray, src_index: np.ndarray | None, dst: np.ndarray, dst_index: np.ndarray | None,
              parallel_min_rows: int) -> None:
    """Copy rows between host arrays; identity where an index is None; threads from ``parallel_min_rows`` rows."""
    src_index = _NO_INDEX if src_index is None else src_index
    dst_index = _NO_INDEX if dst_index is None else dst_index
    n = max(src_index.size, dst_index.size)
    kernel = _copy_rows_parallel if n >= parallel_min_rows else _copy_rows_serial
    kernel(src, src_index, dst, dst_index)


class SlabTier(Tier):
    """Slots and slot map shared by every cache tier; subclasses own the slab and the copies."""

    # What the runtime asks of a cache tier: whether its reads fill device memory, whether its slab
    # lives there (writes then take device rows), and `direct_rows` (see there).
    reads_into_device = False
    slab_on_device = False

    def __init__(self, n_table_rows: int, capacity_rows: int, row_bytes: int, model: Any) -> None:
        super().__init__(n_table_rows, capacity_rows, row_bytes, model)
        map_bytes = keymap.index_bytes(self.n_table_rows, self.capacity_rows, True) + 8 * self.capacity_rows
        slab_bytes = self.capacity_rows * self.row_bytes
        room, where = self._slab_room()
        host = available_host_bytes()
        if where is None:  # the slab lives in host memory too
            check_fits(self.name, map_bytes + slab_bytes, host, "host memory")
        else:
            check_fits(self.name, map_bytes, host, "host memory (slot map)")
            check_fits(self.name, slab_bytes, room, where)
        self.index = keymap.hashed_index(self.capacity_rows)
        self.id_of = np.full(self.capacity_rows, -1, np.int64)
        self.evictions = 0

    def direct_rows(self) -> np.ndarray | None:
        """The slab as a host array when reading a row is nothing but a memory copy, so the runtime may
        read rows straight out of it into what it delivers; None when a read must go through `read`
        (a device slab, a modeled read that takes time)."""
        return None

    def _slab_room(self) -> tuple[int, str | None]:
        """Free bytes where the slab will live and a name for that place; None: host memory."""
        return 0, None

    @abstractmethod
    def _gather(self, slots: np.ndarray, out: Any) -> None:
        """Copy the rows in ``slots`` into ``out``."""

    @abstractmethod
    def _scatter(self, slots: np.ndarray, rows: Any) -> None:
        """Copy ``rows`` into ``slots``."""

    @abstractmethod
    def _scatter_from(self, staging: Any, positions: np.ndarray, slots: np.ndarray) -> None:
        """Copy ``staging[positions[i]]`` into slot ``slots[i]``."""

    def occupancy(self) -> int:
        return int(np.count_nonzero(self.id_of >= 0))

    def slots_of(self, ids: Any) -> np.ndarray:
        """The slot of each row of ``ids``, -1 where it is not held."""
        ids = self._ids(ids)
        slots = np.empty(ids.size, np.int64)
        find_slots(self.index, self.id_of, ids, slots)
        return slots

    def contains(self, ids: Any) -> np.ndarray:
        return self.slots_of(ids) >= 0

    def read(self, ids: Any, out: Any) -> None:
        ids = self._ids(ids)
        self.read_slots(self._held_slots(ids), out)

    def read_slots(self, slots: np.ndarray, out: Any) -> None:
        """Copy the rows in ``slots`` (int64, as `slots_of` gives them) into ``out``: `read` once the
        slots are known."""
        self._gather(slots, out)
        self._count_read(slots.size)

    def count_direct_reads(self, n: int) -> None:
        """Count ``n`` rows the runtime read straight out of `direct_rows`."""
        self._count_read(n)

    def apply_plan(self, leaving: np.ndarray, slots: np.ndarray, ids: np.ndarray, staging: Any,
                   positions: np.ndarray) -> None:
        """Apply the runtime's own plan (`engramtier.tiers.slots`, trusted, so unchecked): the
        ``leaving`` rows give up their slots, then row ``ids[i]`` is copied from ``staging[positions[i]]``
        into slot ``slots[i]``. ``staging`` is where the slab lives (host rows, or device rows for a
        device slab)."""
        remap(self.index, self.id_of, leaving, slots, ids)
        self.evictions += leaving.size
        if ids.size:
            self._scatter_from(staging, positions, slots)
            self._count_write(ids.size)

    def write_slots(self, slots: Any, ids: Any, rows: Any) -> None:
        """Put ``rows[i]`` (row ``ids[i]``) into slot ``slots[i]``, replacing what the slot held.

        A row already held in a different slot is refused: it would be held twice and one copy would go
        stale. Evict it first, or write it to its own slot.
        """
        ids = self._ids(ids)
        slots = np.ascontiguousarray(slots, dtype=np.int64).reshape(-1)
        if slots.size != ids.size:
            raise EngramTierError(f"{self.name} tier: {slots.size} slots given for {ids.size} rows")
        if slots.size and (slots.min() < 0 or slots.max() >= self.capacity_rows):
            raise EngramTierError(
                f"{self.name} tier: slot numbers must lie in 0..{self.capacity_rows - 1}, "
                f"got {int(slots.min())}..{int(slots.max())}"
            )
        if np.unique(slots).size != slots.size or np.unique(ids).size != ids.size:
            raise EngramTierError(f"{self.name} tier: a write names the same slot or row twice; deduplicate it")
        held = self.slots_of(ids)
        moved = (held >= 0) & (held != slots)
        if moved.any():
            i = int(np.flatnonzero(moved)[0])
            raise EngramTierError(
                f"{self.name} tier: row {ids[i]} is already held in slot {held[i]}, not slot {slots[i]}; "
                "evict it first"
            )
        self._scatter(slots, rows)
        replaced = self.id_of[slots]
        replaced = replaced[(replaced >= 0) & (replaced != ids)]
        self.evictions += replaced.size
        remap(self.index, self.id_of, replaced, slots, ids)
        self._count_write(ids.size)

    def write(self, ids: Any, rows: Any) -> None:
        """Store rows: a held row is overwritten in place, a new row takes a free slot."""
        ids = self._ids(ids)
        slots = self.slots_of(ids)
        new = slots < 0
        n_new = int(np.count_nonzero(new))
        if n_new:
            free = np.flatnonzero(self.id_of < 0)
            if free.size < n_new:
                raise EngramTierError(
                    f"{self.name} tier: {n_new} new rows but only {free.size} free slots of "
                    f"{self.capacity_rows}; evict rows first or let a policy choose slots (write_slots)"
                )
            slots[new] = free[:n_new]
        self.write_slots(slots, ids, rows)

    def evict(self, ids: Any) -> np.ndarray:
        """Drop rows ``ids`` (all must be held) and return the slots they free."""
        ids = self._ids(ids)
        slots = self._held_slots(ids)
        remap(self.index, self.id_of, ids, slots[:0], ids[:0])
        self.evictions += ids.size
        return slots

    def stats(self) -> dict:
        return {**super().stats(), "occupancy": self.occupancy(), "evictions": self.evictions}

    def _held_slots(self, ids: np.ndarray) -> np.ndarray:
        slots = np.empty(ids.size, np.int64)
        if find_slots(self.index, self.id_of, ids, slots) < ids.size:
            missing = ids[slots < 0]
            raise EngramTierError(
                f"{self.name} tier: {missing.size} of {ids.size} rows are not held (first: row {missing[0]}); "
                "check contains() and read those from a lower tier"
            )
        return slots
