"""Where a sweep's points run: threads on this machine's every core, or tasks on a Ray cluster.

A sweep is a list of independent points (a policy at a size, a hierarchy to simulate) over one
read-only object they all need (the trace, or the policies' context over it). Each point is
``fn(shared, item)`` for a module-level ``fn``, so that a cluster's workers can import it.

``local`` (the default)
    A thread pool of ``workers`` threads (default: every core). The compiled replays and drivers
    release the GIL, so threads use every core without copying the trace into processes.
``ray`` or ``ray:ADDRESS``
    Each point is a Ray task on a cluster (``ray:auto`` or ``ray:HOST:PORT`` joins a running one,
    ``ray:ray://HOST:10001`` goes through Ray Client; plain ``ray`` starts one on this machine, or uses
    the one this process already joined). The shared object is put into the cluster's object store
    once; the points come back in order, so the results are those of the local run; the progress bar
    advances as tasks finish. A task whose worker process dies (a node lost, a crash) is run again
    elsewhere, up to `RETRIES` times (Ray's task retries; an exception the point raises itself is a
    result, not retried). Workers need engramtier (and any policy module a hierarchy names) importable:
    ``pip install 'engramtier[ray]'`` on every node, or a Ray ``runtime_env``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Sequence

from tqdm import tqdm

from engramtier.errors import EngramTierError

EXECUTORS = ("local", "ray")
RETRIES = 3  # times a Ray task is run again after its worker died


def default_workers() -> int:
    return os.cpu_count() or 1


class LocalExecutor:
    """Points on a pool of ``workers`` threads in this process (default: every core)."""

    in_process = True  # points share this process's memory: caches filled before the pool are shared

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence, desc: str, progress: bool) -> list:
        results: list = [None] * len(items)
        with ThreadPoolExecutor(max_workers=self.workers) as pool, \
                tqdm(total=len(items), desc=desc, unit="point", disable=not progress) as bar:
            futures = {pool.submit(fn, shared, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        return results

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"local, {self.workers} threads"


class RayExecutor:
    """Points as Ray tasks on the cluster at ``address`` (None: this process's, or a new local one)."""

    in_process = False

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise EngramTierError("--executor ray needs Ray, which is not installed: pip install 'engramtier[ray]'"
                                  ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError...
                where = f"at {address}" if address else "on this machine"
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise EngramTierError(f"--executor ray: no Ray cluster {where} ({first}); start one "
                                      "(ray start --head) or give its address as ray:HOST:PORT") from None

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence, desc: str, progress: bool) -> list:
        ray = self.ray
        task = ray.remote(max_retries=RETRIES, retry_exceptions=False)(fn)
        shared_ref = ray.put(shared)
        futures = [task.remote(shared_ref, item) for item in items]
        pending = list(futures)
        with tqdm(total=len(items), desc=f"{desc} (ray)", unit="point", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
        return ray.get(futures)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def describe(self) -> str:
        return f"ray, {int(self.ray.cluster_resources().get('CPU', 0))} CPUs"


def parse_executor(text: str) -> tuple[str, str | None]:
    """(kind, address) of ``local``, ``ray`` or ``ray:ADDRESS``, or one line saying what is wrong."""
    kind, _, address = text.partition(":")
    if kind not in EXECUTORS or (kind == "local" and address) or (kind == "ray" and _ and not address):
        raise EngramTierError(f"--executor {text!r}: write local, ray, or ray:ADDRESS (e.g. ray:auto, ray:10.0.0.5:6379)")
    return kind, address or None


def make_executor(text: str | None, workers: int | None = None) -> LocalExecutor | RayExecutor:
    """The executor ``text`` names (None: local), local ones with ``workers`` threads."""
    kind, address = parse_executor(text or "local")
    return LocalExecutor(workers) if kind == "local" else RayExecutor(address)
