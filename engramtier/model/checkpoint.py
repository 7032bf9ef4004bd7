"""DeepSeek-V4.1-Flash's Engram tensors in its safetensors checkpoint: checked, then read by row ranges.

Per Engram layer L (docs/design.md, "checkpoint tensors"; SGLang's loader reads the same names):

    layers.L.engram.embed.weight   float8_e4m3fn  [rows_L, 256]   the layer's table, row ids its own
    layers.L.engram.embed.scale    float8_e8m0fnu [rows_L, 8]     one exponent per 32 values
    layers.L.engram.wkv.weight     float8_e4m3fn with block scales in layers.L.engram.wkv.scale, or bf16
    layers.L.engram.q_weight       [hc_mult, hidden]
    layers.L.engram.k_weight       [hc_mult, hidden]

engramtier's table is one table across the layers: the global row id of (L, r) is the rows of the
layers before L plus r, and a row is the 256 weight bytes followed by the 8 scale bytes, which is
`RowFormat("fp8_e4m3", 256)` byte for byte. `CheckpointRows` serves those rows to the LMDB builder
(`engramtier.tiers.lmdb_table`), reading each run of consecutive rows with safetensors' lazy
``get_slice``: a 384M-row layer (~100 GB) is never in memory, only the rows of one build batch.
`import_checkpoint` checks everything against a preset before it writes anything, then writes the
layers' dense weights as a stand-in model (`engramtier.model.backbone`) that replay and generate load.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from engramtier.errors import EngramTierError
from engramtier.model.backbone import stand_in_config
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.rows import FP8_BLOCK, RowFormat
from engramtier.model.run import write_model_files
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.outputs import write_text_atomic

ROW_FORMAT = "fp8_e4m3"
ROW_DIM = 256
_FLOAT_DTYPES = {"BF16", "F16", "F32"}
_ENGRAM_NAME = re.compile(r"layers\.(\d+)\.engram\.")
_SPAN_GAP = 64  # rows skipped within one read: 17 KB of a layer costs less than another slice call


def tensor_name(layer: int, part: str) -> str:
    """The checkpoint's name of one Engram layer's tensor, e.g. ``layers.1.engram.embed.weight``."""
    return f"layers.{layer}.engram.{part}"


class Checkpoint:
    """The ``*.safetensors`` shards of a directory, opened lazily (headers only, the data memory-mapped)
    and kept open until `close`; every tensor is found by name in whichever shard holds it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise EngramTierError(f"--from-checkpoint {self.path}: no such directory; give the checkpoint's folder "
                                  "(its *.safetensors shards)")
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise EngramTierError(f"--from-checkpoint {self.path}: holds no *.safetensors file; give the checkpoint's folder")
        self._stack = ExitStack()
        self._shards = {}
        for file in files:
            try:
                shard = self._stack.enter_context(safe_open(str(file), framework="pt"))
            except (SafetensorError, OSError) as err:
                self.close()
                raise EngramTierError(f"checkpoint {file}: not a readable safetensors file ({err}); re-download it") from None
            self._shards.update((name, shard) for name in shard.keys())
        self.files = [[file.name, file.stat().st_size] for file in files]

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def engram_layers(self) -> list[int]:
        """The layers that hold any ``layers.L.engram.*`` tensor."""
        return sorted({int(m.group(1)) for name in self._shards if (m := _ENGRAM_NAME.match(name))})

    def expect(self, name: str, dtypes: set[str], shape: list[int] | None, what: str):
        """The lazy slice of tensor ``name``, refused in one line unless it exists with one of ``dtypes``
        (safetensors' names: F8_E4M3, F8_E8M0, BF16, ...) and, when given, ``shape``."""
        if name not in self._shards:
            layer = _ENGRAM_NAME.match(name)
            near = sorted(n for n in self._shards if layer and n.startswith(layer.group(0)))
            raise EngramTierError(f"checkpoint {self.path}: no tensor '{name}' ({what}); it holds {near or 'no such layer'}; "
                                  "give a DeepSeek-V4.1 checkpoint, whose names docs/design.md lists")
        piece = self._shards[name].get_slice(name)
        dtype, got = piece.get_dtype(), list(piece.get_shape())
        if dtype not in dtypes:
            raise EngramTierError(f"checkpoint {self.path}: '{name}' ({what}) is {dtype}, expected "
                                  f"{' or '.join(sorted(dtypes))}; this is not the checkpoint's own tensor")
        if shape is not None and got != list(shape):
            raise EngramTierError(f"checkpoint {self.path}: '{name}' ({what}) is shaped {got}, expected {list(shape)}")
        return piece

    def tensor(self, name: str, dtypes: set[str], what: str) -> torch.Tensor:
        """A small tensor whole (a layer's dense weights, never its table)."""
        self.expect(name, dtypes, None, what)
        return self._shards[name].get_tensor(name)


class CheckpointRows:
    """The table rows of a checkpoint's Engram layers, as an LMDB row source (`build_lmdb_table`):
    ``n_rows``, ``row_bytes``, ``manifest``, ``identity`` and ``rows(ids, out)``.

    Construction checks the layers against ``hasher`` (the preset's addressing): the checkpoint holds
    exactly its Engram layers, each table fp8 rows of ``ROW_DIM`` values with e8m0 scales, and each
    layer as many rows as the hasher's sub-tables of that layer.
    """

    def __init__(self, checkpoint: Checkpoint, hasher: NgramHasher, preset: str | None):
        config = hasher.config
        self.format = RowFormat(ROW_FORMAT, ROW_DIM)
        found = checkpoint.engram_layers()
        if found != sorted(config.layer_ids):
            raise EngramTierError(f"checkpoint {checkpoint.path}: holds Engram layers {found}, the preset's hash config "
                                  f"{list(config.layer_ids)}; import it with the preset it was made for")
        layer_rows = hasher.primes.reshape(len(config.layer_ids), -1).sum(axis=1)
        shape_note = f"preset {preset}" if preset else "the hash config"
        self._weights, self._scales = [], []
        for layer, rows in zip(config.layer_ids, layer_rows.tolist(), strict=True):
            weight = checkpoint.expect(tensor_name(layer, "embed.weight"), {"F8_E4M3"}, None, f"Engram layer {layer}'s table")
            got = list(weight.get_shape())
            if got != [rows, ROW_DIM]:
                raise EngramTierError(
                    f"checkpoint {checkpoint.path}: '{tensor_name(layer, 'embed.weight')}' is shaped {got}, but {shape_note} "
                    f"(table size {config.table_sizes[0]:,}) gives layer {layer} [{rows:,}, {ROW_DIM}]; import it with the "
                    "preset and --table-size it was made with")
            self._weights.append(weight)
            self._scales.append(checkpoint.expect(tensor_name(layer, "embed.scale"), {"F8_E8M0"},
                                                  [rows, ROW_DIM // FP8_BLOCK], f"Engram layer {layer}'s row scales"))
        self._first = np.concatenate([[0], np.cumsum(layer_rows)]).astype(np.int64)  # global id of each layer's row 0
        self.n_rows, self.row_bytes = hasher.n_rows, self.format.row_bytes
        self.manifest = {
            "format": ROW_FORMAT, "dim": ROW_DIM, "row_bytes": self.row_bytes, "n_rows": self.n_rows,
            "subtable_sizes": hasher.subtable_sizes.tolist(), "hash_config": config.to_dict(),
            "fingerprint": config.fingerprint, "preset": preset, "source": f"checkpoint {checkpoint.path}",
        }
        self.identity = {"checkpoint": {"files": checkpoint.files, "fingerprint": config.fingerprint}}

    def rows(self, ids: np.ndarray, out: np.ndarray) -> None:
        """``out[i]`` = global row ``ids[i]``. The ids, sorted, fall into spans within one layer whose gaps
        are at most ``_SPAN_GAP`` rows; each span is one slice of the layer's weight and one of its scales
        (a build without a profile asks for one or two spans; a hot-first one reads its scattered hot rows
        a few at a time, then the cold rest in id order)."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        layer = np.searchsorted(self._first, ordered, side="right") - 1
        cuts = np.flatnonzero((np.diff(ordered) > _SPAN_GAP) | (np.diff(layer) != 0)) + 1
        for lo, hi in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [ordered.size]]).tolist(),
                          strict=True):
            li = int(layer[lo])
            local = ordered[lo:hi] - self._first[li]
            first, last = int(local[0]), int(local[-1]) + 1
            dest, picks = order[lo:hi], local - first
            out[dest, :ROW_DIM] = self._weights[li][first:last].view(torch.uint8).numpy()[picks]
            out[dest, ROW_DIM:] = self._scales[li][first:last].view(torch.uint8).numpy()[picks]


def _block_size(shape: list[int], scale_shape: list[int]) -> int | None:
    """The square block (a power of two, as DeepSeek's 128) whose grid over ``shape`` is ``scale_shape``."""
    for size in (1 << k for k in range(16)):
        if [-(-n // size) for n in shape] == list(scale_shape):
            return size
    return None


def _dequantised(checkpoint: Checkpoint, layer: int) -> tuple[torch.Tensor, str]:
    """Layer ``layer``'s wkv as float32, and how it was stored: fp8 times its block scales, or a float."""
    name = tensor_name(layer, "wkv.weight")
    weight = checkpoint.tensor(name, {"F8_E4M3"} | _FLOAT_DTYPES, f"Engram layer {layer}'s key-value projection")
    if weight.dtype != torch.float8_e4m3fn:
        return weight.float(), str(weight.dtype).removeprefix("torch.")
    scale_name = tensor_name(layer, "wkv.scale")
    scale = checkpoint.tensor(scale_name, {"F8_E8M0", "F32", "BF16"}, f"the block scales of '{name}'").float()
    size = _block_size(list(weight.shape), list(scale.shape)) if scale.dim() == 2 else None
    if size is None:
        raise EngramTierError(f"checkpoint {checkpoint.path}: '{scale_name}' is shaped {list(scale.shape)}, which is no "
                              f"grid of square blocks over '{name}' {list(weight.shape)}; the scales belong to another tensor")
    rows, cols = weight.shape
    grid = scale.repeat_interleave(size, dim=0)[:rows].repeat_interleave(size, dim=1)[:, :cols]
    return weight.float() * grid, f"float8_e4m3fn, {size}x{size} block scales ({scale_name})"


def engram_weights(checkpoint: Checkpoint, config: HashConfig) -> tuple[dict[str, torch.Tensor], int, int, dict]:
    """The dense weights of the checkpoint's Engram layers as a stand-in model's state (float32):
    ({blocks.L.engram.wkv.weight, .q_weight, .k_weight}, hidden, hc_mult, how each wkv was stored)."""
    state, shapes, stored = {}, set(), {}
    memory_dim = config.heads_per_layer * ROW_DIM
    for layer in config.layer_ids:
        gates = [checkpoint.tensor(tensor_name(layer, part), _FLOAT_DTYPES, f"Engram layer {layer}'s gate weights").float()
                 for part in ("q_weight", "k_weight")]
        if gates[0].dim() != 2 or gates[0].shape != gates[1].shape:
            raise EngramTierError(f"checkpoint {checkpoint.path}: layer {layer}'s q_weight {list(gates[0].shape)} and "
                                  f"k_weight {list(gates[1].shape)} must both be [hc_mult, hidden]")
        hc_mult, hidden = gates[0].shape
        wkv, stored[layer] = _dequantised(checkpoint, layer)
        if list(wkv.shape) != [hidden * (hc_mult + 1), memory_dim]:
            raise EngramTierError(f"checkpoint {checkpoint.path}: '{tensor_name(layer, 'wkv.weight')}' is shaped "
                                  f"{list(wkv.shape)}, expected [{hidden} x ({hc_mult} + 1), {memory_dim}] (one key per copy "
                                  f"and the value, from {config.heads_per_layer} rows of {ROW_DIM})")
        shapes.add((hc_mult, hidden))
        prefix = f"blocks.{layer}.engram."
        state.update({prefix + "wkv.weight": wkv, prefix + "q_weight": gates[0], prefix + "k_weight": gates[1]})
    if len(shapes) > 1:
        raise EngramTierError(f"checkpoint {checkpoint.path}: the Engram layers disagree on [hc_mult, hidden] "
                              f"({sorted(shapes)}); they must share the model's width")
    (hc_mult, hidden), = shapes
    return state, hidden, hc_mult, stored


def import_checkpoint(checkpoint: Checkpoint, run_dir: str | Path, hash_config: HashConfig,
                      preset: str | None) -> CheckpointRows:
    """Check ``checkpoint``'s Engram layers against ``hash_config`` (table rows and dense weights, before
    anything is written), write the stand-in model of their weights into ``run_dir`` (config.json,
    model.safetensors, summary.json), and return the rows for the LMDB table."""

    rows = CheckpointRows(checkpoint, NgramHasher(hash_config), preset)
    state, hidden, hc_mult, stored = engram_weights(checkpoint, hash_config)
    vocab_size = load_compressed_tokenizer(hash_config.tokenizer).base_vocab_size
    config = stand_in_config(hash_config, vocab_size, hidden, hc_mult, "dsv41", ROW_FORMAT, ROW_DIM)
    run_dir = Path(run_dir)
    write_model_files(run_dir, config, state)
    summary = {"imported_checkpoint": str(checkpoint.path), "files": checkpoint.files, "preset": preset,
               "fingerprint": hash_config.fingerprint, "wkv": {str(k): v for k, v in stored.items()},
               "model_config": config.to_dict()}
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return rows
