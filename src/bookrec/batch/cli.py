"""CLI command of bookrec.batch."""

from __future__ import annotations

import typer


def batch() -> None:
    """Train, evaluate and publish recommendations for every reader (not yet built)."""
    raise typer.Exit(code=2)
