"""Exception handlers: every error is `{"detail": "<human-readable message>"}`, never exception text.

- store unreachable, hung, missing, corrupt, or an entry that does not decode; nothing published;
  a part of the version missing -> 503 + Retry-After (a store fault is never a 500)
- invalid parameters or body -> 422 with one sentence naming each bad field (and a list)
- HTTPException (404, 400, 413, 405...) -> its status and message
- anything else -> 500 "internal error", with the traceback in the server log only
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from bookrec.api import metrics
from bookrec.api.deps import ServiceUnavailable
from bookrec.api.serving import BundleUnavailable
from bookrec.store import STORE_DOWN, StoreCorrupt, StoreError, StoreUnavailable, VersionGone

log = logging.getLogger(__name__)

STORE_FAILED = "the recommendation store could not answer; retry shortly"

# Next to bookrec_store_errors_total (every store fault): the faults that only a new publish or a
# restored store file cures, so an alert can tell them from an outage that heals by itself.
STORE_CORRUPT = Counter(
    "bookrec_store_corrupt_total", "Requests that failed because stored data could not be read", ["route"]
)


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", "<unmatched>")


def _retry_after(request: Request) -> dict[str, str]:
    return {"Retry-After": str(request.app.state.api.settings.retry_after_seconds)}


def _store_fault(request: Request, kind: str, exc: Exception) -> str:
    route = _route_template(request)
    metrics.STORE_ERRORS.labels(route).inc()
    # The store's messages redact passwords; they may name the SQLite file, which the log may show.
    request.app.state.api.faults.warning(kind, f"{request.method} {route}: {exc}")
    return route


async def store_unavailable(request: Request, exc: Exception) -> Response:
    _store_fault(request, "store unavailable", exc)
    return json_response(503, {"detail": getattr(exc, "reason", STORE_DOWN)}, _retry_after(request))


async def store_corrupt(request: Request, exc: Exception) -> Response:
    """A corrupt SQLite page or a stored entry that does not decode (including one that is not
    JSON: the routes decode stored payloads with orjson, and only stored payloads)."""
    route = _store_fault(request, "store corrupt", exc)
    STORE_CORRUPT.labels(route).inc()
    return json_response(503, {"detail": getattr(exc, "reason", StoreCorrupt.default_reason)}, _retry_after(request))


async def version_gone(request: Request, exc: Exception) -> Response:
    # The version was replaced while this request was answered: resolve afresh from the next one on.
    request.app.state.api.versions.invalidate()
    log.debug("%s %s: %s", request.method, request.url.path, exc)
    return json_response(503, {"detail": VersionGone.default_reason}, {"Retry-After": "1"})


async def store_error(request: Request, exc: Exception) -> Response:
    _store_fault(request, "store error", exc)
    return json_response(503, {"detail": STORE_FAILED}, _retry_after(request))


async def service_unavailable(request: Request, exc: Exception) -> Response:
    reason = getattr(exc, "reason", None) or str(exc)  # our own messages, written for users
    return json_response(503, {"detail": reason}, _retry_after(request))


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("query", "path", "body", "header")]
    return ".".join(parts) if parts else (str(loc[0]) if loc else "request")


async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
    errors = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        # Pydantic prefixes messages from our validators with "Value error, ".
        msg = msg.removeprefix("Value error, ")
        errors.append({"loc": [p if isinstance(p, (str, int)) else str(p) for p in loc], "msg": msg})
    detail = "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    return json_response(422, {"detail": detail, "errors": errors})


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    path = request.scope["path"]
    methods = {m for regex, route_methods in request.app.state.route_methods if regex.match(path) for m in route_methods}
    return ", ".join(sorted(methods))


NO_SUCH_PATH = "no such path; GET / lists the endpoints, GET /docs describes them"


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    if exc.status_code == 404 and detail == "Not Found" and request.scope.get("route") is None:
        detail = NO_SUCH_PATH  # the router's own 404: no route matched the path
    return json_response(exc.status_code, {"detail": detail}, headers or None)


async def unexpected(request: Request, exc: Exception) -> Response:
    # The path is the client's: cut it so one hostile URL cannot flood the log.
    log.exception("unhandled error on %s %.200s", request.method, request.url.path)
    return json_response(500, {"detail": "internal error; it has been logged"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(StoreCorrupt, store_corrupt)
    app.add_exception_handler(orjson.JSONDecodeError, store_corrupt)
    app.add_exception_handler(VersionGone, version_gone)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(ServiceUnavailable, service_unavailable)
    app.add_exception_handler(BundleUnavailable, service_unavailable)
    app.add_exception_handler(RequestValidationError, validation_failed)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
