"""Prometheus metrics, held in a registry per app so several apps (tests, workers) never collide.

With several worker processes (`vae-serve` sets PROMETHEUS_MULTIPROC_DIR to a temporary directory for them),
prometheus_client writes every value to a per-process file there, and `/metrics` in any worker reports the
sum over all workers (counters, histograms, the queue gauge) or the minimum over live ones (model loaded), so
a scrape never depends on which worker answers it.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Request latency spans ~100 us (cached decode on GPU) to seconds (large uploads).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Each loaded version of a model has its own batchers, so their series are told apart by version.
_GRAPH_LABELS = ["model", "version", "graph"]


class Metrics:
    def __init__(self) -> None:
        r = CollectorRegistry()
        # What /metrics exposes: this app's own metrics, or everything every worker wrote.
        self.registry = r
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if shared:
            from prometheus_client import multiprocess

            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=shared)
        self.requests = Counter(
            "vae_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "vae_http_request_duration_seconds", "HTTP request latency by route template.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_items = Gauge(
            "vae_queue_items", "Items waiting in a model version's graph's batch queue.", _GRAPH_LABELS,
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.batch_size = Histogram(
            "vae_batch_size", "Items per onnxruntime call.", _GRAPH_LABELS,
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "vae_inference_seconds", "Wall time of one onnxruntime call.", _GRAPH_LABELS,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "vae_rejected", "Requests refused by a full queue (503).", _GRAPH_LABELS, registry=r
        )
        self.dropped = Counter(
            "vae_dropped_items", "Queued items never run because their request ended first (its timeout, or "
            "the client left).", _GRAPH_LABELS, registry=r,
        )  # fmt: skip
        self.model_loaded = Gauge(
            "vae_model_loaded", "1 when a model is loaded, verified and warm (in every worker); 0 if not.",
            ["model"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        # labels() hashes and locks on every call; children are cached per label set (a bounded set: route
        # templates, methods and statuses).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
