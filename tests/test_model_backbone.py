"""The backbone with Engram: config round trip, incremental decoding, padding, and row-source paths."""

import numpy as np
import pytest
import torch

from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM, ModelConfig
from engramtier.model.hashing import HashConfig
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.table import open_table, save_table
from engramtier.model.tokenizer import lookup_digest

BASE_VOCAB, CANONICAL_VOCAB = 400, 250
LOOKUP = np.arange(BASE_VOCAB) % CANONICAL_VOCAB  # base ids i and i + 250 share a canonical id


def _config(row_format="bf16", hc_mult=2, engram=True, **kw):
    hash_config = HashConfig(vocab_size=CANONICAL_VOCAB, pad_id=0, table_sizes=(61, 67), layer_ids=(0, 2),
                             n_heads=2, tokenizer_digest=lookup_digest(LOOKUP)) if engram else None
    return ModelConfig(vocab_size=BASE_VOCAB, d_model=32, n_layers=3, n_heads=2, max_seq_len=64, hc_mult=hc_mult,
                       engram=hash_config, row_dim=32, row_format=row_format, **kw)


def _model(config, seed=0):
    model = EngramLM(config, LOOKUP if config.engram else None, seed=seed).eval()
    with torch.no_grad():  # give the zero-initialised convolutions weight, so decoding must carry their state
        for block in model.blocks:
            if block.engram is not None:
                block.engram.short_conv.weight.normal_(0, 0.5)
    return model


def _ids(shape, seed=0):
    return torch.randint(0, BASE_VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_config_round_trips_through_json():
    for config in (_config(), _config(engram=False, tie_embeddings=False)):
        again = ModelConfig.from_json(config.to_json())
        assert again == config
        assert again.d_mlp == 128  # 8/3 * 32 rounded up to a multiple of 64


@pytest.mark.parametrize("changes,message", [
    ({"n_layers": 2}, "exceed the 2 blocks"),
    ({"row_format": "fp8_e4m3", "row_dim": 48}, "not a multiple of 32"),
    ({"n_heads": 5}, "heads of even width"),
])
def test_bad_configs_are_refused(changes, message):
    with pytest.raises(EngramTierError, match=message):
        ModelConfig.from_dict({**_config().to_dict(), **changes})
    with pytest.raises(EngramTierError, match="unknown keys"):
        ModelConfig.from_dict({**_config().to_dict(), "depth": 3})


@torch.no_grad()
def test_incremental_decoding_equals_the_full_sequence():
    model = _model(_config())
    ids = _ids((2, 23))
    full = model(ids)
    cache = model.new_cache(batch_size=2, max_len=32)
    parts = [model(ids[:, lo:hi], kv_cache=cache) for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 12), (12, 13), (13, 23)]]
    assert cache.length == 23
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_decoding_hashes_with_the_preceding_tokens():
    model = _model(_config())
    ids = _ids((2, 9))
    cache = model.new_cache(batch_size=2, max_len=16)
    stepwise = torch.cat([model.row_ids(ids[:, t : t + 1], cache) for t in range(9)], dim=1)
    assert torch.equal(stepwise, model.row_ids(ids))
    # the row ids do depend on the context: a fresh cache hashes the last token as a sequence start
    assert not torch.equal(model.row_ids(ids[:, -1:], model.new_cache(2, 16)), stepwise[:, -1:])


@torch.no_grad()
def test_right_padding_leaves_valid_positions_unchanged():
    model = _model(_config())
    lengths = [9, 16, 4]
    seqs = [_ids((1, n), seed=i) for i, n in enumerate(lengths)]
    batch = _ids((3, 16), seed=99)  # junk fills the padding
    for i, seq in enumerate(seqs):
        batch[i, : lengths[i]] = seq[0]
    logits = model(batch)
    for i, seq in enumerate(seqs):
        torch.testing.assert_close(logits[i, : lengths[i]], model(seq)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_format", ["bf16", "fp8_e4m3"])
@torch.no_grad()
def test_flat_table_inference_equals_the_training_path_bitwise(row_format, tmp_path):
    config = _config(row_format)
    model = _model(config)
    model.table.round_to_(config.format)  # the training path then holds exactly what the table file holds
    ids = _ids((2, 15))
    trained = model(ids)
    in_memory = FlatRowSource(model.table.export(config.format))
    assert torch.equal(model(ids, rows=in_memory), trained)
    save_table(tmp_path / "table", model.table.export(config.format), config.format, model.hasher)
    table = open_table(tmp_path / "table", expect_fingerprint=config.engram.fingerprint)
    assert torch.equal(model(ids, rows=FlatRowSource(table.tensor())), trained)
    cache = model.new_cache(2, 16)
    decoded = torch.cat([model(ids[:, :10], rows=in_memory, kv_cache=cache),
                         model(ids[:, 10:], rows=in_memory, kv_cache=cache)], dim=1)
    torch.testing.assert_close(decoded, trained, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_engram_rows_reach_the_output():
    model = _model(_config())
    ids = _ids((1, 12))
    before = model(ids)
    row = model.row_ids(ids)[0, 7, 0, 0]  # a row read at position 7 by the first Engram layer
    model.table.weight[row] += 3.0
    after = model(ids)
    changed = (after - before).abs().amax(dim=-1)[0]
    assert torch.all(changed[:7] == 0) and torch.all(changed[7:] > 0)


def test_backbone_starts_equal_with_and_without_engram():
    with_engram = EngramLM(_config(), LOOKUP).state_dict()
    without = EngramLM(_config(engram=False), None).state_dict()
    assert set(without) < set(with_engram)
    for name, tensor in without.items():
        assert torch.equal(tensor, with_engram[name]), name


def test_gradients_reach_every_parameter():
    model = _model(_config())
    model.train()
    logits = model(_ids((2, 12)))
    logits.logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert model.table.weight.grad.is_sparse


def test_refusals():
    model = _model(_config())
    inference_only = EngramLM(_config(), LOOKUP, trainable_table=False)
    with pytest.raises(EngramTierError, match="no trainable table"):
        inference_only(_ids((1, 4)))
    wrong_bytes = FlatRowSource(torch.zeros(model.hasher.n_rows, 33, dtype=torch.uint8))
    with pytest.raises(EngramTierError, match="rows of 33 B, the model needs"):
        model(_ids((1, 4)), rows=wrong_bytes)
    with pytest.raises(EngramTierError, match="exceed the limit of 64"):
        model(_ids((1, 65)))
    with pytest.raises(EngramTierError, match="exceed the limit of 8"):
        cache = model.new_cache(1, 8)
        model(_ids((1, 6)), kv_cache=cache)
        model(_ids((1, 3)), kv_cache=cache)
    with pytest.raises(EngramTierError, match="exceeds max_seq_len 64"):
        model.new_cache(1, 65)
    with pytest.raises(EngramTierError, match="needs the tokenizer's compression lookup"):
        EngramLM(_config(), None)
    with pytest.raises(EngramTierError, match="must map 400 base ids"):
        EngramLM(_config(), LOOKUP[:-1])
    with pytest.raises(EngramTierError, match="not the one the hash config was made for"):
        EngramLM(_config(), LOOKUP[::-1].copy())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_cuda_forward_with_a_device_table_matches_cpu():
    config = _config("fp8_e4m3")
    model = _model(config)
    model.table.round_to_(config.format)
    rows = model.table.export(config.format)
    ids = _ids((2, 15))
    expected = model(ids, rows=FlatRowSource(rows))
    model.cuda()
    on_gpu = model(ids.cuda(), rows=FlatRowSource(rows.cuda()))
    torch.testing.assert_close(on_gpu.cpu(), expected, rtol=1e-4, atol=1e-4)
    host_rows = model(ids.cuda(), rows=FlatRowSource(rows, device="cuda"))  # gathered on the host, moved over
    assert torch.equal(host_rows, on_gpu)
