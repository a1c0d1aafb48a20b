"""`bookrec serve`: run the API (and the web page at /app/) with uvicorn, with the connection limits
of `bookrec.api.server` (head and body deadlines, head size, idle keep-alive)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
from enum import Enum
from typing import Annotated, Optional

import typer


class LogLevel(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def serve(
    host: Annotated[Optional[str], typer.Option(help="Interface to bind (default: settings.api_host)")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port (default: settings.api_port)")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Worker processes (default: settings.api_workers)")] = None,
    store_url: Annotated[
        Optional[str], typer.Option("--store-url", help="Store URL (default: settings.store_url / BOOKREC_STORE_URL)")
    ] = None,
    log_level: Annotated[
        Optional[LogLevel],
        typer.Option(help="Log level of bookrec and uvicorn (default: BOOKREC_LOG_LEVEL, else info)", show_default=False),
    ] = None,
    access_log: Annotated[
        Optional[bool], typer.Option("--access-log/--no-access-log", help="Log every request (default: settings.api_access_log)")
    ] = None,
) -> None:
    """Serve the API on http://HOST:PORT (the web page at /app/, docs at /docs)."""
    from bookrec.api.server import run as run_server
    from bookrec.config import get_settings
    from bookrec.exitcodes import FAILURE, USAGE, fail
    from bookrec.logging import normalise_level, setup_logging

    if store_url:
        # Workers build their settings from the environment, so pass the override that way.
        os.environ["BOOKREC_STORE_URL"] = store_url
        get_settings.cache_clear()
    settings = get_settings()
    # `is None`, not `or`: an explicit value is never swapped for the default behind the user's back.
    host = settings.api_host if host is None else host
    port = settings.api_port if port is None else port
    workers = settings.api_workers if workers is None else workers
    if not host.strip():
        fail("--host is empty: give an interface such as 127.0.0.1 or 0.0.0.0", code=USAGE)
    log_level = log_level.value if log_level else normalise_level(settings.log_level).lower()
    setup_logging(log_level)
    from bookrec.store import StoreError, parse_store_url

    try:
        parse_store_url(settings.store_url)
    except StoreError as exc:
        fail(str(exc), code=USAGE)
    check_port_free(host, port)

    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; /metrics on any worker adds them up.
        metrics_dir = tempfile.mkdtemp(prefix="bookrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logging.getLogger("bookrec.api").info(
        "bookrec API on http://%s:%s (%s worker(s), store %s)", host, port, workers, parse_store_url(settings.store_url).redacted
    )
    try:
        run_server(settings, host=host, port=port, workers=workers, log_level=log_level,
                   access_log=settings.api_access_log if access_log is None else access_log)
    except SystemExit as exc:
        # uvicorn exits 3 when it could not start (the port taken since the check above, the app's
        # startup failed); 3 is bookrec's "refused to publish", so say it and exit 1 instead.
        if exc.code == UVICORN_STARTUP_FAILURE:
            fail(f"the API did not start on http://{host}:{port} (the log line above says why)", code=FAILURE)
        raise
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


UVICORN_STARTUP_FAILURE = 3  # uvicorn.server's STARTUP_FAILURE


def check_port_free(host: str, port: int, hint: str = "bookrec serve --port 8001") -> None:
    """Fail with one line (exit 2) when uvicorn could not bind `host`:`port`, instead of its log line
    and exit 3. Binds the way uvicorn does (IPv6 when the host has a colon, SO_REUSEADDR), so a
    port left in TIME_WAIT by a stopped server counts as free, as it is for uvicorn."""
    from bookrec.exitcodes import USAGE, fail

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            fail(f"cannot serve on {host}: no such host or address (--host, BOOKREC_API_HOST)", code=USAGE)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(f"port {port} on {host} is in use: stop what holds it, or choose another port ({hint})",
                     code=USAGE)
            if exc.errno == errno.EACCES:
                fail(f"port {port} on {host} needs privileges this user lacks: choose a port above 1023 ({hint})",
                     code=USAGE)
            if exc.errno == errno.EADDRNOTAVAIL:
                fail(f"cannot serve on {host}: not an address of this machine (--host, BOOKREC_API_HOST)", code=USAGE)
            fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}", code=USAGE)
