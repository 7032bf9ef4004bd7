"""What every remote backend shares: the table's layout in blocks, its manifest, and the one outage error.

Every backend (`engramtier.tiers.remote.redis` for Redis and Redis Cluster,
`engramtier.tiers.remote.mooncake` for Mooncake Store) subclasses `RemoteTier`, keeps the table in
**blocks** of ``block_rows`` consecutive rows and gets from here:

- a manifest stored beside the rows (format, sizes, block size, the model's hash fingerprint, the
  source table's manifest), written when a key prefix is first used and checked at every open, so a
  store populated for another model or table shape is refused, never read as garbage;
- block-wise commits: a backend's `_write_block` stores a block's rows and its "done" mark in one
  atomic step (a Redis MULTI on the block's cluster slot, one Mooncake object put), so `populate_remote`
  (`engramtier.tiers.remote.populate`) killed at any point resumes at the blocks the store lacks, with
  no row lost or written twice (and resuming from another table, one whose manifest differs from the
  one recorded, is refused);
- checked rows: a row is stored as its bytes followed by `CHECKSUM_BYTES` of checksum, the low half of
  its XXH64 seeded with its row id (the LMDB pages' row checksum, `engramtier.tiers.pages.row_checksums`),
  written by `populate_remote` and verified on every read (`verified_rows`), so a damaged row, or a row
  stored under another row's key, is an error (`RemoteDamaged`), never served. A read fetches single
  rows out of a block, not whole blocks, so the checksum is per row, like the rows inside an LMDB page;
- `RemoteUnavailable`, the one error a backend raises when the store cannot be reached, which the
  runtime's failover (`engramtier.tiers.remote.failover`) acts on, as it does on `RemoteDamaged`; any
  other failure is an `EngramTierError`.

Nothing here imports a backend's client library: the backends import this module, never the reverse.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import Any

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier, default_model
from engramtier.tiers.pages import row_checksums

FORMAT_NAME = "engramtier-remote-table"
REMOTE_FORMAT = f"{FORMAT_NAME}/3"  # /3: rows carry checksums; /2 stored bare rows
BLOCK_ROWS = 4096  # rows per block: one cluster slot / one object, one request per block read
CHECKSUM_BYTES = 4  # after each stored row: the low half of its XXH64 seeded with its row id


class RemoteUnavailable(EngramTierError):
    """The store could not be reached (connection refused or lost, a timeout): the rows are intact
    there, the request can be retried or served from a fallback."""


class RemoteDamaged(EngramTierError):
    """A row read from the store fails its checksum: the store's copy is damaged. Nothing was served;
    the read can be served from a fallback (the local table), not retried."""


class RemoteTier(Tier):
    """Every row of an ``n_table_rows`` x ``row_bytes`` table in a remote store under ``key_prefix``.

    A backend implements `read` (passing what it fetched through `verified_rows`) and five primitives:
    `_put_manifest_if_absent`, `_set_manifest`, `_blocks_done`, `_write_block`, `close`; ``where`` names
    the store in messages.
    """

    name = "remote"
    backend = "remote"

    def __init__(self, *, n_table_rows: int, row_bytes: int, fingerprint: str | None, key_prefix: str,
                 block_rows: int, model: Any = None) -> None:
        super().__init__(n_table_rows, n_table_rows, row_bytes, model or default_model(self.name))
        if int(block_rows) != block_rows or block_rows < 1 or not key_prefix or any(c in key_prefix for c in "{}/ "):
            raise EngramTierError(
                f"remote tier: key_prefix must be non-empty without braces, slashes or spaces and block_rows a "
                f"positive whole number, got {key_prefix!r} and {block_rows!r}"
            )
        self.key_prefix, self.block_rows, self.fingerprint = key_prefix, int(block_rows), fingerprint
        self.n_blocks = -(-self.n_table_rows // self.block_rows)
        self._done = np.zeros(self.n_blocks, bool)  # blocks seen committed: a commit is never undone
        self.round_trips = 0
        self.manifest: dict = {}

    # --- what a backend provides ---------------------------------------------------------------------

    @property
    @abstractmethod
    def where(self) -> str:
        """The store's address, for messages."""

    @abstractmethod
    def _put_manifest_if_absent(self, text: str) -> str:
        """Store ``text`` as the manifest unless one exists; return the stored one."""

    @abstractmethod
    def _set_manifest(self, text: str) -> None:
        """Replace the stored manifest."""

    @abstractmethod
    def _blocks_done(self, blocks: np.ndarray) -> np.ndarray:
        """Bool per block of ``blocks``: committed (every row stored) or not."""

    @abstractmethod
    def _write_block(self, block: int, stored: np.ndarray) -> None:
        """Store block ``block``'s rows (``stored``: all of them, in order, as `stored_rows` gives them) and
        mark it done, atomically."""

    # --- shared --------------------------------------------------------------------------------------

    def _open_manifest(self) -> None:
        """Load the stored manifest, written first if this prefix is new; refuse another table's."""
        mine = {"format": REMOTE_FORMAT, "n_rows": self.n_table_rows, "row_bytes": self.row_bytes,
                "block_rows": self.block_rows, "fingerprint": self.fingerprint, "table": None}
        raw = self._put_manifest_if_absent(json.dumps(mine, sort_keys=True))
        where = f"remote tier {self.where} prefix '{self.key_prefix}'"
        try:
            stored = json.loads(raw)
        except (TypeError, ValueError):
            stored = {}
        found = stored.get("format") if isinstance(stored, dict) else None
        if isinstance(found, str) and found.startswith(f"{FORMAT_NAME}/") and found != REMOTE_FORMAT:
            raise EngramTierError(f"{where} holds a table of format {found}, whose rows carry no checksums (this "
                                  f"engramtier reads {REMOTE_FORMAT}); delete the prefix's keys and run `engramtier "
                                  "remote populate` again, or use another key_prefix")
        if found != REMOTE_FORMAT:
            raise EngramTierError(f"{where} holds no engramtier table of format {REMOTE_FORMAT} (found {found!r}); "
                                  "choose another key_prefix")
        if stored["fingerprint"] != self.fingerprint:
            raise EngramTierError(
                f"{where} was populated for hash fingerprint {stored['fingerprint']}, but the model's is "
                f"{self.fingerprint}; use another key_prefix or repopulate it from this model's table"
            )
        shape = (stored["n_rows"], stored["row_bytes"], stored["block_rows"])
        if shape != (self.n_table_rows, self.row_bytes, self.block_rows):
            raise EngramTierError(
                f"{where} holds {shape[0]} rows of {shape[1]} B in blocks of {shape[2]}, but this tier was "
                f"opened for {self.n_table_rows} rows of {self.row_bytes} B in blocks of {self.block_rows}; "
                "pass the stored sizes or use another key_prefix"
            )
        self.manifest = stored

    @property
    def stored_row_bytes(self) -> int:
        """Bytes of a row as stored: the row, then its checksum."""
        return self.row_bytes + CHECKSUM_BYTES

    def stored_rows(self, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``rows`` (of rows ``ids``) as they are stored: uint8 [n, `stored_row_bytes`], each followed by its checksum."""
        stored = np.empty((ids.size, self.stored_row_bytes), np.uint8)
        stored[:, : self.row_bytes] = rows
        stored[:, self.row_bytes:] = self._checksums(stored[:, : self.row_bytes], ids).view(np.uint8).reshape(-1, CHECKSUM_BYTES)
        return stored

    def verified_rows(self, stored: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """The rows of ``stored`` (as `stored_rows` wrote them, of rows ``ids``), refused (`RemoteDamaged`)
        unless each one's checksum holds."""
        rows = np.ascontiguousarray(stored[:, : self.row_bytes])
        kept = np.ascontiguousarray(stored[:, self.row_bytes:]).view(np.uint32).reshape(-1)
        bad = np.flatnonzero(self._checksums(rows, ids) != kept)
        if bad.size:
            row = int(ids[bad[0]])
            raise RemoteDamaged(
                f"remote tier {self.where}: {bad.size} of {ids.size} rows read fail their checksum (first: row {row}, "
                f"block {row // self.block_rows} of prefix '{self.key_prefix}'): the store's copy is damaged; delete "
                "the prefix's keys and run `engramtier remote populate` again (on_failure = 'fallback' reads the "
                "local table meanwhile)"
            )
        return rows

    @staticmethod
    def _checksums(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        sums = np.empty(ids.size, np.uint32)
        row_checksums(np.ascontiguousarray(rows), np.ascontiguousarray(ids, np.int64), sums)
        return sums

    def block_rows_of(self, block: int) -> int:
        """Rows in ``block`` (the last one may be short)."""
        return min(self.block_rows, self.n_table_rows - block * self.block_rows)

    def rows_in(self, blocks: np.ndarray) -> int:
        """Rows in the blocks ``blocks``."""
        return int(np.minimum(self.block_rows, self.n_table_rows - np.asarray(blocks, np.int64) * self.block_rows).sum())

    def done_blocks(self) -> np.ndarray:
        """Bool per block of the table: committed in the store (asks the store about the rest)."""
        todo = np.flatnonzero(~self._done)
        if todo.size:
            self._done[todo] = self._blocks_done(todo)
        return self._done.copy()

    @property
    def populated_rows(self) -> int:
        """Rows held in committed blocks."""
        return self.rows_in(np.flatnonzero(self.done_blocks()))

    def contains(self, ids: Any) -> np.ndarray:
        ids = self._ids(ids)
        blocks = ids // self.block_rows
        held = self._done[blocks]
        if not held.all():
            self.done_blocks()
            held = self._done[blocks]
        return held

    def write(self, ids: Any, rows: Any) -> None:
        """Store whole blocks: ``ids`` must run from a block's first row to a block's end (or the table's)."""
        ids = self._ids(ids)
        rows = self._host_rows(rows, ids.size, "rows")
        if ids.size == 0:
            return
        first, last = int(ids[0]), int(ids[-1]) + 1
        whole = first % self.block_rows == 0 and (last % self.block_rows == 0 or last == self.n_table_rows)
        if not whole or not np.array_equal(ids, np.arange(first, last)):
            raise EngramTierError(
                f"remote tier {self.where}: writes go by whole blocks of {self.block_rows} rows (ids from a multiple "
                f"of {self.block_rows} to a block's end, in order); use populate_remote to copy a table"
            )
        stored = self.stored_rows(rows, ids)
        for block in range(first // self.block_rows, -(-last // self.block_rows)):
            lo = block * self.block_rows - first
            self._write_block(block, stored[lo: lo + self.block_rows_of(block)])
            self._done[block] = True
        self._count_write(ids.size)

    def record_source(self, table_manifest: dict) -> None:
        """Keep the source table's manifest next to ours, so the store says what it holds."""
        self.manifest = {**self.manifest, "table": table_manifest}
        self._set_manifest(json.dumps(self.manifest, sort_keys=True))

    def missing_row(self, row: int) -> EngramTierError:
        return EngramTierError(
            f"remote tier {self.where}: row {row} is missing (block {row // self.block_rows} of prefix "
            f"'{self.key_prefix}' was never populated); run `engramtier remote populate` before reading"
        )

    def stats(self) -> dict:
        return {**super().stats(), "backend": self.backend, "where": self.where, "key_prefix": self.key_prefix,
                "block_rows": self.block_rows, "round_trips": self.round_trips}
