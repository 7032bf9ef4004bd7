"""Replay text through the real Engram model twice, its table flat in memory and tiered, and compare.

Text becomes steps as in a trace (`engramtier.trace.build`'s `StepPlan`): documents cut into windows
of at most ``seq_len`` tokens, grouped ``batch`` (prefill) or ``requests`` (decode) at a time and
right-padded with the end-of-text token to the batch's longest window (the backbone guarantees that
right padding never changes earlier positions). A prefill step is one forward over a batch; a decode
batch runs its first ``prompt_len`` tokens (at least one) as one step, then one token per step through
the KV cache, fed the text's own next token (teacher forcing), so both passes see the same inputs.

Each pass is timed end to end. Logits are compared through a BLAKE2b digest of their bytes per step:
equal digests mean bitwise-equal outputs (a collision is astronomically unlikely), and no pass has to
keep another's logits. The tiered pass records its row trace; the simulator replays it through the
same hierarchy, and its hit counts must equal the runtime's exactly.

Without a trained run, `random_run` writes a random-initialised one (same files as `engramtier train`;
the table drawn N(0, 1) like an untrained one and rounded to its row format), so a replay needs no
training: its outputs mean nothing as language, but bytes, hits and timings are those of a real model.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engramtier.cache.simulator import simulate
from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM
from engramtier.trace.build import StepPlan, windows

PAD_REPLAY = "right-padded with the end-of-text token"


@dataclass
class PassResult:
    """One pass over the steps: a digest of each step's logits, seconds per step, positions run."""

    digests: list[str]
    step_s: list[float]
    tokens: int

    @property
    def seconds(self) -> float:
        return float(sum(self.step_s))

    def summary(self) -> dict:
        return {"seconds": self.seconds, "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else float("inf")}


def text_batches(tokenizer, text: str | Path, plan: StepPlan, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Base-token batches [B, T] of ``text`` (a file or directory): windows of at most ``plan.seq_len``
    tokens, ``plan.batch`` (prefill) or ``plan.requests`` (decode) per batch, right-padded; at most
    ``max_tokens`` tokens of text in all."""
    from engramtier.trace.sources import text_documents

    texts = [doc for _, doc in text_documents([text])]
    documents = (np.asarray(ids, np.int64) for ids in tokenizer.encode_base_batch(texts))
    per_batch = plan.batch if plan.mode == "prefill" else plan.requests
    pad = tokenizer.base.end_token_id
    batches, pending, left = [], [], max_tokens if max_tokens is not None else float("inf")
    for window in windows(documents, plan.seq_len):
        if left <= 0:
            break
        window = window[: int(min(window.size, left))]
        left -= window.size
        pending.append(window)
        if len(pending) == per_batch:
            batches.append(_padded(pending, pad))
            pending = []
    if pending:
        batches.append(_padded(pending, pad))
    if not batches:
        raise EngramTierError(f"replay: {text} holds no tokens; give text or raise --max-tokens")
    return batches


def _padded(windows_: list[np.ndarray], pad: int) -> torch.Tensor:
    out = np.full((len(windows_), max(w.size for w in windows_)), pad, np.int64)
    for i, w in enumerate(windows_):
        out[i, : w.size] = w
    return torch.from_numpy(out)


def forward_inputs(batch: torch.Tensor, plan: StepPlan) -> Iterator[tuple[torch.Tensor, bool]]:
    """The inputs of each step of one batch, and whether it starts a fresh KV cache (decode)."""
    if plan.mode == "prefill":
        yield batch, False
        return
    first = max(1, min(plan.prompt_len, batch.shape[1]))
    yield batch[:, :first], True
    for t in range(first, batch.shape[1]):
        yield batch[:, t : t + 1], False


@torch.no_grad()
def run_pass(model: EngramLM, rows, batches: list[torch.Tensor], plan: StepPlan, device: torch.device) -> PassResult:
    """Every step of every batch through ``model`` reading ``rows``; digests and times each step."""
    digests, step_s, tokens = [], [], 0
    for batch in batches:
        batch = batch.to(device)
        cache = None
        for ids, fresh in forward_inputs(batch, plan):
            start = time.perf_counter()
            if fresh:
                cache = model.new_cache(batch.shape[0], batch.shape[1])
            logits = model(ids, rows=rows, kv_cache=cache)
            digest = hashlib.blake2b(logits.float().cpu().numpy().tobytes(), digest_size=16).hexdigest()
            step_s.append(time.perf_counter() - start)
            digests.append(digest)
            tokens += ids.numel()
    return PassResult(digests, step_s, tokens)


def replay(model: EngramLM, flat_rows, table, batches: list[torch.Tensor], plan: StepPlan) -> tuple[dict, list[dict]]:
    """Run ``batches`` through ``model`` with the flat source, then with the `TieredTable` ``table``
    (opened with ``record_trace=True``); returns (summary, one record per step)."""
    device = table.device
    with torch.no_grad():  # one untimed forward, so that neither pass pays torch's first-call costs
        model(next(forward_inputs(batches[0].to(device), plan))[0], rows=flat_rows)
    flat = run_pass(model, flat_rows, batches, plan, device)
    tiered = run_pass(model, table, batches, plan, device)
    table.finish()
    equal = [a == b for a, b in zip(flat.digests, tiered.digests)]
    stats = table.stats()
    first_engram = min(model.config.engram.layer_ids)
    window = np.asarray(flat.step_s) * first_engram / model.config.n_layers
    trace = table.recorded_trace({"rows_per_token": float(model.hasher.rows_per_token)})
    simulated = simulate(trace, table.hierarchy, compute_window_s=window, step_compute_s=np.asarray(flat.step_s),
                         progress=False)
    sim_tiers = simulated.tier_stats()
    hits_equal = [t["hits"] for t in stats["tiers"]] == [t["hits"] for t in sim_tiers]
    summary = {
        "bitwise_equal": all(equal) and len(flat.digests) == len(tiered.digests),
        "first_unequal_step": equal.index(False) if not all(equal) else None,
        "steps": len(flat.digests),
        "plan": {"mode": plan.mode, "batch": plan.batch, "requests": plan.requests, "seq_len": plan.seq_len,
                 "prompt_len": plan.prompt_len, "padding": PAD_REPLAY},
        "flat": flat.summary(),
        "tiered": {**tiered.summary(), "stall_seconds": stats["stall_seconds"],
                   "stall_fraction": stats["stall_seconds"] / tiered.seconds if tiered.seconds > 0 else 0.0,
                   "fetch_seconds": stats["fetch_seconds"]},
        "tiers": stats["tiers"],
        "simulated": {"hits_equal": hits_equal, "hits": [t["hits"] for t in sim_tiers],
                      "stall_seconds": float(simulated.stall_s.sum()),
                      "window": "the flat pass's step time x blocks before the first Engram layer / blocks"},
        "table": {k: v for k, v in stats.items() if k != "tiers"},
    }
    records = [{**r, "flat_step_s": f, "tiered_step_s": t, "equal": e}
               for r, f, t, e in zip(table.step_records(), flat.step_s, tiered.step_s, equal)]
    return summary, records


def random_run(run_dir: str | Path, text: str | Path, *, tokenizer: str = "bpe:512", seed: int = 0,
               **shape) -> Path:
    """Write a random-initialised model as a run directory (config, weights, flat table, tokenizer).

    ``shape`` takes `TrainConfig`'s model fields (d_model, n_layers, n_heads, engram_layers, table_size,
    max_ngram_size, hash_heads, row_dim, row_format); a ``bpe:N`` tokenizer is learned from ``text``.
    """
    import json

    from engramtier.model.train import TrainConfig, build_model_config, save_run, tokenize_corpus

    cfg = TrainConfig(text=str(text), out=str(run_dir), tokenizer=tokenizer, seed=seed, **shape)
    run_dir = Path(run_dir)
    tok, name, _ = tokenize_corpus(cfg.text, cfg.tokenizer, run_dir, cfg.val_fraction, cfg.seq_len)
    config = build_model_config(cfg, tok, name)
    model = EngramLM(config, tok.lookup, seed=seed)
    model.table.round_to_(config.format)
    save_run(model, run_dir)
    (run_dir / "summary.json").write_text(json.dumps({"random_init": True, "seed": seed, "params": model.num_params(),
                                                      "model_config": config.to_dict()}, indent=2) + "\n")
    return run_dir
