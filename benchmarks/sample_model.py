"""The small Engram model the quality benchmarks measure: trained on the shipped sample text, or a
run given with --run, and its held-out token stream.

Shared by bench_lossy_fetch.py, bench_speculative.py and bench_draft_prefetch.py (a script's own
folder is on its import path), with the options that name the model, the dram-over-nvme hierarchy
they measure and the check that a runtime's counts are the simulator's. The held-out text is always
the shipped sample, split by the run's recorded fraction as training split it: a run's recorded text
path may name a checkout that no longer exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.model.run import LoadedRun, load_model
from engramtier.model.train import TrainConfig, tokenize_corpus, train
from engramtier.trace.sources import sample_text_dir


def add_model_options(parser) -> None:
    """--run, --steps and --vocab: a trained run to measure, or how to train one."""
    parser.add_argument("--run", default=None, help="a run directory written by 'engramtier train' (default: train one)")
    parser.add_argument("--steps", type=int, default=300, help="training steps when no --run is given")
    parser.add_argument("--vocab", type=int, default=2048, help="BPE tokens of the trained model")


def model_for(args, run, seq_len: int, **train_options) -> tuple[Path, LoadedRun, np.ndarray]:
    """(the model's directory, the run loaded, its held-out stream) for `add_model_options`' arguments:
    --run, or a model trained into the benchmark's run directory ``run`` (kept, so a rerun can pass --run)."""
    model_dir = Path(args.run) if args.run else run.path / "model"
    loaded, val = sample_model(model_dir, trained_here=not args.run, steps=args.steps, vocab=args.vocab,
                               seq_len=seq_len, seed=args.seed, **train_options)
    return model_dir, loaded, val


def dram_over_nvme(cache_rows: int, on_late: str = "wait") -> Hierarchy:
    """A dram LRU cache of ``cache_rows`` (at least one) over an nvme store, default tier models."""
    return Hierarchy.from_dict({"tier": [{"name": "dram", "capacity": max(1, cache_rows), "policy": "lru", "model": "dram"},
                                         {"name": "nvme", "model": "nvme", "on_late": on_late}]})


def simulator_agrees(stats: dict, trace, hierarchy: Hierarchy) -> bool:
    """Whether a TieredTable's tier counts (`stats`) equal the simulator's on its recorded trace."""
    simulated = simulate(trace, hierarchy, compute_window_s=0.0, progress=False).tier_stats()
    return [(t["lookups"], t["hits"], t["evicted"]) for t in stats["tiers"]] == \
        [(t["lookups"], t["hits"], t["evicted"]) for t in simulated]


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
