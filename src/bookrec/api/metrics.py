"""Prometheus metrics of the API: requests and latency per route template, store errors, the model
version served and when it was published, and the build.

With several uvicorn workers, `bookrec serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh
directory before the workers start, so every worker writes its samples there and `/metrics`
(answered by any one worker) aggregates all of them.

The model version and the build are labels, so they are not samples in those files: a series
written there can never be removed, and one per version ever served would pile up. They come from
`_InfoCollector`, which reports what the answering worker holds now: one series each, whose label
is replaced when the version changes.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator
from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric

from bookrec import __version__

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
BUNDLE_LOAD_SECONDS = Histogram(
    "bookrec_model_load_seconds", "Time to load a published version's model, catalogue and search index",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
)

# Version ids (bookrec.store.base.new_version_id) start with the UTC time their publish began.
_VERSION_TIME = re.compile(r"^(\d{8}T\d{6})(?:-|$)")


def version_timestamp(version: str) -> float | None:
    """When `version`'s publish began (seconds since the epoch), read from its id; None if the id
    does not carry it."""
    m = _VERSION_TIME.match(version)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc).timestamp()


class _InfoCollector:
    """`bookrec_build_info`, and the model version this process serves with its publish time."""

    def __init__(self) -> None:
        self.model: tuple[str, float | None] | None = None  # one attribute: a scrape never sees half an update

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("bookrec_build_info", "Always 1: the bookrec and Python versions of this server",
                                  labels=["version", "python"])
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        model = self.model
        if model is None:
            return
        version, published_at = model
        info = GaugeMetricFamily("bookrec_model_version_info", "Always 1: the model version this worker serves",
                                 labels=["version"])
        info.add_metric([version], 1)
        yield info
        if published_at is not None:
            yield GaugeMetricFamily("bookrec_model_published_timestamp_seconds",
                                    "When the served model version was published (seconds since the epoch)",
                                    value=published_at)


_INFO = _InfoCollector()
DEFAULT_REGISTRY.register(_INFO)


def set_model_version(version: str, published_at: float | None = None) -> None:
    """The version now served; `published_at` defaults to the time in its id."""
    _INFO.model = (version, published_at if published_at is not None else version_timestamp(version))


def render() -> tuple[bytes, str]:
    """The exposition text (all workers' samples when running multi-process)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_INFO)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
