"""Continuous batching: which requests compute how many tokens in each step, as vLLM's V1 scheduler cuts them.

A request is a few counters: its prompt tokens, the tokens computed so far, the tokens generated so
far and the most it may generate. Every step has a token budget (``max_num_batched_tokens``, vLLM's
default 2048) and admits at most ``max_num_seqs`` running requests (vLLM: 256):

1. running requests first, in the order they were admitted: each gets the tokens it has not computed
   yet (one for a request that is decoding, the rest of its prompt for one whose prefill was cut), as
   many as the budget still holds; a request the budget no longer reaches sits this step out;
2. then waiting requests, first come first served, while budget is left and fewer than
   ``max_num_seqs`` run: each is admitted with as much of its prompt as the budget holds (chunked
   prefill); the rest of the prompt comes in later steps, as a running request.

A request whose computed tokens reach every token it has (its whole prompt, later each token it
sampled) samples one more at the end of the step; it finishes after ``max_tokens`` samples, or when
the caller stops it (an end-of-text token). Its last sampled token is never computed, so a request
runs ``prompt + max_tokens - 1`` tokens through the model.

The same object cuts the steps of a simulated workload (`engramtier.trace.workload`) and of the
server (`engramtier.serve`), so both put the same tokens into the same steps. Where it differs from
vLLM's ``Scheduler.schedule``: no KV-cache blocks are counted, so nothing is ever preempted (vLLM
preempts the newest running request when blocks run out and recomputes it later) and admission is
never refused for memory; no prefix caching (every prompt token is computed); no speculative tokens,
no ``long_prefill_token_threshold`` (a chunk is bounded by the budget alone) and no ``max_model_len``.

The running requests' counters are numpy arrays, so a step of hundreds of decoding requests costs a
few array operations; only admissions are a Python loop (one iteration per request, ever).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engramtier.errors import EngramTierError

DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
DEFAULT_MAX_NUM_SEQS = 256
_COUNTERS = ("ids", "prompt", "computed", "generated", "max_tokens")


@dataclass
class ScheduledStep:
    """One step: per scheduled request (running ones first, then those admitted) its id, the position
    of its first token in this step (``starts``: tokens computed before), the tokens it computes, and
    whether it samples a token after the step (``samples``); and the step's totals."""

    ids: np.ndarray
    starts: np.ndarray
    tokens: np.ndarray
    samples: np.ndarray
    prefill_tokens: int
    decode_tokens: int
    running: int  # requests running once this step's admissions are made
    waiting: int  # requests left waiting
    _slots: np.ndarray = field(repr=False, default=None)  # places of the scheduled requests in the running arrays

    @property
    def n_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


class Scheduler:
    """Continuous batching over per-request counters (see the module docstring)."""

    def __init__(self, max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS):
        for name, value in (("max_num_batched_tokens", max_num_batched_tokens), ("max_num_seqs", max_num_seqs)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise EngramTierError(f"scheduler: {name} must be a whole number >= 1, got {value!r}")
        self.max_num_batched_tokens, self.max_num_seqs = int(max_num_batched_tokens), int(max_num_seqs)
        self._waiting: deque[tuple[int, int, int]] = deque()
        self._running = {name: np.empty(0, np.int64) for name in _COUNTERS}
        self._pending: ScheduledStep | None = None

    @property
    def n_running(self) -> int:
        return int(self._running["ids"].size)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting) or self.n_running > 0

    def add(self, request_id: int, prompt_tokens: int, max_tokens: int) -> None:
        """Queue a request of ``prompt_tokens`` (>= 1) that may sample up to ``max_tokens`` (>= 1) tokens."""
        if prompt_tokens < 1 or max_tokens < 1:
            raise EngramTierError(f"scheduler: request {request_id} needs a prompt of >= 1 token and max_tokens >= 1, "
                                  f"got {prompt_tokens} and {max_tokens}")
        self._waiting.append((int(request_id), int(prompt_tokens), int(max_tokens)))

    def schedule(self) -> ScheduledStep:
        """Cut the next step; `update` must follow before the next `schedule`."""
        if self._pending is not None:
            raise EngramTierError("scheduler: the previous step was not updated; call update(step) after each step")
        run = self._running
        need = run["prompt"] + run["generated"] - run["computed"]  # >= 1 for every running request
        grant = np.clip(self.max_num_batched_tokens - (np.cumsum(need) - need), 0, need)
        budget = self.max_num_batched_tokens - int(grant.sum())
        admitted = []
        while self._waiting and budget > 0 and run["ids"].size + len(admitted) < self.max_num_seqs:
            request_id, prompt, max_tokens = self._waiting.popleft()
            admitted.append((request_id, prompt, 0, 0, max_tokens, min(prompt, budget)))
            budget -= admitted[-1][-1]
        if admitted:
            new = np.array(admitted, np.int64)
            for i, name in enumerate(_COUNTERS):
                run[name] = np.concatenate([run[name], new[:, i]])
            grant = np.concatenate([grant, new[:, -1]])
        slots = np.flatnonzero(grant)
        starts, tokens = run["computed"][slots], grant[slots]
        prompt = run["prompt"][slots]
        prefill = int(np.minimum(tokens, np.maximum(prompt - starts, 0)).sum())
        self._pending = ScheduledStep(
            ids=run["ids"][slots], starts=starts, tokens=tokens,
            samples=starts + tokens == prompt + run["generated"][slots],
            prefill_tokens=prefill, decode_tokens=int(tokens.sum()) - prefill,
            running=int(run["ids"].size), waiting=len(self._waiting), _slots=slots)
        return self._pending

    def update(self, step: ScheduledStep, stopped=()) -> np.ndarray:
        """Advance the counters past ``step`` and retire the requests that finished: those that sampled
        their ``max_tokens``-th token, and the ids in ``stopped`` (an end-of-text token, an aborted
        request). Returns the finished ids."""
        if step is not self._pending:
            raise EngramTierError("scheduler: update takes the step the last schedule() returned")
        self._pending = None
        run = self._running
        run["computed"][step._slots] += step.tokens
        run["generated"][step._slots[step.samples]] += 1
        done = (run["generated"] >= run["max_tokens"]) | np.isin(run["ids"], np.asarray(stopped, np.int64))
        finished = run["ids"][done]
        if finished.size:
            for name in _COUNTERS:
                run[name] = run[name][~done]
        return finished

    def abort(self, request_ids) -> None:
        """Drop requests between steps, waiting or running (a client that went away)."""
        if self._pending is not None:
            raise EngramTierError("scheduler: abort between steps, after update")
        gone = set(int(i) for i in request_ids)
        self._waiting = deque(w for w in self._waiting if w[0] not in gone)
        keep = ~np.isin(self._running["ids"], np.fromiter(gone, np.int64, len(gone)))
        for name in _COUNTERS:
            self._running[name] = self._running[name][keep]
