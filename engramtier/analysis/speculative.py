"""Decode-time speculative prefetch: fetch the rows of the model's top-k candidate next tokens early.

At decode the rows of position t+1 hash the token not yet sampled, so without speculation their fetch
can only start once it is, and must hide in the few layers before the Engram layer. Speculation hashes
each sequence's top-k candidates for t+1 (the last n-1 known tokens plus each candidate) and fetches
the union during step t; the sampled token's rows are then resident if a candidate was right.

This module measures that trade on held-out text, teacher-forced (the true next token is the text's,
the candidates are the top-k of the model's own next-token logits), and names its models plainly:

* coverage: the fraction of the true step's unique rows that lie in the candidates' union; extra rows
  are the union's rows the true step does not read (bytes: times the row size).
* residency and stall: the trace-driven simulator (`cache.simulator`) over a hierarchy, on a trace
  that interleaves, per decode step, a speculative step (the union, window ``lead_s``: the time of
  step t the speculative fetch overlaps) before the demand step (the true rows, window ``window_s``:
  the compute before the Engram layer). Resident fraction is the share of the demand step's unique
  rows served above the store (``steps_all_resident``: the share of steps with none from the store,
  the only ones whose demand fetch escapes the store's latency); stall per decode step is the sum
  of both steps' stall ``max(0, fetch - window)`` under the tiers' timing models.

The candidates are the final logits of step t, assumed available ``lead_s`` before step t+1 needs the
rows (as a draft model or an early-exit head would give them): coverage is an upper bound on what such
a predictor reaches, and ``lead_s`` is the knob that says how early it speaks.

`measured_speculation` reads the same measures off a real decode instead: a `TieredTable` that the
model speculated into during each step (`engramtier.model.speculation`), its stall timed, not modeled.
"""

from __future__ import annotations

import numpy as np
import torch

from engramtier.cache.hierarchy import Hierarchy
from engramtier.cache.simulator import simulate
from engramtier.errors import EngramTierError
from engramtier.model.speculation import candidate_rows
from engramtier.tiers.records import distribution, served_above_store
from engramtier.trace.rowtrace import RowTrace


def _contexts(canonical: np.ndarray, n: int, pad_id: int) -> np.ndarray:
    """[S, T, n-1]: for each position t, the canonical ids t-n+2 .. t (pad before the start)."""
    padded = np.pad(canonical, ((0, 0), (n - 2, 0)), constant_values=pad_id)
    return np.stack([padded[:, j : j + canonical.shape[1]] for j in range(n - 1)], axis=2)


def _check_k(k_values, vocab_size: int) -> list[int]:
    ks = list(k_values)
    bad = [k for k in ks if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= vocab_size]
    if not ks or bad:
        raise EngramTierError(f"speculative: k values must be whole numbers in 0..{vocab_size} (the vocabulary), got {ks}")
    return [int(k) for k in ks]


@torch.no_grad()
def speculative_prefetch_study(model, windows: torch.Tensor, k_values, hierarchy: Hierarchy, *,
                               window_s: float, lead_s: float, rows=None) -> list[dict]:
    """Per k: coverage, extra rows and bytes, resident fraction and stall per decode step.

    ``windows`` [S, T] base ids are S held-out sequences decoded in lockstep (a decode step is one
    position of all S); k = 0 is no speculation; ``rows`` is the model's row source (default: its
    trainable table). See the module docstring for the models used.
    """
    if model.hasher is None:
        raise EngramTierError("speculative: the model has no Engram layer, so there are no rows to prefetch")
    ks = _check_k(k_values, model.config.vocab_size)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise EngramTierError(f"speculative: expected held-out windows [S, T >= 2], got {list(windows.shape)}")
    hasher, lookup = model.hasher, model.compress_lookup.cpu().numpy()
    s, t = windows.shape
    true = model.row_ids(windows).reshape(s, t, -1).numpy()  # [S, T, rows per token]
    ranked = torch.argsort(model(windows, rows)[:, :-1], dim=-1, descending=True)[..., : max(ks)].numpy()  # [S, T-1, kmax]
    canonical = lookup[windows.numpy()]
    context = _contexts(canonical, hasher.config.max_ngram_size, hasher.config.pad_id)[:, :-1]  # step t predicts t+1
    cand = candidate_rows(hasher, torch.from_numpy(np.ascontiguousarray(context.reshape(s * (t - 1), -1))),
                          torch.from_numpy(lookup[ranked].reshape(s * (t - 1), -1)))
    cand = cand.reshape(s, t - 1, max(ks), -1).numpy()
    row_bytes = model.config.format.row_bytes
    return [_one_k(true, cand[:, :, :k], k, hierarchy, row_bytes, hasher.n_rows, window_s, lead_s) for k in ks]


def _one_k(true, cand, k, hierarchy, row_bytes, n_rows, window_s, lead_s) -> dict:
    """Coverage per decode step (steps 1..T-1: step 0 has nothing before it) and the simulated run."""
    steps, covered, extra, needed = [], 0, 0, 0
    steps.append(np.unique(true[:, 0]))
    for step in range(1, true.shape[1]):
        real = np.unique(true[:, step])
        spec = np.unique(cand[:, step - 1])
        hit = np.isin(real, spec, assume_unique=True).sum()
        covered, needed, extra = covered + int(hit), needed + real.size, extra + int(spec.size - hit)
        steps += [spec, real]
    # the interleaved trace [demand 0, spec 1, demand 1, ...], each kind with its window
    sim = simulate_steps(steps, np.where(np.arange(len(steps)) % 2 == 0, window_s, lead_s), hierarchy, n_rows, row_bytes)
    demand = np.arange(0, len(steps), 2)[1:]  # the demand steps that had a speculative step before them
    decode_steps = true.shape[1] - 1
    served_above = sim.served[:-1][:, demand].sum()
    store_bytes = sim.served[-1].sum() * row_bytes
    return {
        "k": k, "decode_steps": decode_steps, "sequences": true.shape[0],
        "coverage": covered / needed, "true_rows_per_step": needed / decode_steps,
        "extra_rows_per_step": extra / decode_steps, "extra_bytes_per_step": extra * row_bytes / decode_steps,
        "resident_fraction": float(served_above / sim.unique[demand].sum()),
        "steps_all_resident": float((sim.served[-1][demand] == 0).mean()),  # one store row costs a whole wave
        "store_bytes_per_step": float(store_bytes / decode_steps),
        "stall_s_per_step": float((sim.stall_s[demand] + sim.stall_s[demand - 1]).sum() / decode_steps),
        "demand_stall_s_per_step": float(sim.stall_s[demand].sum() / decode_steps),
    }


def measured_speculation(records: list[dict], trace: RowTrace) -> dict:
    """Coverage, extra rows, resident fraction and measured stall per decode step of a decode run
    through a `TieredTable` (its `step_records` and `recorded_trace`), speculating or not.

    Decode steps are the demand steps after the first (the prefill of the first position has no
    step before it); a decode step's candidates are the speculative step just before it, if any.
    """
    steps = [np.unique(trace.step(i)) for i in range(len(records))]
    demand = [i for i, r in enumerate(records) if not r["speculative"]][1:]
    if not demand:
        raise EngramTierError("speculative: the decode ran one step; measuring needs at least two positions")
    covered = extra = needed = 0
    for i in demand:
        spec = steps[i - 1] if records[i - 1]["speculative"] else np.empty(0, np.int64)
        hit = int(np.isin(steps[i], spec, assume_unique=True).sum())
        covered, needed, extra = covered + hit, needed + steps[i].size, extra + spec.size - hit
    decode = [records[i] for i in demand]
    store = list(records[0]["served"])[-1]
    stall = distribution([r["stall_s"] for r in decode])
    return {
        "decode_steps": len(demand), "coverage": covered / needed, "true_rows_per_step": needed / len(demand),
        "extra_rows_per_step": extra / len(demand), "resident_fraction": served_above_store(decode),
        "steps_all_resident": float(np.mean([r["served"][store] == 0 for r in decode])),
        "stall_s_per_step": stall["mean"], "stall_s_p50": stall["p50"], "stall_s_p99": stall["p99"],
        "speculative_fetch_s_per_step": float(sum(r["fetch_s"] for r in records if r["speculative"]) / len(demand)),
    }


def simulate_steps(steps: list[np.ndarray], windows: np.ndarray, hierarchy: Hierarchy, n_rows: int, row_bytes: int):
    """Steps of row ids, each with its own prefetch window (seconds), through the simulator."""
    sizes = np.array([x.size for x in steps], np.int64)
    starts = np.zeros(sizes.size + 1, np.int64)
    np.cumsum(sizes, out=starts[1:])
    trace = RowTrace(np.concatenate(steps).astype(np.int64), starts, n_rows, row_bytes, {})
    return simulate(trace, hierarchy, compute_window_s=np.asarray(windows, np.float64), progress=False)
