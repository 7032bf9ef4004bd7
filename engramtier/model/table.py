"""The flat table file: one raw file of rows plus a manifest that says how to read it.

    DIR/table.bin       n_rows * row_bytes bytes, row i at offset i * row_bytes (memory-mapped)
    DIR/manifest.json   format, dim, row_bytes, n_rows, sub-table sizes, hash config and its
                        fingerprint, blake2b checksum of table.bin, engramtier version

A table's bytes mean something only under the addressing they were trained with, so opening one
for a model checks the model's hash fingerprint and sub-table sizes and refuses on any difference:
a wrong table gives plausible-looking garbage, never an error, if it is not caught here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engramtier import __version__
from engramtier.errors import EngramTierError, check_number
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.rows import RowFormat

DATA_FILE = "table.bin"
MANIFEST_FILE = "manifest.json"
_CHUNK_BYTES = 16 << 20  # streaming unit for writing and checksumming


@dataclass
class FlatTable:
    """An opened table: its manifest, decoded, and its rows memory-mapped read-only."""

    path: Path
    row_format: RowFormat
    hash_config: HashConfig
    subtable_sizes: np.ndarray
    checksum: str
    rows: np.ndarray  # uint8 [n_rows, row_bytes], memory-mapped

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def row_bytes(self) -> int:
        return self.row_format.row_bytes

    @property
    def fingerprint(self) -> str:
        return self.hash_config.fingerprint

    def tensor(self) -> torch.Tensor:
        """The rows as a uint8 tensor sharing the memory map (copy-on-write: nothing reaches disk)."""
        return torch.from_numpy(np.memmap(self.path / DATA_FILE, dtype=np.uint8, mode="c", shape=self.rows.shape))

    def verify(self) -> None:
        """Recompute the data checksum and refuse a table whose bytes changed since it was saved."""
        actual = _file_checksum(self.path / DATA_FILE)
        if actual != self.checksum:
            raise EngramTierError(
                f"table {self.path}: {DATA_FILE} checksum {actual[:16]}... differs from the manifest's "
                f"{self.checksum[:16]}...; the data is corrupt, rebuild or re-copy the table"
            )


def save_table(path: str | Path, rows, row_format: RowFormat, hasher: NgramHasher) -> Path:
    """Write uint8 ``rows`` [hasher.n_rows, row_bytes] (numpy or torch) as a table directory."""
    path = Path(path)
    rows = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    expected = (hasher.n_rows, row_format.row_bytes)
    if rows.dtype != np.uint8 or rows.shape != expected:
        raise EngramTierError(
            f"save table {path}: rows are {rows.dtype}{list(rows.shape)}, the hash config and format need uint8{list(expected)}"
        )
    path.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(rows).reshape(-1)
    digest = hashlib.blake2b(digest_size=32)
    partial = path / (DATA_FILE + ".partial")
    with open(partial, "wb") as f:
        for lo in range(0, data.size, _CHUNK_BYTES):
            chunk = data[lo : lo + _CHUNK_BYTES]
            digest.update(chunk)
            f.write(chunk.tobytes())
    os.replace(partial, path / DATA_FILE)
    manifest = {
        "format": row_format.kind,
        "dim": row_format.dim,
        "row_bytes": row_format.row_bytes,
        "n_rows": hasher.n_rows,
        "subtable_sizes": hasher.subtable_sizes.tolist(),
        "hash_config": hasher.config.to_dict(),
        "fingerprint": hasher.config.fingerprint,
        "checksum": "blake2b-256:" + digest.hexdigest(),
        "engramtier_version": __version__,
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def open_table(path: str | Path, expect_fingerprint: str | None = None,
               expect_subtable_sizes=None, verify: bool = False) -> FlatTable:
    """Open a table directory, refusing it if it does not match the model that will read it."""
    path = Path(path)
    manifest = _read_manifest(path)
    row_format, hash_config, sizes = check_manifest(manifest, f"table {path}: {MANIFEST_FILE}")
    n_rows, row_bytes, checksum = manifest["n_rows"], row_format.row_bytes, manifest.get("checksum")
    if not isinstance(checksum, str) or not re.fullmatch(r"blake2b-256:[0-9a-f]{64}", checksum):
        raise EngramTierError(f"table {path}: {MANIFEST_FILE} lacks the key 'checksum' (blake2b-256:HEX); "
                              "rebuild the table")
    if expect_fingerprint is not None and expect_fingerprint != hash_config.fingerprint:
        raise EngramTierError(
            f"table {path} was built for hash config {hash_config.fingerprint}, the model uses {expect_fingerprint}: "
            "rebuild the table or load the matching model"
        )
    if expect_subtable_sizes is not None and not np.array_equal(np.asarray(expect_subtable_sizes), sizes):
        raise EngramTierError(
            f"table {path}: its {sizes.size} sub-table sizes differ from the model's hasher "
            f"({len(expect_subtable_sizes)} sub-tables); rebuild the table for this model"
        )
    data = path / DATA_FILE
    if not data.is_file():
        raise EngramTierError(f"table {path}: {DATA_FILE} is missing; copy it next to {MANIFEST_FILE} or rebuild the table")
    size = data.stat().st_size
    if size != n_rows * row_bytes:
        raise EngramTierError(
            f"table {path}: {DATA_FILE} holds {size} bytes, the manifest promises {n_rows} rows x {row_bytes} B = "
            f"{n_rows * row_bytes}; the file is truncated or from another table, re-copy or rebuild it"
        )
    rows = np.memmap(data, dtype=np.uint8, mode="r", shape=(n_rows, row_bytes))
    table = FlatTable(path, row_format, hash_config, sizes, checksum, rows)
    if verify:
        table.verify()
    return table


def check_manifest(manifest: Any, where: str, hashed: bool = True) -> tuple[RowFormat, HashConfig | None, np.ndarray]:
    """(row format, hash config, sub-table sizes) of a table manifest, flat or LMDB (``where`` names
    it), refused in one line unless every key is there, of its type, and agrees with the others: the
    row size with the format, the sub-tables with the row count, the fingerprint with the hash config.
    A table of random rows (not ``hashed``) has no hash config and no fingerprint."""
    if not isinstance(manifest, dict):
        raise EngramTierError(f"{where} is not a JSON object; rebuild the table")
    try:
        dim, kind = check_number(manifest["dim"], f"{where}: 'dim'", integer=True, low=1), manifest["format"]
        if not isinstance(kind, str) or not kind.isidentifier():
            raise EngramTierError(f"'format' must be a row format name such as 'bf16', got {kind!r}")
        row_format = RowFormat(kind, dim)
        config = manifest["hash_config"]
        hash_config = None if config is None and not hashed else HashConfig.from_dict(config)
        sizes = np.asarray(manifest["subtable_sizes"], dtype=np.int64).reshape(-1)
        n_rows, row_bytes, fingerprint = manifest["n_rows"], manifest["row_bytes"], manifest["fingerprint"]
    except KeyError as err:
        raise EngramTierError(f"{where} lacks the key {err}; rebuild the table") from None
    except (TypeError, ValueError, OverflowError) as err:
        raise EngramTierError(f"{where} is malformed ({type(err).__name__}: {err}); rebuild the table") from None
    except EngramTierError as err:
        raise EngramTierError(f"{where}: {err}") from None
    if (row_bytes != row_format.row_bytes or isinstance(n_rows, bool) or not isinstance(n_rows, int)
            or not sizes.size or sizes.min() < 1 or sizes.sum() != n_rows
            or fingerprint != (hash_config and hash_config.fingerprint)):
        raise EngramTierError(f"{where} contradicts itself (row size, row count or fingerprint); rebuild the table")
    return row_format, hash_config, sizes


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise EngramTierError(f"table {path} does not exist; give the directory that holds {MANIFEST_FILE} and {DATA_FILE}")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise EngramTierError(f"table {path}: {MANIFEST_FILE} is missing; this is not a table directory")
    try:
        return json.loads(manifest_path.read_bytes())
    except OSError as err:
        raise EngramTierError(f"table {path}: cannot read {MANIFEST_FILE} ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise EngramTierError(f"table {path}: {MANIFEST_FILE} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except ValueError:  # not UTF-8
        raise EngramTierError(f"table {path}: {MANIFEST_FILE} is not valid JSON (not UTF-8 text)") from None


def _file_checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return "blake2b-256:" + digest.hexdigest()
