"""Exception handlers: every error is `{"detail": "<human-readable message>"}`, never exception text.

- store unreachable, hung, missing, corrupt, or an entry that does not decode; nothing published;
  a part of the version missing -> 503 + Retry-After (a store fault is never a 500)
- invalid parameters or body -> 422 with one sentence naming each bad field (and a list); a body
  that is not JSON -> 400, or 415 when its Content-Type says it is something else
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
    # Only the leading source is dropped: a body field may be named "query" itself.
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("query", "path", "body", "header") else loc)]
    return ".".join(parts) if parts else (str(loc[0]) if loc else "request")


BODY_NOT_JSON = "the request body is not valid JSON"
NOT_JSON_TYPE = "send the request body as JSON, with Content-Type: application/json"
PARSE_FAILED = "There was an error parsing the body"  # FastAPI's 400 for a body that does not decode


def _json_content_type(request: Request) -> bool:
    """Whether the request's Content-Type is one FastAPI parses as JSON (or absent, which it also parses)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
    raw = exc.errors()
    body_errors = [e for e in raw if tuple(e.get("loc", ()))[:1] == ("body",)]
    if body_errors and not _json_content_type(request):
        return json_response(415, {"detail": NOT_JSON_TYPE})
    for err in raw:
        if err.get("type") == "json_invalid":
            position = tuple(err.get("loc", ()))[1:2]
            where = f" (near character {position[0]})" if position and isinstance(position[0], int) else ""
            return json_response(400, {"detail": BODY_NOT_JSON + where})
    errors = []
    for err in raw:
        loc = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid value"))
        # Pydantic prefixes messages from our validators with "Value error, ".
        msg = msg.removeprefix("Value error, ")
        errors.append({"loc": [p if isinstance(p, (str, int)) else str(p) for p in loc], "msg": msg})
    detail = "; ".join(f"{_location(tuple(e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    return json_response(422, {"detail": detail, "errors": errors})


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's).
    A route with a fixed path wins over a parametrised one that also matches (`/recommend/cold-start`
    is not `/recommend/{user_id}`); a GET route also answers HEAD."""
    path = request.scope["path"]
    matching = [(fixed, methods) for regex, methods, fixed in request.app.state.route_methods if regex.match(path)]
    if any(fixed for fixed, _ in matching):
        matching = [(fixed, methods) for fixed, methods in matching if fixed]
    allowed = {m for _, methods in matching for m in methods}
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(sorted(allowed))


NO_SUCH_PATH = "no such path; GET / lists the endpoints, GET /docs describes them"


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 400 and detail == PARSE_FAILED:
        detail = BODY_NOT_JSON + " (UTF-8)"
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
