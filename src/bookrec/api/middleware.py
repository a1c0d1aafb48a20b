"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task and a copy per request).

- `RequestSizeLimitMiddleware`: refuses bodies over `settings.max_request_bytes` with 413, by the
  declared Content-Length before reading anything, and by counting for chunked uploads.
- `MetricsMiddleware`: request count and latency per route *template* (`/recommend/{user_id}`,
  not one series per user), so the label set stays bounded whatever clients send.
"""

from __future__ import annotations

import time

import orjson
from starlette.exceptions import HTTPException
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
                if int(value) > self.max_bytes:
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
