"""The Engram layer (DeepSeek, arXiv 2601.07372) in three variants, and the trainable table it reads.

At each position a layer receives the (N-1)*H rows its hashed suffix N-grams address, concatenated into
one memory vector e. e is static (it depends only on the tokens), so the hidden state decides how much of
it to admit: every hyper-connection copy c of the hidden state compares a key projected from e with
itself, and a signed square root keeps that similarity's sigmoid gate from saturating; the gated value
(one value for all copies) is added to the copy. The variants (docs/design.md, "The Engram layer and DeepSeek's checkpoint"):

    dsv41    DeepSeek-V4.1-Flash as the public serving stacks run it: one projection ``wkv`` (keys per
             copy, then the shared value), gate weights q_weight * k_weight, no norms of its own, no
             ShortConv, no biases; the gate and the sum in float32, cast back
    demo     DeepSeek's paper demo (engram_demo_v1.py): key and value projections with biases, RMSNorm'd
             keys and queries at the dtype's machine eps, then v + ShortConv(v)
    classic  what engramtier's layer was before both: the demo without biases, its norms at the model's
             eps; models saved without a ``variant`` are this one, and compute what they computed

A position holding the image token (``blocked``) keeps its hidden state: no gated update there, and, in
the variants with a ShortConv, no value for its neighbours to mix in either (docs/design.md's image rule).

Rows arrive either as bytes in a `RowFormat` (inference: decoded here, on the compute device) or as
float rows from `TrainableTable` (training: float32 master rows, gathered with sparse gradients).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engramtier.model.rows import RowFormat
from engramtier.model.rowsource import ReadyRows

_GATE_FLOOR = 1e-6  # |score| floor under the square root: its gradient is infinite at zero
_DEMO_CONV_EPS = 1e-5  # the demo's ShortConv RMSNorm eps (its key and query norms take the machine eps)


def signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.sign() * x.abs().clamp_min(_GATE_FLOOR).sqrt()


def _keep_blocked(hidden: torch.Tensor, out: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """``out`` [B, T, hc, d], with ``hidden`` itself at the positions ``blocked`` [B, T] marks."""
    return out if blocked is None else torch.where(blocked[:, :, None, None], hidden, out)


class ShortConv(nn.Module):
    """Depthwise causal convolution over the sequence, per branch and channel, after an RMSNorm.

    Output t mixes normalised inputs t, t-d, ..., t-(kernel-1)d. The ``context`` inputs before a chunk
    are its state: zeros at a sequence's start, the previous chunk's tail when decoding incrementally.
    Taps are applied as shifted elementwise products, so a position's output does not depend on how
    the sequence was cut into chunks.
    """

    def __init__(self, d_model: int, hc_mult: int, kernel_size: int, dilation: int, eps: float):
        super().__init__()
        self.kernel_size, self.dilation, self.eps = kernel_size, dilation, eps
        self.norm_weight = nn.Parameter(torch.ones(hc_mult, d_model))
        self.weight = nn.Parameter(torch.zeros(kernel_size, hc_mult, d_model))  # tap j sees t-(kernel-1-j)*d

    @property
    def context(self) -> int:
        return (self.kernel_size - 1) * self.dilation

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hc, d] -> (SiLU(conv) [B, T, hc, d], state [B, context, hc, d])."""
        x = F.rms_norm(x, x.shape[-1:], eps=self.eps) * self.norm_weight
        if state is None:
            state = x.new_zeros(x.shape[0], self.context, *x.shape[2:])
        padded = torch.cat([state, x], dim=1)
        length = x.shape[1]
        y = self.weight[0] * padded[:, :length]
        for j in range(1, self.kernel_size):
            offset = j * self.dilation
            y = y + self.weight[j] * padded[:, offset : offset + length]
        return F.silu(y), padded[:, padded.shape[1] - self.context :]


class EngramLayer(nn.Module):
    """What every variant shares: rows in, ``forward(hidden, rows, state, blocked) -> (hidden, state)``.

    ``hidden`` [B, T, hc, d] is the residual stream's ``hc_mult`` copies; ``rows`` this layer's rows,
    uint8 [B, T, K, row_bytes] in ``row_format`` or float [B, T, K, D]; ``state`` what the previous chunk
    of the same sequences left (None at their start); ``blocked`` [B, T] the image positions, or None.
    The result is the new hidden state, not an update to add, because dsv41 rounds the sum itself.
    """

    variant: str

    def __init__(self, d_model: int, rows_per_token: int, row_format: RowFormat, hc_mult: int):
        super().__init__()
        self.d_model, self.hc_mult, self.row_format = d_model, hc_mult, row_format
        self.memory_dim = rows_per_token * row_format.dim

    def memory(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """e [B, T, K*D]: the rows decoded (when they are bytes) into ``dtype`` and concatenated."""
        if rows.dtype == torch.uint8:
            rows = self.row_format.decode(rows, dtype)
        return rows.flatten(-2)


class ClassicEngram(EngramLayer):
    """Key projection per copy, RMSNorm'd keys and queries with learned weights, one value projection,
    then v + ShortConv(v) (dilation = the largest N-gram order, so it mixes the memories of neighbouring
    N-grams rather than overlapping ones); ``eps`` is every norm's."""

    variant = "classic"
    bias = False

    def __init__(self, d_model: int, rows_per_token: int, row_format: RowFormat, max_ngram_size: int,
                 hc_mult: int = 1, kernel_size: int = 4, eps: float = 1e-5):
        super().__init__(d_model, rows_per_token, row_format, hc_mult)
        self.eps = eps  # the key and query norms'
        self.key_proj = nn.Linear(self.memory_dim, hc_mult * d_model, bias=self.bias)  # one key per copy
        self.value_proj = nn.Linear(self.memory_dim, d_model, bias=self.bias)  # shared by the copies
        self.key_norm = nn.Parameter(torch.ones(hc_mult, d_model))
        self.query_norm = nn.Parameter(torch.ones(hc_mult, d_model))
        self.short_conv = ShortConv(d_model, hc_mult, kernel_size, max_ngram_size, eps)

    def gate(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """sigmoid(signed_sqrt(<RMSNorm(k_c), RMSNorm(h_c)> / sqrt(d))), shaped [B, T, hc, 1]."""
        keys = self.key_proj(memory).unflatten(-1, (self.hc_mult, self.d_model))
        keys = F.rms_norm(keys, (self.d_model,), eps=self.eps) * self.key_norm
        queries = F.rms_norm(hidden, (self.d_model,), eps=self.eps) * self.query_norm
        score = (keys * queries).sum(dim=-1, keepdim=True) / math.sqrt(self.d_model)
        return torch.sigmoid(signed_sqrt(score))

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor, state: torch.Tensor | None = None,
                blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (hidden + v + ShortConv(v), the ShortConv state), v the gated value (zero where blocked)."""
        memory = self.memory(rows, hidden.dtype)
        value = self.gate(hidden, memory) * self.value_proj(memory).unsqueeze(-2)
        if blocked is not None:
            value = value.masked_fill(blocked[:, :, None, None], 0)
        mixed, state = self.short_conv(value, state)
        return _keep_blocked(hidden, hidden + (value + mixed), blocked), state


class DemoEngram(ClassicEngram):
    """The paper demo's layer: the classic one with biased projections, key and query norms at the
    dtype's machine eps (``nn.RMSNorm(eps=None)``), and its ShortConv norm at 1e-5."""

    variant = "demo"
    bias = True

    def __init__(self, d_model: int, rows_per_token: int, row_format: RowFormat, max_ngram_size: int,
                 hc_mult: int = 1, kernel_size: int = 4):
        super().__init__(d_model, rows_per_token, row_format, max_ngram_size, hc_mult, kernel_size, _DEMO_CONV_EPS)
        self.eps = None  # F.rms_norm then takes torch.finfo(dtype).eps


class Dsv41Engram(EngramLayer):
    """DeepSeek-V4.1-Flash's layer: ``wkv`` (no bias) maps e to one key per copy then one shared value;
    gate weights ``q_weight * k_weight`` [hc, d]; eps the model's rms_norm_eps (1e-6 in DeepSeek's)."""

    variant = "dsv41"

    def __init__(self, d_model: int, rows_per_token: int, row_format: RowFormat, hc_mult: int = 1,
                 eps: float = 1e-6):
        super().__init__(d_model, rows_per_token, row_format, hc_mult)
        self.eps = eps
        self.wkv = nn.Linear(self.memory_dim, d_model * (hc_mult + 1), bias=False)
        self.q_weight = nn.Parameter(torch.ones(hc_mult, d_model))
        self.k_weight = nn.Parameter(torch.ones(hc_mult, d_model))

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor, state: None = None,
                blocked: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """-> (h_c + gate_c * value in float32 (float64 for float64 inputs), cast back; no state)."""
        key, value = self.wkv(self.memory(rows, hidden.dtype)).split(
            [self.hc_mult * self.d_model, self.d_model], dim=-1)
        compute = torch.promote_types(hidden.dtype, torch.float32)
        h, key = hidden.to(compute), key.to(compute).unflatten(-1, (self.hc_mult, self.d_model))
        weight = self.q_weight.to(compute) * self.k_weight.to(compute)
        rstd = torch.rsqrt(h.square().mean(-1) + self.eps) * torch.rsqrt(key.square().mean(-1) + self.eps)
        dot = (h * weight * key).sum(-1) * rstd / math.sqrt(self.d_model)
        gate = torch.sigmoid(torch.copysign(dot.abs().clamp_min(_GATE_FLOOR).sqrt(), dot))
        out = (h + gate.unsqueeze(-1) * value.to(compute).unsqueeze(-2)).to(hidden.dtype)
        return _keep_blocked(hidden, out, blocked), None


def engram_layer(variant: str, d_model: int, rows_per_token: int, row_format: RowFormat, max_ngram_size: int,
                 hc_mult: int, kernel_size: int, eps: float) -> EngramLayer:
    """The layer of ``variant`` (`engramtier.model.trainconfig.VARIANTS`); ``eps`` is the model's norm eps,
    which the demo does not use."""
    if variant == "dsv41":
        return Dsv41Engram(d_model, rows_per_token, row_format, hc_mult, eps)
    if variant == "demo":
        return DemoEngram(d_model, rows_per_token, row_format, max_ngram_size, hc_mult, kernel_size)
    return ClassicEngram(d_model, rows_per_token, row_format, max_ngram_size, hc_mult, kernel_size, eps)


class TrainableTable(nn.Module):
    """The table as a float32 parameter [n_rows, D] for training, behind the row-source interface.

    ``prefetch`` returns already-decoded float rows; gradients are sparse by default, so an optimiser
    such as SparseAdam touches only the rows a step read (a few percent of a large table).
    """

    def __init__(self, n_rows: int, dim: int, sparse: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_rows, dim))
        self.sparse = sparse

    @property
    def n_rows(self) -> int:
        return self.weight.shape[0]

    def prefetch(self, row_ids: torch.Tensor) -> ReadyRows:
        return ReadyRows(F.embedding(row_ids, self.weight, sparse=self.sparse))

    @torch.no_grad()
    def export(self, row_format: RowFormat, chunk_rows: int = 1 << 20) -> torch.Tensor:
        """The rows encoded in ``row_format``: uint8 [n_rows, row_bytes] on the CPU."""
        return torch.cat([row_format.encode(self.weight[lo : lo + chunk_rows]).cpu()
                          for lo in range(0, self.n_rows, chunk_rows)])

    @torch.no_grad()
    def round_to_(self, row_format: RowFormat, chunk_rows: int = 1 << 20) -> None:
        """Replace each row by its value after an encode/decode round trip, so that this model and one
        reading the exported table compute with the same numbers."""
        for lo in range(0, self.n_rows, chunk_rows):
            block = self.weight[lo : lo + chunk_rows]
            block.copy_(row_format.decode(row_format.encode(block), block.dtype))
