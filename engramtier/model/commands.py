"""`engramtier train`: train a small Engram language model on real text.

Options left out keep `TrainConfig`'s defaults (every option's destination is a TrainConfig field),
so torch is imported only when a command actually runs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from engramtier.argtypes import learning_rate, nonnegative_int, positive_int, row_dim, seed
from engramtier.model.train import train
from engramtier.model.trainconfig import VARIANTS, TrainConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a small Engram LM on text and save model, table and metrics",
        description="Train a small decoder-only LM (with or without Engram) on text files, evaluate it on "
                    "held-out documents, and write model.safetensors, config.json, the table (table/), "
                    "metrics.jsonl and summary.json to the run directory. Left-out options keep the defaults "
                    "of engramtier.model.train.TrainConfig (a 4-block d_model 128 model, bf16 table rows). "
                    "On a CPU use a small tokenizer (--tokenizer bpe:8192): an output layer over DeepSeek's "
                    "129k tokens dominates the step time.",
        argument_default=argparse.SUPPRESS,
        epilog="""examples:
  # a few minutes on two CPU cores: the shipped Python docs sample, an 8k BPE learned from it
  engramtier train --text engramtier/data/sample_text --tokenizer bpe:8192 --steps 300 --out runs/train-1

  # the same backbone without Engram, for comparison
  engramtier train --text engramtier/data/sample_text --tokenizer bpe:8192 --steps 300 --no-engram

  # on a GPU with DeepSeek's tokenizer and fp8 rows
  engramtier train --text corpus/ --device cuda --row-format fp8_e4m3 --row-dim 256 --steps 20000
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--text", required=True, help="text file or directory of .txt/.rst/.md/.html/.jsonl files")
    p.add_argument("--out", help="run directory (default: runs/train-<time>)")
    p.add_argument("--tokenizer", help="deepseek (default) | cl100k | qwen | qwen3.6 | a tokenizer.json | "
                   "bpe:N (learn N tokens from the text)")
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seq-len", type=positive_int)
    p.add_argument("--lr", type=learning_rate, help="peak learning rate of the dense weights")
    p.add_argument("--table-lr", type=learning_rate, help="peak learning rate of the Engram table (SparseAdam)")
    p.add_argument("--eval-every", type=nonnegative_int, help="steps between validations (0: only at the end)")
    p.add_argument("--eval-tokens", type=positive_int, help="held-out tokens per validation")
    p.add_argument("--seed", type=seed)
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--d-model", type=positive_int)
    p.add_argument("--layers", dest="n_layers", type=positive_int)
    p.add_argument("--heads", dest="n_heads", type=positive_int)
    p.add_argument("--hc-mult", type=positive_int, help="branches of the residual stream")
    p.add_argument("--engram", action=argparse.BooleanOptionalAction, help="add Engram layers (default: yes)")
    p.add_argument("--engram-layers", type=nonnegative_int, nargs="+", help="blocks that hold an Engram layer")
    p.add_argument("--table-size", type=positive_int, help="rows per sub-table (each head takes the next unused prime above)")
    p.add_argument("--max-ngram", dest="max_ngram_size", type=positive_int, help="N: orders 2..N are hashed")
    p.add_argument("--hash-heads", type=positive_int, help="hash heads per order")
    p.add_argument("--row-dim", type=row_dim, help="D, values per table row")
    p.add_argument("--row-format", choices=["bf16", "fp8_e4m3"])
    p.add_argument("--variant", choices=VARIANTS,
                   help="the Engram layer: classic (default; engramtier's first), demo (DeepSeek's paper demo) or "
                   "dsv41 (DeepSeek-V4.1-Flash's); see the README's 'Engram layer variants'")
    p.add_argument("--force", action="store_true", help="replace the run the --out folder holds (its files are deleted "
                   "first); without it a folder holding another run is refused, one holding this same training is "
                   "trained again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    given.setdefault("out", time.strftime("runs/train-%Y%m%d-%H%M%S"))
    if "engram_layers" in given:
        given["engram_layers"] = tuple(given["engram_layers"])
    cfg = TrainConfig(**given)

    summary = train(cfg, progress=not getattr(args, "quiet", False), force=getattr(args, "force", False))
    params = summary["params"]
    print(f"validation loss {summary['val_loss']:.4f} after {summary['steps']} steps "
          f"({summary['train_seconds']:.0f} s; {params['dense']:,} dense + {params['table']:,} table parameters) -> {cfg.out}")
