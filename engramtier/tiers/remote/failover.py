"""What the runtime does when its remote store goes away: stop, wait for it, or read a local copy.

A remote store (`engramtier.tiers.remote`) can be killed, restarted or cut off mid-run. Its backends
raise `RemoteUnavailable` for exactly that case, having left the caller's buffer untouched, so a read
can be repeated or served elsewhere with nothing corrupted. The hierarchy's last tier says which, in
its ``storage`` table (``on_failure``):

- ``"error"`` (default): the read fails with one line naming the store; the run stops.
- ``"retry"``: the read is retried, backing off up to a second, until the store answers or
  ``retry_s`` seconds have passed (a restart within that window resumes the run; Redis must then be
  persistent, or repopulated, for the rows to be there); a store down at open is waited for the same way.
- ``"fallback"``: reads go to a local copy of the table (the LMDB nvme tier the store was populated
  from) while the store is down, already at start-up; the store is tried again every ``retry_s``
  seconds. The local copy must be the table the store was populated from (the manifests are compared
  when the store is first reached).

A read that finds a damaged row (`RemoteDamaged`: a row failing its checksum) is served by the local
copy under ``"fallback"`` and stops the run under the other rules (retrying would read the same bytes).

Every outage is counted in `stats`: failures, retries, seconds waited, reads that found damaged rows,
rows served by the fallback.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np

from engramtier.errors import EngramTierError
from engramtier.tiers.base import Tier, default_model
from engramtier.tiers.remote.base import RemoteDamaged, RemoteTier, RemoteUnavailable

ON_FAILURE = ("error", "retry", "fallback")
FAILOVER_OPTIONS = ("on_failure", "retry_s")
MAX_BACKOFF_S = 1.0


def split_rule(storage: Mapping[str, Any]) -> tuple[dict, dict]:
    """A ``storage`` table as (the backend's options, the failover rule's: ``on_failure``, ``retry_s``)."""
    options = dict(storage)
    return options, {k: options.pop(k) for k in FAILOVER_OPTIONS if k in options}


# What a remote store's tier report adds (`report`).
REMOTE_FACTS = ("backend", "where", "on_failure", "failures", "retries", "waited_s", "damaged_reads", "fallback_rows")


class FailoverStore(Tier):
    """A remote store, opened by ``connect``, behind the ``on_failure`` rule; ``fallback``: the local
    table for ``"fallback"`` (an `NvmeTier` of the same table).

    The rule holds from the start: a store unreachable at open stops the run (``"error"``), is waited
    for up to ``retry_s`` (``"retry"``), or (``"fallback"``) leaves the run on the local table, counted
    as a failure, and is tried again every ``retry_s`` seconds like a store lost mid-run. Until it is
    first reached, ``backend`` and ``where`` name it in `stats` and ``model`` times its reads."""

    name = RemoteTier.name

    def __init__(self, connect: Callable[[], RemoteTier], on_failure: str = "error", retry_s: float = 30.0,
                 fallback: Tier | None = None, *, backend: str, where: str, model: Any = None) -> None:
        if on_failure not in ON_FAILURE:
            raise EngramTierError(f"remote tier: on_failure must be one of {', '.join(ON_FAILURE)}, got {on_failure!r}")
        if not isinstance(retry_s, (int, float)) or isinstance(retry_s, bool) or retry_s < 0:
            raise EngramTierError(f"remote tier: retry_s must be a number of seconds >= 0, got {retry_s!r}")
        if on_failure == "fallback" and fallback is None:
            raise EngramTierError(f"{where}: on_failure = 'fallback' needs a local copy of the table "
                                  "(--table PATH.lmdb)")
        self.connect, self.on_failure, self.retry_s, self.fallback = connect, on_failure, float(retry_s), fallback
        self.backend, self.where = backend, where
        self.failures = self.retries = self.damaged_reads = self.fallback_rows = 0
        self.waited_s = 0.0
        self._down_since: float | None = None  # fallback: when the store was last found unreachable
        self.primary: RemoteTier | None = None
        try:
            self._reach()
        except RemoteUnavailable as err:
            self.failures += 1
            if on_failure == "error":
                raise
            if on_failure == "retry":
                self._retry(self._reach, err)
            else:
                self._down_since = time.monotonic()
        shape = self.primary or fallback
        super().__init__(shape.n_table_rows, shape.n_table_rows, shape.row_bytes,
                         self.primary.model if self.primary is not None else model or default_model(self.name))

    @property
    def manifest(self) -> dict:
        """The store's manifest; until the store is first reached, the local table's (the same table)."""
        return self.primary.manifest if self.primary is not None else self.fallback.manifest

    def _reach(self) -> RemoteTier:
        """The store, opened (and checked against the fallback) on first use; `RemoteUnavailable` if down."""
        if self.primary is None:
            primary = self.connect()
            if self.on_failure == "fallback":
                try:
                    _check_same_table(primary, self.fallback)
                except BaseException:
                    primary.close()
                    raise
            self.primary, self.where = primary, primary.where
        return self.primary

    def read(self, ids: Any, out: Any) -> None:
        if self.on_failure == "fallback" and self._down_since is not None:
            if time.monotonic() - self._down_since < self.retry_s:
                return self._read_fallback(ids, out)
        try:
            self._reach().read(ids, out)
            self._down_since = None
        except RemoteDamaged:
            self.damaged_reads += 1
            if self.on_failure != "fallback":
                raise
            return self._read_fallback(ids, out)
        except RemoteUnavailable as err:
            self.failures += 1
            if self.on_failure == "error":
                raise
            if self.on_failure == "fallback":
                self._down_since = time.monotonic()
                return self._read_fallback(ids, out)
            self._retry(lambda: self.primary.read(ids, out), err)
        self._count_read(np.size(ids))

    def _read_fallback(self, ids: Any, out: Any) -> None:
        self.fallback.read(ids, out)
        self.fallback_rows += np.size(ids)
        self._count_read(np.size(ids))

    def _retry(self, attempt: Callable[[], Any], err: RemoteUnavailable) -> None:
        """``attempt`` again, backing off up to `MAX_BACKOFF_S`, until it works or ``retry_s`` has passed."""
        start = time.monotonic()
        pause = 0.05
        while True:
            waited = time.monotonic() - start
            if waited >= self.retry_s:
                self.waited_s += waited
                raise RemoteUnavailable(f"{err} (still unreachable after retrying for {self.retry_s:g} s)") from None
            time.sleep(min(pause, self.retry_s - waited))
            pause = min(2 * pause, MAX_BACKOFF_S)
            self.retries += 1
            try:
                attempt()
                self.waited_s += time.monotonic() - start
                return
            except RemoteUnavailable as again:
                err = again

    def write(self, ids: Any, rows: Any) -> None:
        self._reach().write(ids, rows)

    def contains(self, ids: Any) -> np.ndarray:
        return self._reach().contains(ids)

    def stats(self) -> dict:
        own = {**super().stats(), "backend": self.backend, "where": self.where}
        if self.primary is not None:
            try:
                own = self.primary.stats()
            except RemoteUnavailable:  # a report at the end of a run must not fail because the store went away
                pass
        return {**own, "reads": self.reads, "rows_read": self.rows_read, "bytes_read": self.rows_read * self.row_bytes,
                "on_failure": self.on_failure, "failures": self.failures, "retries": self.retries,
                "waited_s": self.waited_s, "damaged_reads": self.damaged_reads, "fallback_rows": self.fallback_rows}

    def report(self) -> dict:
        """Where the store is and how its outages went, for the runtime's per-tier report."""
        stats = self.stats()
        return {"remote": {k: stats[k] for k in REMOTE_FACTS}}

    def close(self) -> None:
        if self.primary is not None:
            self.primary.close()
        if self.fallback is not None:
            self.fallback.close()


def _check_same_table(primary: RemoteTier, fallback: Tier) -> None:
    """The fallback must hold the very rows the store holds: same sizes, and the table the store was
    populated from (its manifest, recorded by `populate_remote`)."""
    where = f"remote tier {primary.where}"
    if (fallback.n_table_rows, fallback.row_bytes) != (primary.n_table_rows, primary.row_bytes):
        raise EngramTierError(
            f"{where}: the fallback table holds {fallback.n_table_rows} rows of {fallback.row_bytes} B, the store "
            f"{primary.n_table_rows} rows of {primary.row_bytes} B; give the table the store was populated from"
        )
    source = primary.manifest.get("table")
    if source is not None and source != getattr(fallback, "manifest", None):
        raise EngramTierError(
            f"{where}: the fallback table is not the table the store was populated from (their manifests differ); "
            "give that table, or repopulate the store from this one"
        )
