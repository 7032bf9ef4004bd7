"""Train a small Engram language model on real text, evaluate it on held-out documents, save the run.

The run directory holds the saved model (`engramtier.model.run`) and the training record:

    metrics.jsonl      training and validation losses as they happen
    summary.json       final numbers, configuration and machine

The table trains as float32 master rows with SparseAdam at a higher learning rate than the rest (as in
the paper: rows are touched rarely, so each update must count), and is rounded to the row format
before the final evaluation, so the reported loss is that of the saved model.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from engramtier.documents import text_documents
from engramtier.errors import EngramTierError
from engramtier.model.backbone import DSV41_NORM_EPS, EngramLM, ModelConfig
from engramtier.model.hashing import HashConfig
from engramtier.model.run import LOCAL_TOKENIZER, load_tokenizer, save_run
from engramtier.model.tokenizer import BUILTIN_TOKENIZERS, CompressedTokenizer, load_base_tokenizer
from engramtier.model.trainconfig import TrainConfig
from engramtier.outputs import write_text_atomic
from engramtier.provenance import machine_info
from engramtier.rundir import claim

BPE_PREFIX = "bpe:"


@dataclass
class TokenData:
    """Training and held-out token streams (base ids, documents joined by the pad/end token)."""

    train: np.ndarray
    val: np.ndarray
    n_train_docs: int
    n_val_docs: int


def _is_held_out(text: str, fraction: float) -> bool:
    """A stable choice of held-out documents by a hash of their text: independent of where the
    files lie, and duplicates of a document land on the same side of the split."""
    digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return digest / 2**64 < fraction


def split_documents(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Held-out documents by text hash; a corpus too small for that holds out the end of its text."""
    val = [text for text in texts if _is_held_out(text, fraction)]
    train = [text for text in texts if not _is_held_out(text, fraction)]
    if train and val:
        return train, val
    text = "\n\n".join(texts)
    cut = int(len(text) * (1 - fraction))
    return [text[:cut]], [text[cut:]]


def train_bpe_tokenizer(texts: list[str], vocab_size: int, path: Path) -> Path:
    """A byte-level BPE tokenizer.json of ``vocab_size`` tokens learned from ``texts``."""

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def _prepare_tokenizer(spec: str, train_texts: list[str], run_dir: Path) -> tuple[CompressedTokenizer, str]:
    """The run's tokenizer and the name config.json records for it (local files are copied in)."""
    if spec in BUILTIN_TOKENIZERS:
        return load_tokenizer(spec), spec
    local = run_dir / LOCAL_TOKENIZER
    if spec.startswith(BPE_PREFIX):
        number = spec[len(BPE_PREFIX):]
        if not number.isdigit() or int(number) < 257:
            raise EngramTierError(f"tokenizer '{spec}': write bpe:N with N >= 257 the vocabulary size (256 bytes and an "
                                  "end token come first), e.g. bpe:8192")
        vocab_size = int(number)
        train_bpe_tokenizer(train_texts, vocab_size, local)
    else:
        source = Path(spec)
        load_base_tokenizer(str(source))  # refuses a missing or malformed file before anything is written
        run_dir.mkdir(parents=True, exist_ok=True)
        if source.resolve() != local.resolve():
            shutil.copyfile(source, local)
    return load_tokenizer(LOCAL_TOKENIZER, run_dir), LOCAL_TOKENIZER


def _token_stream(tokenizer: CompressedTokenizer, texts: list[str]) -> np.ndarray:
    end = tokenizer.base.end_token_id
    pieces = []
    for ids in tokenizer.encode_base_batch(texts):
        pieces += [ids, np.array([end], dtype=np.int64)]
    return np.concatenate(pieces)


def tokenize_corpus(text: str | Path, tokenizer_spec: str, run_dir: Path, val_fraction: float, seq_len: int):
    """Read, split and tokenize a corpus; returns (tokenizer, its recorded name, TokenData)."""
    train_texts, val_texts = split_documents([doc for _, doc in text_documents([text])], val_fraction)
    tokenizer, name = _prepare_tokenizer(tokenizer_spec, train_texts, run_dir)
    data = TokenData(_token_stream(tokenizer, train_texts), _token_stream(tokenizer, val_texts), len(train_texts), len(val_texts))
    for part in ("train", "val"):
        if getattr(data, part).size <= seq_len + 1:
            raise EngramTierError(
                f"training text {text}: the {part} split has only {getattr(data, part).size} tokens, fewer than one "
                f"sequence of {seq_len + 1}; give more text or a smaller --seq-len"
            )
    return tokenizer, name, data


def build_model_config(cfg: TrainConfig, tokenizer: CompressedTokenizer, tokenizer_name: str) -> ModelConfig:
    """The model a training run builds; a dsv41 model takes DeepSeek's norm eps, the layer's own."""
    hash_config = None
    if cfg.engram:
        hash_config = HashConfig.for_tokenizer(tokenizer, tokenizer_name, [cfg.table_size] * (cfg.max_ngram_size - 1),
                                         cfg.engram_layers, cfg.hash_heads, seed=cfg.seed)
    return ModelConfig(vocab_size=tokenizer.base_vocab_size, tokenizer=tokenizer_name, d_model=cfg.d_model,
                       n_layers=cfg.n_layers, n_heads=cfg.n_heads, max_seq_len=max(cfg.seq_len, 2048),
                       hc_mult=cfg.hc_mult, engram=hash_config, row_dim=cfg.row_dim, row_format=cfg.row_format,
                       variant=cfg.variant, norm_eps=DSV41_NORM_EPS if cfg.variant == "dsv41" else 1e-5)


def _windows(stream: np.ndarray, starts: np.ndarray, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets [len(starts), length] cut from ``stream`` at ``starts``."""
    idx = starts[:, None] + np.arange(length + 1)
    chunk = torch.from_numpy(stream[idx]).to(device)
    return chunk[:, :-1], chunk[:, 1:]


def _eval_starts(stream: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """Starts of the consecutive, non-overlapping windows evaluated (at least one)."""
    return np.arange(max(1, min((stream.size - 1) // seq_len, max_tokens // seq_len))) * seq_len


def held_out_windows(stream: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """The windows [n, seq_len] of ``stream`` that `evaluate` reads for ``max_tokens`` (CPU tensor),
    so that a study of held-out text reads the same tokens as the reported perplexity."""
    return _windows(stream, _eval_starts(stream, seq_len, max_tokens), seq_len, "cpu")[0]


@torch.no_grad()
def evaluate(model: EngramLM, stream: np.ndarray, seq_len: int, max_tokens: int, batch_size: int,
             device, rows=None) -> float:
    """Mean next-token loss over consecutive, non-overlapping windows at the start of ``stream``."""
    model.eval()
    starts = _eval_starts(stream, seq_len, max_tokens)
    total, count = 0.0, 0
    for lo in range(0, starts.size, batch_size):
        x, y = _windows(stream, starts[lo : lo + batch_size], seq_len, device)
        logits = model(x, rows=rows)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def _learning_rate_scale(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _dense_parameters(model: EngramLM) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if not n.startswith("table.")]


def _optimizers(model: EngramLM, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for the dense weights (decay on matrices only), SparseAdam for the table."""
    dense = _dense_parameters(model)
    groups = [{"params": [p for p in dense if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in dense if p.dim() < 2], "weight_decay": 0.0}]
    optimizers = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))]
    if model.table is not None:
        optimizers.append(torch.optim.SparseAdam([model.table.weight], lr=cfg.table_lr, betas=(0.9, 0.95)))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def train(cfg: TrainConfig, progress: bool = True, force: bool = False) -> dict:
    """Run one training and write the run directory (claimed first: `engramtier.rundir.claim`; ``force``
    replaces another run there); returns the summary."""
    with claim(cfg.out, "train", asdict(cfg), force):
        return _train(cfg, Path(cfg.out), progress)


def _train(cfg: TrainConfig, run_dir: Path, progress: bool) -> dict:
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngramTierError("train: --device cuda was asked for but CUDA is not available; use --device cpu")
    tokenizer, tokenizer_name, data = tokenize_corpus(cfg.text, cfg.tokenizer, run_dir, cfg.val_fraction, cfg.seq_len)
    model_config = build_model_config(cfg, tokenizer, tokenizer_name)
    model = EngramLM(model_config, tokenizer.lookup, seed=cfg.seed).to(device)
    optimizers = _optimizers(model, cfg)
    dense_params = _dense_parameters(model)
    batches = np.random.default_rng(cfg.seed)
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8", buffering=1) as metrics:  # line-buffered: readable while running

        def log(record: dict) -> None:
            metrics.write(json.dumps(record) + "\n")

        t0 = time.perf_counter()
        bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
        for step in bar:
            scale = _learning_rate_scale(step, cfg)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * scale
            starts = batches.integers(0, data.train.size - cfg.seq_len - 1, cfg.batch_size)
            x, y = _windows(data.train, starts, cfg.seq_len, device)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense_params, cfg.grad_clip)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                log({"step": step, "train_loss": loss.item(), "lr": cfg.lr * scale,
                     "tokens": (step + 1) * cfg.batch_size * cfg.seq_len, "seconds": time.perf_counter() - t0})
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                log({"step": step, "val_loss": evaluate(model, data.val, cfg.seq_len, cfg.eval_tokens, cfg.batch_size, device)})
        train_seconds = time.perf_counter() - t0

        val_loss_float_table = None
        if model.table is not None:
            val_loss_float_table = evaluate(model, data.val, cfg.seq_len, cfg.eval_tokens, cfg.batch_size, device)
            model.table.round_to_(model_config.format)
        val_loss = evaluate(model, data.val, cfg.seq_len, cfg.eval_tokens, cfg.batch_size, device)
        log({"step": cfg.steps - 1, "val_loss": val_loss})
    save_run(model, run_dir)
    summary = {
        "val_loss": val_loss,
        "val_loss_float32_table": val_loss_float_table,
        "final_train_loss": loss.item(),
        "steps": cfg.steps,
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "train_tokens": int(data.train.size),
        "val_tokens_evaluated": _eval_starts(data.val, cfg.seq_len, cfg.eval_tokens).size * cfg.seq_len,
        "train_documents": data.n_train_docs,
        "val_documents": data.n_val_docs,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, cfg.steps),
        "params": model.num_params(),
        "fingerprint": model_config.engram.fingerprint if model_config.engram else None,
        "tokenizer": {"name": cfg.tokenizer, "base_vocab": tokenizer.base_vocab_size, "compressed_vocab": tokenizer.vocab_size},
        "train_config": asdict(cfg),
        "model_config": model_config.to_dict(),
        "machine": machine_info(),
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
