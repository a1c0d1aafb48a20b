"""Exit codes of every bookrec command (the table in the README), and the one-line failure."""

from __future__ import annotations

from typing import NoReturn

OK = 0
FAILURE = 1  # the command could not do its work (store down, training failed, ...)
USAGE = 2  # bad input or usage: an unknown option or choice, a missing data folder, a malformed URL
REFUSED = 3  # the batch refused to publish its model (the previous version keeps serving)


def fail(message: str, code: int = FAILURE, prefix: str = "error:") -> NoReturn:
    """Print `prefix message` as one line on stderr and exit with `code`."""
    import typer
    from rich.markup import escape

    from bookrec.logging import console

    line = " ".join(str(message).split())
    console(stderr=True).print(f"[bold red]{escape(prefix)}[/] {escape(line)}", highlight=False)
    raise typer.Exit(code=code)
