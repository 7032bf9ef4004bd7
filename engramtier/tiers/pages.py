"""The nvme tier's page: what one LMDB value of the table holds, and how it is written and verified.

A page holds ``page_rows`` consecutive *positions* (`Layout`); it is stored under `PAGE_KEY`, its
page number as 8 big-endian bytes, so LMDB's key order is page order. The value is `PAGE_HEADER`
(checksum of the row-checksum list, rows on the page, 1 if compressed), then one u32 checksum per
row (the low half of XXH64 of the row, seeded with its position), then the rows, raw or as one zstd
frame (`Compression`). Every read verifies the page's checksum list (seeded with the page number,
so a page stored under the wrong key fails too) and the checksum of every row it returns, so a flipped
bit on disk is an error naming the page and file, never a silently wrong embedding. Verifying rows
rather than whole pages is what keeps reads fast: a tail lookup takes one 160-byte row from a 16 KiB
page, and hashing the whole page would cost more than finding it. Uncompressed pages are read in place
from LMDB's memory map (no copy); the numba kernel `read_rows` gets their addresses.

The builder (`engramtier.tiers.lmdb_table`) writes pages with `encode_page`; the tier
(`engramtier.tiers.nvme`) finds them and reads rows out of them with `read_rows`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

import numba
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from engramtier.errors import EngramTierError
from engramtier.xxh64 import xxh64

PAGE_KEY = struct.Struct(">Q")
PAGE_HEADER = struct.Struct("<QII")  # xxh64 of the row-checksum list, rows on the page, 1 if zstd-compressed
HEADER_BYTES = PAGE_HEADER.size
ROW_SUM_BYTES = 4


@dataclass(frozen=True)
class Compression:
    """How page payloads are stored: "none", "zstd[:LEVEL]" or "zstd-dict[:LEVEL]" (level 3 by default)."""

    kind: str
    level: int = 3

    @classmethod
    def parse(cls, spec: str) -> "Compression":
        kind, _, level = spec.partition(":")
        if kind not in ("none", "zstd", "zstd-dict") or (kind == "none" and level):
            raise EngramTierError(f"compression '{spec}' is not one of: none, zstd[:LEVEL], zstd-dict[:LEVEL]")
        if not level:
            return cls(kind)
        if not level.lstrip("-").isdigit() or not -7 <= int(level) <= 22:
            raise EngramTierError(f"compression '{spec}': the zstd level must be an integer in -7..22")
        return cls(kind, int(level))

    def __str__(self) -> str:
        return self.kind if self.kind == "none" else f"{self.kind}:{self.level}"


@dataclass(frozen=True)
class Layout:
    """How rows map to pages; stored as JSON under meta b"layout"."""

    n_rows: int
    row_bytes: int
    page_rows: int
    compression: str
    permuted: bool
    checksum: str = "xxh64"

    @property
    def n_pages(self) -> int:
        return -(-self.n_rows // self.page_rows)

    @property
    def page_bytes(self) -> int:
        """Row bytes of a full page."""
        return self.page_rows * self.row_bytes

    def value_bytes(self, n_rows: int) -> int:
        """Size of an uncompressed stored page of ``n_rows`` rows."""
        return HEADER_BYTES + n_rows * (ROW_SUM_BYTES + self.row_bytes)

    def rows_on_page(self, page: int) -> int:
        return min(self.page_rows, self.n_rows - page * self.page_rows)

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "n_pages": self.n_pages}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Layout":
        """The stored layout, refused (ValueError) unless each field has its type and range: the page
        arithmetic of every read trusts them."""
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError(f"layout {fields!r} is not a JSON object")
        n_pages = fields.pop("n_pages")
        layout = cls(**fields)
        counts = (layout.n_rows, layout.row_bytes, layout.page_rows, n_pages)
        if (not all(type(c) is int and c >= 1 for c in counts) or n_pages != layout.n_pages
                or type(layout.permuted) is not bool or layout.checksum != "xxh64"
                or not isinstance(layout.compression, str)):
            raise ValueError(f"layout {fields} does not hold together")
        try:
            Compression.parse(layout.compression)
        except EngramTierError as err:
            raise ValueError(str(err)) from None
        return layout


@njit(nogil=True, cache=True)
def row_checksums(rows, positions, out):
    """``out[i]`` = low 32 bits of XXH64(rows[i]) seeded with the row's position."""
    for i in range(rows.shape[0]):
        out[i] = np.uint32(xxh64(rows[i], np.uint64(positions[i])) & np.uint64(0xFFFFFFFF))


def rows_offset(n_rows: int) -> int:
    """Where the rows of a stored page of ``n_rows`` rows start: after its header and checksum list."""
    return HEADER_BYTES + ROW_SUM_BYTES * n_rows


def encode_page(page: int, sums: np.ndarray, payload: bytes, compressed: bool) -> bytes:
    """The stored value of page ``page``: its header, its rows' checksums ``sums`` (uint32, from
    `row_checksums`) and ``payload``, the rows as they are stored (raw, or zstd if ``compressed``)."""
    header = PAGE_HEADER.pack(int(xxh64(sums.view(np.uint8), np.uint64(page))), sums.size, int(compressed))
    return header + sums.tobytes() + payload


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` as a uint8 pointer, for `numba.carray` views of memory numpy does not own."""
    sig = types.CPointer(types.uint8)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint8)))

    return sig, codegen


@njit(nogil=True, cache=True)
def read_rows(positions, order, lo, hi, page_rows, n_rows, value_at, rows_at, value_len, compressed, checked, epoch,
              row_bytes, out):
    """Copy the row at ``positions[i]`` into ``out[i]`` for ``i`` in ``order[lo:hi]`` (empty ``order``:
    ``lo:hi`` itself), verifying each page's header and checksum list the first time this read touches
    it and every row's checksum.

    Per page: ``value_at`` is the address of its stored value (header and checksum list), ``rows_at``
    that of its row bytes (inside the value, or a decompressed copy), both bounds-checked by the
    caller; ``checked[page] == epoch`` marks pages already verified by this read, so requests need no
    grouping by page (no sort). Several threads may read one batch at once when each owns its pages
    (``order`` sorted by position, cut at page boundaries). Returns (bad page or -1, 1 for a bad header
    or checksum list and 2 for a bad row, distinct pages touched, their stored bytes).
    """
    pages = 0
    stored = 0
    for j in range(lo, hi):
        i = order[j] if order.size else j
        position = positions[i]
        page = position // page_rows
        k = position - page * page_rows
        if checked[page] != epoch:
            checked[page] = epoch
            pages += 1
            stored += value_len[page]
            n = min(page_rows, n_rows - page * page_rows)
            value = numba.carray(_pointer(value_at[page]), HEADER_BYTES + ROW_SUM_BYTES * n)
            header = value[:HEADER_BYTES]
            if header[8:12].view(np.uint32)[0] != n or header[12:16].view(np.uint32)[0] != compressed:
                return page, 1, pages, stored
            if xxh64(value[HEADER_BYTES:], np.uint64(page)) != header[:8].view(np.uint64)[0]:
                return page, 1, pages, stored
        row = numba.carray(_pointer(rows_at[page] + k * row_bytes), row_bytes)
        for b in range(row_bytes):
            out[i, b] = row[b]
        stored_sum = numba.carray(_pointer(value_at[page] + HEADER_BYTES + ROW_SUM_BYTES * k), 4).view(np.uint32)[0]
        if np.uint32(xxh64(out[i], np.uint64(position)) & np.uint64(0xFFFFFFFF)) != stored_sum:
            return page, 2, pages, stored
    return -1, 0, pages, stored
