"""Exit codes of every bookrec command (the table in the README), and the one-line failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

OK = 0
FAILURE = 1  # the command could not do its work (store down, training failed, ...)
USAGE = 2  # bad input or usage: an unknown option or choice, a missing data folder, a malformed URL
REFUSED = 3  # the batch refused to publish its model (the previous version keeps serving)
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell's convention)
TERMINATED = 143  # SIGTERM: `docker compose stop`, a scheduler's timeout (128 + SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so that the same clean-up runs (a publish discards its partial
    version and releases its lease; the batch writes its metrics textfile)."""


def _raise_terminated(*_: object) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """Turn SIGTERM into :class:`Terminated` (a server replaces this with its own graceful handler)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def interruption(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind ``exc``, if any. One that arrives while numba's compiled code
    runs surfaces as a SystemError ("returned a result with an exception set") caused by it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def interrupted_code(interrupt: KeyboardInterrupt) -> int:
    return TERMINATED if isinstance(interrupt, Terminated) else INTERRUPTED


def interrupt_exit_code(exc: BaseException) -> int | None:
    """130 / 143 when ``exc`` comes from Ctrl-C / SIGTERM, else None (a command's own exit is not one)."""
    import click

    if isinstance(exc, (SystemExit, click.exceptions.Exit)):
        return None
    interrupt = interruption(exc)
    return None if interrupt is None else interrupted_code(interrupt)


@contextmanager
def stops_cleanly(message: str, prefix: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside: ``prefix message`` as one line and exit 130 / 143, not a traceback."""
    try:
        yield
    except BaseException as exc:
        code = interrupt_exit_code(exc)
        if code is None:
            raise
        fail(message, code=code, prefix=prefix)


def fail(message: str, code: int = FAILURE, prefix: str = "error:") -> NoReturn:
    """Print `prefix message` as one line on stderr and exit with `code`."""
    import typer
    from rich.markup import escape

    from bookrec.logging import console

    line = " ".join(str(message).split())
    console(stderr=True).print(f"[bold red]{escape(prefix)}[/] {escape(line)}", highlight=False)
    raise typer.Exit(code=code)
