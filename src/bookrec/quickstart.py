"""`bookrec run`: the whole system on the embedded defaults (the README's first command)."""

from __future__ import annotations

import typer


def run(
    preset: str = typer.Option(None, help="Synthetic data preset when no real data was imported (tiny|small|full)"),
) -> None:
    """Prepare data (synthetic unless a real copy was imported) and show its statistics."""
    from bookrec.config import get_settings
    from bookrec.data.cli import ensure_data_and_report

    settings = get_settings()
    ensure_data_and_report(settings, preset or settings.synth_preset)
