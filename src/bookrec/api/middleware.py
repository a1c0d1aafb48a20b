"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

- `RequestSizeLimitMiddleware`: refuses bodies over `settings.max_request_bytes` with 413, by the
  declared Content-Length before reading anything, and by counting for chunked uploads.
- `MetricsMiddleware`: request count and latency per route *template* (`/recommend/{user_id}`,
  not one series per user), so the label set stays bounded whatever clients send.
- `HeadAsGetMiddleware`: HEAD is answered as GET without the body, on every GET route.
- `SecurityHeaders`: wraps one ASGI app (the web page, the docs) to add fixed response headers.
- `RateLimiter`: a token bucket per client address, for the costly endpoints (a route dependency).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bookrec.api import metrics

_KNOWN_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestSizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = {"detail": f"request body larger than {self.max_bytes} bytes"}
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                # Length first: int() of thousands of digits is slow, and Python refuses it past 4,300.
                if len(value) > len(str(self.max_bytes)) or int(value) > self.max_bytes:
                    await _send_json(send, 413, too_large)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body reading as they are -> 413 handler.
                    raise HTTPException(413, too_large["detail"])
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            route = scope.get("route")  # set by the router on a match (FastAPI routes)
            if route is not None:
                template = getattr(route, "path_format", None) or getattr(route, "path", "<unknown>")
            elif scope["path"].startswith("/app"):
                template = "/app"
            else:
                template = "<unmatched>"
            metrics.REQUESTS.labels(method, template, str(status)).inc()
            metrics.LATENCY.labels(method, template).observe(time.perf_counter() - started)


class HeadAsGetMiddleware:
    """HEAD runs the GET route and sends its status and headers (Content-Length included), no body.

    FastAPI routes declared with GET do not answer HEAD (405); doing it here keeps HEAD out of the
    OpenAPI document, where it would double every operation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class SecurityHeaders:
    """Adds fixed headers to every response of the wrapped app (headers it sets itself win)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def client_key(request: Request) -> str:
    """The address a client is limited by: its IP, or its /64 for IPv6 (one host holds a whole /64)."""
    host = request.client.host if request.client else ""
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False).network_address) + "/64"
        except ValueError:
            return host
    return host or "unknown"


class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `per_minute`.

    Used as a route dependency (`Depends(limiter)`); over the limit it raises 429 with Retry-After.
    It runs on the event loop (an async dependency), so the table needs no lock. The table keeps
    at most `max_clients` buckets, least recently seen dropped first: memory stays bounded
    whatever addresses clients come from, and a dropped client only starts again with a full
    bucket. Each API worker has its own table, so the limits hold per worker.
    """

    def __init__(self, per_minute: float, burst: int, max_clients: int, what: str) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.max_clients = max_clients
        self.what = what
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last update)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token for `key`: 0.0 when allowed, else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait

    async def __call__(self, request: Request) -> None:
        if not self.enabled:
            return
        wait = self.take(client_key(request))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(
                429,
                f"too many {self.what} requests from this address; retry after {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
