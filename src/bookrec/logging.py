"""Logging set up once, with rich when attached to a terminal."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


# Libraries whose INFO chatter (e.g. ArviZ announcing optional sub-packages) hides our own progress.
QUIET_LOGGERS = ("arviz", "numba", "optuna.storages", "httpx")


def setup_logging(level: str = "INFO") -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]", handlers=[handler])
