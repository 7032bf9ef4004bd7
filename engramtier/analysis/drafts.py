"""Speculative decoding's row requests: a verify step reads the rows of its real draft slots only.

Under speculative decoding each verify step runs, per sequence, its last token and the drafter's
proposals for the positions after it. Drafts are ragged: a prompt-lookup drafter (vLLM's "ngram"
method) proposes nothing where the last ``match`` tokens never occurred before, and fewer than
``gamma`` tokens near the end of a match, so a batched verify pads them to one width. The step's rows
are those of the real slots, each N-gram hashed through the drafts before it (`verify_rows`); a row
source that hashes the padded tensor as tokens fetches rows nobody reads, and they evict useful ones.
The drafts are known once drafting ends, before the verify forward, so their rows can be fetched
during drafting.

`draft_decoding_study` decodes held-out text teacher-forced in lockstep batches: a sequence's drafts
are accepted while they match the text, and the verify step also yields the text's next token, which
becomes the next step's first slot (acceptance here is the drafter's against the text; a model's
greedy verify accepts the drafts that match its own predictions). Per verify step it counts real and
pad slots, rows and tokens, and runs, through the trace-driven simulator, three fetch schedules:

* ``at_verify``: the real slots' rows fetched when the verify step starts (window ``window_s``): all a
  drafter that takes no time (prompt lookup) leaves;
* ``drafts_ahead``: the same rows fetched during drafting (a step of window ``lead_s``: a draft model's
  time), then the verify;
* ``padded_at_verify``, ``padded_ahead``: the same, but every slot of the padded tensor hashed, the pad
  id as a token (what a row source that cannot tell real slots from padding does).
"""

from __future__ import annotations

import numpy as np
import torch

from engramtier.analysis.speculative import simulate_steps
from engramtier.cache.hierarchy import Hierarchy
from engramtier.errors import EngramTierError
from engramtier.model.speculation import verify_rows

# Fetch schedules: name, the slots hashed, whether the rows are prefetched during drafting.
SCHEDULES = (("at_verify", "real", False), ("padded_at_verify", "padded", False), ("drafts_ahead", "real", True),
             ("padded_ahead", "padded", True))


def prompt_lookup(history: np.ndarray, gamma: int, match: int) -> np.ndarray:
    """Up to ``gamma`` draft tokens: those after the latest earlier occurrence of the last ``match``
    tokens of ``history`` (none when they never occurred before)."""
    if history.size <= match:
        return history[:0]
    windows = np.lib.stride_tricks.sliding_window_view(history[:-1], match)
    hits = np.flatnonzero((windows == history[-match:]).all(axis=1))
    if not hits.size:
        return history[:0]
    start = hits[-1] + match
    return history[start : start + gamma]


def _verify_steps(windows: np.ndarray, gamma: int, match: int):
    """Per verify step of the lockstep batch: (positions of slot 0 [B], slots [B, 1+gamma] padded with -1,
    real slots [B], tokens the step yields [B]); a finished sequence has no real slot."""
    s, t = windows.shape
    position = np.zeros(s, np.int64)
    while (position < t).any():
        slots = np.full((s, 1 + gamma), -1, np.int64)
        n_real, yielded = np.zeros(s, np.int64), np.zeros(s, np.int64)
        for b in np.flatnonzero(position < t):
            p = position[b]
            drafts = prompt_lookup(windows[b, : p + 1], gamma, match)[: t - 1 - p]  # no draft beyond the text
            slots[b, 0], slots[b, 1 : 1 + drafts.size] = windows[b, p], drafts
            accepted = int(np.cumprod(drafts == windows[b, p + 1 : p + 1 + drafts.size]).sum())
            n_real[b], yielded[b] = 1 + drafts.size, min(accepted + 1, t - p)
        yield position.copy(), slots, n_real, yielded
        position += yielded


def verify_traces(model, windows: np.ndarray, gamma: int, match: int) -> dict:
    """The verify steps of a lockstep batch of held-out ``windows`` [S, T] (base ids) under prompt-lookup
    drafts: each step's row ids of the real slots only (``real``) and of every padded slot (``padded``),
    and the counts: slots, tokens yielded, and sequence-steps of sequences not yet finished (``active``)."""
    hasher, lookup = model.hasher, model.compress_lookup.cpu().numpy()
    n, pad = hasher.config.max_ngram_size, hasher.config.pad_id
    canonical = np.pad(lookup[windows], ((0, 0), (n - 1, 0)), constant_values=pad)  # pad before the start
    sequences = np.arange(windows.shape[0])[:, None]
    out = {"real": [], "padded": [], "real_slots": 0, "pad_slots": 0, "tokens": 0, "active": 0}
    for position, slots, n_real, yielded in _verify_steps(windows, gamma, match):
        before = np.minimum(position, windows.shape[1] - 1)[:, None] + np.arange(n - 1)  # tokens p-n+1 .. p-1
        context = torch.from_numpy(canonical[sequences, before])
        ids = torch.from_numpy(np.where(slots >= 0, lookup[np.maximum(slots, 0)], pad))
        out["real"].append(verify_rows(hasher, context, ids, torch.from_numpy(n_real)).reshape(-1).numpy())
        every = torch.full((slots.shape[0],), slots.shape[1], dtype=torch.int64)
        out["padded"].append(verify_rows(hasher, context, ids, every).reshape(-1).numpy())
        out["real_slots"] += int(n_real.sum())
        out["pad_slots"] += int(slots.size - n_real.sum())
        out["tokens"] += int(yielded.sum())
        out["active"] += int((n_real > 0).sum())
    return out


def draft_decoding_study(model, windows: torch.Tensor, gammas, hierarchy: Hierarchy, *, window_s: float,
                         lead_s: float, match: int = 2, traces: dict | None = None) -> list[dict]:
    """Per draft width gamma: verify steps, tokens a sequence gains per verify step (1 + its accepted
    drafts), real and pad slots and rows per step,
    and per fetch schedule (`SCHEDULES`) the bytes from the store, resident fraction and stall per step.
    ``traces``: `verify_traces` per gamma when the caller has them already (made here otherwise)."""
    if model.hasher is None:
        raise EngramTierError("draft study: the model has no Engram layer, so there are no rows to prefetch")
    gammas = list(gammas)
    if not gammas or any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in gammas):
        raise EngramTierError(f"draft study: draft widths must be whole numbers >= 1, got {gammas}")
    if windows.ndim != 2 or windows.shape[1] < 2 or match < 1:
        raise EngramTierError(f"draft study: expected held-out windows [S, T >= 2] and match >= 1, got "
                              f"{list(windows.shape)} and {match}")
    row_bytes, results = model.config.format.row_bytes, []
    for gamma in gammas:
        step_rows = traces[gamma] if traces is not None else verify_traces(model, windows.numpy(), gamma, match)
        steps = len(step_rows["real"])
        schedule = {name: _schedule(step_rows[kind], ahead, window_s, lead_s, hierarchy, model.hasher.n_rows, row_bytes)
                    for name, kind, ahead in SCHEDULES}
        results.append({
            "gamma": gamma, "match": match, "sequences": int(windows.shape[0]), "verify_steps": steps,
            "tokens_per_sequence_step": step_rows["tokens"] / step_rows["active"], "real_slots_per_step": step_rows["real_slots"] / steps,
            "pad_slots_per_step": step_rows["pad_slots"] / steps,
            "real_rows_per_step": float(np.mean([np.unique(r).size for r in step_rows["real"]])),
            "padded_rows_per_step": float(np.mean([np.unique(r).size for r in step_rows["padded"]])),
            "schedules": schedule,
        })
    return results


def _schedule(verify_steps, ahead: bool, window_s, lead_s, hierarchy, n_rows, row_bytes) -> dict:
    """The verify steps' rows through the simulator, each after a prefetch of the same rows (window
    ``lead_s``) when ``ahead``; per verify step: bytes from the store, resident fraction, stall."""
    per = 2 if ahead else 1
    steps = [rows for rows in verify_steps for _ in range(per)]
    windows = np.tile([lead_s, window_s] if ahead else [window_s], len(verify_steps))
    sim = simulate_steps(steps, windows, hierarchy, n_rows, row_bytes)
    verify = np.arange(per - 1, len(steps), per)
    return {
        "store_bytes_per_step": float(sim.served[-1].sum() * row_bytes / verify.size),
        "resident_fraction": float(sim.served[:-1][:, verify].sum() / sim.unique[verify].sum()),
        "stall_s_per_step": float(sim.stall_s.sum() / verify.size),
        "verify_stall_s_per_step": float(sim.stall_s[verify].sum() / verify.size),
    }
