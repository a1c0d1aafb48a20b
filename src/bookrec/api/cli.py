"""CLI command of bookrec.api."""

from __future__ import annotations

import typer


def serve() -> None:
    """Serve the API (not yet built)."""
    raise typer.Exit(code=2)
