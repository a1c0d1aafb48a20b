"""How `bookrec serve` runs uvicorn: httptools with bounds on what one connection can hold.

uvicorn bounds nothing before a request head is complete: a connection that sends nothing, or a
head one byte at a time, or a 10 MB header, is held for as long as the client likes, and httptools
buffers the header in memory. `BoundedHttpToolsProtocol` adds, per connection:

- a deadline for the request head (from the connection's first byte, or from the first byte after
  a response): 408 and close when it passes (a connection that sent nothing is just closed);
- a deadline for the request body, from the end of the head: 408 and close;
- a cap on the head's size (431) and on its number of header fields (431);
- a `Content-Length` of more than 19 digits answers 400 (llhttp accepts any run of leading zeros,
  and Python's `int` refuses more than 4,300 digits further on);
- idle keep-alive connections close after `api_keepalive_timeout_seconds` (uvicorn's own timer).

A refused connection gets its answer and a FIN, is no longer read, and is closed after
`api_linger_seconds`, so that the client can read the answer before the close resets it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# No real length needs more: 19 digits hold any 63-bit size.
MAX_CONTENT_LENGTH_DIGITS = 19

_IDLE, _HEAD, _BODY, _CLOSING = range(4)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    linger: float = 1.0

    @classmethod
    def from_settings(cls, settings: Any) -> "ConnectionLimits":
        return cls(
            max_header_bytes=settings.api_max_header_bytes,
            max_headers=settings.api_max_headers,
            header_timeout=settings.api_header_timeout_seconds,
            body_timeout=settings.api_body_timeout_seconds,
            keepalive_timeout=settings.api_keepalive_timeout_seconds,
            linger=settings.api_linger_seconds,
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is in `protocol._refusal`."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: ConnectionLimits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._phase = _IDLE
        self._head_bytes = 0
        self._header_count = 0
        self._events = 0  # messages begun or completed during the current feed
        self._feed_bytes = 0
        self._refusal: tuple[int, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase = _IDLE

    # --- timers -----------------------------------------------------------------------------

    def _arm(self, phase: int, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline_phase = phase
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_phase = _IDLE

    def _deadline_passed(self) -> None:
        self._deadline = None
        phase, self._deadline_phase = self._deadline_phase, _IDLE
        if self.transport.is_closing():
            return
        if phase == _CLOSING:
            self.transport.close()
        elif phase == _HEAD:
            if self._phase == _HEAD:
                self._refuse(408, "Request header not received in time.")
            else:
                self.transport.close()  # nothing but whitespace was sent: nobody to answer
        elif phase == _BODY:
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                # The application waits for the body: it sees a disconnect and its answer is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
                self._refuse(408, "Request body not received in time.", force=True)
            elif cycle is not None and not cycle.response_complete:
                self.transport.close()  # half an answer is on the wire; nothing can follow it
            else:
                self._refuse(None, "")

    def _refuse(self, status: int | None, message: str, force: bool = False) -> None:
        self._phase = _CLOSING
        self._disarm()
        cycle = self.cycle
        if not force and cycle is not None and not cycle.response_complete:
            # A pipelined request's answer is being written: let it finish, then close.
            cycle.keep_alive = False
            self.transport.pause_reading()
            return
        if status is not None:
            self.server_state.total_requests += 1
            body = message.encode("ascii")
            self.transport.write(b"".join([
                STATUS_LINE[status],
                *[name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers],
                b"content-type: text/plain; charset=utf-8\r\ncontent-length: ",
                str(len(body)).encode("ascii"), b"\r\nconnection: close\r\n\r\n", body,
            ]))
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(_CLOSING, self.limits.linger)
        else:
            self.transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _CLOSING:
            return
        self._unset_keepalive_if_required()
        self._events = 0
        self._feed_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, "Invalid HTTP request received.")
            return

        phase = self._phase
        if phase == _HEAD:
            # Counts the whole chunk in which the head began: a pipelined request's tail may be
            # counted too, which errs on the safe side.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request header fields too large.")
            elif self._deadline_phase != _HEAD:
                self._arm(_HEAD, self.limits.header_timeout)
        elif phase == _BODY:
            if self._deadline_phase != _BODY:
                self._arm(_BODY, self.limits.body_timeout)
        elif self._deadline is not None:
            if self._events or self._deadline_phase == _BODY:
                self._disarm()
        elif not self._events and (self.cycle is None or self.cycle.response_complete) and not self.pipeline:
            # Bare CRLFs between requests start no message but stop uvicorn's keep-alive timer.
            self._arm(_HEAD, self.limits.header_timeout)

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._head_bytes = 0
        self._header_count = 0
        self._events += 1
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, "Too many request header fields.")
            raise _Refused
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"content-length" and len(value) > MAX_CONTENT_LENGTH_DIGITS:
            self._refusal = (400, "Invalid Content-Length.")
            raise _Refused
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        # A whole head can arrive in one read; measure it exactly only when it might be too large.
        if self._head_bytes + self._feed_bytes > self.limits.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_header_bytes:
                self._refusal = (431, "Request header fields too large.")
                raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._events += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase == _CLOSING:
            self.server_state.total_requests += 1
            return
        super().on_response_complete()


def protocol_factory(limits: ConnectionLimits) -> Any:
    """What uvicorn's `http=` takes; a partial of a module-level class pickles into worker processes."""
    return functools.partial(BoundedHttpToolsProtocol, limits=limits)


def run(settings: Any, host: str, port: int, workers: int, log_level: str, access_log: bool,
        bounded: bool = True) -> None:
    """uvicorn with the bounded protocol; `bounded=False` is plain httptools, kept for the benchmarks."""
    import uvicorn

    from bookrec.logging import uvicorn_log_config

    limits = ConnectionLimits.from_settings(settings)
    uvicorn.run(
        "bookrec.api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=uvicorn_log_config(log_level),  # bookrec's handler and format, in every worker
        access_log=access_log,
        http=protocol_factory(limits) if bounded else "httptools",
        loop="uvloop",
        # Behind a proxy every client would share the proxy's address (and its rate-limit bucket).
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        server_header=False,
        timeout_keep_alive=limits.keepalive_timeout if bounded else 5,  # type: ignore[arg-type]
    )
