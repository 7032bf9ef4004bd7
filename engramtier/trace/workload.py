"""A served workload as a row trace: requests arrive over time and the scheduler cuts every step.

Each request reads consecutive tokens of a text source (its prompt, then the output tokens it feeds
back), so the N-grams of prompts and outputs are those of real text; the source starts over from its
beginning when it runs out, and the summary says how often it did (repeated text raises hit rates).

Time is simulated: a clock starts at the first arrival; before every step the requests that have
arrived join the scheduler's queue (`engramtier.trace.schedule.Scheduler`, the server's own), and the
step then takes its compute time, `StepTime` (the experiment file's ``[timing]``: ``compute_s`` per step
plus ``compute_per_token_s`` per token, or the prefetch window when neither is given, as `simulate`
does). When nothing runs or waits the clock jumps to the next arrival. Stall is not charged to the
clock: the trace is built before any hierarchy is chosen, so queueing is that of a server that never
stalls (a hierarchy that does would see longer queues).

Each request is hashed as one sequence when it is admitted, and each step holds, per scheduled request
in the scheduler's order, its tokens' rows (per token in (layer, order, head) order), as the server's
TieredTable steps do. Per step the file keeps `STEP_COLUMNS`: when it starts, its prefill and decode
tokens, and the requests running and waiting (`TraceReader.step_columns`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from engramtier.errors import EngramTierError, check_number
from engramtier.model.hashing import NgramHasher
from engramtier.trace.arrivals import Arrivals
from engramtier.trace.build import addressing_meta
from engramtier.trace.schedule import ScheduledStep, Scheduler
from engramtier.trace.sources import TokenSource
from engramtier.trace.tracefile import TraceWriter

STEP_COLUMNS = ("start_us", "prefill_tokens", "decode_tokens", "running", "waiting")


@dataclass(frozen=True)
class StepTime:
    """Seconds a step of ``tokens`` tokens computes: ``fixed_s + per_token_s * tokens``."""

    fixed_s: float = 0.0
    per_token_s: float = 0.0

    def __post_init__(self):
        if self.fixed_s <= 0 and self.per_token_s <= 0:
            raise EngramTierError("step time: give compute_s or compute_per_token_s > 0, or a step never takes time")

    def seconds(self, tokens: int) -> float:
        return self.fixed_s + self.per_token_s * tokens

    @classmethod
    def from_timing(cls, table: Mapping[str, Any], where: str) -> "StepTime":
        """From an experiment file's ``[timing]`` table: its compute keys, else its window keys (the
        window stands for the compute when none is given, as in `simulate`)."""
        values = {}
        for key in ("compute_s", "compute_per_token_s", "window_s", "window_per_token_s"):
            if table.get(key) is not None:
                values[key] = float(check_number(table[key], f"{where} '{key}' (seconds)", low=0))
        if "compute_s" in values or "compute_per_token_s" in values:
            return cls(values.get("compute_s", 0.0), values.get("compute_per_token_s", 0.0))
        if "window_s" in values or "window_per_token_s" in values:
            return cls(values.get("window_s", 0.0), values.get("window_per_token_s", 0.0))
        raise EngramTierError(f"{where}: no compute_s, compute_per_token_s, window_s or window_per_token_s; "
                              "say what a step computes")


def run_arrivals(arrivals: Arrivals, scheduler: Scheduler, step_time: StepTime) -> Iterator[tuple[float, ScheduledStep]]:
    """(start time, step) of every step the scheduler cuts as the requests arrive, against the clock of
    `StepTime`; request ``i`` is the ``i``-th arrival. The caller updates the scheduler with each step
    (every request runs to its output length) before asking for the next."""
    times, inputs, outputs = arrivals.times_s, arrivals.input_tokens, arrivals.output_tokens
    clock, arrived = 0.0, 0
    while arrived < len(arrivals) or scheduler.has_work:
        if not scheduler.has_work:
            clock = max(clock, float(times[arrived]))
        while arrived < len(arrivals) and times[arrived] <= clock:
            scheduler.add(arrived, int(inputs[arrived]), int(outputs[arrived]))
            arrived += 1
        step = scheduler.schedule()
        yield clock, step
        clock += step_time.seconds(step.n_tokens)


class _TokenStream:
    """Consecutive tokens of a source, starting over from its beginning when it runs out."""

    def __init__(self, source: TokenSource):
        self.source, self.restarts = source, 0
        self._documents = source.documents()
        self._buffer = np.empty(0, np.int64)

    def take(self, n: int) -> np.ndarray:
        parts, have, empty_pass = [self._buffer], self._buffer.size, True
        while have < n:
            doc = next(self._documents, None)
            if doc is None:
                if empty_pass and self.restarts:
                    raise EngramTierError("workload: the token source holds no tokens; give non-empty text")
                self.restarts += 1
                self._documents, empty_pass = self.source.documents(), True
                continue
            parts.append(np.asarray(doc, np.int64))
            have += doc.size
            empty_pass = empty_pass and doc.size == 0
        tokens = np.concatenate(parts)
        self._buffer = tokens[n:]
        return tokens[:n]


def write_workload_trace(source: TokenSource, hasher: NgramHasher, arrivals: Arrivals, scheduler: Scheduler,
                         step_time: StepTime, path, row_bytes: int = 160, chunk_rows: int = 1 << 20,
                         preset: str | None = None, progress: bool = False) -> dict:
    """Write the trace of ``arrivals`` served under ``scheduler`` (see the module docstring); returns a
    summary: requests, tokens, steps, rows, bytes, simulated seconds, source restarts, seconds spent."""
    meta = {"mode": "arrivals", **addressing_meta(hasher, preset), "source": source.describe(),
            "arrivals": arrivals.origin,
            "scheduler": {"max_num_batched_tokens": scheduler.max_num_batched_tokens,
                          "max_num_seqs": scheduler.max_num_seqs},
            "step_time": asdict(step_time)}
    stream, rows_of = _TokenStream(source), {}
    block_rows, counts, columns = [], [], {name: [] for name in STEP_COLUMNS}
    n_block = n_tokens = 0
    clock = 0.0
    started = time.perf_counter()
    with TraceWriter(path, hasher.n_rows, row_bytes, meta, chunk_rows=chunk_rows, step_columns=STEP_COLUMNS) as writer, \
            tqdm(total=len(arrivals), unit="req", disable=not progress, desc="trace", leave=False) as bar:
        for clock, step in run_arrivals(arrivals, scheduler, step_time):
            _hash_admitted(step, rows_of, stream, hasher, arrivals)
            rows = np.concatenate([rows_of[i][s : s + n] for i, s, n in zip(step.ids.tolist(), step.starts.tolist(),
                                                                              step.tokens.tolist(), strict=True)])
            block_rows.append(rows.reshape(-1))
            counts.append(rows.size)
            for name, value in zip(STEP_COLUMNS, (round(clock * 1e6), step.prefill_tokens, step.decode_tokens,
                                                  step.running, step.waiting), strict=True):
                columns[name].append(value)
            n_block += rows.size
            n_tokens += step.n_tokens
            for done in scheduler.update(step).tolist():
                del rows_of[done]
                bar.update(1)
            if n_block >= chunk_rows:
                writer.append(np.concatenate(block_rows), np.array(counts, np.int64), columns)
                block_rows, counts, columns, n_block = [], [], {name: [] for name in STEP_COLUMNS}, 0
        if counts:
            writer.append(np.concatenate(block_rows), np.array(counts, np.int64), columns)
    return {"requests": len(arrivals), "tokens": n_tokens, "steps": writer.n_steps, "rows": writer.n_rows,
            "bytes": writer.bytes_written, "simulated_s": clock, "source_restarts": stream.restarts,
            "seconds": time.perf_counter() - started}


def _hash_admitted(step: ScheduledStep, rows_of: dict, stream: _TokenStream, hasher: NgramHasher,
                   arrivals: Arrivals) -> None:
    """Hash the requests this step admits (first scheduled with nothing computed), each as one sequence
    of the next ``prompt + output - 1`` tokens of the stream (the last output token is never fed)."""
    new = step.ids[step.starts == 0].tolist()  # admitted in arrival order (first come, first served)
    if not new:
        return
    lengths = np.array([arrivals.input_tokens[i] + arrivals.output_tokens[i] - 1 for i in new], np.int64)
    starts = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    rows = hasher.hash_ragged(stream.take(int(starts[-1])), starts).reshape(int(starts[-1]), -1)
    for i, lo, hi in zip(new, starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        rows_of[i] = rows[lo:hi]
