"""Prometheus metrics of one server process (``GET /metrics``).

Each app has its own registry, so several apps in one process (tests) never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, latency, batch sizes, queue depth and model state."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("milco_serve_requests", "Requests answered, by endpoint and "
                                "HTTP status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("milco_serve_request_seconds", "Time to answer a request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("milco_serve_batch_texts", "Texts per model call",
                                     buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("milco_serve_batch_seconds", "Time of one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("milco_serve_queue_seconds", "Time a request waited "
                                       "for its model call (queue and batching)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("milco_serve_queue_texts", "Texts waiting for the model", registry=r)
        self.model_loaded = Gauge("milco_serve_model_loaded", "1 once the model is loaded",
                                  registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_texts.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
