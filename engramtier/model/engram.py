"""The Engram layer (DeepSeek, arXiv 2601.07372) and the trainable table it reads while training.

At each position the layer receives the (N-1)*H rows its hashed suffix N-grams address, concatenated
into one memory vector e. e is static (it depends only on the tokens), so the hidden state decides how
much of it to admit: every branch b of the hidden state compares a projected, normalised key W_k,b e
with its own normalised state, and a signed square root keeps that similarity's sigmoid gate from
saturating. The gated value W_v e (one value projection for all branches) then passes through a
short depthwise causal convolution whose dilation equals the largest N-gram order, so it mixes the
memories of neighbouring N-grams rather than overlapping ones.

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


def signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return x.sign() * x.abs().clamp_min(_GATE_FLOOR).sqrt()


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
    """Gated N-gram memory added to a hidden state of ``hc_mult`` branches of width ``d_model``."""

    def __init__(self, d_model: int, rows_per_token: int, row_format: RowFormat, max_ngram_size: int,
                 hc_mult: int = 1, kernel_size: int = 4, eps: float = 1e-5):
        super().__init__()
        self.d_model, self.hc_mult, self.eps = d_model, hc_mult, eps
        self.row_format = row_format
        memory_dim = rows_per_token * row_format.dim
        self.key_proj = nn.Linear(memory_dim, hc_mult * d_model, bias=False)  # one key projection per branch
        self.value_proj = nn.Linear(memory_dim, d_model, bias=False)  # shared by the branches
        self.key_norm = nn.Parameter(torch.ones(hc_mult, d_model))
        self.query_norm = nn.Parameter(torch.ones(hc_mult, d_model))
        self.short_conv = ShortConv(d_model, hc_mult, kernel_size, max_ngram_size, eps)

    def gate(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """sigmoid(signed_sqrt(<RMSNorm(k_b), RMSNorm(h_b)> / sqrt(d))), shaped [B, T, hc, 1]."""
        keys = self.key_proj(memory).unflatten(-1, (self.hc_mult, self.d_model))
        keys = F.rms_norm(keys, (self.d_model,), eps=self.eps) * self.key_norm
        queries = F.rms_norm(hidden, (self.d_model,), eps=self.eps) * self.query_norm
        score = (keys * queries).sum(dim=-1, keepdim=True) / math.sqrt(self.d_model)
        return torch.sigmoid(signed_sqrt(score))

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor,
                conv_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, T, hc, d] and this layer's rows, either uint8 [B, T, K, row_bytes] in
        ``row_format`` or float [B, T, K, D], -> (update to add to hidden, ShortConv state)."""
        if rows.dtype == torch.uint8:
            rows = self.row_format.decode(rows, hidden.dtype)
        memory = rows.flatten(-2)
        value = self.gate(hidden, memory) * self.value_proj(memory).unsqueeze(-2)
        mixed, conv_state = self.short_conv(value, conv_state)
        return value + mixed, conv_state


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
