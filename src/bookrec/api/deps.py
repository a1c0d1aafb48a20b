"""Dependencies of the routes: the app's state (settings, the async store reader, the request
read coalescer, the rate limiters), the current published version (the one cached pointer, trusted for
`settings.version_refresh_seconds`), the per-version serving bundle (model, relevance blob,
catalogue, search index) loaded once per version and swapped when the version flips, and the
request bounds that come from the settings.

Every dependency is `async def`: FastAPI runs plain `def` dependencies in a thread pool, which
costs more than the work they do.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from bookrec.api import metrics
from bookrec.api.coalescing import ReadCoalescer, one_by_one
from bookrec.api.middleware import RateLimiter
from bookrec.api.serving import BundleUnavailable, ServingBundle
from bookrec.config import Settings
from bookrec.store import AsyncStoreReader, StoreError, open_async_reader

log = logging.getLogger(__name__)


class FaultLog:
    """One WARNING line per kind of fault per interval: the first occurrence at once, then, while
    the fault lasts, one line per interval with the count of the occurrences it stands for.

    Under load every failed request is an occurrence: an outage of a few seconds would otherwise
    write thousands of identical lines.
    """

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.log = logger
        self.interval = interval
        self._open: dict[str, list] = {}  # kind -> [count since the last line, last message, window start]

    def warning(self, kind: str, message: str) -> None:
        window = self._open.get(kind)
        if window is not None:
            window[0] += 1
            window[1] = message
            return
        self.log.warning("%s: %s", kind, message)
        self._open[kind] = [0, message, time.monotonic()]
        self._schedule(kind)

    def _schedule(self, kind: str) -> None:
        try:
            asyncio.get_running_loop().call_later(self.interval, self._close, kind)
        except RuntimeError:  # no event loop (a synchronous caller): nothing to summarise later
            self._open.pop(kind, None)

    def _close(self, kind: str) -> None:
        window = self._open.pop(kind, None)
        if window is None or not window[0]:
            return
        count, message, started = window
        self.log.warning("%s: %d more in the last %.0f s (the last: %s)", kind, count, time.monotonic() - started, message)
        self._open[kind] = [0, message, time.monotonic()]  # still happening: keep counting, not logging
        self._schedule(kind)


class ServiceUnavailable(Exception):
    """Answered with 503 + Retry-After: nothing published yet, or a version lacks a part."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class VersionTracker:
    """The current version pointer and what is loaded for it.

    The pointer is re-read from the store at most every `version_refresh_seconds`, so the hot
    path costs no extra round trip and a flip is seen within that time without a restart. When
    the pointer moves, the new version's bundle starts loading in a worker thread; requests that
    need a bundle keep using the previous one until the new one is ready (a cold start during a
    flip is answered from the old model rather than waiting seconds), and they report which
    version answered them.
    """

    def __init__(self, settings: Settings, reader: AsyncStoreReader, faults: FaultLog | None = None) -> None:
        self.settings = settings
        self.reader = reader
        self.faults = faults or FaultLog(log, settings.fault_log_interval_seconds)
        self._version: str | None = None
        self._checked_at = float("-inf")
        self._bundle: ServingBundle | None = None
        self._loading: dict[str, asyncio.Task[ServingBundle]] = {}
        self._meta: tuple[str, bytes, dict[str, Any]] | None = None
        self._meta_bodies: dict[tuple[str, bool, bool], bytes] = {}  # (version, traces, gzip) -> body
        self._failed: dict[str, float] = {}  # version -> when its load failed (retried after Retry-After)

    # --- the pointer -------------------------------------------------------------------------
    async def current(self, fresh: bool = False) -> str:
        now = time.monotonic()
        if not fresh and self._version is not None and now - self._checked_at < self.settings.version_refresh_seconds:
            return self._version
        version = await self.reader.current_version()
        self._checked_at = time.monotonic()
        if version is None:
            self._version = None
            raise ServiceUnavailable("no model version is published yet: run `bookrec batch` to publish one")
        if version != self._version:
            if self._version is not None:
                log.info("published version changed: %s -> %s", self._version, version)
            self._version = version
            metrics.set_model_version(version)
            self._start_loading(version)
        return version

    def invalidate(self) -> None:
        """Resolve the pointer afresh on the next request (a read found its version gone)."""
        self._checked_at = float("-inf")

    # --- the bundle --------------------------------------------------------------------------
    def _start_loading(self, version: str) -> asyncio.Task[ServingBundle]:
        task = self._loading.get(version)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version), name=f"load-bundle-{version}")
            self._loading[version] = task
            task.add_done_callback(lambda t, v=version: self._loaded(v, t))
        return task

    def _loaded(self, version: str, task: asyncio.Task[ServingBundle]) -> None:
        self._loading.pop(version, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Logged here and retried by the next request that needs the bundle.
            self.faults.warning("serving bundle not loaded", f"version {version}: {type(exc).__name__}: {exc}")
            self._failed[version] = time.monotonic()
            return
        self._failed.pop(version, None)
        bundle = task.result()
        if self._bundle is None or version == self._version:
            self._bundle = bundle
        # The catalogue and search index are millions of long-lived objects: without this, every
        # full collection walks them all (pauses of hundreds of ms under load, seen as p99 spikes).
        # Frozen objects are still freed by reference counting when a newer version replaces them.
        gc.collect()
        gc.freeze()

    async def _load(self, version: str) -> ServingBundle:
        catalog_blob = await self.reader.get_blob("catalog", version)
        model_blob = await self.reader.get_blob("serving_model", version)
        meta_blob = await self.reader.get_blob("meta", version)
        relevance_blob = await self.reader.get_blob("relevance", version)  # None in older versions
        meta = _parse_json(meta_blob)
        with metrics.BUNDLE_LOAD_SECONDS.time():
            return await asyncio.to_thread(
                ServingBundle.build, version, catalog_blob, model_blob, meta, self.settings.serving_max_samples,
                relevance_blob,
            )

    async def bundle(self) -> ServingBundle:
        """The bundle of the current version, or of the previous one while the current is loading."""
        version = await self.current()
        bundle = self._bundle
        if bundle is not None and bundle.version == version:
            return bundle
        task = self._loading.get(version)
        if task is None:
            failed_at = self._failed.get(version)
            if failed_at is not None and time.monotonic() - failed_at < self.settings.retry_after_seconds:
                if bundle is not None:
                    return bundle
                raise ServiceUnavailable("the published model version could not be loaded; retrying shortly")
            task = self._start_loading(version)
        if bundle is not None:
            return bundle  # stale while the new one loads (see the class docstring)
        try:
            return await asyncio.shield(task)
        except StoreError:
            raise
        except Exception as exc:
            log.exception("serving bundle of version %s failed to load", version)
            raise ServiceUnavailable("the published model version could not be loaded") from exc

    # --- the meta blob (small; cached per version) -------------------------------------------
    async def meta(self) -> tuple[str, bytes, dict[str, Any]]:
        version = await self.current()
        cached = self._meta
        if cached is not None and cached[0] == version:
            return cached
        blob = await self.reader.get_blob("meta", version)
        if blob is None:
            raise ServiceUnavailable(f"model version {version} has no metadata")
        parsed = _parse_json(blob) or {}
        self._meta = (version, blob, parsed)
        self._meta_bodies = {}
        return self._meta

    async def meta_body(self, traces: bool, gzipped: bool) -> tuple[str, bytes]:
        """The meta blob as `/model/info` sends it: with or without the per-sweep traces (most of
        its size), gzip-compressed or not; each variant built once per version."""
        version, blob, parsed = await self.meta()
        key = (version, traces, gzipped)
        body = self._meta_bodies.get(key)
        if body is None:
            body = blob if traces else orjson.dumps({k: v for k, v in parsed.items() if k != "traces"})
            if gzipped:  # about 20 ms for a long run's traces: off the event loop
                body = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
            self._meta_bodies[key] = body
        return version, body

    async def aclose(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        self._loading.clear()


def _parse_json(blob: bytes | None) -> dict[str, Any] | None:
    if blob is None:
        return None
    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError:
        log.warning("a published JSON blob is not valid JSON")
        return None
    return value if isinstance(value, dict) else None


class ApiState:
    """Everything the app holds for its lifetime (created by the lifespan in `main.py`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.faults = FaultLog(log, settings.fault_log_interval_seconds)
        self.reader = open_async_reader(
            settings.store_url, settings.store_prefix, timeout=settings.store_timeout_seconds,
            pool_size=settings.store_pool_size,
        )
        self.versions = VersionTracker(settings, self.reader, self.faults)
        # GET /recommend reads go through the coalescer: concurrent requests share one round trip.
        self.recommendations = ReadCoalescer(
            self.reader.get_recommendations_many if settings.coalesce_store_reads else one_by_one(self.reader)
        )
        # One bucket per client for each costly endpoint (both forms of the search share one).
        self.cold_start_limit = RateLimiter(
            settings.rate_limit_cold_start_per_minute, settings.rate_limit_cold_start_burst,
            settings.rate_limit_max_clients, "cold-start",
        )
        self.search_limit = RateLimiter(
            settings.rate_limit_search_per_minute, settings.rate_limit_search_burst,
            settings.rate_limit_max_clients, "search",
        )

    async def warm_up(self) -> None:
        """Load the current version's bundle at startup; a store that is down is not an error here."""
        try:
            await self.versions.bundle()
        except StoreError as exc:
            # The message names what is wrong (a mistyped sqlite path: "... does not exist"); the
            # store redacts passwords from it.
            log.warning("starting without a loaded model: %s (%s)", getattr(exc, "reason", "store error"), exc)
        except (ServiceUnavailable, BundleUnavailable) as exc:
            log.warning("starting without a loaded model: %s", getattr(exc, "reason", None) or exc)

    async def aclose(self) -> None:
        await self.versions.aclose()
        await self.reader.aclose()


# --- the dependencies --------------------------------------------------------------------------


async def get_state(request: Request) -> ApiState:
    return request.app.state.api


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.api.settings


async def get_bundle(request: Request) -> ServingBundle:
    return await request.app.state.api.versions.bundle()


async def limit_cold_starts(request: Request) -> None:
    await request.app.state.api.cold_start_limit(request)


async def limit_searches(request: Request) -> None:
    await request.app.state.api.search_limit(request)


StateDep = Annotated[ApiState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
BundleDep = Annotated[ServingBundle, Depends(get_bundle)]


# --- upper bounds set by the settings ----------------------------------------------------------
# The routes are module-level and shared by every app, so their declarations carry only fixed
# constraints. A bound that comes from the settings is checked by the handler (`check_bounds`,
# naming the setting) and written into each app's OpenAPI document from these tables
# (`document_bounds`); tests/test_api_hardening.py holds the two to each other.

# (path, method, query parameter) -> the setting that bounds it from above
QUERY_BOUNDS: dict[tuple[str, str, str], str] = {
    ("/recommend/{user_id}", "get", "top_k"): "max_top_k",
    ("/books/search", "get", "limit"): "max_search_results",
    ("/books", "get", "limit"): "max_page_size",
    ("/books/{isbn}/similar", "get", "n"): "max_top_k",
    ("/users", "get", "limit"): "max_page_size",
    ("/users", "get", "random"): "max_random_users",
}
# (body model, field) -> the setting that bounds its value (or, for a list, its length)
BODY_BOUNDS: dict[tuple[str, str], str] = {
    ("ColdStartRequest", "ratings"): "max_cold_start_ratings",
    ("ColdStartRequest", "top_k"): "max_top_k",
    ("SearchRequest", "limit"): "max_search_results",
}


def check_bounds(settings: Settings, *checks: tuple[tuple[str, str], Any, str]) -> None:
    """422 for every `(location, name), value, setting` whose value (or list length) exceeds the setting,
    worded as pydantic words its own bounds."""
    errors: list[dict[str, Any]] = []
    for loc, value, setting in checks:
        bound = getattr(settings, setting)
        if isinstance(value, list) and len(value) > bound:
            errors.append({"type": "too_long", "loc": loc, "input": value,
                           "ctx": {"field_type": "List", "max_length": bound, "actual_length": len(value)}})
        elif isinstance(value, int) and value > bound:
            errors.append({"type": "less_than_equal", "loc": loc, "input": value, "ctx": {"le": bound}})
    if errors:
        raise RequestValidationError(ValidationError.from_exception_data("bounds", errors).errors(include_url=False))


def document_bounds(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`document` (an OpenAPI dict) with the bounds of QUERY_BOUNDS and BODY_BOUNDS filled in."""
    for (path, method, name), setting in QUERY_BOUNDS.items():
        (parameter,) = [p for p in document["paths"][path][method]["parameters"] if p["name"] == name]
        schema = parameter["schema"]
        # an optional parameter: the bound belongs to its integer alternative
        target = next((s for s in schema.get("anyOf", ()) if s.get("type") == "integer"), schema)
        target["maximum"] = getattr(settings, setting)
    for (model, name), setting in BODY_BOUNDS.items():
        field = document["components"]["schemas"][model]["properties"][name]
        field["maxItems" if field.get("type") == "array" else "maximum"] = getattr(settings, setting)
    return document
