"""Row formats: byte layouts worked by hand, round trips, scale choice, and refused shapes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engramtier.errors import EngramTierError
from engramtier.model.rows import RowFormat


def test_row_sizes_of_the_paper_and_production_layouts():
    assert RowFormat("bf16", 80).row_bytes == 160
    assert RowFormat("fp8_e4m3", 256).row_bytes == 264


def test_bf16_bytes_are_little_endian_bfloat16_words():
    # 1.0 = 0x3F80, -2.0 = 0xC000, 0.5 = 0x3F00 as bfloat16 (the top half of the float32 word)
    rows = RowFormat("bf16", 3).encode(torch.tensor([[1.0, -2.0, 0.5]]))
    assert rows.dtype == torch.uint8
    assert rows.tolist() == [[0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F]]


def test_bf16_round_trip_is_exact_for_bfloat16_values():
    fmt = RowFormat("bf16", 80)
    values = torch.randn(50, 80, generator=torch.Generator().manual_seed(0)).bfloat16().float()
    assert torch.equal(fmt.decode(fmt.encode(values)), values)


def test_bf16_rounds_other_values_to_nearest_bfloat16():
    fmt = RowFormat("bf16", 64)
    values = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fmt.decode(fmt.encode(values)), values.bfloat16().float())


def test_fp8_layout_worked_by_hand():
    # Block max 3.0 = 0.75 * 2**2: the smallest exponent e with 3 / 2**e <= 448 is -7 (3 * 128 = 384;
    # e = -8 would give 768), so the scale byte is 127 - 7 = 120 and 3.0 is stored as 384.
    fmt = RowFormat("fp8_e4m3", 32)
    values = torch.zeros(1, 32)
    values[0, 0], values[0, 1] = 3.0, -1.5
    rows = fmt.encode(values)
    assert rows.shape == (1, 33)
    assert rows[0, 32].item() == 120
    codes = rows[0, :32].view(torch.float8_e4m3fn).float()
    assert codes[0].item() == 384.0 and codes[1].item() == -192.0 and codes[2:].abs().sum() == 0
    assert torch.equal(fmt.decode(rows), values)


def _fp8_exact_grid(values):
    """What the fp8 format should give: per block, scale by the power of two chosen independently
    here (by search), round to float8_e4m3fn, scale back."""
    blocks = values.reshape(values.shape[0], -1, 32)
    out = torch.empty_like(blocks)
    exponents = []
    for r in range(blocks.shape[0]):
        for b in range(blocks.shape[1]):
            amax = blocks[r, b].abs().max().item()
            e = -127
            while amax / 2.0**e > 448:
                e += 1
            exponents.append(e)
            out[r, b] = (blocks[r, b].double() / 2.0**e).float().to(torch.float8_e4m3fn).double().mul(2.0**e).float()
    return out.reshape(values.shape), exponents


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), blocks=st.integers(1, 3), log_scale=st.floats(-30, 30), seed=st.integers(0, 2**31))
def test_fp8_round_trip_matches_an_independent_model(n, blocks, log_scale, seed):
    fmt = RowFormat("fp8_e4m3", 32 * blocks)
    values = torch.randn(n, 32 * blocks, generator=torch.Generator().manual_seed(seed)) * 2.0**log_scale
    rows = fmt.encode(values)
    expected, exponents = _fp8_exact_grid(values)
    assert rows[:, fmt.dim :].flatten().tolist() == [e + 127 for e in exponents]
    decoded = fmt.decode(rows)
    assert torch.equal(decoded, expected)
    # e4m3 keeps 3 mantissa bits: relative error at most 2**-4 of each block's largest value
    amax = values.reshape(n, blocks, 32).abs().amax(-1, keepdim=True)
    err = (decoded - values).reshape(n, blocks, 32).abs()
    assert torch.all(err <= amax * 2.0**-4)


def test_fp8_scales_never_overflow_and_are_tight():
    fmt = RowFormat("fp8_e4m3", 32)
    values = torch.tensor([[448.0] + [0.0] * 31, [449.0] + [0.0] * 31, [1e38] + [0.0] * 31,
                           [1e-40] + [0.0] * 31, [0.0] * 32])
    rows = fmt.encode(values)
    scales = rows[:, 32].long() - 127
    assert scales.tolist()[:3] == [0, 1, 118]  # 448 fits as is; 449 needs a halving; 1e38/2**118 = 376
    assert scales.tolist()[3:] == [-127, -127]  # tiny and zero blocks take the smallest ue8m0 scale
    assert torch.isfinite(fmt.decode(rows)).all()
    assert torch.allclose(fmt.decode(rows)[:3, 0], values[:3, 0], rtol=2**-4)


def test_decode_keeps_leading_dimensions():
    fmt = RowFormat("fp8_e4m3", 64)
    values = torch.randn(2 * 3 * 5, 64)
    rows = fmt.encode(values).view(2, 3, 5, fmt.row_bytes)
    assert torch.equal(fmt.decode(rows), fmt.decode(rows.reshape(-1, fmt.row_bytes)).view(2, 3, 5, 64))
    assert fmt.decode(rows, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("kind,dim,message", [
    ("fp8_e4m3", 80, "not a multiple of 32"),
    ("bf16", 0, "dim must be positive"),
    ("int4", 32, "unknown"),
])
def test_bad_formats_are_refused(kind, dim, message):
    with pytest.raises(EngramTierError, match=message):
        RowFormat(kind, dim)


def test_bad_inputs_are_refused():
    fmt = RowFormat("bf16", 4)
    with pytest.raises(EngramTierError, match=r"expected values shaped \[n, 4\]"):
        fmt.encode(torch.zeros(2, 5))
    for bad in (float("nan"), float("inf"), 3e38):
        with pytest.raises(EngramTierError, match="finite and at most 2\\*\\*127"):
            fmt.encode(torch.tensor([[1.0, bad, 0.0, 0.0]]))
    with pytest.raises(EngramTierError, match="uint8 rows of 8 bytes"):
        fmt.decode(torch.zeros(2, 9, dtype=torch.uint8))
    with pytest.raises(EngramTierError, match="uint8 rows"):
        fmt.decode(torch.zeros(2, 8, dtype=torch.int16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["bf16", "fp8_e4m3"])
def test_cuda_encode_and_decode_match_cpu(kind):
    fmt = RowFormat(kind, 64)
    values = torch.randn(100, 64) * 10
    rows = fmt.encode(values)
    assert torch.equal(fmt.encode(values.cuda()).cpu(), rows)
    assert torch.equal(fmt.decode(rows.cuda()).cpu(), fmt.decode(rows))
