"""Decode-time speculation: the rows the next position would read, for each of k candidate next tokens.

At decode the rows of position t+1 hash the token not yet sampled, so a row source can only start
fetching them once it is. Speculation names candidates earlier: `Speculation` makes the model, during
step t, read its top-k next tokens off an intermediate block's hidden state (an early exit through the
final norm and output head), hash each candidate with the last N-1 known tokens, and hand the union's
row ids to the row source's `speculate` while the remaining blocks of step t compute. A tiered source
fetches them into its caches; step t+1 then finds the sampled token's rows resident when a candidate
was right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engramtier.errors import EngramTierError
from engramtier.model.hashing import NgramHasher


def candidate_rows(hasher: NgramHasher, context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Row ids [P, k, layers, (N-1)*H] the next position would read for each candidate.

    ``context`` [P, N-1] holds each position's last N-1 known canonical ids (the pad id where the
    sequence is shorter), ``candidates`` [P, k] the canonical ids of its candidate next tokens. All
    P*k candidate N-grams are hashed in one call, on the tensors' device.
    """
    n = hasher.config.max_ngram_size
    if context.dim() != 2 or context.shape[1] != n - 1 or candidates.dim() != 2 or candidates.shape[0] != context.shape[0]:
        raise EngramTierError(f"speculation: expected context [P, {n - 1}] and candidates [P, k], "
                              f"got {list(context.shape)} and {list(candidates.shape)}")
    p, k = candidates.shape
    seqs = torch.cat([context[:, None, :].expand(p, k, n - 1), candidates[..., None]], dim=2)
    rows = hasher.hash_torch(seqs.reshape(p * k, n).to(torch.int64))[:, -1]
    return rows.reshape(p, k, hasher.n_layers, hasher.config.heads_per_layer)


@dataclass(frozen=True)
class Speculation:
    """Speculate the ``k`` most likely next tokens' rows, read off the hidden state after block
    ``after_block`` (0-based; the last block gives the final logits' top-k, the most accurate and
    the latest). Applies to forward passes with a KV cache: decode and prefill steps."""

    k: int
    after_block: int

    def check(self, n_blocks: int, vocab_size: int) -> None:
        if not 1 <= self.k <= vocab_size:
            raise EngramTierError(f"speculation: k must lie in 1..{vocab_size} (the vocabulary), got {self.k}")
        if not 0 <= self.after_block < n_blocks:
            raise EngramTierError(f"speculation: after_block must name one of the model's blocks 0..{n_blocks - 1}, "
                                  f"got {self.after_block}")


def verify_rows(hasher: NgramHasher, context: torch.Tensor, slots: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
    """Row ids [R, layers, (N-1)*H] of a speculative-decoding verify step's real slots, sequence by sequence.

    ``slots`` [B, S] canonical ids: per sequence its last accepted token and its drafts, padded to one
    width; ``n_real`` [B] how many of its slots are real (0 for a sequence that has finished); ``context``
    [B, N-1] the canonical ids before slot 0 (the pad id before a sequence's start). Each slot's N-grams
    reach back through the drafts before it; the pad slots are not hashed into the step at all, since
    nobody reads their rows (hashing them as tokens fetches rows that only evict useful ones).
    """
    n = hasher.config.max_ngram_size
    if context.dim() != 2 or context.shape[1] != n - 1 or slots.dim() != 2 or n_real.shape != slots.shape[:1] \
            or context.shape[0] != slots.shape[0]:
        raise EngramTierError(f"speculation: expected context [B, {n - 1}], slots [B, S] and n_real [B], got "
                              f"{list(context.shape)}, {list(slots.shape)} and {list(n_real.shape)}")
    if n_real.numel() and (int(n_real.min()) < 0 or int(n_real.max()) > slots.shape[1]):
        raise EngramTierError(f"speculation: n_real must lie in 0..{slots.shape[1]} (the slots per sequence)")
    rows = hasher.hash_torch(torch.cat([context, slots], dim=1).to(torch.int64))[:, n - 1 :]
    real = torch.arange(slots.shape[1], device=slots.device) < n_real[:, None]
    return rows[real]
