"""`bookrec serve`: run the API (and the web page at /app/) with uvicorn, with the connection limits
of `bookrec.api.server` (head and body deadlines, head size, idle keep-alive)."""

from __future__ import annotations

import logging
import os
import shutil
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
    port: Annotated[Optional[int], typer.Option(help="Port (default: settings.api_port)")] = None,
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
    from bookrec.logging import normalise_level, setup_logging

    if store_url:
        # Workers build their settings from the environment, so pass the override that way.
        os.environ["BOOKREC_STORE_URL"] = store_url
        get_settings.cache_clear()
    settings = get_settings()
    host = host or settings.api_host
    port = port or settings.api_port
    workers = workers or settings.api_workers
    log_level = log_level.value if log_level else normalise_level(settings.log_level).lower()
    setup_logging(log_level)
    from bookrec.store import StoreError, parse_store_url

    try:
        parse_store_url(settings.store_url)
    except StoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None

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
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
