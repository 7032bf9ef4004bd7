"""`engramtier remote populate|calibrate`: fill a remote store from an LMDB table, and measure it.

The store is named either by a hierarchy TOML (its last tier's ``[tier.storage]`` table, the one
`replay` and `generate` will read) or by ``--storage KEY=VALUE`` pairs (values are TOML scalars), so
that the store populated is the store served.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from typing import Any

from engramtier.argtypes import positive_int
from engramtier.cache.hierarchy import TierSpec, load_hierarchy
from engramtier.errors import EngramTierError
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.remote import calibrate_remote, open_remote, populate_remote, split_rule

_EXAMPLES = """\
examples:
  # copy a table into Redis (resumable: run it again after a crash), then serve it with replay
  engramtier remote populate --table runs/train-1/table.lmdb \\
      --storage backend=redis url=redis://10.0.0.5:6379 key_prefix=engram
  engramtier replay --run runs/train-1 --hierarchy remote.toml

  # a Redis Cluster: any node's url, keys routed by hash tag (one block of rows per slot)
  engramtier remote populate --table t.lmdb --storage backend=redis url=redis://10.0.0.5:7000 cluster=true

  # the store named by the hierarchy file replay will use; fit a timing model for the simulator: its
  # "toml" line (model = { latency_s = ..., ... }) replaces the remote tier's model line
  engramtier remote calibrate --table t.lmdb --hierarchy remote.toml

A hierarchy whose last tier is remote (on_failure: error, retry for retry_s seconds, or fallback to
the local --table while the store is down):
  [[tier]]
  name = "dram"
  capacity = "4GiB"
  policy = "s3fifo"
  model = "dram"
  [[tier]]
  name = "remote"
  model = "remote"
  [tier.storage]
  backend = "redis"
  url = "redis://10.0.0.5:6379"
  key_prefix = "engram"
  on_failure = "fallback"
  retry_s = 5
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "remote", help="populate and calibrate a remote store (Redis, Redis Cluster, Mooncake) holding a table",
        description="Tables that outgrow one machine live in an existing distributed store. `populate` copies an "
        "LMDB table into it block by block (resumable, fingerprint stored beside the rows); `calibrate` times "
        "reads and prints the remote tier's TierModel for the simulator.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    populate = actions.add_parser("populate", help="copy an LMDB table into the store (resumable)")
    calibrate = actions.add_parser("calibrate", help="time reads of the store and print its TierModel")
    for q in (populate, calibrate):
        q.add_argument("--table", required=True, help="the LMDB table (engramtier build-table): sizes and fingerprint")
        named = q.add_mutually_exclusive_group(required=True)
        named.add_argument("--hierarchy", help="hierarchy TOML whose last tier has a [tier.storage] table")
        named.add_argument("--storage", nargs="+", metavar="KEY=VALUE",
                           help="the store's options, e.g. backend=redis url=redis://host:6379 key_prefix=engram")
    populate.add_argument("--batch-rows", type=positive_int, default=1 << 16, help="rows read from the table at once")
    populate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.add_argument("--sizes", type=positive_int, nargs="+", default=[1, 16, 256, 4096, 16384],
                           help="rows per timed read (default 1 16 256 4096 16384)")
    calibrate.add_argument("--repeats", type=positive_int, default=5, help="timed reads per size; the median is kept")
    p.set_defaults(run=_run_remote)


def parse_storage(pairs: list[str]) -> dict[str, Any]:
    """``["backend=redis", "cluster=true", "block_rows=4096"]`` -> a storage table (values as TOML scalars)."""
    storage = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise EngramTierError(f"--storage: '{pair}' is not KEY=VALUE; e.g. url=redis://127.0.0.1:6379")
        try:
            storage[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            storage[key] = text  # a bare string: url=redis://... needs no quotes
    return storage


def _toml(value: Any) -> str:
    """A number as TOML writes it (a fit may find no bandwidth limit: ``inf``, which JSON cannot say)."""
    return "inf" if value == float("inf") else json.dumps(value)


def _run_remote(args: argparse.Namespace) -> None:
    if args.hierarchy:
        spec = load_hierarchy(args.hierarchy).store
        where = f"{args.hierarchy}: tier '{spec.name}' storage"
    else:
        spec = TierSpec("remote", None, None, {}, "remote", parse_storage(args.storage))
        where = "--storage"
    if not spec.storage:
        raise EngramTierError(f"{args.hierarchy}: the last tier '{spec.name}' has no [tier.storage] table naming a "
                              "remote store; add one (backend, url, key_prefix)")
    options, _ = split_rule(spec.storage)  # the failover rule is the runtime's, not populate's
    with NvmeTier(args.table) as table:
        with open_remote(options, n_table_rows=table.n_table_rows, row_bytes=table.row_bytes, model=spec.model,
                         fingerprint=table.manifest["fingerprint"], where=where) as tier:
            if args.action == "populate":
                written = populate_remote(table, tier, batch_rows=args.batch_rows, progress=not args.quiet)
                print(json.dumps({"written_rows": written, "populated_rows": tier.populated_rows,
                                  "n_rows": tier.n_table_rows, **tier.stats()}))
                return
            if tier.populated_rows < tier.n_table_rows:
                raise EngramTierError(f"remote tier {tier.where}: {tier.populated_rows} of {tier.n_table_rows} rows are "
                                      "populated; run `engramtier remote populate` first")
            model = calibrate_remote(tier, sizes=args.sizes, repeats=args.repeats)
    fields = model.to_dict()
    toml = "model = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in fields.items() if k != "name") + " }"
    strict = {k: None if v == float("inf") else v for k, v in fields.items()}  # JSON has no infinity: null
    print(json.dumps({"model": strict, "toml": toml}, allow_nan=False), file=sys.stdout)
