"""CLI commands of bookrec.model: train and evaluate."""

from __future__ import annotations

import typer


def train() -> None:
    """Train the Bayesian matrix factorisation (not yet built)."""
    raise typer.Exit(code=2)


def evaluate() -> None:
    """Evaluate a trained model (not yet built)."""
    raise typer.Exit(code=2)
