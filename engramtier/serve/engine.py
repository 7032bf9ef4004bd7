"""The serving engine: one thread runs the scheduler's steps through the model over a TieredTable.

Each scheduler step (`engramtier.trace.schedule.Scheduler`, the one workload traces are cut by) is
ONE TieredTable step: every scheduled sequence's new tokens are hashed with its own history (its KV
cache's last N-1 tokens, `EngramLM.row_ids` with ``advance=False``), the step's row ids are requested
from the table together (one `prefetch` per Engram layer, all sequences' tokens back to back, in the
scheduler's order: what a workload trace's step holds), and then each sequence runs its own forward
with its own KV cache, reading its slice of the step's rows through `_SequenceRows`. The forwards run
one after another (compute efficiency on a CPU is not the point here); the Engram traffic, and the
stall of the first forward that waits for it, are those of one batched step.

The engine thread is the only one that touches the model, the scheduler and the table (prefetch, wait,
finish, stats, step_records, forget_steps, recorded_trace, close). HTTP handlers hand it requests
(`submit`), aborts and snapshot requests (`refresh`) through a condition variable, and it hands tokens
back to each request's asyncio queue with ``call_soon_threadsafe``.

Sampling and decoding are `generate`'s (`engramtier.serve.generate.sample`, each token's raw bytes
through an incremental UTF-8 decoder), so greedy completions equal `engramtier generate`'s.
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engramtier.errors import EngramTierError
from engramtier.serve.generate import sample
from engramtier.serve.metrics import ServeMetrics
from engramtier.trace.build import addressing_meta
from engramtier.trace.schedule import ScheduledStep, Scheduler
from engramtier.trace.workload import STEP_COLUMNS

# Under load the engine publishes its steps (histograms, tier counters) at least this often, without a
# scrape or an idle moment, and the table then keeps them only in its totals: memory stays flat.
PUBLISH_STEPS = 1024


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` requests: the server answers 429."""


class EngineStopped(Exception):
    """The engine is stopping or has failed: the server answers 503."""


@dataclass
class Completion:
    """One prompt being completed: what it asks for, where its tokens go, and its decoding state.

    Events put on ``events`` (an asyncio queue of ``loop``): ``(index, "text", delta)``,
    ``(index, "done", finish_reason)`` and ``(index, "error", message)``."""

    prompt_ids: np.ndarray
    max_tokens: int
    temperature: float
    top_k: int
    ignore_eos: bool
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    index: int = 0
    id: int = -1
    arrived: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    ids: np.ndarray | None = None  # the prompt, then each sampled token: the tokens the forwards read
    cache: Any = None
    generator: torch.Generator | None = None
    last_token_at: float | None = None
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def emit(self, kind: str, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, payload))
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass


class _SequenceRows:
    """One sequence's view of its step's rows: the `RowSource` its forward reads. The model asks for
    each Engram layer's rows in layer order; each answer is rows ``lo:hi`` of the step's handle for that
    layer, after checking the forward asks for exactly the ids the step was built from."""

    def __init__(self, handles: list, ids: torch.Tensor, lo: int, hi: int, n_rows: int, row_bytes: int):
        self.handles, self.ids, self.lo, self.hi = handles, ids, lo, hi
        self.n_rows, self.row_bytes = n_rows, row_bytes
        self._layer = 0

    def prefetch(self, row_ids: torch.Tensor) -> "_SliceHandle":
        layer, self._layer = self._layer, self._layer + 1
        if not torch.equal(row_ids, self.ids[:, :, layer]):
            raise EngramTierError("serve: a forward asked for other rows than its step fetched; this is a bug")
        return _SliceHandle(self.handles[layer], self.lo, self.hi)


class _SliceHandle:
    def __init__(self, handle, lo: int, hi: int):
        self.handle, self.lo, self.hi = handle, lo, hi

    def wait(self) -> torch.Tensor:
        return self.handle.wait()[self.lo : self.hi].unsqueeze(0)


class ServeEngine:
    """Runs completions through ``model`` (an `EngramLM` on ``device``) with its table served by
    ``table`` (a `TieredTable`), steps cut by ``scheduler``. ``max_queue``: most waiting requests
    before `submit` refuses (None: no limit). ``record_trace``: the table records its steps (the table
    must be opened with ``record_trace=True``) and `recorded` returns them with the per-step columns."""

    def __init__(self, model, tokenizer, table, scheduler: Scheduler, metrics: ServeMetrics, *, device,
                 max_queue: int | None = None, record_trace: bool = False, source: dict | None = None):
        self.model, self.tokenizer, self.table, self.scheduler = model, tokenizer, table, scheduler
        self.metrics, self.device, self.max_queue = metrics, device, max_queue
        self.end_token = tokenizer.base.end_token_id
        self.source = source or {}
        self._cond = threading.Condition()
        self._inbox: list[Completion] = []
        self._aborts: list[int] = []
        self._refreshes: list[Future] = []
        self._stopping = False
        self._waiting = 0  # requests not admitted yet, as of the last step (under _cond)
        self.failure: BaseException | None = None
        self._next_id = 0
        self._active: dict[int, Completion] = {}
        self._observed = 0  # step records already in the histograms
        self._stepped = False  # steps ran since the last snapshot
        self._unpublished = 0  # how many
        self._started = time.perf_counter()
        self._columns: dict[str, list[int]] | None = {name: [] for name in STEP_COLUMNS} if record_trace else None
        self._thread = threading.Thread(target=self._run, name="engramtier-engine", daemon=True)

    # --- called from the HTTP side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, completions: list[Completion]) -> None:
        """Queue completions (one request's prompts, all or none), or raise `QueueFull` / `EngineStopped`."""
        with self._cond:
            if self._stopping or self.failure is not None:
                raise EngineStopped("the server is shutting down" if self._stopping else f"the engine failed: {self.failure}")
            if self.max_queue is not None and self._waiting + len(self._inbox) + len(completions) > self.max_queue:
                raise QueueFull(f"the queue is full ({self._waiting + len(self._inbox)} requests waiting, "
                                f"--max-queue {self.max_queue}); retry later")
            for completion in completions:
                completion.id, self._next_id = self._next_id, self._next_id + 1
                self._inbox.append(completion)
            self.metrics.waiting.set(self._waiting + len(self._inbox))
            self._cond.notify()

    def abort(self, completions: list[Completion]) -> None:
        """Drop completions whose client went away (finished ones are ignored)."""
        with self._cond:
            self._aborts += [c.id for c in completions if c.finish_reason is None]
            self._cond.notify()

    def refresh(self) -> Future:
        """A future resolved once the engine has published a snapshot of the table (between steps)."""
        future: Future = Future()
        with self._cond:
            if not self._thread.is_alive():
                future.set_result(None)
                return future
            self._refreshes.append(future)
            self._cond.notify()
        return future

    def stop(self) -> None:
        """Finish every queued and running completion, then stop the thread (the table stays open)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def healthy(self) -> bool:
        return self.failure is None and not self._stopping and self._thread.is_alive()

    # --- the engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._aborts or self._refreshes or self._stopping
                           or self.scheduler.has_work or self._stepped):
                    self._cond.wait()
                inbox, self._inbox = self._inbox, []
                self._waiting += len(inbox)  # they join the scheduler's queue: still waiting for `submit`'s count
                aborts, self._aborts = self._aborts, []
                refreshes, self._refreshes = self._refreshes, []
                stopping = self._stopping
            self._admit(inbox)
            self._abort(aborts)
            if refreshes or (self._stepped and not self.scheduler.has_work) or self._unpublished >= PUBLISH_STEPS:
                self._snapshot(refreshes)
            if self.scheduler.has_work:
                try:
                    self._step()
                except BaseException as err:  # the table refuses to go on after a failed step
                    self._fail(err)
            elif stopping:
                self._snapshot([])
                return

    def _admit(self, inbox: list[Completion]) -> None:
        for c in inbox:
            if self.failure is not None:
                c.emit("error", f"the engine failed: {self.failure}")
                continue
            n = c.prompt_ids.size
            c.ids = np.zeros(n + c.max_tokens, np.int64)
            c.ids[:n] = c.prompt_ids
            c.cache = self.model.new_cache(1, n + c.max_tokens)
            if c.temperature > 0:
                c.generator = torch.Generator().manual_seed(c.seed if c.seed is not None else
                                                            int(np.random.SeedSequence().generate_state(1)[0]))
            self._active[c.id] = c
            self.scheduler.add(c.id, n, c.max_tokens)

    def _abort(self, ids: list[int]) -> None:
        ids = [i for i in ids if i in self._active]
        if ids:
            self.scheduler.abort(ids)
            for i in ids:
                self._finish(self._active[i], "abort")
            self._publish_counts()

    def _step(self) -> None:
        step = self.scheduler.schedule()
        start_us = round((time.perf_counter() - self._started) * 1e6)
        sequences = [self._active[i] for i in step.ids.tolist()]
        chunks, row_ids = [], []
        for c, s, n in zip(sequences, step.starts.tolist(), step.tokens.tolist(), strict=True):
            chunk = torch.from_numpy(c.ids[s : s + n]).to(self.device).unsqueeze(0)
            chunks.append(chunk)
            row_ids.append(self.model.row_ids(chunk, c.cache, advance=False))  # [1, n, layers, rows per layer]
        step_ids = torch.cat(row_ids, dim=1)[0]
        handles = [self.table.prefetch(step_ids[:, layer]) for layer in range(step_ids.shape[1])]  # one table step
        bounds = np.concatenate([[0], np.cumsum(step.tokens)]).tolist()
        stopped = []
        with torch.no_grad():
            for i, (c, chunk) in enumerate(zip(sequences, chunks, strict=True)):
                rows = _SequenceRows(handles, row_ids[i], bounds[i], bounds[i + 1], self.table.n_rows, self.table.row_bytes)
                logits = self.model(chunk, rows=rows, kv_cache=c.cache)
                if step.samples[i] and self._sampled(c, logits[:, -1]):
                    stopped.append(c.id)
        self.metrics.prompt_tokens.inc(step.prefill_tokens)
        self.metrics.step_tokens.observe(step.n_tokens)
        self._record(step, start_us)
        for i in self.scheduler.update(step, stopped).tolist():
            c = self._active[i]
            self._finish(c, "stop" if i in stopped else "length")
        self._stepped = True
        self._unpublished += 1
        self._publish_counts()

    def _sampled(self, c: Completion, logits: torch.Tensor) -> bool:
        """Sample ``c``'s next token and emit its text; True when it is the end-of-text token (and ``c`` does
        not ignore it)."""
        top_k = 0 if c.temperature == 0 else (c.top_k if c.top_k > 0 else logits.shape[-1])
        token = int(sample(logits, top_k, c.temperature or 1.0, c.generator)[0])
        now = time.perf_counter()
        if c.last_token_at is None:
            self.metrics.time_to_first_token.observe(now - c.arrived)
        else:
            self.metrics.inter_token_latency.observe(now - c.last_token_at)
        c.last_token_at = now
        if token == self.end_token and not c.ignore_eos:
            return True
        c.ids[c.prompt_ids.size + len(c.generated)] = token
        c.generated.append(token)
        self.metrics.generation_tokens.inc()
        text = c._decoder.decode(self.tokenizer.base.token_bytes(token) or b"")
        if text:
            c.emit("text", text)
        return False

    def _finish(self, c: Completion, reason: str) -> None:
        del self._active[c.id]
        c.finish_reason = reason
        c.cache = None
        tail = c._decoder.decode(b"", final=True)
        if tail:
            c.emit("text", tail)
        c.emit("done", reason)
        self.metrics.request_success.labels(finished_reason=reason).inc()
        self.metrics.e2e_latency.observe(time.perf_counter() - c.arrived)

    def _record(self, step: ScheduledStep, start_us: int) -> None:
        if self._columns is not None:
            for name, value in zip(STEP_COLUMNS, (start_us, step.prefill_tokens, step.decode_tokens, step.running,
                                                  step.waiting), strict=True):
                self._columns[name].append(value)

    def _publish_counts(self) -> None:
        with self._cond:
            self._waiting = self.scheduler.n_waiting
            self.metrics.waiting.set(self._waiting + len(self._inbox))
        self.metrics.running.set(self.scheduler.n_running)

    def _snapshot(self, refreshes: list[Future]) -> None:
        """Close the table's last step, put the new steps' stall and time into the histograms and its
        per-tier counts into the counters, and have the table keep those steps only in its totals (a
        server up for days keeps no record per step); resolve ``refreshes``."""
        try:
            if self._stepped and self.failure is None:
                self.table.finish()
                records = self.table.step_records(self._observed)  # only the steps since the last snapshot
                for record in records:
                    self.metrics.step_stall.observe(record["stall_s"])
                    self.metrics.step_seconds.observe(record["step_s"])
                self._observed += len(records)
                self.table.forget_steps(self._observed)
                self.metrics.publish_tiers(self.table.stats()["tiers"])
            self._stepped = False
            self._unpublished = 0
        except BaseException as err:
            self._fail(err)
        for future in refreshes:
            future.set_result(None)

    def _fail(self, err: BaseException) -> None:
        """A step failed: every completion in flight ends with the error, and the engine takes no more."""
        self.failure = err
        self._stepped, self._unpublished = False, 0
        message = f"the engine failed: {err}"
        for c in list(self._active.values()):
            del self._active[c.id]
            c.finish_reason = "error"
            c.emit("error", message)
        self.scheduler = Scheduler(self.scheduler.max_num_batched_tokens, self.scheduler.max_num_seqs)  # nothing left to run
        self._publish_counts()

    # --- after stop ----------------------------------------------------------------------------------

    def recorded(self) -> tuple[Any, dict[str, np.ndarray]]:
        """The served steps as a `RowTrace` and its per-step columns (after `stop`)."""
        meta = {"mode": "served", **addressing_meta(self.model.hasher), "source": self.source,
                "scheduler": {"max_num_batched_tokens": self.scheduler.max_num_batched_tokens,
                              "max_num_seqs": self.scheduler.max_num_seqs}}
        return self.table.recorded_trace(meta), {k: np.array(v, np.int64) for k, v in self._columns.items()}
