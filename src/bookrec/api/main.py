"""The FastAPI application: `create_app(settings)`.

    uvicorn --factory bookrec.api.main:create_app      # or: bookrec serve

Middleware, outermost first: Prometheus metrics -> request size limit -> HEAD as GET -> CORS ->
the routes. All are pure ASGI, so a request pays for no extra task or body copy.

The web page (/app/) and the API docs (/docs, /redoc, their assets from the fastapi-offline
package: no CDN) are served with security headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from functools import partial
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from threadpoolctl import threadpool_limits

from bookrec import __version__
from bookrec.api import errors
from bookrec.api.deps import ApiState, document_bounds
from bookrec.api.middleware import (
    HeadAsGetMiddleware,
    MetricsMiddleware,
    RequestSizeLimitMiddleware,
    SecurityHeaders,
)
from bookrec.api.routes import books, health, metrics, recommend, root, stats, users
from bookrec.api.static import PageFiles
from bookrec.config import Settings, get_settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
# Swagger UI and ReDoc bundles, shipped by the fastapi-offline package (MIT).
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DOCS_ASSETS_URL = "/docs-assets"

# The page's own policy (its index.html carries the same as a meta tag), plus what only a header
# can say: frame-ancestors. The page has no inline script or style; covers come from other hosts.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' http: https: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Swagger UI and ReDoc start from an inline script and style themselves inline; ReDoc runs a
# worker from a blob. Everything else is same-origin.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
        "base-uri 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

DESCRIPTION = """
Precomputed recommendations for every known reader, fold-in recommendations for new readers,
catalogue search and similar books, each predicted rating with a Bayesian credible interval
(`confidence_interval`, at the level in `/model/info` `interval_level`; `uncertainty` is its
half-width).

Errors are `{"detail": "..."}`: 400/404 say what to try instead, 422 names the bad field,
429 (with `Retry-After`) means this address sent too many cold starts or searches, 503 (with
`Retry-After`) that the store is unreachable or nothing is published yet.
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
        docs_url=None,
        redoc_url=None,
        # Starlette's trailing-slash redirect builds an absolute URL from the Host header.
        redirect_slashes=False,
    )
    errors.install(app)
    routers = [module.router for module in (recommend, root, health, users, books, stats, metrics)]
    for router in routers:  # the hot route first
        app.include_router(router)
    default_openapi = app.openapi

    def openapi() -> dict:
        # FastAPI caches the document: the bounds from the settings are written into it once.
        return app.openapi_schema or document_bounds(default_openapi(), settings)

    app.openapi = openapi  # type: ignore[method-assign]
    _add_docs(app)
    if settings.serve_static:
        @app.get("/app", include_in_schema=False)
        async def page_redirect() -> Response:
            # Relative: never built from the Host header; "app/" also holds behind a path prefix.
            return RedirectResponse("app/", status_code=307)

        # The web page (bookrec/web/static); check_dir=False so the API still starts without it.
        page = PageFiles(directory=STATIC_DIR, html=True, check_dir=False)
        app.mount("/app", SecurityHeaders(page, PAGE_HEADERS), name="app")

    app.state.route_methods = _route_methods([route for router in routers for route in router.routes] + app.routes)
    origins = [o for o in settings.cors_origins if o]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials=False,  # nothing here uses cookies; never "*" together with credentials
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Accept"],
        max_age=600,
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(RequestSizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware)
    return app


def _route_methods(routes: list) -> list[tuple[Any, set[str], bool]]:
    """(path regex, methods, fixed path?) of every route and mount, for the Allow header of a 405."""
    out = []
    for route in routes:
        if isinstance(route, Mount):
            out.append((route.path_regex, {"GET", "HEAD"}, False))
        elif hasattr(route, "path_regex"):
            out.append((route.path_regex, set(getattr(route, "methods", None) or ()), "{" not in route.path))
    return out


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, from local files (FastAPI's defaults load a CDN)."""
    app.mount(DOCS_ASSETS_URL, SecurityHeaders(StaticFiles(directory=DOCS_ASSETS), DOCS_HEADERS), name="docs-assets")
    oauth_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def page(html: HTMLResponse) -> HTMLResponse:
        html.headers.update(DOCS_HEADERS)
        return html

    def docs_page(request: Request, render: Callable[..., HTMLResponse], name: str, **urls: str) -> HTMLResponse:
        """The page ``render`` makes, titled ``name``, given the spec's URL and ``urls`` under the
        request's root path: behind a proxy's path prefix, the browser must ask for them there."""
        root = request.scope.get("root_path", "")
        return page(render(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - {name}",
            **{argument: f"{root}{url}" for argument, url in urls.items()},
        ))

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return docs_page(
            request, partial(get_swagger_ui_html, swagger_ui_parameters=app.swagger_ui_parameters), "Swagger UI",
            oauth2_redirect_url=oauth_redirect,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get(oauth_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return page(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return docs_page(
            request, partial(get_redoc_html, with_google_fonts=False), "ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )
