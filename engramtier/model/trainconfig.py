"""A training run's settings, checked on construction.

Apart from `engramtier.model.train` because that module imports torch: the command line checks its
arguments here first, so a bad one is refused in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engramtier.errors import EngramTierError
from engramtier.model.hashing import uniform_shape_problems

# The Engram layer variants (`engramtier.model.engram`), named here where no torch is imported so that
# the command line can check --variant at once.
VARIANTS = ("classic", "demo", "dsv41")


@dataclass
class TrainConfig:
    """One training run. ``tokenizer`` is a built-in name, a tokenizer.json path, or ``bpe:N`` (train an
    N-token byte-level BPE on the training documents: small vocabularies keep CPU runs fast)."""

    text: str
    out: str
    tokenizer: str = "deepseek"
    steps: int = 600
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    table_lr: float = 1.5e-2
    weight_decay: float = 0.1
    warmup_steps: int = 30
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_tokens: int = 65536
    val_fraction: float = 0.05
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    # model shape
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    hc_mult: int = 1
    engram: bool = True
    engram_layers: tuple[int, ...] = (1,)
    table_size: int = 20011
    max_ngram_size: int = 3
    hash_heads: int = 4
    row_dim: int = 32
    row_format: str = "bf16"
    variant: str = "classic"

    def __post_init__(self):
        small = [name for name in ("steps", "batch_size", "seq_len", "log_every") if getattr(self, name) < 1]
        if small:
            raise EngramTierError(f"train: {', '.join(small)} must be at least 1")
        if not 0 < self.val_fraction < 1:
            raise EngramTierError(f"train: the held-out fraction must lie in (0, 1), got {self.val_fraction}")
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"--variant {self.variant} is unknown (use one of {', '.join(VARIANTS)})")
        if self.d_model % self.n_heads:
            problems.append(f"--d-model {self.d_model} is not a multiple of --heads {self.n_heads}")
        if self.engram:
            outside = [l for l in self.engram_layers if not 0 <= l < self.n_layers]
            if outside:
                problems.append(f"--engram-layers {outside} lie outside blocks 0..{self.n_layers - 1}")
            else:
                problems += uniform_shape_problems(self.table_size, self.max_ngram_size, self.engram_layers,
                                                   self.hash_heads)
        if problems:
            raise EngramTierError("train: " + "; ".join(problems) + "; see engramtier train --help")
        if not Path(self.text).exists():
            raise EngramTierError(f"train: --text {self.text} does not exist; give a text file or directory")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise EngramTierError(f"train: --out {self.out} is a file, not a run directory; pass another --out")
