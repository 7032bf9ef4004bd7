"""The remote tier on Mooncake Store: each block of rows one object, rows read back by byte range.

Object layout for prefix P (see `engramtier.tiers.remote.base` for what every backend shares):

    P/block/<b>    rows b*block_rows .. (b+1)*block_rows - 1, back to back, each followed by its checksum
                   (the last block may be short)
    P/manifest     JSON: format, sizes, block size, hash fingerprint, source table manifest

Why blocks rather than an object per row: Mooncake is built for large objects (KV-cache pages); each
object costs a master entry, a put and a transfer of its own, so per-row objects make populate pay a
put per row and the master hold a key per row (and a batched get of thousands of row objects over
TCP timed out when we tried it). A read by byte range out of a block costs one transfer per range,
as a row object does (over RDMA a range is one RDMA read), but one master lookup per block touched
instead of per row; `benchmarks/bench_remote.py` measures both directions for blocks.
(Mooncake's own ``EngramStore`` returns float32 embeddings per head table; a tier moves opaque
rows of any format, bf16 or fp8 + scales, so we use the object API.)

A block is stored by one put, and an object exists for readers only once its put completed, so the
block's object *is* its commit mark: `_blocks_done` asks `batch_is_exist`, and a populate killed mid-way
leaves no half-written block behind. Blocks are hard-pinned: the store's cache eviction never drops a
table row (a full store refuses the put instead, which we report).

A read deduplicates and sorts its ids, merges consecutive rows into one byte range, opens one get
session on the blocks touched (one master round trip: the replicas' places, and a lease that keeps
them there during the read), then fetches every range in one `batch_get_into_multi_buffer_ranges`
call into a registered staging buffer, reused across reads. Rows reach ``out`` only once every range
has arrived, so a failed read (a missing block, a lost store) leaves ``out`` as it was.

This process joins the store as a client that contributes no memory: memory comes from the store's
other clients (``mooncake_client`` processes, or serving processes). Mooncake's client retries for
about 90 s when the master is down, and every call to a lost master waits about 4 s to reconnect,
so a plain TCP connect to the master comes first at open, and before every call while the master is
known lost: an outage is reported at once, and a retrying caller sees the master come back as soon as
it does. Mooncake logs each client start at INFO to stderr; we lower its level to ERROR unless
``MC_LOG_LEVEL`` is set (read when the library loads).
"""

from __future__ import annotations

import os
import socket
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.tiers.remote.base import BLOCK_ROWS, RemoteTier, RemoteUnavailable

os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
try:
    from mooncake.store import MooncakeDistributedStore, ReplicateConfig

    IMPORT_ERROR = None
except ImportError as err:  # not installed, or its libraries (libibverbs1) missing
    MooncakeDistributedStore = ReplicateConfig = None
    IMPORT_ERROR = " ".join(str(err).split())

PROBE_TIMEOUT_S = 5.0
MIN_STAGING_BYTES = 1 << 20
# Mooncake's error codes (mooncake-store/include/types.h) that we name in messages
NO_SPACE, OBJECT_NOT_FOUND, LEASE_EXPIRED = -200, -704, -707
UNREACHABLE = {-800: "transfer failed", -900: "RPC to the master failed", -1010: "master not serving"}
ERRORS = {-1: "internal error", NO_SPACE: "no space left", -600: "invalid parameters",
          OBJECT_NOT_FOUND: "object not found", LEASE_EXPIRED: "lease expired", **UNREACHABLE}


class MooncakeTier(RemoteTier):
    """A table in a Mooncake Store under ``key_prefix``: ``master`` ("host:port" of mooncake_master),
    ``metadata`` (the transfer engine's metadata service, e.g. the master's embedded HTTP server
    "http://host:8080/metadata"), ``protocol`` ("tcp" or "rdma") with ``device`` (RDMA device names),
    ``local_hostname`` (this host's address as the store's peers reach it), ``local_buffer_size`` (the
    client's transfer buffer in bytes; a put of a block passes through it), ``replicas`` per block.
    ``fingerprint``: the model's hash fingerprint; a store populated for another one is refused."""

    backend = "mooncake"
    OPTIONS = ("master", "metadata", "protocol", "device", "local_hostname", "key_prefix", "block_rows",
               "local_buffer_size", "replicas")

    def __init__(self, master: str = "127.0.0.1:50051", metadata: str = "http://127.0.0.1:8080/metadata", *,
                 n_table_rows: int, row_bytes: int, fingerprint: str | None, key_prefix: str = "engram",
                 block_rows: int = BLOCK_ROWS, protocol: str = "tcp", device: str = "",
                 local_hostname: str = "127.0.0.1", local_buffer_size: int = 64 << 20, replicas: int = 1,
                 model: Any = None) -> None:
        if MooncakeDistributedStore is None:
            raise EngramTierError(
                "remote tier: backend 'mooncake' needs the package mooncake-transfer-engine-non-cuda and Debian's "
                f"libibverbs1 (pip install mooncake-transfer-engine-non-cuda); it does not import: {IMPORT_ERROR}"
            )
        super().__init__(n_table_rows=n_table_rows, row_bytes=row_bytes, fingerprint=fingerprint,
                         key_prefix=key_prefix, block_rows=block_rows, model=model)
        self.master, self.metadata = str(master), str(metadata)
        host, _, port = self.master.rpartition(":")
        if not host or not port.isdigit():
            raise EngramTierError(f"remote tier: master must be the mooncake_master's 'host:port', got {master!r}")
        self._master_address = (host, int(port))
        block_bytes = self.block_rows * self.stored_row_bytes
        if not isinstance(local_buffer_size, int) or local_buffer_size < block_bytes:
            raise EngramTierError(
                f"remote tier {self.where}: local_buffer_size ({local_buffer_size!r}) must hold a block "
                f"({self.block_rows} rows of {self.stored_row_bytes} B with their checksums = {block_bytes} B); raise it "
                "or lower block_rows"
            )
        if not isinstance(replicas, int) or replicas < 1:
            raise EngramTierError(f"remote tier {self.where}: replicas must be a whole number >= 1, got {replicas!r}")
        self._config = ReplicateConfig()
        self._config.with_hard_pin = True  # table rows must never be evicted as cold cache
        self._config.replica_num = replicas
        self._staging = np.empty(0, np.uint8)  # registered with the store once a read needs it
        self.ranges_read = 0
        self._lost = True  # probe the master before the first call
        self._probe("connect", metadata=True)
        self._store = MooncakeDistributedStore()
        if self._store.setup(local_hostname, self.metadata, 0, local_buffer_size, protocol, device, self.master):
            self._store = None
            raise RemoteUnavailable(
                f"remote tier {self.where} unreachable: the Mooncake client could not join the store (metadata "
                f"{self.metadata}, protocol {protocol!r}); start the master and its metadata service or fix the options"
            )
        try:
            self._open_manifest()
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return f"mooncake://{self.master}"

    def _key(self, what: Any) -> str:
        return f"{self.key_prefix}/{what}"

    # --- reaching the store --------------------------------------------------------------------------

    def _probe(self, doing: str, metadata: bool = False) -> None:
        """While the master is known lost (and at open): a TCP connect to it, and to an HTTP metadata
        service when ``metadata``; refused means `RemoteUnavailable` now, not after Mooncake's retries."""
        if not self._lost:
            return
        targets = [("master", self._master_address)]
        url = urlsplit(self.metadata)
        if metadata and url.scheme in ("http", "https") and url.hostname:
            targets.append(("metadata service", (url.hostname, url.port or (443 if url.scheme == "https" else 80))))
        for what, address in targets:
            try:
                socket.create_connection(address, timeout=PROBE_TIMEOUT_S).close()
            except OSError as err:
                raise RemoteUnavailable(
                    f"remote tier {self.where} unreachable: the {what} at {address[0]}:{address[1]} does not answer "
                    f"({err.strerror or err}, during {doing}); start mooncake_master or fix the {what} address"
                ) from None
        self._lost = False

    def _failure(self, code: int, doing: str) -> EngramTierError:
        """The error for Mooncake's code ``code``: `RemoteUnavailable` when the store could not be reached."""
        what = f"Mooncake code {code}, during {doing}"
        if code in UNREACHABLE:
            self._lost = True
            return RemoteUnavailable(f"remote tier {self.where} unreachable: {UNREACHABLE[code]} ({what}); "
                                     "start the store's master and clients, or fix the master address")
        if code == NO_SPACE:
            return EngramTierError(f"remote tier {self.where}: the store is full ({what}); give it more memory "
                                   "(mooncake_client --global_segment_size) or use a smaller table")
        if code == LEASE_EXPIRED:
            return EngramTierError(f"remote tier {self.where}: a read outlived its lease ({what}); read fewer rows "
                                   "at once or raise the master's --default_kv_lease_ttl")
        return EngramTierError(f"remote tier {self.where}: {doing} refused by the store: {ERRORS.get(code, 'error')} "
                               f"(Mooncake code {code})")

    def _check(self, code: int, doing: str) -> None:
        if code < 0:
            raise self._failure(code, doing)

    # --- the primitives ------------------------------------------------------------------------------

    def _put_manifest_if_absent(self, text: str) -> str:
        self._probe("open")
        key = self._key("manifest")
        found = self._store.is_exist(key)
        self._check(found, "open")
        if found == 0:
            self._check(self._store.put(key, text.encode(), self._config), "write the manifest")
        return self._store.get(key).decode(errors="replace")

    def _set_manifest(self, text: str) -> None:
        self._probe("write the manifest")
        self._check(self._store.upsert(self._key("manifest"), text.encode(), self._config), "write the manifest")

    def _blocks_done(self, blocks: np.ndarray) -> np.ndarray:
        self._probe("read the done marks")
        found = self._store.batch_is_exist([self._key(f"block/{b}") for b in blocks.tolist()])
        for code in found:
            self._check(code, "read the done marks")
        return np.array(found, dtype=bool).reshape(-1)

    def _write_block(self, block: int, stored: np.ndarray) -> None:
        self._probe("write")
        key = self._key(f"block/{block}")
        self._check(self._store.put(key, stored.reshape(-1), self._config), "write")
        # A put finding the key taken answers 0 and stores nothing, also when the other put never completed
        # (its writer was killed: the master discards it after put_start_discard_timeout_sec, 30 s).
        found = self._store.is_exist(key)
        self._check(found, "write")
        if found == 0:
            raise EngramTierError(
                f"remote tier {self.where}: block {block} of prefix '{self.key_prefix}' is being written by another "
                "client, or by one that was killed mid-write; run the populate again in a minute"
            )

    def read(self, ids: Any, out: Any) -> None:
        ids = self._ids(ids)
        out = self._host_rows(out, ids.size, "out")
        if ids.size == 0:
            return
        rb, br = self.stored_row_bytes, self.block_rows
        rows, inverse = np.unique(ids, return_inverse=True)
        blocks = rows // br
        # byte ranges: runs of consecutive rows within one block; staged in row order, back to back
        starts = np.flatnonzero((np.diff(rows, prepend=-2) != 1) | (np.diff(blocks, prepend=-1) != 0))
        lengths = np.diff(np.append(starts, rows.size))
        run_blocks = blocks[starts]
        firsts = np.flatnonzero(np.diff(run_blocks, prepend=-1))  # first range of each block
        bounds = np.append(firsts, starts.size).tolist()
        staging = self._staging_for(rows.size * rb)
        dst = (staging.ctypes.data + starts * rb).tolist()
        src = ((rows[starts] - run_blocks * br) * rb).tolist()
        size = (lengths * rb).tolist()
        keys = [self._key(f"block/{b}") for b in run_blocks[firsts].tolist()]
        per_key = [slice(a, b) for a, b in pairwise(bounds)]
        self._probe("read")
        opened = self._store.batch_get_session_start(keys)
        try:
            for i, code in enumerate(opened):
                if code == OBJECT_NOT_FOUND:
                    raise self.missing_row(int(rows[starts[firsts[i]]]))
                self._check(code, "read")
            got = self._store.batch_get_into_multi_buffer_ranges(
                keys, [dst[s] for s in per_key], [size[s] for s in per_key], [src[s] for s in per_key])
        finally:
            self._store.batch_get_session_end(keys)
        self.round_trips += 2
        for code, s in zip(got, per_key, strict=True):
            self._check(code, "read")
            if code != sum(size[s]):
                raise EngramTierError(
                    f"remote tier {self.where}: a block under prefix '{self.key_prefix}' returned {code} B, not "
                    f"{sum(size[s])}; the store holds another table: repopulate it"
                )
        verified = self.verified_rows(staging[: rows.size * rb].reshape(rows.size, rb), rows)
        np.take(verified, inverse.reshape(-1), axis=0, out=out)
        self.ranges_read += starts.size
        self._count_read(ids.size)

    def _staging_for(self, nbytes: int) -> np.ndarray:
        """The registered staging buffer, replaced by a bigger one (power of two) when ``nbytes`` exceed it."""
        if self._staging.nbytes < nbytes:
            if self._staging.nbytes:
                self._store.unregister_buffer(self._staging.ctypes.data)
                self._staging = np.empty(0, np.uint8)
            staging = np.empty(max(MIN_STAGING_BYTES, 1 << (nbytes - 1).bit_length()), np.uint8)
            code = self._store.register_buffer(staging.ctypes.data, staging.nbytes)
            if code:  # a generic code, also when the metadata service went away: ask the services first
                self._lost = True
                self._probe("read", metadata=True)
                raise self._failure(code, f"register a {staging.nbytes} B read buffer")
            self._staging = staging
        return self._staging

    def missing_row(self, row: int) -> EngramTierError:
        return EngramTierError(
            f"remote tier {self.where}: row {row} is missing (block {row // self.block_rows} of prefix "
            f"'{self.key_prefix}' is not in the store: never populated, or lost with the store client that held its "
            "only replica); run `engramtier remote populate` before reading"
        )

    def stats(self) -> dict:
        return {**super().stats(), "ranges_read": self.ranges_read, "staging_bytes": self._staging.nbytes}

    def close(self) -> None:
        if self._store is None:
            return
        if self._staging.nbytes:
            self._store.unregister_buffer(self._staging.ctypes.data)
            self._staging = np.empty(0, np.uint8)
        self._store.close()
        self._store = None
