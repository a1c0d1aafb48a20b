"""Prometheus metrics of the API: requests and latency per route template, store errors, model version.

With several uvicorn workers, `bookrec serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh
directory before the workers start, so every worker writes its samples there and `/metrics`
(answered by any one worker) aggregates all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

# Latency buckets around the targets (p99 <= 20 ms for /recommend, p95 <= 50 ms for cold start).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "bookrec_http_requests_total", "HTTP requests answered, by route template and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "bookrec_http_request_duration_seconds",
    "Time from request start to the last body byte, by route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
STORE_ERRORS = Counter("bookrec_store_errors_total", "Requests that failed because the store was unavailable", ["route"])
MODEL_VERSION = Gauge(
    "bookrec_model_version_info", "1 for the model version this worker serves", ["version"], multiprocess_mode="max"
)
BUNDLE_LOAD_SECONDS = Histogram(
    "bookrec_model_load_seconds", "Time to load a published version's model, catalogue and search index",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
)

_current_version: str | None = None


def set_model_version(version: str) -> None:
    global _current_version
    if _current_version is not None and _current_version != version:
        MODEL_VERSION.labels(version=_current_version).set(0)
    MODEL_VERSION.labels(version=version).set(1)
    _current_version = version


def render() -> tuple[bytes, str]:
    """The exposition text (all workers' samples when running multi-process)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
