"""The small Engram model the quality benchmarks measure: trained on the shipped sample text, or a
run given with --run, and its held-out token stream.

Shared by bench_lossy_fetch.py and bench_speculative.py (a script's own folder is on its import
path). The held-out text is always the shipped sample, split by the run's recorded fraction as
training split it: a run's recorded text path may name a checkout that no longer exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engramtier.model.train import LoadedRun, TrainConfig, load_model, tokenize_corpus, train
from engramtier.trace.sources import sample_text_dir


def sample_model(model_dir: Path, *, trained_here: bool, steps: int, vocab: int, seq_len: int, seed: int,
                 batch_size: int = 16, eval_tokens: int = 65536) -> tuple[LoadedRun, np.ndarray]:
    """(the run at ``model_dir`` loaded, its held-out token stream); ``trained_here``: train it there
    first (kept, so a rerun can pass it as --run)."""
    if trained_here:
        train(TrainConfig(text=str(sample_text_dir()), out=str(model_dir), tokenizer=f"bpe:{vocab}", steps=steps,
                          batch_size=batch_size, seq_len=seq_len, d_model=64, eval_every=0, eval_tokens=eval_tokens,
                          seed=seed), progress=False)
    loaded = load_model(model_dir)
    name = loaded.model.config.tokenizer  # a built-in's name, or the run's own tokenizer.json
    spec = str(model_dir / name) if (model_dir / name).is_file() else name
    _, _, data = tokenize_corpus(sample_text_dir(), spec, model_dir, loaded.summary["train_config"]["val_fraction"],
                                 seq_len)
    return loaded, data.val
