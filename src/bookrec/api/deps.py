"""Dependencies of the routes: settings, the async store reader, the current published version
(trusted for `settings.version_refresh_seconds`), and the per-version serving bundle (model,
relevance blob, catalogue, search index) loaded once per version and swapped when the version flips.

Every dependency is `async def`: FastAPI runs plain `def` dependencies in a thread pool, which
costs more than the work they do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from bookrec.api import metrics
from bookrec.api.batching import RecommendationBatcher, multi_get
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

    @property
    def cached_version(self) -> str | None:
        return self._version

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
        return self._meta

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


def _single_reads(reader: AsyncStoreReader):
    async def fetch(user_ids: list[int], version: str) -> list[bytes | None]:
        return list(await asyncio.gather(*(reader.get_recommendations(u, version) for u in user_ids)))

    return fetch


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
        # GET /recommend reads go through the batcher: concurrent requests share one round trip.
        self.recommendations = RecommendationBatcher(
            multi_get(self.reader) if settings.batch_store_reads else _single_reads(self.reader), max_batch=128
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


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.api.settings


async def get_reader(request: Request) -> AsyncStoreReader:
    return request.app.state.api.reader


async def get_versions(request: Request) -> VersionTracker:
    return request.app.state.api.versions


async def get_current_version(request: Request) -> str:
    return await request.app.state.api.versions.current()


async def get_bundle(request: Request) -> ServingBundle:
    return await request.app.state.api.versions.bundle()


StateDep = Annotated[ApiState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ReaderDep = Annotated[AsyncStoreReader, Depends(get_reader)]
VersionsDep = Annotated[VersionTracker, Depends(get_versions)]
CurrentVersionDep = Annotated[str, Depends(get_current_version)]
BundleDep = Annotated[ServingBundle, Depends(get_bundle)]
