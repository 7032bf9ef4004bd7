"""A saved model's run directory: written after training or a checkpoint import, read by everything
that serves the model.

    config.json        ModelConfig (shape, tokenizer, hash config)
    model.safetensors  dense weights (everything but the Engram table; a stand-in backbone's own weights
                       are drawn from its seed again, not saved)
    table/             the Engram table as a table file, in the config's row format
    tokenizer.json     the base tokenizer, when it is not a built-in one

Kept apart from `engramtier.model.train` so that serving a model never imports the training loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM, ModelConfig
from engramtier.model.rowsource import FlatRowSource
from engramtier.model.table import FlatTable, open_table, save_table
from engramtier.model.tokenizer import BUILTIN_TOKENIZERS, CompressedTokenizer, load_base_tokenizer, load_compressed_tokenizer
from engramtier.outputs import atomic_output, write_text_atomic

LOCAL_TOKENIZER = "tokenizer.json"


@dataclass
class LoadedRun:
    model: EngramLM
    tokenizer: CompressedTokenizer
    table: FlatTable | None
    rows: FlatRowSource | None
    summary: dict = field(default_factory=dict)


def load_tokenizer(name: str, run_dir: Path | None = None) -> CompressedTokenizer:
    """A built-in tokenizer by name (cached), or a tokenizer.json path, relative to ``run_dir`` if given."""
    if name in BUILTIN_TOKENIZERS:
        return load_compressed_tokenizer(name)
    path = run_dir / name if run_dir is not None else Path(name)
    return CompressedTokenizer(load_base_tokenizer(str(path)))


def save_run(model: EngramLM, run_dir: Path) -> None:
    """config.json, model.safetensors and, with Engram, the table in the config's row format. A stand-in
    backbone's own weights are not saved: they are drawn from the seed again when it loads."""
    stand_in = model.config.backbone == "stand-in"
    dense = {n: t for n, t in model.state_dict().items()
             if not n.startswith("table.") and not (stand_in and ".engram." not in n)}
    write_model_files(run_dir, model.config, dense)
    if model.table is not None:
        save_table(run_dir / "table", model.table.export(model.config.format), model.config.format, model.hasher)


def write_model_files(run_dir: Path, config: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors (``weights``) of a run directory, each written atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.json", config.to_json() + "\n")
    dense = {n: t.detach().cpu().contiguous() for n, t in weights.items()}
    with atomic_output(run_dir / "model.safetensors", "model") as part:
        part.write_bytes(save(dense))  # written by Python, so a full disk is an OSError naming the file


def load_model(run_dir: str | Path, device: str = "cpu", verify: bool = False) -> LoadedRun:
    """Rebuild a saved model for inference and open its flat table (refused if built for other hashing).
    A stand-in model may have none (an imported checkpoint's table is only the LMDB one): ``rows`` None."""
    run_dir = Path(run_dir)
    for name in ("config.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise EngramTierError(f"run {run_dir}: {name} is missing; give a directory written by 'engramtier train'")
    config = ModelConfig.from_json((run_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(config.tokenizer, run_dir)
    model = EngramLM(config, tokenizer.lookup if config.engram else None, trainable_table=False)
    stand_in = config.backbone == "stand-in"
    try:
        missing, unexpected = model.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=not stand_in)
    except RuntimeError as err:
        raise EngramTierError(f"run {run_dir}: model.safetensors does not fit config.json ({str(err).splitlines()[0]})") from None
    missing = [n for n in missing if ".engram." in n]  # a stand-in's own weights are drawn, not saved
    if missing or unexpected:
        raise EngramTierError(f"run {run_dir}: model.safetensors does not fit config.json (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); rewrite the run")
    model.to(device).eval()
    table = rows = None
    if config.engram is not None and not (stand_in and not (run_dir / "table").exists()):
        table = open_table(run_dir / "table", expect_fingerprint=config.engram.fingerprint,
                           expect_subtable_sizes=model.hasher.subtable_sizes, verify=verify)
        if table.row_format != config.format:
            raise EngramTierError(f"run {run_dir}: the table holds {table.row_format.kind}[{table.row_format.dim}] rows, "
                                  f"the model reads {config.row_format}[{config.row_dim}]; rebuild the table")
        rows = FlatRowSource(table.tensor().to(device), device)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return LoadedRun(model, tokenizer, table, rows, summary)
