"""The remote tier on Redis or a Redis Cluster: each row a plain string of its bytes and checksum.

Key layout for prefix P (see `engramtier.tiers.remote.base` for what every backend shares), block and row
numbers in fixed-width hex:

    {P:bbbbbbbb}:rrrrrrrrrrrr   the row's ``row_bytes`` bytes and its checksum; block = row // ``block_rows``
    {P:bbbbbbbb}:done           set in the same MULTI/EXEC as the block's rows: the block is committed
    {P}:manifest                JSON: format, sizes, block size, hash fingerprint, source table manifest

The ``{...}`` part is a Redis Cluster hash tag: every key of one block hashes to one slot, so a
block's rows live on one shard, one MGET fetches them, and a block commits in one transaction even in
a cluster (a transaction cannot span slots). A read groups its ids by block and sends one MGET per
block (at most `CHUNK_KEYS` keys each), all written at once on one connection per shard before any
reply is read: one network round trip per shard touched, never one per row.

Requests are encoded here, not by redis-py: keys are fixed-width, so every key's RESP argument (and a
populate's key-value pair) is one row of a numpy byte matrix filled from the ids at once, where
redis-py would encode each argument in Python (`bench_remote.py` before and after: 3.5-3.7x rows/s); replies
are parsed by redis-py (in C with hiredis). Rows land in the caller's buffer only once every reply
has arrived, so a failed read (a missing row, a dead server) leaves ``out`` as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from engramtier.errors import EngramTierError
from engramtier.tiers.remote.base import BLOCK_ROWS, RemoteDamaged, RemoteTier, RemoteUnavailable

CHUNK_KEYS = 4096  # most keys in one MGET/MSET request, to keep each reply a few hundred KiB
BLOCK_DIGITS, ROW_DIGITS = 8, 12  # hex digits of the block and row numbers in a key
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_BLOCK_SHIFTS = np.arange(BLOCK_DIGITS - 1, -1, -1, dtype=np.int64) * 4
_ROW_SHIFTS = np.arange(ROW_DIGITS - 1, -1, -1, dtype=np.int64) * 4
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
                redis.exceptions.MaxConnectionsError)


class RedisTier(RemoteTier):
    """A table in Redis under ``key_prefix``: ``url`` ("redis://host:port/db", or ``host``/``port``);
    ``cluster``: the url is any node of a Redis Cluster, keys are routed to their shards.
    ``fingerprint``: the model's hash fingerprint; a store populated for another one is refused."""

    backend = "redis"
    OPTIONS = ("url", "host", "port", "key_prefix", "block_rows", "timeout_s", "cluster")

    def __init__(self, url: str | None = None, *, n_table_rows: int, row_bytes: int, fingerprint: str | None,
                 key_prefix: str = "engram", host: str = "127.0.0.1", port: int = 6379, cluster: bool = False,
                 block_rows: int = BLOCK_ROWS, timeout_s: float = 10.0, model: Any = None) -> None:
        super().__init__(n_table_rows=n_table_rows, row_bytes=row_bytes, fingerprint=fingerprint,
                         key_prefix=key_prefix, block_rows=block_rows, model=model)
        self.url, self.cluster = url or f"redis://{host}:{port}", bool(cluster)
        self._manifest_key = f"{{{key_prefix}}}:manifest"
        if self.n_table_rows > 16**ROW_DIGITS:
            raise EngramTierError(f"remote tier: a Redis table holds at most 16**{ROW_DIGITS} rows")
        # one MGET argument, "$<len>\r\n<key>\r\n", with the digits of block and row zeroed
        key = b"{%s:%s}:%s" % (key_prefix.encode(), b"0" * BLOCK_DIGITS, b"0" * ROW_DIGITS)
        length = b"$%d\r\n" % len(key)
        self._argument = np.frombuffer(length + key + b"\r\n", np.uint8)
        self._block_at = len(length) + len(key_prefix.encode()) + 2
        self._row_at = self._block_at + BLOCK_DIGITS + 2
        self._key_span = slice(len(length), len(length) + len(key))
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < float("inf"):
            raise EngramTierError(f"remote tier {self.where}: timeout_s must be a positive number of seconds, "
                                  f"got {timeout_s!r}")
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        try:
            with self._talking("connect"):
                self._client = RedisCluster.from_url(self.url, **options) if self.cluster \
                    else redis.Redis.from_url(self.url, **options)
        except (ValueError, TypeError) as err:  # redis-py parsing the url (or host and port)
            raise EngramTierError(f"remote tier: {self.url!r} is not a Redis url ({err}); write redis://HOST:PORT/DB, "
                                  "rediss:// for TLS or unix:///PATH.sock") from None
        try:
            with self._talking("open"):
                self._open_manifest()
        except BaseException:
            self._client.close()
            raise

    @property
    def where(self) -> str:
        return f"{self.url} (cluster)" if self.cluster else self.url

    def _talking(self, doing: str) -> "_Unreachable":
        return _Unreachable(self.where, doing)

    def _arguments(self, ids: np.ndarray) -> np.ndarray:
        """uint8 [len(ids), k]: row i is the RESP argument of the key of row ``ids[i]``."""
        args = np.empty((ids.size, self._argument.size), np.uint8)
        args[:] = self._argument
        at = self._block_at
        args[:, at: at + BLOCK_DIGITS] = _HEX[((ids // self.block_rows)[:, None] >> _BLOCK_SHIFTS) & 15]
        at = self._row_at
        args[:, at: at + ROW_DIGITS] = _HEX[(ids[:, None] >> _ROW_SHIFTS) & 15]
        return args

    def keys(self, ids: np.ndarray) -> list[bytes]:
        """The Redis keys of rows ``ids`` (one hash tag per block of rows)."""
        return [key.tobytes() for key in self._arguments(np.asarray(ids, np.int64))[:, self._key_span]]

    def _done_key(self, block: int) -> bytes:
        return b"{%s:%0*x}:done" % (self.key_prefix.encode(), BLOCK_DIGITS, block)

    def _put_manifest_if_absent(self, text: str) -> str:
        self._client.set(self._manifest_key, text, nx=True)
        return self._client.get(self._manifest_key)

    def _set_manifest(self, text: str) -> None:
        with self._talking("write the manifest"):
            self._client.set(self._manifest_key, text)

    def _blocks_done(self, blocks: np.ndarray) -> np.ndarray:
        with self._talking("read the done marks"):
            pipe = self._client.pipeline(transaction=False)
            for block in blocks.tolist():
                pipe.exists(self._done_key(block))
            return np.array(pipe.execute(), dtype=bool).reshape(-1)

    def _write_block(self, block: int, stored: np.ndarray) -> None:
        """MULTI, MSETs of the block's rows, SET of its done mark, EXEC: encoded like a read's MGETs (key
        and value arguments side by side in one byte matrix) and sent in one write."""
        n = stored.shape[0]
        keys = self._arguments(np.arange(block * self.block_rows, block * self.block_rows + n))
        head = np.frombuffer(b"$%d\r\n" % self.stored_row_bytes, np.uint8)
        pairs = np.empty((n, keys.shape[1] + head.size + self.stored_row_bytes + 2), np.uint8)
        pairs[:, : keys.shape[1]] = keys
        pairs[:, keys.shape[1]: keys.shape[1] + head.size] = head
        pairs[:, keys.shape[1] + head.size: -2] = stored
        pairs[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
        done = self._done_key(block)
        commands = [b"*1\r\n$5\r\nMULTI\r\n",
                    *(b"*%d\r\n$4\r\nMSET\r\n" % (2 * min(CHUNK_KEYS, n - lo) + 1) + pairs[lo: lo + CHUNK_KEYS].tobytes()
                      for lo in range(0, n, CHUNK_KEYS)),
                    b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (len(done), done),
                    b"*1\r\n$4\r\nEXEC\r\n"]
        with self._talking("write"):
            results = self._exchange({id(self): (self._shard(block), commands)})[0][-1]  # one slot, one shard
        failed = [r for r in results or [] if isinstance(r, Exception)]
        if results is None or failed:
            raise EngramTierError(f"remote tier {self.where}: the server refused block {block}'s transaction: "
                                  f"{failed[0] if failed else 'aborted'}")

    def _exchange(self, requests: dict[int, tuple[Any, list[bytes]]]) -> list[list[Any]]:
        """Send every shard its encoded commands (``requests``: key -> (shard client, commands)), all
        before reading any reply, on one pooled connection per shard; the replies, per shard in order.
        A connection is dropped on failure: replies may be left unread on it."""
        taken: list[tuple[Any, Any]] = []  # (pool, connection) in use
        try:
            for shard, commands in requests.values():
                pool = shard.connection_pool
                taken.append((pool, pool.get_connection()))
                taken[-1][1].send_packed_command(commands)
            return [[connection.read_response() for _ in commands]
                    for (_, connection), (_, commands) in zip(taken, requests.values(), strict=True)]
        except BaseException:
            for _, connection in taken:
                connection.disconnect()
            raise
        finally:
            for pool, connection in taken:
                pool.release(connection)

    def _shard(self, block: int) -> redis.Redis:
        """The client of the server holding ``block`` (a cluster routes by the block's hash tag; redis-py's
        cluster pipelines refuse multi-key commands even within one slot, so we talk to the shard)."""
        if not self.cluster:
            return self._client
        return self._client.get_redis_connection(self._client.get_node_from_key(self._done_key(block)))

    def _requests(self, ids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, slice]]]:
        """A stable order grouping ``ids`` by block, and (block, slice of that order) per MGET."""
        blocks = ids // self.block_rows
        order = np.argsort(blocks, kind="stable")
        starts = np.flatnonzero(np.diff(blocks[order], prepend=-1))
        ends = np.append(starts[1:], ids.size)
        first_block = blocks[order][starts].tolist()
        return order, [(b, slice(s, min(s + CHUNK_KEYS, end)))
                       for b, start, end in zip(first_block, starts.tolist(), ends.tolist(), strict=True)
                       for s in range(start, end, CHUNK_KEYS)]

    def read(self, ids: Any, out: Any) -> None:
        ids = self._ids(ids)
        out = self._host_rows(out, ids.size, "out")
        if ids.size == 0:
            return
        order, requests = self._requests(ids)
        ordered = ids[order]
        args = self._arguments(ordered)
        shards: dict[int, tuple[Any, list[int]]] = {}  # shard -> (its client, the requests it serves)
        for i, (block, _) in enumerate(requests):
            shard = self._shard(block)
            shards.setdefault(id(shard), (shard, []))[1].append(i)
        commands = {key: (shard, [b"*%d\r\n$4\r\nMGET\r\n" % (requests[i][1].stop - requests[i][1].start + 1)
                                  + args[requests[i][1]].tobytes() for i in served])
                    for key, (shard, served) in shards.items()}
        with self._talking("read"):
            answers = self._exchange(commands)
        replies: list[Any] = [None] * len(requests)
        for (_, served), answer in zip(shards.values(), answers, strict=True):
            for i, reply in zip(served, answer, strict=True):
                replies[i] = reply
        self.round_trips += len(shards)
        values = [v for reply in replies for v in reply]
        if None in values:
            raise self.missing_row(int(ordered[values.index(None)]))
        joined = b"".join(values)
        if len(joined) != ids.size * self.stored_row_bytes:
            raise RemoteDamaged(
                f"remote tier {self.where}: rows under prefix '{self.key_prefix}' are not {self.stored_row_bytes} B "
                "each (a row and its checksum): the store's copy is damaged or holds another table; repopulate it"
            )
        stored = np.frombuffer(joined, np.uint8).reshape(ids.size, self.stored_row_bytes)
        out[order] = self.verified_rows(stored, ordered)
        self._count_read(ids.size)

    def stats(self) -> dict:
        with self._talking("read stats"):
            if self.cluster:
                used = sum(node["used_memory"] for node in
                           self._client.info("memory", target_nodes=RedisCluster.ALL_NODES).values())
            else:
                used = self._client.info("memory")["used_memory"]
        return {**super().stats(), "server_used_memory_bytes": used}

    def close(self) -> None:
        self._client.close()


class _Unreachable:
    """Turns a lost connection into `RemoteUnavailable` (one line naming the server), other server
    errors into one `EngramTierError` line; the store is untouched either way, because reads fill
    ``out`` only after every reply arrived and a block is written in one MULTI/EXEC."""

    def __init__(self, where: str, doing: str) -> None:
        self.where, self.doing = where, doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        if isinstance(err, _UNREACHABLE) or (isinstance(err, redis.exceptions.RedisClusterException)
                                             and "connect" in str(err).lower()):
            why = " ".join(str(err).split())
            raise RemoteUnavailable(
                f"remote tier {self.where} unreachable: {why} (during {self.doing}); start the server or fix the url"
            ) from None
        if isinstance(err, (redis.RedisError, redis.exceptions.RedisClusterException)):
            raise EngramTierError(f"remote tier {self.where}: {self.doing} refused by the server: {err}") from None
