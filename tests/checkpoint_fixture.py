"""A small DeepSeek-V4.1-style safetensors checkpoint for the import tests (not part of the package).

Its Engram tensors have the production names and dtypes (docs/design.md, "checkpoint tensors"): per layer
an fp8 table with e8m0 row scales, an fp8 ``wkv`` with e8m0 128x128 block scales (or bf16), and bf16
gate weights; only the shape is small: `dsv41-flash` with sub-tables of ``TABLE_SIZE`` rows
(``--table-size``), a 32-wide model with 4 hyper-connection copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from engramtier.model.hashing import NgramHasher
from engramtier.model.presets import preset_hash_config

TABLE_SIZE, HIDDEN, HC = 101, 32, 4
NAN_CODES = (0x7F, 0xFF)  # the e4m3fn NaNs, never drawn


def hash_config(image_token: int | None = None):
    return preset_hash_config("dsv41-flash", TABLE_SIZE, image_token)


def layer_rows(config) -> list[int]:
    """Rows of each Engram layer's table: the sizes of its sub-tables."""
    return NgramHasher(config).primes.reshape(len(config.layer_ids), -1).sum(axis=1).tolist()


def _fp8(shape, generator) -> torch.Tensor:
    codes = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    codes[(codes == NAN_CODES[0]) | (codes == NAN_CODES[1])] = 0
    return codes.view(torch.float8_e4m3fn)


def engram_tensors(config, seed: int = 0, wkv: str = "fp8") -> dict[str, torch.Tensor]:
    """Every Engram tensor of a checkpoint for ``config`` (a dsv41-flash hash config), by its name."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    memory_dim = config.heads_per_layer * 256
    for layer, rows in zip(config.layer_ids, layer_rows(config), strict=True):
        name = f"layers.{layer}.engram."
        tensors[name + "embed.weight"] = _fp8((rows, 256), generator)
        tensors[name + "embed.scale"] = torch.randint(110, 140, (rows, 8), dtype=torch.uint8,
                                                      generator=generator).view(torch.float8_e8m0fnu)
        shape = (HIDDEN * (HC + 1), memory_dim)
        if wkv == "fp8":
            tensors[name + "wkv.weight"] = _fp8(shape, generator)
            tensors[name + "wkv.scale"] = torch.randint(118, 125, (-(-shape[0] // 128), -(-shape[1] // 128)),
                                                        dtype=torch.uint8, generator=generator).view(torch.float8_e8m0fnu)
        else:
            tensors[name + "wkv.weight"] = (torch.randn(shape, generator=generator) * 0.02).bfloat16()
        for part in ("q_weight", "k_weight"):
            tensors[name + part] = (1 + 0.3 * torch.randn(HC, HIDDEN, generator=generator)).bfloat16()
    return tensors


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """``tensors`` and an unrelated one, in two shards as a real checkpoint spreads them."""
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]} | {"layers.0.attn.wq.weight": torch.zeros(4, 4)},
              str(path / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(path / "model-00002-of-00002.safetensors"))
    return path


def expected_rows(tensors: dict[str, torch.Tensor], config) -> np.ndarray:
    """The table rows the checkpoint should become: per layer in order, each row's 256 weight bytes then
    its 8 scale bytes."""
    return np.concatenate([
        np.concatenate([tensors[f"layers.{layer}.engram.embed.{part}"].view(torch.uint8).numpy()
                        for part in ("weight", "scale")], axis=1)
        for layer in config.layer_ids])
