"""Row formats: how one table row of D values is laid out as opaque bytes.

Tiers move bytes and never look inside them; only the Engram layer decodes, on the compute device,
right before use. Two layouts:

    bf16       D bfloat16 values, 2*D bytes (the paper's D = 80 gives 160 B)
    fp8_e4m3   D float8_e4m3fn values, then one ue8m0 scale byte per block of 32 values
               (DeepSeek-V4.1-Flash: D = 256 gives 256 + 8 = 264 B)

A ue8m0 byte holds only an exponent (bias 127): the block's scale is 2**(byte - 127). Scales are
powers of two so that scaling is exact and decoding is a cast and a multiply.

torch is imported by the conversions themselves, not by this module: a format is also a table's row
size for commands that only trace and simulate, and torch is most of their start-up (~1 of 1.4 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engramtier.errors import EngramTierError

if TYPE_CHECKING:
    import torch

FORMATS = ("bf16", "fp8_e4m3")
FP8_BLOCK = 32  # values sharing one ue8m0 scale
_UE8M0_BIAS = 127
_MAX_MAGNITUDE = 2.0**127  # rounds to at most 2**127 in both formats, so decoding stays finite


@dataclass(frozen=True)
class RowFormat:
    """The byte layout of rows of ``dim`` values; ``encode``/``decode`` convert whole batches."""

    kind: str
    dim: int

    def __post_init__(self):
        if self.kind not in FORMATS:
            raise EngramTierError(f"row format '{self.kind}' is unknown: use one of {', '.join(FORMATS)}")
        if self.dim < 1:
            raise EngramTierError(f"row format {self.kind}: dim must be positive, got {self.dim}")
        if self.kind == "fp8_e4m3" and self.dim % FP8_BLOCK:
            raise EngramTierError(
                f"row format fp8_e4m3: dim {self.dim} is not a multiple of {FP8_BLOCK} (one scale per "
                f"{FP8_BLOCK} values); pick a dim such as {FP8_BLOCK * max(1, round(self.dim / FP8_BLOCK))}"
            )

    @property
    def row_bytes(self) -> int:
        if self.kind == "bf16":
            return 2 * self.dim
        return self.dim + self.dim // FP8_BLOCK

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """Float rows [n, dim] -> uint8 [n, row_bytes], on the values' device."""
        import torch
        if values.dim() != 2 or values.shape[1] != self.dim:
            raise EngramTierError(f"row format {self.kind}[{self.dim}]: expected values shaped [n, {self.dim}], got {list(values.shape)}")
        if not (values.abs() <= _MAX_MAGNITUDE).all():  # also false for NaN
            raise EngramTierError(f"row format {self.kind}: values must be finite and at most 2**127 in magnitude "
                                  "(larger ones could round up past float32's range); rescale the rows")
        if self.kind == "bf16":
            return values.to(torch.bfloat16).contiguous().view(torch.uint8)
        blocks = values.float().reshape(values.shape[0], -1, FP8_BLOCK)
        exponent = _block_exponent(blocks.abs().amax(dim=-1))
        scaled = blocks * torch.exp2(-exponent.float()).unsqueeze(-1)
        codes = scaled.to(torch.float8_e4m3fn).view(torch.uint8).reshape(values.shape[0], self.dim)
        scales = (exponent + _UE8M0_BIAS).to(torch.uint8)
        return torch.cat([codes, scales], dim=1)

    def decode(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 rows [..., row_bytes] -> values [..., dim] in ``dtype`` (float32 if None), on the rows' device.

        fp8 rows are scaled in float32, or in float64 for float64 values: a code times 2**(byte - 127)
        is exact there for every scale byte, where float32 overflows for the largest codes above byte 246."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        if rows.dtype != torch.uint8 or rows.shape[-1] != self.row_bytes:
            raise EngramTierError(
                f"row format {self.kind}[{self.dim}]: expected uint8 rows of {self.row_bytes} bytes, "
                f"got {rows.dtype} rows of {rows.shape[-1] if rows.dim() else 0} bytes; the table was written in another format"
            )
        rows = rows.contiguous()
        if self.kind == "bf16":
            return rows.view(torch.bfloat16).to(dtype)
        compute = torch.promote_types(dtype, torch.float32)
        codes = rows[..., : self.dim].contiguous().view(torch.float8_e4m3fn).to(compute)
        scales = torch.exp2(rows[..., self.dim :].to(compute) - _UE8M0_BIAS)
        blocks = codes.unflatten(-1, (-1, FP8_BLOCK)) * scales.unsqueeze(-1)
        return blocks.flatten(-2).to(dtype)


def _block_exponent(amax: torch.Tensor) -> torch.Tensor:
    """The smallest e >= -127 with amax / 2**e <= 448, found exactly from amax's binary exponent.

    With amax = m * 2**k (m in [0.5, 1)), amax / 2**(k-9) = 512 m fits below 448 iff m <= 0.875,
    otherwise k-8 is the smallest fitting exponent; no rounded logarithm is involved.
    """
    import torch

    mantissa, k = torch.frexp(amax)
    exponent = torch.where(mantissa <= 0.875, k - 9, k - 8).to(torch.int32)
    exponent = torch.where(amax > 0, exponent, -_UE8M0_BIAS)  # an all-zero block: any scale is exact
    return exponent.clamp_min(-_UE8M0_BIAS)
