"""The remote tier: a table held by an existing distributed store (Redis), for tables that outgrow one machine.

We reuse a store rather than build one: Redis (or a Redis Cluster, or a compatible server) holds each
row as a plain string of its raw bytes, and the tier only batches requests. Key layout for prefix P:

    {P:block}:row     the row's ``row_bytes`` bytes; ``block`` = row // ``block_rows``
    {P}:manifest      JSON: format, n_rows, row_bytes, block_rows, hash fingerprint, source table manifest
    {P}:done          rows populated so far (rows 0..done-1), set in the same MULTI as the rows

The ``{...}`` part is a Redis Cluster hash tag: every key of one block hashes to one slot, so the rows of
a block live on one shard and one MGET fetches them. A read groups its ids by block, sends one MGET per
block (at most `CHUNK_KEYS` keys each) down one pipeline, and pays one network round trip per read, not
one per row. Rows land in the caller's buffer only once every one has arrived, so a failed read (a
missing row, a dead server) leaves ``out`` as it was and raises one line naming the row or the server.

`populate_remote` copies a table into the store in batches; each batch's rows and the new ``done``
count go in one MULTI/EXEC transaction, so a populate killed at any point resumes exactly where the
store says it stopped, with no row lost or written twice.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Iterable

import numpy as np
import redis
from tqdm import tqdm

from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier, default_model

REMOTE_FORMAT = "engramtier-redis-table/1"
BLOCK_ROWS = 4096  # rows per hash tag: one shard, one MGET
CHUNK_KEYS = 4096  # most keys in one MGET/MSET request, to keep each reply a few hundred KiB
POPULATE_ROWS = 1 << 16


class RedisTier(Tier):
    """Every row of an ``n_table_rows`` x ``row_bytes`` table in Redis under ``key_prefix``.

    ``url`` ("redis://host:port/db") or ``host``/``port``: the server. ``fingerprint``: the model's hash
    fingerprint; a store populated for another one is refused at open. A new prefix gets its manifest
    written here; rows come from `populate_remote` or `write`.
    """

    name = "remote"

    def __init__(self, url: str | None = None, *, n_table_rows: int, row_bytes: int, fingerprint: str | None,
                 key_prefix: str = "engram", host: str = "127.0.0.1", port: int = 6379,
                 block_rows: int = BLOCK_ROWS, timeout_s: float = 10.0, model: Any = None) -> None:
        super().__init__(n_table_rows, n_table_rows, row_bytes, model or default_model(self.name))
        if block_rows < 1 or any(c in key_prefix for c in "{}") or not key_prefix:
            raise EngramTierError(
                f"remote tier: key_prefix must be non-empty without braces and block_rows >= 1, "
                f"got {key_prefix!r} and {block_rows}"
            )
        self.url = url or f"redis://{host}:{port}"
        self.key_prefix, self.block_rows, self.fingerprint = key_prefix, int(block_rows), fingerprint
        self._client = redis.Redis.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._manifest_key, self._done_key = f"{{{key_prefix}}}:manifest", f"{{{key_prefix}}}:done"
        self.round_trips = 0
        try:
            self.manifest = self._open_manifest()
        except BaseException:
            self._client.close()
            raise

    def _open_manifest(self) -> dict:
        """The stored manifest, written first if this prefix is new; refused if it is another table's."""
        mine = {"format": REMOTE_FORMAT, "n_rows": self.n_table_rows, "row_bytes": self.row_bytes,
                "block_rows": self.block_rows, "fingerprint": self.fingerprint, "table": None}
        with self._talking("open"):
            self._client.set(self._manifest_key, json.dumps(mine, sort_keys=True), nx=True)
            raw = self._client.get(self._manifest_key)
        stored = json.loads(raw)
        where = f"remote tier {self.url} key {self._manifest_key}"
        if stored.get("format") != REMOTE_FORMAT:
            raise EngramTierError(f"{where} holds no engramtier table (format {stored.get('format')!r}); "
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
        return stored

    def _talking(self, doing: str) -> "_Unreachable":
        return _Unreachable(self.url, doing)

    def keys(self, ids: np.ndarray) -> list[bytes]:
        """The Redis keys of rows ``ids`` (one hash tag per block of rows)."""
        prefix, block = self.key_prefix.encode(), self.block_rows
        return [b"{%s:%d}:%d" % (prefix, row // block, row) for row in ids.tolist()]

    def _by_block(self, ids: np.ndarray) -> tuple[np.ndarray, list[slice]]:
        """A stable order grouping ``ids`` by block, and the slices of that order each one request serves."""
        blocks = ids // self.block_rows
        order = np.argsort(blocks, kind="stable")
        starts = np.flatnonzero(np.diff(blocks[order], prepend=-1))
        ends = np.append(starts[1:], ids.size)
        return order, [slice(s, min(s + CHUNK_KEYS, end)) for start, end in zip(starts.tolist(), ends.tolist())
                       for s in range(start, end, CHUNK_KEYS)]

    @property
    def populated_rows(self) -> int:
        """Rows 0..n-1 that `populate_remote` has committed."""
        with self._talking("read the populate counter"):
            return int(self._client.get(self._done_key) or 0)

    def read(self, ids: Any, out: Any) -> None:
        ids = self._ids(ids)
        out = self._host_rows(out, ids.size, "out")
        if ids.size == 0:
            return
        order, requests = self._by_block(ids)
        keys = self.keys(ids[order])
        with self._talking("read"):
            pipe = self._client.pipeline(transaction=False)
            for part in requests:
                pipe.mget(keys[part])
            replies = pipe.execute()
        self.round_trips += 1
        values = [v for reply in replies for v in reply]
        if None in values:
            key = keys[values.index(None)]
            raise EngramTierError(
                f"remote tier {self.url}: row {key.rsplit(b':', 1)[1].decode()} is missing (key {key.decode()}); "
                "populate the store with populate_remote before reading"
            )
        joined = b"".join(values)
        if len(joined) != ids.size * self.row_bytes:
            raise EngramTierError(
                f"remote tier {self.url}: rows under prefix '{self.key_prefix}' are not {self.row_bytes} B each; "
                "the store holds another table: repopulate it"
            )
        out[order] = np.frombuffer(joined, np.uint8).reshape(ids.size, self.row_bytes)
        self._count_read(ids.size)

    def write(self, ids: Any, rows: Any, *, done: int | None = None) -> None:
        """Store ``rows[i]`` under ``ids[i]`` in one MULTI/EXEC; ``done`` also sets the populate counter
        in that transaction (all or nothing: the counter never runs ahead of the rows)."""
        ids = self._ids(ids)
        rows = self._host_rows(rows, ids.size, "rows")
        order, requests = self._by_block(ids)
        keys, payload = self.keys(ids[order]), rows[order]
        with self._talking("write"):
            pipe = self._client.pipeline(transaction=True)
            for part in requests:
                pipe.mset(dict(zip(keys[part], (r.tobytes() for r in payload[part]))))
            if done is not None:
                pipe.set(self._done_key, done)
            pipe.execute()
        self._count_write(ids.size)

    def record_source(self, table_manifest: dict) -> None:
        """Keep the source table's manifest next to ours, so the store says what it holds."""
        self.manifest = {**self.manifest, "table": table_manifest}
        with self._talking("write the manifest"):
            self._client.set(self._manifest_key, json.dumps(self.manifest, sort_keys=True))

    def contains(self, ids: Any) -> np.ndarray:
        ids = self._ids(ids)
        done = self.populated_rows
        held = ids < done
        rest = ids[~held]
        if rest.size:  # rows written outside populate order: ask the store
            with self._talking("check rows"):
                pipe = self._client.pipeline(transaction=False)
                for key in self.keys(rest):
                    pipe.exists(key)
                held[~held] = np.array(pipe.execute(), dtype=bool)
        return held

    def stats(self) -> dict:
        with self._talking("read stats"):
            used = self._client.info("memory")["used_memory"]
        return {**super().stats(), "url": self.url, "key_prefix": self.key_prefix, "block_rows": self.block_rows,
                "round_trips": self.round_trips, "populated_rows": self.populated_rows,
                "server_used_memory_bytes": used}

    def close(self) -> None:
        self._client.close()


class _Unreachable:
    """Turns a lost connection into one line naming the server and what to do; the store is untouched
    because reads fill ``out`` only after every reply arrived and writes are MULTI/EXEC transactions."""

    def __init__(self, url: str, doing: str) -> None:
        self.url, self.doing = url, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        if isinstance(err, (redis.ConnectionError, redis.TimeoutError)):
            why = " ".join(str(err).split())
            raise EngramTierError(
                f"remote tier {self.url} unreachable: {why} (during {self.doing}); start the server or fix the url"
            ) from None
        if isinstance(err, redis.RedisError):
            raise EngramTierError(f"remote tier {self.url}: {self.doing} refused by the server: {err}") from None


def populate_remote(source_rows: Any, tier: RedisTier, *, batch_rows: int = POPULATE_ROWS,
                    progress: bool = True) -> int:
    """Copy every row of ``source_rows`` (an `NvmeTier`, or anything with ``read(ids, out)``) into ``tier``.

    Resumable: starts at the store's ``done`` counter, which each batch advances in the same transaction
    as its rows. Returns the rows written by this call.
    """
    n, rb = tier.n_table_rows, tier.row_bytes
    shape = (getattr(source_rows, "n_table_rows", n), getattr(source_rows, "row_bytes", rb))
    if shape != (n, rb):
        raise EngramTierError(
            f"populate_remote: the source has {shape[0]} rows of {shape[1]} B, "
            f"the remote tier {n} rows of {rb} B; open the tier with the source's sizes"
        )
    if tier.manifest.get("table") is None and getattr(source_rows, "manifest", None) is not None:
        tier.record_source(source_rows.manifest)
    done = tier.populated_rows
    buffer = np.empty((min(batch_rows, n), rb), np.uint8)
    with tqdm(total=n, initial=done, unit="row", disable=not progress, desc=f"populate {tier.key_prefix}") as bar:
        for first in range(done, n, batch_rows):
            last = min(first + batch_rows, n)
            ids = np.arange(first, last, dtype=np.int64)
            source_rows.read(ids, buffer[: ids.size])
            tier.write(ids, buffer[: ids.size], done=last)
            bar.update(ids.size)
    return n - done


def calibrate_remote(tier: RedisTier, sizes: Iterable[int] = (1, 16, 256, 4096, 16384), *, repeats: int = 5,
                     seed: int = 0) -> Any:
    """Time reads of random rows at each batch size (median of ``repeats``) and fit a `TierModel`.

    One read is one pipelined round trip of MGETs of up to `CHUNK_KEYS` keys, hence the parallelism.
    """
    from engramtier.cache.timing import calibrate

    rng = np.random.default_rng(seed)
    samples = []
    for size in sizes:
        ids = rng.integers(0, tier.n_table_rows, int(size))
        out = np.empty((ids.size, tier.row_bytes), np.uint8)
        tier.read(ids, out)  # warm the connection
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            tier.read(ids, out)
            seconds.append(time.perf_counter() - start)
        samples.append((ids.size, tier.row_bytes, statistics.median(seconds)))
    return calibrate(samples, name="remote", parallelism=CHUNK_KEYS)
