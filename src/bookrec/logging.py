"""Logging of every bookrec command, `serve` and its workers included.

- Level: ``BOOKREC_LOG_LEVEL`` (settings.log_level), default INFO.
- Format: ``BOOKREC_LOG_FORMAT`` = ``auto`` (default: rich on a terminal, JSON lines otherwise),
  ``json`` (one JSON object per line: ``time`` as ISO 8601 with date and UTC offset, ``level``,
  ``logger``, ``message``, ``pid``, and ``exception`` when there is one) or ``text`` (one plain
  line per record, also with an ISO timestamp).
- Records go to stderr, so that ``--json`` output on stdout stays parseable.

Nothing is wrapped: JSON and text records are single lines, and `console()` gives consoles that
do not fold output at 80 columns when stdout is a file or a pipe.

`progress()` is a rich progress bar on a terminal; elsewhere it logs one line per
`PROGRESS_INTERVAL_SECONDS` from a timer thread, so that a redirected log shows the run is alive
even while one step (or numba's first compilation) takes longer than that.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("auto", "json", "text")
LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# Libraries whose INFO chatter (e.g. ArviZ announcing optional sub-packages) hides our own progress.
QUIET_LOGGERS = ("arviz", "numba", "optuna.storages", "httpx")
PROGRESS_INTERVAL_SECONDS = 10.0
# Width of consoles writing to a file or pipe: rich would otherwise wrap lines and squeeze tables
# into 80 columns. Tables only take the width their content needs.
FILE_CONSOLE_WIDTH = 1000

_MARK = "_bookrec_handler"


def _settings_values() -> tuple[str, str]:
    try:
        from bookrec.config import get_settings

        settings = get_settings()
        return settings.log_level, getattr(settings, "log_format", "auto")
    except Exception:  # noqa: BLE001 - invalid settings are reported by the command that reads them
        return os.environ.get("BOOKREC_LOG_LEVEL", "INFO"), os.environ.get("BOOKREC_LOG_FORMAT", "auto")


def normalise_level(level: str | int | None) -> str:
    """An upper-case level name; an unknown name falls back to INFO (a typo must not stop a service)."""
    if isinstance(level, int):
        return logging.getLevelName(level)
    name = {"WARN": "WARNING", "TRACE": "DEBUG"}.get((level or "INFO").strip().upper(), (level or "INFO").strip().upper())
    return name if name in LEVELS else "INFO"


def _resolved_format(fmt: str | None) -> str:
    fmt = (fmt or "auto").strip().lower()
    if fmt not in LOG_FORMATS:
        fmt = "auto"
    if fmt == "auto":
        return "rich" if _is_terminal(sys.stderr) else "json"
    return fmt


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, tz=timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{iso_time(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (test runners and typer's CliRunner swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def make_handler(fmt: str | None = None) -> logging.Handler:
    """The handler for format `fmt` (None: the settings'); also what uvicorn's workers build."""
    if fmt is None:
        fmt = _settings_values()[1]
    fmt = _resolved_format(fmt)
    handler: logging.Handler
    if fmt == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False,
            log_time_format="[%Y-%m-%d %H:%M:%S]", omit_repeated_times=False,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _MARK, True)
    return handler


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Install bookrec's handler on the root logger, replacing the one a previous call installed.

    None takes the value from the settings (BOOKREC_LOG_LEVEL, BOOKREC_LOG_FORMAT)."""
    default_level, default_fmt = _settings_values()
    level_name = normalise_level(level or default_level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
    root.addHandler(make_handler(fmt or default_fmt))
    root.setLevel(level_name)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    asked = level or default_level
    if isinstance(asked, str) and normalise_level(asked) == "INFO" and asked.strip().upper() not in ("INFO", ""):
        logging.getLogger("bookrec").warning("log level %r is not one of %s: logging at INFO", asked, ", ".join(LEVELS))


def uvicorn_log_config(level: str | None = None) -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers go through bookrec's handler on the root logger, so the
    server's own lines have the same format as bookrec's, and bookrec's loggers are not silenced.
    uvicorn applies it in the server process and again in each worker it spawns."""
    level_name = normalise_level(level or _settings_values()[0])
    passthrough = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"bookrec": {"()": "bookrec.logging.make_handler"}},
        "root": {"handlers": ["bookrec"], "level": level_name},
        "loggers": {
            "uvicorn": {**passthrough, "level": level_name},
            "uvicorn.error": passthrough,
            "uvicorn.access": passthrough,
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
    }


def console(stderr: bool = False, **kwargs: Any):
    """A rich Console that does not wrap or squeeze its output when it writes to a file or pipe."""
    from rich.console import Console

    if not _is_terminal(sys.stderr if stderr else sys.stdout):
        if "width" not in kwargs and not os.environ.get("COLUMNS"):
            kwargs["width"] = FILE_CONSOLE_WIDTH
        kwargs.setdefault("soft_wrap", True)
    return Console(stderr=stderr, **kwargs)


# ------------------------------------------------------------------------------------ progress
class LogProgress:
    """The part of rich's `Progress` the stages use (context manager, `add_task`, `update`), logging
    each unfinished task's state every `interval` seconds instead of drawing a bar."""

    def __init__(self, logger: logging.Logger, interval: float = PROGRESS_INTERVAL_SECONDS) -> None:
        self.log = logger
        self.interval = interval
        self._tasks: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LogProgress":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bookrec-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = {"description": description, "total": total, "completed": 0.0,
                                "started": time.monotonic(), "fields": dict(fields)}
        return task_id

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        if total is not None:
            task["total"] = total
        if description is not None:
            task["description"] = description
        task["fields"].update(fields)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for task in list(self._tasks.values()):
                if task["total"] is None or task["completed"] < task["total"]:
                    self.log.info("%s", self.line(task))

    @staticmethod
    def line(task: dict[str, Any]) -> str:
        done, total = task["completed"], task["total"]
        elapsed = time.monotonic() - task["started"]
        text = f"{task['description']}: {done:,.0f}" if total or done else f"{task['description']}: working"
        if total:
            text += f"/{total:,.0f} ({100 * done / total:.0f}%)"
        text += f", {_duration(elapsed)} elapsed"
        if total and done > 0:
            text += f", about {_duration(elapsed * (total - done) / done)} left"
        extra = " ".join(str(v) for v in task["fields"].values() if v not in (None, ""))
        return f"{text}; {extra}" if extra else text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress(*columns: Any, enabled: bool = True, logger: str = "bookrec.progress",
             interval: float = PROGRESS_INTERVAL_SECONDS, **kwargs: Any):
    """A rich `Progress(*columns, **kwargs)` when stderr is a terminal and `enabled`; when stderr is
    not a terminal, a `LogProgress` (also when not `enabled`: a quiet run still shows it is alive);
    otherwise a disabled rich `Progress`."""
    if not _is_terminal(sys.stderr):
        return LogProgress(logging.getLogger(logger), interval)
    from rich.console import Console
    from rich.progress import Progress

    kwargs.setdefault("console", Console(stderr=True))
    return Progress(*columns, disable=not enabled, **kwargs)
