"""Replay text through the real Engram model twice, its table flat in memory and tiered, and compare.

Text becomes steps as in a trace (`engramtier.trace.build`'s `StepPlan`): documents cut into windows
of at most ``seq_len`` tokens, grouped ``batch`` (prefill) or ``requests`` (decode) at a time and
right-padded with the end-of-text token to the batch's longest window (the backbone guarantees that
right padding never changes earlier positions). A prefill step is one forward over a batch; a decode
batch runs its first ``prompt_len`` tokens (at least one) as one step, then one token per step through
the KV cache, fed the text's own next token (teacher forcing), so both passes see the same inputs.

Both paths are timed step by step, after a few untimed warm-up steps each (`warm_replay`: otherwise
whichever runs first pays torch's first calls, and a short decode replay read the flat table several
times slower than the tiered one), with the flat and tiered steps alternating so that drift falls on
both alike; the summary gives each path's median step and its spread, not only a total. Logits are
compared through a BLAKE2b digest of their bytes per step: equal digests mean bitwise-equal outputs (a
collision is astronomically unlikely), and no path has to keep another's logits. The tiered path
records its row trace; the simulator replays it through the same hierarchy, and its hit counts must
equal the runtime's exactly.

Without a trained run, `random_run` writes a random-initialised one (same files as `engramtier train`;
the table drawn N(0, 1) like an untrained one and rounded to its row format), so a replay needs no
training: its outputs mean nothing as language, but bytes, hits and timings are those of a real model.

`engram_only_replay` runs a stand-in model's Engram layers alone (an imported DeepSeek-V4.1 checkpoint's,
or `random_stand_in_run`'s) over the tiered table only: the layers' own speed, bytes and stall at their
row size, with no flat pass to compare (the production table is 189 GiB).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from engramtier.cache.simulator import simulate
from engramtier.documents import text_documents
from engramtier.errors import EngramTierError
from engramtier.model.backbone import EngramLM, stand_in_config
from engramtier.model.hashing import HashConfig, NgramHasher
from engramtier.model.presets import get_preset, preset_hash_config
from engramtier.model.run import save_run
from engramtier.model.tokenizer import load_compressed_tokenizer
from engramtier.model.train import TrainConfig, build_model_config, tokenize_corpus
from engramtier.tiers.lmdb_table import RandomRows, build_lmdb_table
from engramtier.tiers.nvme import NvmeTier
from engramtier.tiers.open import LMDB_TABLE
from engramtier.tiers.records import BYTES_READ_NOTE, distribution, sized_tiers
from engramtier.trace.build import StepPlan, windows
from engramtier.trace.layout import SubtableLayout

PAD_REPLAY = "right-padded with the end-of-text token"
WARMUP_STEPS = 3  # a decode plan's prompt step and two one-token steps: every kind of forward once
TIMING = ("untimed warm-up steps first on each path; then flat and tiered alternate step by step; tokens_per_s = "
          "tokens / total measured step time, median_tokens_per_s = tokens / (steps x median step time)")
@dataclass
class PassResult:
    """One path's measured steps: a digest of each step's logits, seconds per step, positions run."""

    digests: list[str] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def seconds(self) -> float:
        return float(sum(self.step_s))

    def summary(self) -> dict:
        """Totals, the step-time distribution and two throughputs: ``tokens_per_s`` over the total step
        time, ``median_tokens_per_s`` over steps x the median step (what a typical step sustains)."""
        steps, step = len(self.step_s), distribution(self.step_s)
        return {"steps": steps, "seconds": self.seconds, "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else float("inf"),
                "median_tokens_per_s": self.tokens / (steps * step["p50"]) if step["p50"] > 0 else float("inf"),
                "step_s": step, "time_to_first_token_s": self.step_s[0]}


def text_batches(tokenizer, text: str | Path, plan: StepPlan, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Base-token batches [B, T] of ``text`` (a file or directory): windows of at most ``plan.seq_len``
    tokens, ``plan.batch`` (prefill) or ``plan.requests`` (decode) per batch, right-padded; at most
    ``max_tokens`` tokens of text in all."""

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


def plan_steps(batches: list[torch.Tensor], plan: StepPlan, device) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Every step of the plan in order: (its batch on ``device``, the step's inputs, fresh KV cache?)."""
    for batch in batches:
        batch = batch.to(device)
        for ids, fresh in forward_inputs(batch, plan):
            yield batch, ids, fresh


class _Path:
    """The model reading its rows one way (flat or tiered), stepping through the plan with its own KV cache;
    ``engram_only``: the residual stream after the last block instead of the logits (no output head)."""

    def __init__(self, model: EngramLM, rows, engram_only: bool = False) -> None:
        self.model, self.rows, self.cache = model, rows, None
        self.forward = model.hidden_states if engram_only else model
        self.result = PassResult()

    def step(self, batch: torch.Tensor, ids: torch.Tensor, fresh: bool) -> None:
        start = time.perf_counter()
        if fresh:
            self.cache = self.model.new_cache(batch.shape[0], batch.shape[1])
        output = self.forward(ids, rows=self.rows, kv_cache=self.cache)
        digest = hashlib.blake2b(output.float().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        self.result.step_s.append(time.perf_counter() - start)
        self.result.digests.append(digest)
        self.result.tokens += ids.numel()


@torch.no_grad()
def warm_up(model: EngramLM, sources: list, batches: list[torch.Tensor], plan: StepPlan, device,
            steps: int = WARMUP_STEPS, engram_only: bool = False) -> None:
    """The plan's first ``steps`` steps through ``model`` once per row source, untimed and discarded, so
    that no measured step pays torch's first calls (allocations, the KV-cache path) or a table's."""
    for rows in sources:
        path = _Path(model, rows, engram_only)
        for batch, ids, fresh in itertools.islice(plan_steps(batches, plan, device), steps):
            path.step(batch, ids, fresh)


@torch.no_grad()
def run_interleaved(model: EngramLM, flat_rows, table, batches: list[torch.Tensor],
                    plan: StepPlan) -> tuple[PassResult, PassResult]:
    """Every step once flat, once tiered, the two alternating step by step and swapping which goes first,
    so that drift over the run (clock boost, other load, a warming cache) falls on both alike."""
    flat, tiered = _Path(model, flat_rows), _Path(model, table)
    for i, (batch, ids, fresh) in enumerate(plan_steps(batches, plan, table.device)):
        for path in (flat, tiered) if i % 2 == 0 else (tiered, flat):
            path.step(batch, ids, fresh)
    return flat.result, tiered.result


def replay(model: EngramLM, flat_rows, table, batches: list[torch.Tensor], plan: StepPlan) -> tuple[dict, list[dict]]:
    """Run ``batches`` through ``model`` with the flat source and with the `TieredTable` ``table``
    (opened with ``record_trace=True``), interleaved (`run_interleaved`); returns (summary, one record
    per step). Warm both paths up first (`warm_up`, or `warm_replay`): the steps here are all timed."""
    flat, tiered = run_interleaved(model, flat_rows, table, batches, plan)
    table.finish()
    equal = [a == b for a, b in zip(flat.digests, tiered.digests, strict=True)]
    first_engram = min(model.config.engram.layer_ids)
    window = np.asarray(flat.step_s) * first_engram / model.config.n_layers
    summary, steps = _tiered_summary(model, table, tiered, plan, window, flat.step_s,
                                     "the flat pass's step time x blocks before the first Engram layer / blocks")
    summary = {
        "bitwise_equal": all(equal) and len(flat.digests) == len(tiered.digests),
        "first_unequal_step": equal.index(False) if not all(equal) else None,
        "steps": len(flat.digests), "plan": summary.pop("plan"), "timing": TIMING, "flat": flat.summary(), **summary,
    }
    records = [{**r, "flat_step_s": f, "tiered_step_s": t, "equal": e}
               for r, f, t, e in zip(steps, flat.step_s, tiered.step_s, equal, strict=True)]
    return summary, records


def _tiered_summary(model: EngramLM, table, tiered: PassResult, plan: StepPlan, window, step_compute_s,
                    window_note: str) -> tuple[dict, list[dict]]:
    """The finished ``table``'s side of a replay: the tiered pass with its stall, the tiers, and the
    simulator's replay of the table's recorded trace (hit counts equal, and the modelled stall under
    ``window``); plus the table's step records without its own step times (they span other work)."""
    stats = table.stats()
    trace = table.recorded_trace({"rows_per_token": float(model.hasher.rows_per_token),
                                  **SubtableLayout.of_hasher(model.hasher).to_meta()})
    simulated = simulate(trace, table.hierarchy, compute_window_s=window, step_compute_s=np.asarray(step_compute_s),
                         progress=False)
    sim_tiers = simulated.tier_stats()
    hits_equal = [t["hits"] for t in stats["tiers"]] == [t["hits"] for t in sim_tiers]
    # the table times a step from one submit to the next, which here spans a flat step too: drop that
    steps = [{k: v for k, v in r.items() if k != "step_s"} for r in table.step_records()]
    stall = [r["stall_s"] for r in steps]
    stall_fraction = stats["stall_seconds"] / tiered.seconds if tiered.seconds > 0 else 0.0
    summary = {
        "plan": {"mode": plan.mode, "batch": plan.batch, "requests": plan.requests, "seq_len": plan.seq_len,
                 "prompt_len": plan.prompt_len, "padding": PAD_REPLAY},
        "tiered": {**tiered.summary(), "stall_seconds": stats["stall_seconds"], "stall_fraction": stall_fraction,
                   "stall_per_step_s": distribution(stall), "fetch_seconds": stats["fetch_seconds"]},
        "tiers": sized_tiers(stats["tiers"], stats["row_bytes"]),
        "bytes_read_note": BYTES_READ_NOTE,
        "simulated": {"hits_equal": hits_equal, "hits": [t["hits"] for t in sim_tiers],
                      "stall_seconds": float(simulated.stall_s.sum()), "window": window_note},
        "table": {**{k: v for k, v in stats.items() if k != "tiers"}, "step_seconds": tiered.seconds,
                  "stall_fraction": stall_fraction},
    }
    return summary, steps


STAND_IN = ("a stand-in backbone: seeded token embeddings are the Engram layers' input, no block runs between "
            "them and no output head is timed; so nothing hides the fetch (stall is all of it that the step waits "
            "for), and the outputs mean nothing as language")


@torch.no_grad()
def engram_only_replay(model: EngramLM, open_table: Callable[[bool], Any], batches: list[torch.Tensor],
                       plan: StepPlan, warmup_steps: int = WARMUP_STEPS) -> tuple[dict, list[dict]]:
    """The Engram layers of a stand-in model (`EngramLM` with ``backbone = "stand-in"``) over the
    `TieredTable` ``open_table(record_trace)`` opens, step by step after ``warmup_steps`` untimed ones
    on a scratch table: the layers' own tokens/s, bytes and stall at their row size. There is no flat
    pass (the table may be 189 GiB); the simulator's hit counts must still equal the runtime's."""
    if model.config.backbone != "stand-in":
        raise EngramTierError("replay --engram-only: the model has a transformer backbone; replay a stand-in model "
                              "(an imported checkpoint, or the random one without --run)")
    if warmup_steps:
        with open_table(False) as scratch:
            warm_up(model, [scratch], batches, plan, scratch.device, warmup_steps, engram_only=True)
    with open_table(True) as table:
        path = _Path(model, table, engram_only=True)
        for batch, ids, fresh in plan_steps(batches, plan, table.device):
            path.step(batch, ids, fresh)
        table.finish()
        tiered = path.result
        summary, steps = _tiered_summary(model, table, tiered, plan, np.zeros(len(tiered.step_s)), tiered.step_s,
                                         "none: a stand-in backbone computes nothing before the first Engram layer")
    config = model.config
    summary = {
        "engram_only": True, "steps": len(tiered.step_s), "warmup_steps": warmup_steps, "plan": summary.pop("plan"),
        "timing": "untimed warm-up steps first on a scratch table; tokens_per_s = tokens / total measured step time",
        "layers": {"variant": config.variant, "layer_ids": list(config.engram.layer_ids), "d_model": config.d_model,
                   "hc_mult": config.hc_mult, "rows_per_token": model.hasher.rows_per_token,
                   "row_format": config.row_format, "row_dim": config.row_dim, "row_bytes": config.format.row_bytes},
        "backbone": STAND_IN, **summary,
    }
    records = [{**r, "tiered_step_s": t} for r, t in zip(steps, tiered.step_s, strict=True)]
    return summary, records


def warm_replay(model: EngramLM, flat_rows, open_table: Callable[[bool], Any], batches: list[torch.Tensor],
                plan: StepPlan, warmup_steps: int = WARMUP_STEPS) -> tuple[dict, list[dict]]:
    """`replay` after `warm_up` of both paths. ``open_table(record_trace)`` opens a `TieredTable`: the
    tiered warm-up runs on a scratch one, closed before the measured one opens (never two on one store
    at once), so the measured table starts cold, counts only the plan's steps, and its hits stay the
    simulator's on its own trace."""
    if warmup_steps:
        with open_table(False) as scratch:
            warm_up(model, [flat_rows, scratch], batches, plan, scratch.device, warmup_steps)
    with open_table(True) as table:
        summary, records = replay(model, flat_rows, table, batches, plan)
    summary["warmup_steps"] = warmup_steps
    return summary, records


def random_run(run_dir: str | Path, text: str | Path, *, tokenizer: str = "bpe:512", seed: int = 0,
               **shape) -> Path:
    """Write a random-initialised model as a run directory (config, weights, flat table, tokenizer).

    ``shape`` takes `TrainConfig`'s model fields (d_model, n_layers, n_heads, engram_layers, table_size,
    max_ngram_size, hash_heads, row_dim, row_format); a ``bpe:N`` tokenizer is learned from ``text``.
    """


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


def random_stand_in_run(run_dir: str | Path, *, variant: str, d_model: int, hc_mult: int, seed: int = 0,
                        table: str | Path | None = None, table_size: int | None = None,
                        image_token: int | None = None, progress: bool = False) -> Path:
    """Write a random-initialised stand-in model of ``variant`` (`engramtier.model.backbone`) as a run
    directory, for `engram_only_replay`: over the LMDB ``table`` (its manifest's hash config and rows,
    which may be an imported checkpoint's or `build-table --random`'s), or else over a random table of
    DeepSeek-V4.1-Flash's shape (sub-tables of ``table_size`` rows) built into RUN/table.lmdb."""

    run_dir = Path(run_dir)
    if table is not None:
        with NvmeTier(table) as store:
            manifest = store.manifest
        if manifest.get("hash_config") is None:
            raise EngramTierError(f"--table {table}: holds random rows with no hash config, which no model addresses; "
                                  "build it with --preset (or --from-checkpoint)")
        config, row_format, row_dim = HashConfig.from_dict(manifest["hash_config"]), manifest["format"], manifest["dim"]
    else:
        preset = get_preset("dsv41-flash")
        config, row_format, row_dim = preset_hash_config(preset.name, table_size, image_token), preset.row_format, preset.row_dim
        build_lmdb_table(RandomRows.for_hasher(NgramHasher(config), row_format, row_dim, seed, preset=preset.name),
                         run_dir / LMDB_TABLE, progress=progress)
    tokenizer = load_compressed_tokenizer(config.tokenizer)
    model_config = stand_in_config(config, tokenizer.base_vocab_size, d_model, hc_mult, variant, row_format, row_dim)
    save_run(EngramLM(model_config, tokenizer.lookup, trainable_table=False, seed=seed), run_dir)
    return run_dir
