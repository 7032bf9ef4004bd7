"""The server's Prometheus metrics, named in the style of vLLM's ``vllm:`` metrics.

Request-level metrics (tokens, latencies, requests running and waiting) are updated by the engine as
it goes. The table's own counts are not copied into counters step by step: each scrape asks the engine
for a snapshot taken between steps (`ServeEngine.refresh`), and `_TableCollector` reports the table's
cumulative per-tier counts as they are, so a scrape and ``TieredTable.stats()`` agree exactly; the
per-step stall and step seconds of the steps since the last snapshot go into their histograms then.
Every metric lives in the server's own registry, so several servers can share a process (the tests).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily

disable_created_metrics()  # no ``_created`` series beside every counter and histogram (vLLM turns them off too)

PREFIX = "engramtier:"
# per tier: (metric name after the prefix, `TieredTable.stats()` tier key, help)
TIER_COUNTERS = (
    ("tier_lookups", "lookups", "Unique rows of the steps that reached this tier (its policy's lookups)."),
    ("tier_hits", "hits", "Lookups this tier served (the store serves every lookup that reaches it)."),
    ("tier_rows_read", "rows_read", "Rows this tier actually read (to serve a step or to copy a row to another tier)."),
    ("tier_bytes_read", "bytes_read", "Bytes this tier actually read."),
    ("tier_rows_promoted", "promoted", "Rows this cache tier admitted."),
    ("tier_rows_evicted", "evicted", "Rows this cache tier evicted."),
)
STALL_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)
STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (1e-3, 5e-3, 1e-2, 2e-2, 4e-2, 6e-2, 8e-2, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)


def histogram_quantile(histogram: Histogram, q: float) -> float | None:
    """The ``q`` quantile of what ``histogram`` observed, interpolated linearly within its bucket (as
    Prometheus's ``histogram_quantile`` does; its largest finite bound if it falls beyond); None if it
    observed nothing. The server's closing summary uses it: the histogram holds every step, the table
    only the steps since the last snapshot (`ServeEngine`)."""
    buckets = [(float(s.labels["le"]), s.value) for s in histogram.collect()[0].samples if s.name.endswith("_bucket")]
    total = buckets[-1][1]
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


class _TableCollector:
    """The table's per-tier counts of the last snapshot, as counters labelled by tier."""

    def __init__(self, metrics: "ServeMetrics"):
        self.metrics = metrics

    def collect(self):
        tiers = self.metrics.tiers()
        for name, key, doc in TIER_COUNTERS:
            family = CounterMetricFamily(PREFIX + name, doc, labels=["tier"])
            for tier in tiers:
                family.add_metric([tier["name"]], tier[key])
            yield family


class ServeMetrics:
    """Every metric `engramtier serve` exports, in one registry (``registry``) for /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge(PREFIX + "num_requests_running", "Requests the scheduler runs (admitted, not finished).",
                             registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests waiting to be admitted.", registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens computed.", registry=r)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", registry=r)
        self.request_success = Counter(PREFIX + "request_success", "Requests finished, by finish reason.",
                                       ["finished_reason"], registry=r)
        self.step_stall = Histogram(PREFIX + "step_stall_seconds", "Time a step's forward waited for its Engram rows.",
                                    buckets=STALL_BUCKETS, registry=r)
        self.step_seconds = Histogram(PREFIX + "step_seconds", "Time of a step, from its row request to the next step's.",
                                      buckets=STEP_BUCKETS, registry=r)
        self.step_tokens = Histogram(PREFIX + "step_tokens", "Tokens a step computes (prefill and decode).",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192), registry=r)
        self.time_to_first_token = Histogram(PREFIX + "time_to_first_token_seconds", "From arrival to the first token.",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(PREFIX + "inter_token_latency_seconds", "Between consecutive tokens.",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(PREFIX + "e2e_request_latency_seconds", "From arrival to the last token.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self._lock = threading.Lock()
        self._tiers: list[dict] = []
        r.register(_TableCollector(self))

    def publish_tiers(self, tiers: list[dict]) -> None:
        """Take the table's per-tier stats (`TieredTable.stats()["tiers"]`) as the counters' values."""
        with self._lock:
            self._tiers = [{"name": t["name"], **{key: int(t[key]) for _, key, _ in TIER_COUNTERS}} for t in tiers]

    def tiers(self) -> list[dict]:
        with self._lock:
            return list(self._tiers)
