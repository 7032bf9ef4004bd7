"""Batched generation from a trained Engram model whose table is served by a `TieredTable`.

Prompts of different lengths share a batch without padding: the batch runs the shortest prompt as one
prefill step, then one token per step for every sequence, each fed its own next prompt token while it
has one and its last sampled token after that. Every position is therefore computed exactly as for a
prompt alone (no pad token enters an N-gram or an attention window), and each step's Engram rows are
requested at forward entry, where the table starts fetching them.

Each step (a forward and the sampling of its next tokens) is timed: the first step's latency is the
time to first token, and the median step and its spread say what the rest sustain.

With a `Speculation`, every step also hands the table its top-k candidate next tokens' rows once the
named block has run (`TieredTable.speculate`), so the next step may find its rows already cached.

Sampling is greedy (``top_k`` 0 or 1) or top-k at ``temperature`` from a seeded generator. A sequence
stops at the end-of-text token or after ``max_new_tokens``; the batch stops when all have.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM
from engramtier.model.speculation import Speculation
from engramtier.tiers.records import distribution


def sample(logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row of ``logits`` [B, vocab]: the argmax, or a draw from the top ``top_k``."""
    if top_k <= 1:
        return logits.argmax(dim=-1)
    values, indices = logits.float().topk(min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(values / temperature, dim=-1)
    pick = torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)
    return indices.gather(-1, pick).squeeze(-1)


@torch.no_grad()
def generate(model: EngramLM, tokenizer, rows, prompts: list[str], *, max_new_tokens: int = 32, top_k: int = 0,
             temperature: float = 1.0, seed: int = 0, batch_size: int = 8, device="cpu",
             speculate: Speculation | None = None) -> tuple[list[str], dict]:
    """The continuation of each prompt, and {prompts, tokens generated, seconds, tokens/s, steps, time to first
    token (the first step's latency), the distribution of step seconds, the speculation used}."""
    if max_new_tokens < 1 or batch_size < 1 or not temperature > 0:
        raise EngramTierError("generate: max_new_tokens and batch_size must be >= 1 and temperature > 0")
    if not prompts:
        raise EngramTierError("generate: no prompts; give a file with one prompt per line, or pipe them in")
    if speculate is not None:
        speculate.check(model.config.n_layers, model.config.vocab_size)
    encoded = tokenizer.encode_base_batch(prompts)
    for i, ids in enumerate(encoded):
        if ids.size == 0:
            raise EngramTierError(f"generate: prompt {i + 1} is empty after tokenization; remove the empty line")
        if ids.size + max_new_tokens > model.config.max_seq_len:
            raise EngramTierError(
                f"generate: prompt {i + 1} ({ids.size} tokens) plus {max_new_tokens} new tokens exceeds the model's "
                f"{model.config.max_seq_len} positions; shorten it or lower --max-new-tokens"
            )
    generator = torch.Generator().manual_seed(seed)
    end = tokenizer.base.end_token_id
    texts, generated, step_s = [], 0, []
    start = time.perf_counter()
    for lo in range(0, len(encoded), batch_size):
        outputs = _generate_batch(model, rows, encoded[lo : lo + batch_size], max_new_tokens, top_k, temperature,
                                  generator, end, device, step_s, speculate)
        for out in outputs:
            texts.append(_decode(tokenizer, out))
            generated += len(out)
    seconds = time.perf_counter() - start
    return texts, {"prompts": len(prompts), "generated_tokens": generated, "seconds": seconds,
                   "tokens_per_s": generated / seconds if seconds > 0 else float("inf"), "steps": len(step_s),
                   "time_to_first_token_s": step_s[0], "step_s": distribution(step_s),
                   "speculation": None if speculate is None else {"k": speculate.k, "after_block": speculate.after_block}}


def _generate_batch(model, rows, prompts: list[np.ndarray], max_new: int, top_k: int, temperature: float,
                    generator, end: int, device, step_s: list[float], speculate) -> list[list[int]]:
    """One batch's new tokens; appends each step's seconds (forward and sampling) to ``step_s``."""
    lengths = np.array([p.size for p in prompts])
    total = int(lengths.max()) + max_new
    tokens = np.full((len(prompts), total), end, np.int64)
    for i, p in enumerate(prompts):
        tokens[i, : p.size] = p
    cache = model.new_cache(len(prompts), total)

    def step(ids: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = model(torch.from_numpy(ids).to(device), rows=rows, kv_cache=cache, speculate=speculate)[:, -1]
        next_ids = sample(logits, top_k, temperature, generator).cpu().numpy()
        step_s.append(time.perf_counter() - start)
        return next_ids

    first = int(lengths.min())
    next_ids = step(tokens[:, :first])
    done = np.zeros(len(prompts), bool)
    for t in range(first, total):
        produced = t - lengths  # tokens each sequence has generated once position t is filled
        sampling = (produced >= 0) & ~done
        tokens[sampling, t] = next_ids[sampling]
        done |= sampling & ((next_ids == end) | (produced + 1 >= max_new))
        if done.all():
            break
        next_ids = step(tokens[:, t : t + 1])
    outputs = []
    for i, n in enumerate(lengths):
        out = tokens[i, n : n + max_new].tolist()
        outputs.append(out[: out.index(end)] if end in out else out)
    return outputs


@torch.no_grad()
def decode_teacher_forced(model: EngramLM, rows, windows: torch.Tensor, *, speculate: Speculation | None = None,
                          device="cpu") -> list[float]:
    """Decode held-out windows [S, T] one position per step with the KV cache, fed the text's own tokens
    (teacher forcing: the steps a generation of this text would run, without its sampling); each
    step's seconds (forward and logits)."""
    cache = model.new_cache(windows.shape[0], windows.shape[1])
    seconds = []
    for t in range(windows.shape[1]):
        start = time.perf_counter()
        model(windows[:, t : t + 1].to(device), rows=rows, kv_cache=cache, speculate=speculate)
        seconds.append(time.perf_counter() - start)
    return seconds


def _decode(tokenizer, ids: list[int]) -> str:
    """Text of base ids from their raw token bytes (every base tokenizer has `token_bytes`)."""
    pieces = [tokenizer.base.token_bytes(i) or b"" for i in ids]
    return b"".join(pieces).decode("utf-8", errors="replace")
