"""The classic Engram layer against a direct, position-by-position re-computation of the paper's formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from engramtier.model.engram import ClassicEngram, ShortConv, TrainableTable
from engramtier.model.rows import RowFormat

D_MODEL, ROWS_PER_TOKEN, NGRAM, HC = 8, 4, 3, 2


BF16_4 = RowFormat("bf16", 4)


def _layer(fmt=BF16_4, seed=0):
    layer = ClassicEngram(D_MODEL, ROWS_PER_TOKEN, fmt, max_ngram_size=NGRAM, hc_mult=HC, kernel_size=4)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random, the zero-initialised convolution included
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if p.dim() == 2 and p.shape[0] == HC else 0.0))
    return layer


def _rmsnorm(x, weight, eps=1e-5):
    return x / math.sqrt(sum(v * v for v in x.tolist()) / x.numel() + eps) * weight


def _reference(layer, hidden, rows):
    """The paper's layer written out per batch, position and branch, with scalar loops: the new hidden state."""
    batch, length = hidden.shape[:2]
    wk = layer.key_proj.weight.view(HC, D_MODEL, -1)
    wv = layer.value_proj.weight
    value = torch.zeros(batch, length, HC, D_MODEL)
    for b in range(batch):
        for t in range(length):
            e = rows[b, t].flatten()
            for c in range(HC):
                k = _rmsnorm(wk[c] @ e, layer.key_norm[c])
                q = _rmsnorm(hidden[b, t, c], layer.query_norm[c])
                score = float(k @ q) / math.sqrt(D_MODEL)
                signed_root = math.copysign(math.sqrt(max(abs(score), 1e-6)), score)
                gate = 1 / (1 + math.exp(-signed_root))
                value[b, t, c] = gate * (wv @ e)
    conv = layer.short_conv
    out = hidden + value
    for b in range(batch):
        normed = torch.stack([torch.stack([_rmsnorm(value[b, t, c], conv.norm_weight[c]) for c in range(HC)])
                              for t in range(length)])
        for t in range(length):
            acc = torch.zeros(HC, D_MODEL)
            for j in range(4):
                src = t - (3 - j) * NGRAM  # dilation = max N-gram order
                if src >= 0:
                    acc += conv.weight[j] * normed[src]
            out[b, t] += acc * torch.sigmoid(acc)
    return out


@torch.no_grad()
def test_layer_matches_the_formulas_computed_by_hand():
    layer = _layer()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 11, HC, D_MODEL, generator=generator)
    rows = torch.randn(2, 11, ROWS_PER_TOKEN, 4, generator=generator)
    out, _ = layer(hidden, rows)
    torch.testing.assert_close(out, _reference(layer, hidden, rows), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_gates_differ_per_branch_and_lie_in_the_unit_interval():
    layer = _layer()
    hidden = torch.randn(1, 6, HC, D_MODEL)
    gate = layer.gate(hidden, torch.randn(1, 6, ROWS_PER_TOKEN * 4))
    assert gate.shape == (1, 6, HC, 1)
    assert torch.all((gate > 0) & (gate < 1))
    assert not torch.allclose(gate[:, :, 0], gate[:, :, 1])


@torch.no_grad()
def test_short_conv_equals_a_dilated_causal_conv1d():
    conv = ShortConv(D_MODEL, HC, kernel_size=4, dilation=3, eps=1e-5)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.norm_weight)
    x = torch.randn(2, 17, HC, D_MODEL)
    got, state = conv(x)
    normed = F.rms_norm(x, (D_MODEL,), eps=1e-5) * conv.norm_weight
    channels = normed.flatten(2).transpose(1, 2)  # [B, hc*d, T]
    kernel = conv.weight.flatten(1).t().unsqueeze(1)  # [hc*d, 1, 4]
    expected = F.silu(F.conv1d(F.pad(channels, (9, 0)), kernel, dilation=3, groups=HC * D_MODEL))
    torch.testing.assert_close(got, expected.transpose(1, 2).view_as(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(state, normed[:, -9:])


@torch.no_grad()
def test_chunked_processing_with_state_equals_the_full_sequence():
    # Equal up to float rounding: BLAS may order a GEMM's reductions differently for [2, 13] and
    # [2, 5] rows (it does with several threads), so bitwise equality is not a property to demand here.
    layer = _layer()
    hidden = torch.randn(2, 13, HC, D_MODEL)
    rows = torch.randn(2, 13, ROWS_PER_TOKEN, 4)
    full, _ = layer(hidden, rows)
    parts, state = [], None
    for lo, hi in [(0, 5), (5, 6), (6, 10), (10, 13)]:
        part, state = layer(hidden[:, lo:hi], rows[:, lo:hi], state)
        parts.append(part)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_appended_positions_never_change_earlier_outputs():
    layer = _layer()
    hidden = torch.randn(1, 9, HC, D_MODEL)
    rows = torch.randn(1, 9, ROWS_PER_TOKEN, 4)
    short, _ = layer(hidden[:, :6], rows[:, :6])
    padded_hidden = torch.cat([hidden[:, :6], 100 * torch.randn(1, 3, HC, D_MODEL)], dim=1)
    padded_rows = torch.cat([rows[:, :6], 100 * torch.randn(1, 3, ROWS_PER_TOKEN, 4)], dim=1)
    long, _ = layer(padded_hidden, padded_rows)
    torch.testing.assert_close(long[:, :6], short, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", [RowFormat("bf16", 32), RowFormat("fp8_e4m3", 32)])
@torch.no_grad()
def test_byte_rows_decode_to_the_same_output_as_float_rows(fmt):
    layer = _layer(fmt)
    values = fmt.decode(fmt.encode(torch.randn(2 * 5 * ROWS_PER_TOKEN, 32)))  # values the format holds exactly
    hidden = torch.randn(2, 5, HC, D_MODEL)
    from_floats, _ = layer(hidden, values.view(2, 5, ROWS_PER_TOKEN, 32))
    from_bytes, _ = layer(hidden, fmt.encode(values).view(2, 5, ROWS_PER_TOKEN, fmt.row_bytes))
    assert torch.equal(from_bytes, from_floats)


def test_trainable_table_gathers_with_sparse_gradients_and_exports_its_rounding():
    fmt = RowFormat("fp8_e4m3", 32)
    table = TrainableTable(50, 32)
    torch.nn.init.normal_(table.weight)
    ids = torch.tensor([[3, 7], [7, 49]])
    rows = table.prefetch(ids).wait()
    assert torch.equal(rows, table.weight[ids])
    rows.sum().backward()
    grad = table.weight.grad
    assert grad.is_sparse
    dense = grad.to_dense()
    assert dense[7].eq(2).all() and dense[3].eq(1).all() and dense[49].eq(1).all() and dense.sum() == 4 * 32
    table.round_to_(fmt, chunk_rows=16)
    exported = table.export(fmt, chunk_rows=16)
    assert exported.shape == (50, fmt.row_bytes)
    assert torch.equal(fmt.decode(exported), table.weight.detach())
