"""The FastAPI application: `create_app(settings)`.

    uvicorn --factory bookrec.api.main:create_app      # or: bookrec serve

Middleware, outermost first: Prometheus metrics -> request size limit -> CORS -> the routes.
All three are pure ASGI, so a request pays for no extra task or body copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from threadpoolctl import threadpool_limits

from bookrec import __version__
from bookrec.api import errors
from bookrec.api.deps import ApiState
from bookrec.api.middleware import MetricsMiddleware, RequestSizeLimitMiddleware
from bookrec.api.routes import books, health, metrics, recommend, root, stats, users
from bookrec.config import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

DESCRIPTION = """
Precomputed recommendations for every known reader, fold-in recommendations for new readers,
catalogue search and similar books, each predicted rating with a Bayesian credible interval
(`confidence_interval`, at the level in `/model/info` `interval_level`; `uncertainty` is its
half-width).

Errors are `{"detail": "..."}`: 400/404 say what to try instead, 422 names the bad field,
503 (with `Retry-After`) means the store is unreachable or nothing is published yet.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One BLAS thread per process: requests already run in parallel (workers, thread pool), and
        # OpenBLAS' own threads on a busy 2-core machine made a cold start 30x slower, not faster.
        blas_limit = threadpool_limits(limits=1)
        state = ApiState(settings)
        app.state.api = state
        # Load the model in the background: the server accepts requests (and /health tells the
        # truth) even when the store is down at startup.
        warm_up = asyncio.create_task(state.warm_up(), name="warm-up")
        try:
            yield
        finally:
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await warm_up
            await state.aclose()
            blas_limit.restore_original_limits()

    app = FastAPI(
        title="bookrec",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Our own Prometheus metrics cover requests; FastAPI's OpenTelemetry hooks would only look
        # up (unconfigured) providers on every request (~15 us each).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    errors.install(app)
    route_methods = []  # (path regex, methods) of every API route, for the Allow header of a 405
    for module in (recommend, root, health, users, books, stats, metrics):  # the hot route first
        router = module.build_router(settings)
        app.include_router(router)
        route_methods += [(r.path_regex, r.methods or set()) for r in router.routes if hasattr(r, "path_regex")]
    app.state.route_methods = route_methods
    if settings.serve_static:
        # The web page (bookrec/web/static); check_dir=False so the API still starts without it.
        app.mount("/app", StaticFiles(directory=STATIC_DIR, html=True, check_dir=False), name="app")

    origins = [o for o in settings.cors_origins if o]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=False,  # nothing here uses cookies; never "*" together with credentials
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Accept"],
        max_age=600,
    )
    app.add_middleware(RequestSizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware)
    return app
