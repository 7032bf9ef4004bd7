"""The remote tier: a table held by an existing distributed store, for tables that outgrow one machine.

We reuse a store rather than build one. The modules:

base       `RemoteTier` (blocks, the manifest, block-wise commits, row checksums), `RemoteUnavailable`,
           `RemoteDamaged`
redis      Redis and Redis Cluster (``backend = "redis"``, ``cluster = true`` for a cluster)
mooncake   Mooncake Store (``backend = "mooncake"``; its client library is optional)
failover   `FailoverStore`: what the runtime does when the store goes away (stop, wait, read a local copy)
populate   `populate_remote`, `calibrate_remote`: fill a store from an LMDB table, time its reads
commands   `engramtier remote populate | calibrate`

This module alone names the backends (`BACKENDS`), and imports one only when a ``storage`` table asks
for it, so that using the others never needs its client library. `open_remote` builds a backend from
the ``storage`` table of a hierarchy's last tier (TOML)::

    [tier.storage]
    backend = "redis"                 # or "mooncake"
    url = "redis://10.0.0.5:6379"     # redis: a server or any node of a cluster (cluster = true)
    key_prefix = "engram"
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from engramtier.errors import EngramTierError, refuse_unknown
from engramtier.tiers.remote.base import RemoteDamaged, RemoteTier, RemoteUnavailable
from engramtier.tiers.remote.failover import FailoverStore, split_rule
from engramtier.tiers.remote.populate import calibrate_remote, populate_remote

__all__ = ["BACKENDS", "FailoverStore", "RemoteDamaged", "RemoteTier", "RemoteUnavailable", "calibrate_remote", "open_remote",
           "populate_remote", "split_rule"]

# The TOML's ``backend`` -> (module, its `RemoteTier` class), imported on use.
BACKENDS = {
    "redis": ("engramtier.tiers.remote.redis", "RedisTier"),
    "mooncake": ("engramtier.tiers.remote.mooncake", "MooncakeTier"),
}


def open_remote(storage: Mapping[str, Any], *, n_table_rows: int, row_bytes: int, fingerprint: str | None,
                model: Any = None, where: str = "storage") -> RemoteTier:
    """A remote tier from a ``storage`` table: ``backend`` ("redis" or "mooncake") and that backend's options."""
    options = dict(storage)
    backend = options.pop("backend", None)
    if backend not in BACKENDS:
        raise EngramTierError(f"{where}: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    module, name = BACKENDS[backend]
    tier_class = getattr(importlib.import_module(module), name)
    refuse_unknown(options, tier_class.OPTIONS, where, what="storage option")
    return tier_class(**options, n_table_rows=n_table_rows, row_bytes=row_bytes, fingerprint=fingerprint, model=model)
