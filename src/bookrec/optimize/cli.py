"""CLI command of bookrec.optimize."""

from __future__ import annotations

import typer


def optimize() -> None:
    """Tune hyperparameters with Optuna (not yet built)."""
    raise typer.Exit(code=2)
