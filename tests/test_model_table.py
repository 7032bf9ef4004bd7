"""The table file and the flat row source: round trip, gathers, and every refusal."""

import json

import numpy as np
import pytest
import torch

from engramtier.errors import EngramTierError
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.rows import RowFormat
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.table import open_table, save_table

FORMAT = RowFormat("fp8_e4m3", 32)


@pytest.fixture
def hasher():
    return NgramHasher(HashConfig(vocab_size=300, pad_id=0, table_sizes=(41, 53), layer_ids=(0, 2), n_heads=2))


@pytest.fixture
def saved(tmp_path, hasher):
    values = torch.randn(hasher.n_rows, 32, generator=torch.Generator().manual_seed(0))
    rows = FORMAT.encode(values)
    save_table(tmp_path / "t", rows, FORMAT, hasher)
    return tmp_path / "t", rows


def test_round_trip_keeps_every_byte_and_the_manifest(saved, hasher):
    path, rows = saved
    table = open_table(path, expect_fingerprint=hasher.config.fingerprint,
                       expect_subtable_sizes=hasher.subtable_sizes, verify=True)
    assert table.n_rows == hasher.n_rows == rows.shape[0]
    assert table.row_format == FORMAT and table.hash_config == hasher.config
    np.testing.assert_array_equal(table.subtable_sizes, hasher.subtable_sizes)
    np.testing.assert_array_equal(np.asarray(table.rows), rows.numpy())
    assert (path / "table.bin").stat().st_size == hasher.n_rows * FORMAT.row_bytes
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["row_bytes"] == 33 and manifest["fingerprint"] == hasher.config.fingerprint
    assert isinstance(table.rows, np.memmap)


def test_tensor_view_is_copy_on_write(saved):
    path, rows = saved
    table = open_table(path)
    view = table.tensor()
    view[0] = 0  # a writable view for torch, but the file keeps its bytes
    np.testing.assert_array_equal(np.asarray(open_table(path, verify=True).rows), rows.numpy())


def test_flat_source_gathers_the_addressed_rows(saved, hasher):
    path, rows = saved
    source = FlatRowSource(open_table(path).tensor())
    ids = hasher.hash_torch(torch.arange(24).reshape(2, 12) * 7 % 300)  # [2, 12, layers, heads]
    got = source.prefetch(ids).wait()
    assert got.shape == (*ids.shape, FORMAT.row_bytes) and got.dtype == torch.uint8
    assert torch.equal(got, rows[ids])
    assert source.n_rows == hasher.n_rows and source.row_bytes == FORMAT.row_bytes


def test_flat_source_refuses_non_byte_rows():
    with pytest.raises(EngramTierError, match="uint8 tensor"):
        FlatRowSource(torch.zeros(4, 8))


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(EngramTierError, match="does not exist"):
        open_table(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngramTierError, match="manifest.json is missing"):
        open_table(tmp_path / "empty")


def test_missing_and_truncated_data(saved):
    path, _ = saved
    data = (path / "table.bin").read_bytes()
    (path / "table.bin").write_bytes(data[:-5])
    with pytest.raises(EngramTierError, match="truncated"):
        open_table(path)
    (path / "table.bin").unlink()
    with pytest.raises(EngramTierError, match="table.bin is missing"):
        open_table(path)


def test_corrupt_data_is_caught_by_the_checksum(saved):
    path, _ = saved
    data = bytearray((path / "table.bin").read_bytes())
    data[100] ^= 0xFF
    (path / "table.bin").write_bytes(bytes(data))
    open_table(path)  # sizes still agree: without verify the damage goes unseen
    with pytest.raises(EngramTierError, match="checksum .* differs"):
        open_table(path, verify=True)


def test_fingerprint_mismatch_names_both_configs(saved, hasher):
    path, _ = saved
    other = HashConfig(vocab_size=300, pad_id=0, table_sizes=(41, 53), layer_ids=(0, 2), n_heads=2, seed=1)
    with pytest.raises(EngramTierError) as err:
        open_table(path, expect_fingerprint=other.fingerprint)
    message = str(err.value)
    assert hasher.config.fingerprint in message and other.fingerprint in message
    assert "rebuild the table or load the matching model" in message and "\n" not in message


def test_subtable_sizes_mismatch(saved, hasher):
    path, _ = saved
    sizes = hasher.subtable_sizes.copy()
    sizes[-1] += 2
    with pytest.raises(EngramTierError, match="sub-table sizes differ"):
        open_table(path, expect_subtable_sizes=sizes)


def test_edited_or_broken_manifests(saved):
    path, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(EngramTierError, match="not valid JSON"):
        open_table(path)
    edited = dict(manifest, hash_config=dict(manifest["hash_config"], seed=5))
    (path / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(EngramTierError, match="contradicts itself"):
        open_table(path)
    (path / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "checksum"}))
    with pytest.raises(EngramTierError, match="lacks the key 'checksum'"):
        open_table(path)
    (path / "manifest.json").write_text(json.dumps(dict(manifest, dim=48)))
    with pytest.raises(EngramTierError, match="not a multiple of 32"):
        open_table(path)


def test_save_refuses_rows_of_the_wrong_shape(tmp_path, hasher):
    with pytest.raises(EngramTierError, match="need uint8"):
        save_table(tmp_path / "t", torch.zeros(hasher.n_rows - 1, 33, dtype=torch.uint8), FORMAT, hasher)
    with pytest.raises(EngramTierError, match="need uint8"):
        save_table(tmp_path / "t", np.zeros((hasher.n_rows, 33), dtype=np.int8), FORMAT, hasher)
