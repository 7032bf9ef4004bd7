"""Tokens -> row ids, grouped into the steps an inference server would run.

prefill  a step is a batch of ``batch`` sequences: documents cut into windows of at most ``seq_len``
         tokens (a long document becomes consecutive windows, each its own sequence), every
         position of every sequence read in that step.
decode   ``requests`` concurrent requests each produce one token per step. A request is a window
         of a document; it may begin with a prompt of ``prompt_len`` tokens read in a single step,
         then one token per step. When a request ends, the next window takes its slot at the next
         step (continuous batching).

A decode token's n-grams reach back into its own request, never into the batch around it, so its
rows are exactly the rows of the same position in a prefill of the request: each request is hashed
as one sequence and its token rows are only *scheduled* into steps. Within a step, rows are
position-major (request slot, then position; per token its rows in (layer, order, head) order).

Work happens in blocks of many steps, so hashing, scheduling and writing are vectorised over
hundreds of thousands of tokens per call; only the per-document slot assignment is a Python loop.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from tqdm import tqdm

from engramtier.errors import EngramTierError
from engramtier.memory import check_memory
from engramtier.model.hashing import NgramHasher
from engramtier.trace.layout import SubtableLayout
from engramtier.trace.rowindex import BITMAP_MAX_ROWS
from engramtier.trace.rowtrace import RowTrace
from engramtier.trace.sources import TokenSource
from engramtier.trace.tracefile import TraceWriter

MODES = ("prefill", "decode")
BLOCK_TOKENS = 1 << 18  # tokens hashed per call
# memory per token hashed and not yet written: its rows (int64) in the hash buffer, the block and the sorted
# copy a decode emits, plus the token id, its step and slot
BYTES_PER_HELD_ROW, BYTES_PER_HELD_TOKEN = 3 * 8, 64


@dataclass(frozen=True)
class StepPlan:
    """How token positions are grouped into steps (see the module docstring)."""

    mode: str = "prefill"
    batch: int = 8
    seq_len: int = 2048
    requests: int = 32
    prompt_len: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise EngramTierError(f"step plan: unknown mode '{self.mode}'; use one of {', '.join(MODES)}")
        for name in ("batch", "seq_len", "requests"):
            if getattr(self, name) < 1:
                raise EngramTierError(f"step plan: {name} must be >= 1, got {getattr(self, name)}")
        if self.prompt_len < 0:
            raise EngramTierError(f"step plan: prompt_len must be >= 0, got {self.prompt_len}")

    @property
    def tokens_per_step(self) -> int:
        """Tokens in a full step (the last steps of a trace may hold fewer)."""
        return self.batch * self.seq_len if self.mode == "prefill" else self.requests


def hasher_for(source: TokenSource, table_size: int, layer_ids, n_heads: int, max_ngram: int, seed: int) -> NgramHasher:
    """The hasher of ``source``'s ids with every order's sub-tables starting at ``table_size`` rows."""
    if max_ngram < 2:
        raise EngramTierError(f"max n-gram size must be >= 2 (Engram hashes orders 2..N), got {max_ngram}")
    return NgramHasher(source.hash_config((table_size,) * (max_ngram - 1), tuple(layer_ids), n_heads, seed))


def windows(documents: Iterator[np.ndarray], seq_len: int) -> Iterator[np.ndarray]:
    """Each document cut into consecutive sequences of at most ``seq_len`` tokens."""
    for doc in documents:
        for lo in range(0, doc.size, seq_len):
            yield doc[lo : lo + seq_len]


class TraceBuilder:
    """Streams (rows, step_row_counts) blocks of whole steps from a token source.

    ``rows`` may be a view of a buffer reused by the next block: consume or copy it before asking
    for the next. ``seconds`` splits the time spent into reading+tokenizing, hashing and scheduling.
    ``preset`` names the model shape (`engramtier.model.presets`) the hasher was made from, if any.
    """

    def __init__(self, source: TokenSource, hasher: NgramHasher, plan: StepPlan, block_tokens: int = BLOCK_TOKENS,
                 threads: int | None = None, preset: str | None = None):
        self.source, self.hasher, self.plan, self.preset = source, hasher, plan, preset
        self.block_tokens = block_tokens
        self.threads = threads
        self.rows_per_token = hasher.rows_per_token
        self.n_tokens = 0
        self.seconds = {"tokenize": 0.0, "hash": 0.0, "schedule": 0.0}
        self._buffer = np.empty((0, hasher.n_layers, hasher.config.heads_per_layer), np.int64)

    def meta(self) -> dict:
        """What a trace built by this builder records about itself."""
        cfg = self.hasher.config
        return {
            "mode": self.plan.mode,
            "plan": asdict(self.plan),
            "tokens_per_step": self.plan.tokens_per_step,
            "rows_per_token": self.rows_per_token,
            **SubtableLayout.of_hasher(self.hasher).to_meta(),
            "hash_config": cfg.to_dict(),
            "fingerprint": cfg.fingerprint,
            "preset": self.preset,
            "tokenizer": cfg.tokenizer,
            "tokenizer_digest": cfg.tokenizer_digest,
            "source": self.source.describe(),
        }

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        sequences = self._timed(windows(self.source.documents(), self.plan.seq_len))
        if self.plan.mode == "prefill":
            yield from self._prefill_blocks(sequences)
        else:
            yield from self._decode_blocks(sequences)

    def _timed(self, sequences: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        while True:
            start = time.perf_counter()
            seq = next(sequences, None)
            self.seconds["tokenize"] += time.perf_counter() - start
            if seq is None:
                return
            yield seq

    def _hash(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Row ids [tokens, layers, (N-1)*H] of ``sequences`` (each its own sequence), and their lengths."""
        start = time.perf_counter()
        lengths = np.fromiter((s.size for s in sequences), np.int64, len(sequences))
        starts = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        if self._buffer.shape[0] < starts[-1]:
            self._buffer = np.empty((int(starts[-1]),) + self._buffer.shape[1:], np.int64)
        rows = self.hasher.hash_ragged(np.concatenate(sequences), starts, self.threads, out=self._buffer)
        self.n_tokens += int(starts[-1])
        self.seconds["hash"] += time.perf_counter() - start
        return rows, lengths

    def _prefill_blocks(self, sequences: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        batch, pending, n_pending = self.plan.batch, [], 0
        for seq in sequences:
            pending.append(seq)
            n_pending += seq.size
            if len(pending) % batch == 0 and n_pending >= self.block_tokens:
                yield self._prefill_block(pending)
                pending, n_pending = [], 0
        if pending:
            yield self._prefill_block(pending)

    def _prefill_block(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rows, lengths = self._hash(sequences)
        step_tokens = np.add.reduceat(lengths, np.arange(0, lengths.size, self.plan.batch))
        return rows.reshape(-1), step_tokens * self.rows_per_token

    def _decode_blocks(self, sequences: Iterator[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Assign each request a slot and a start step, hash a block of requests, and emit the steps
        that no later request can join (those before the earliest step a slot frees up)."""
        # (first free step, slot) heap of the slots opened so far; the others are free from step 0, and are
        # opened in slot order before any is reused, so memory follows the requests served, not --requests
        free_at: list[tuple[int, int]] = []
        pending = _Scheduled.empty(self._buffer.shape[1:])
        first_step = 0
        block: list[np.ndarray] = []
        starts, slots = [], []
        n_block = 0
        for seq in sequences:
            opened = len(free_at) < self.plan.requests
            step, slot = (0, len(free_at)) if opened else heapq.heappop(free_at)
            heapq.heappush(free_at, (step + self._request_steps(seq.size), slot))
            block.append(seq)
            starts.append(step)
            slots.append(slot)
            n_block += seq.size
            if n_block >= self.block_tokens:
                pending = pending.join(self._schedule(block, starts, slots))
                horizon = free_at[0][0] if len(free_at) == self.plan.requests else 0  # a free slot joins step 0
                if horizon > first_step:
                    ready, pending = pending.split(horizon)
                    yield self._emit(ready, first_step, horizon)
                    first_step = horizon
                block, starts, slots, n_block = [], [], [], 0
        if block:
            pending = pending.join(self._schedule(block, starts, slots))
        if pending.steps.size:
            yield self._emit(pending, first_step, int(pending.steps.max()) + 1)

    def _request_steps(self, n_tokens: int) -> int:
        prompt = min(self.plan.prompt_len, n_tokens)
        return n_tokens - prompt + (prompt > 0)

    def _schedule(self, block: list[np.ndarray], starts: list[int], slots: list[int]) -> "_Scheduled":
        rows, lengths = self._hash(block)
        start = time.perf_counter()
        first_token = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(first_token.size) - first_token
        prompt = np.minimum(self.plan.prompt_len, lengths)
        # the prompt's tokens share the request's first step; each later token has a step of its own
        lag = np.repeat(np.maximum(prompt - 1, 0), lengths)
        steps = np.repeat(np.asarray(starts, np.int64), lengths) + np.maximum(position - lag, 0)
        slot = np.repeat(np.asarray(slots, np.int64), lengths)
        scheduled = _Scheduled(steps, slot, rows.copy())
        self.seconds["schedule"] += time.perf_counter() - start
        return scheduled

    def _emit(self, ready: "_Scheduled", first_step: int, end_step: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and per-step row counts of steps ``first_step`` to ``end_step - 1``, which ``ready`` holds."""
        start = time.perf_counter()
        order = np.argsort(ready.steps * self.plan.requests + ready.slots, kind="stable")
        rows = ready.rows[order].reshape(-1)
        counts = np.bincount(ready.steps - first_step, minlength=end_step - first_step) * self.rows_per_token
        self.seconds["schedule"] += time.perf_counter() - start
        return rows, counts


@dataclass
class _Scheduled:
    """Decode tokens hashed but not yet emitted: each token's step, slot and rows."""

    steps: np.ndarray
    slots: np.ndarray
    rows: np.ndarray

    @classmethod
    def empty(cls, row_shape: tuple[int, ...]) -> "_Scheduled":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0,) + row_shape, np.int64))

    def join(self, other: "_Scheduled") -> "_Scheduled":
        return _Scheduled(*(np.concatenate([a, b]) for a, b in ((self.steps, other.steps), (self.slots, other.slots),
                                                                 (self.rows, other.rows))))

    def split(self, step: int) -> tuple["_Scheduled", "_Scheduled"]:
        """(tokens before ``step``, the rest)."""
        early = self.steps < step
        return (_Scheduled(self.steps[early], self.slots[early], self.rows[early]),
                _Scheduled(self.steps[~early], self.slots[~early], self.rows[~early]))


def build_memory(source: TokenSource, plan: StepPlan, rows_per_token: int, n_table_rows: int,
                 chunk_rows: int) -> dict[str, float]:
    """What a trace build holds at most, keyed by the advice that lowers each part (for
    `engramtier.memory.check_memory`): the tokens hashed and not yet written (a step of a prefill, every
    request's window of a decode, and a block; never more than the source holds), the writer's chunk,
    the row count of every step, the rows' index (a bit per table row and its rank, see `engramtier.trace.rowindex`) and what the
    source holds itself."""
    window = (plan.batch if plan.mode == "prefill" else plan.requests) * plan.seq_len + BLOCK_TOKENS
    known = source.max_tokens()
    held = window if known is None else min(window, known)
    chunk = chunk_rows if known is None else min(chunk_rows, known * rows_per_token)
    steps = 0 if known is None else known // plan.tokens_per_step + 1  # a prompt step or a short last step aside
    return {
        "lower --tokens (the trace's step counts)": 3 * 8 * steps,
        f"lower --{'batch' if plan.mode == 'prefill' else 'requests'} or --seq-len (tokens held per step)":
            held * (BYTES_PER_HELD_ROW * rows_per_token + BYTES_PER_HELD_TOKEN),
        "lower --chunk-rows": 2 * 8 * chunk,  # the buffer and its encoding
        "lower --table-size (the rows' index)": min(n_table_rows, BITMAP_MAX_ROWS) / 4,
        **source.held_bytes(),
    }


def build_trace(source: TokenSource, hasher: NgramHasher, plan: StepPlan, row_bytes: int = 160,
                preset: str | None = None) -> RowTrace:
    """The whole row trace in memory (for tests and small inputs; `write_trace` streams to a file)."""
    builder = TraceBuilder(source, hasher, plan, preset=preset)
    rows, counts = [], []
    for block_rows, block_counts in builder.blocks():
        rows.append(block_rows.copy())
        counts.append(block_counts)
    if not rows:
        raise EngramTierError("trace build: the source holds no tokens; give non-empty text or a synthetic stream")
    counts = np.concatenate(counts)
    step_starts = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=step_starts[1:])
    return RowTrace(np.concatenate(rows), step_starts, hasher.n_rows, row_bytes, builder.meta())


def write_trace(source: TokenSource, hasher: NgramHasher, plan: StepPlan, path, row_bytes: int = 160,
                chunk_rows: int = 1 << 20, progress: bool = False, preset: str | None = None) -> dict:
    """Build the trace straight into a trace file, holding only one block in memory; returns a summary
    with the token, step and row counts and the seconds spent in each stage."""


    builder = TraceBuilder(source, hasher, plan, preset=preset)
    check_memory(f"building the trace {path}", build_memory(source, plan, builder.rows_per_token, hasher.n_rows,
                                                          chunk_rows))
    write_s = 0.0
    with TraceWriter(path, hasher.n_rows, row_bytes, builder.meta(), chunk_rows=chunk_rows) as writer, \
            tqdm(unit="tok", unit_scale=True, disable=not progress, desc="trace", leave=False) as bar:
        for rows, counts in builder.blocks():
            start = time.perf_counter()
            writer.append(rows, counts)
            write_s += time.perf_counter() - start
            bar.update(rows.size // builder.rows_per_token)
        if builder.n_tokens == 0:
            raise EngramTierError("trace build: the source holds no tokens; give non-empty text or a synthetic stream")
        start = time.perf_counter()
    write_s += time.perf_counter() - start  # the final flush and footer
    return {"tokens": builder.n_tokens, "steps": writer.n_steps, "rows": writer.n_rows,
            "bytes": writer.bytes_written, "seconds": {**builder.seconds, "write": write_s}}
