"""The dsv41 and demo Engram layers against docs/design.md's formulas written out in float64 numpy, fp8 rows
decoded by an independent reading of the formats, image positions, and chunked / KV-cache decoding."""

import math

import numpy as np
import pytest
import torch

from engramtier.model.backbone import EngramLM, ModelConfig
from engramtier.model.engram import DemoEngram, Dsv41Engram, engram_layer
from engramtier.model.hashing import HashConfig
from engramtier.model.rows import RowFormat
from engramtier.model.tokenizer import lookup_digest

D, HC, K, DIM, NGRAM = 8, 3, 3, 64, 4  # width, copies, rows per token, values per row, largest n-gram
FMT = RowFormat("fp8_e4m3", DIM)
NAN_CODES = (0x7F, 0xFF)


def _e4m3(code: int) -> float:
    """One float8_e4m3fn code read from its bits: sign, 4 exponent bits (bias 7), 3 mantissa bits;
    exponent 0 is subnormal, and S.1111.111 is NaN (the format has no infinities)."""
    sign = -1.0 if code & 0x80 else 1.0
    exponent, mantissa = (code >> 3) & 0xF, code & 0x7
    if exponent == 15 and mantissa == 7:
        return math.nan
    if exponent == 0:
        return sign * mantissa / 8 * 2.0**-6
    return sign * (1 + mantissa / 8) * 2.0 ** (exponent - 7)


E4M3 = np.array([_e4m3(c) for c in range(256)])


def _decoded(rows: np.ndarray) -> np.ndarray:
    """uint8 rows [..., DIM + DIM/32] -> float64 values: code value * 2**(scale byte - 127) per 32 values."""
    codes = E4M3[rows[..., :DIM]].reshape(*rows.shape[:-1], DIM // 32, 32)
    scales = 2.0 ** (rows[..., DIM:].astype(np.float64) - 127)
    return (codes * scales[..., None]).reshape(*rows.shape[:-1], DIM)


def _rows(shape, seed) -> np.ndarray:
    """Random fp8 rows: any code but NaN, scale bytes around 127 (values of order one)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (*shape, DIM), dtype=np.uint8)
    codes[np.isin(codes, NAN_CODES)] = 0
    return np.concatenate([codes, rng.integers(118, 132, (*shape, DIM // 32), dtype=np.uint8)], axis=-1)


def _randomised(layer, seed=0):
    """Every parameter random (the ones-initialised gate weights and the zero convolution included), float64."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            centre = 1.0 if p.dim() == 2 and p.shape[0] == HC else 0.0  # gate and norm weights around one
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.5 + centre)
    return layer.double()


def _sigmoid_signed_sqrt(x: float) -> float:
    return 1 / (1 + math.exp(-math.copysign(math.sqrt(max(abs(x), 1e-6)), x)))


def _dsv41_reference(layer, hidden, rows, blocked):
    """docs/design.md's dsv41 layer per token and copy: e = the rows dequantised and concatenated; wkv e = keys per
    copy, then the value; w = q_weight * k_weight; rstd over `hidden` of h and of k; gate; h + gate * value."""
    p = {n: t.detach().numpy() for n, t in layer.named_parameters()}
    e = _decoded(rows).reshape(*rows.shape[:2], K * DIM)
    kv = e @ p["wkv.weight"].T
    out = hidden.copy()
    for b, t in np.ndindex(*rows.shape[:2]):
        if blocked[b, t]:
            continue
        value = kv[b, t, HC * D :]
        for c in range(HC):
            h, k = hidden[b, t, c], kv[b, t, c * D : (c + 1) * D]
            rstd = 1 / math.sqrt(np.mean(h * h) + layer.eps) / math.sqrt(np.mean(k * k) + layer.eps)
            dot = np.sum(h * p["q_weight"][c] * p["k_weight"][c] * k) * rstd / math.sqrt(D)
            out[b, t, c] = h + _sigmoid_signed_sqrt(dot) * value
    return out


def _rms(x, weight, eps):
    return x / math.sqrt(np.mean(x * x) + eps) * weight


def _demo_reference(layer, hidden, rows, blocked):
    """The paper demo's layer: biased key (per copy) and value projections, RMSNorm'd key and query with the
    dtype's machine eps, the signed-sqrt gate, then v + SiLU(dilated causal depthwise conv of RMSNorm(v), eps 1e-5),
    added to each copy; an image position keeps its state and gives the convolution no value."""
    p = {n: t.detach().numpy() for n, t in layer.named_parameters()}
    eps = np.finfo(np.float64).eps
    e = _decoded(rows).reshape(*rows.shape[:2], K * DIM)
    keys = (e @ p["key_proj.weight"].T + p["key_proj.bias"]).reshape(*rows.shape[:2], HC, D)
    v = e @ p["value_proj.weight"].T + p["value_proj.bias"]
    value = np.zeros_like(hidden)
    for b, t, c in np.ndindex(*hidden.shape[:3]):
        if not blocked[b, t]:
            score = np.sum(_rms(keys[b, t, c], p["key_norm"][c], eps) * _rms(hidden[b, t, c], p["query_norm"][c], eps))
            value[b, t, c] = _sigmoid_signed_sqrt(score / math.sqrt(D)) * v[b, t]
    out = hidden + value
    for b, t, c in np.ndindex(*hidden.shape[:3]):
        if blocked[b, t]:
            out[b, t, c] = hidden[b, t, c]
            continue
        acc = np.zeros(D)
        for j in range(4):  # tap j reads t - (3 - j) * dilation, dilation = the largest n-gram order
            src = t - (3 - j) * NGRAM
            if src >= 0:
                acc += p["short_conv.weight"][j, c] * _rms(value[b, src, c], p["short_conv.norm_weight"][c], 1e-5)
        out[b, t, c] += acc / (1 + np.exp(-acc))
    return out


LAYERS = {
    "dsv41": (lambda: Dsv41Engram(D, K, FMT, HC, eps=1e-6), _dsv41_reference),
    "demo": (lambda: DemoEngram(D, K, FMT, NGRAM, HC, kernel_size=4), _demo_reference),
}


def test_fp8_rows_decode_to_the_code_times_two_to_the_scale_byte_minus_127():
    codes = np.arange(256, dtype=np.uint8)
    codes = codes[~np.isin(codes, NAN_CODES)][:DIM * 3].reshape(3, DIM)  # 254 codes: every value there is
    for scale in (0, 1, 100, 127, 128, 200, 254):  # exact in float64 however large or small the scale
        rows = np.concatenate([codes, np.full((3, DIM // 32), scale, np.uint8)], axis=1)
        got = FMT.decode(torch.from_numpy(rows), torch.float64).numpy()
        np.testing.assert_array_equal(got, _decoded(rows))
        assert np.isfinite(got).all()
    rows = _rows((50,), seed=3)
    np.testing.assert_array_equal(FMT.decode(torch.from_numpy(rows), torch.float32).numpy(), _decoded(rows))
    nan_row = np.concatenate([np.full(DIM, 0x7F, np.uint8), np.full(DIM // 32, 127, np.uint8)])
    assert torch.isnan(FMT.decode(torch.from_numpy(nan_row))).all()


@pytest.mark.parametrize("variant", LAYERS)
@torch.no_grad()
def test_layer_equals_the_spec_in_float64(variant):
    make, reference = LAYERS[variant]
    layer = _randomised(make())
    rng = np.random.default_rng(1)
    hidden, rows = rng.normal(size=(2, 11, HC, D)), _rows((2, 11, K), seed=2)
    blocked = np.zeros((2, 11), bool)
    blocked[0, [0, 5]] = blocked[1, 10] = True  # images at the start, middle and end
    for mask in (None, blocked):
        out, state = layer(torch.from_numpy(hidden), torch.from_numpy(rows), None,
                           None if mask is None else torch.from_numpy(mask))
        expected = reference(layer, hidden, rows, np.zeros_like(blocked) if mask is None else mask)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert np.array_equal(out.numpy()[blocked], hidden[blocked])  # an image position is left exactly as it was
    assert (state is None) == (variant == "dsv41")


@pytest.mark.parametrize("variant", LAYERS)
@torch.no_grad()
def test_chunks_with_state_equal_the_whole_sequence(variant):
    layer = _randomised(LAYERS[variant][0]())
    rng = np.random.default_rng(4)
    hidden, rows = torch.from_numpy(rng.normal(size=(2, 13, HC, D))), torch.from_numpy(_rows((2, 13, K), seed=5))
    blocked = torch.zeros(2, 13, dtype=torch.bool)
    blocked[:, 4] = blocked[1, 5] = True  # one image right before a chunk boundary, one right after
    full, _ = layer(hidden, rows, None, blocked)
    parts, state = [], None
    for lo, hi in [(0, 5), (5, 6), (6, 10), (10, 13)]:
        part, state = layer(hidden[:, lo:hi], rows[:, lo:hi], state, blocked[:, lo:hi])
        parts.append(part)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-12, atol=1e-12)


def test_the_factory_builds_each_variant_and_the_demo_ignores_the_model_eps():
    made = {v: engram_layer(v, D, K, FMT, NGRAM, HC, 4, 1e-6) for v in ("classic", "demo", "dsv41")}
    assert {v: type(layer).variant for v, layer in made.items()} == {v: v for v in made}
    assert made["classic"].eps == 1e-6 and made["demo"].eps is None and made["demo"].short_conv.eps == 1e-5
    assert made["dsv41"].eps == 1e-6 and not any(n.endswith("bias") for n, _ in made["dsv41"].named_parameters())
    assert made["demo"].key_proj.bias is not None and made["classic"].key_proj.bias is None


# ------------------------------------------------------------------------- the model around the layers

BASE_VOCAB, CANONICAL_VOCAB, IMAGE_BASE = 300, 250, 100
LOOKUP = np.arange(BASE_VOCAB) % CANONICAL_VOCAB  # base ids 250.. share canonical ids 0..49; 100 is its own


def _model(variant, image=True, backbone="transformer"):
    hash_config = HashConfig(vocab_size=CANONICAL_VOCAB, pad_id=0, table_sizes=(61, 67, 71), layer_ids=(0, 2),
                             n_heads=2, tokenizer_digest=lookup_digest(LOOKUP), image_id=IMAGE_BASE if image else None)
    config = ModelConfig(vocab_size=BASE_VOCAB, d_model=32, n_layers=3, n_heads=2, max_seq_len=64, hc_mult=2,
                         engram=hash_config, row_dim=32, row_format="fp8_e4m3", variant=variant, backbone=backbone)
    model = EngramLM(config, LOOKUP, seed=0).double().eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the table and every Engram weight random, so each path matters
        model.table.weight.normal_(0, 1, generator=generator)
        for block in model.blocks:
            for p in block.engram.parameters() if block.engram is not None else ():
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3)
    return model


def _ids_with_images():
    ids = torch.randint(0, BASE_VOCAB, (2, 21), generator=torch.Generator().manual_seed(3))
    ids[ids == IMAGE_BASE] = 1
    ids[0, [0, 8, 20]] = IMAGE_BASE  # start, middle (the last token of the 9-token prompt), end
    ids[1, [9, 10]] = IMAGE_BASE  # the first decoded tokens
    return ids


@pytest.mark.parametrize("backbone", ["transformer", "stand-in"])
@pytest.mark.parametrize("variant", ["classic", "demo", "dsv41"])
@torch.no_grad()
def test_kv_cache_decoding_with_images_equals_the_whole_sequence(variant, backbone):
    model = _model(variant, backbone=backbone)
    ids = _ids_with_images()
    full = model(ids)
    cache = model.new_cache(2, 21)
    steps = [model(ids[:, :9], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache) for t in range(9, 21)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
    # an image changes what the Engram layers do around it: the same ids without the image id hash differently
    assert not torch.allclose(_model(variant, image=False, backbone=backbone)(ids), full)


@pytest.mark.parametrize("variant", ["demo", "dsv41"])
@torch.no_grad()
def test_engram_layers_leave_image_positions_as_they_were(variant):
    model = _model(variant, backbone="stand-in")
    ids = _ids_with_images()
    blocked = model.image_positions(ids)
    assert blocked.sum() == 5
    embedded = model.tok_emb(ids).unsqueeze(2).expand(-1, -1, 2, -1)
    after = model.hidden_states(ids)  # a stand-in's blocks are its Engram layers alone
    assert torch.equal(after[blocked], embedded[blocked]) and not torch.equal(after[~blocked], embedded[~blocked])
