"""CLI command of bookrec.batch: `bookrec batch`."""

from __future__ import annotations

from pathlib import Path

import typer


def batch(
    preset: str = typer.Option(
        None, "--preset", help="development | staging | production (default: BOOKREC_ENVIRONMENT / ENVIRONMENT)"
    ),
    data: Path = typer.Option(None, "--data", help="Normalised data directory (default: BOOKREC_DATA_DIR)"),
    store: str = typer.Option(None, "--store", help="Store URL: redis://..., rediss://... or sqlite:///path (default: BOOKREC_STORE_URL)"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary table (logs only)"),
) -> None:
    """Train, evaluate and publish recommendations for every reader, atomically.

    Parameters come from the preset, then the tuner's file (BOOKREC_TUNED_CONFIG_PATH) when it
    exists, then explicit BOOKREC_* variables (BOOKREC_N_FACTORS, BOOKREC_N_SAMPLES,
    BOOKREC_BURN_IN, BOOKREC_THIN, BOOKREC_N_CHAINS, BOOKREC_MAX_KEPT_SAMPLES, BOOKREC_TOP_N, ...).
    A failed run leaves the previously published version serving.
    """
    from rich.console import Console

    from bookrec.batch.pipeline import BatchError, run_batch
    from bookrec.batch.presets import PresetError
    from bookrec.config import get_settings
    from bookrec.data.io import DatasetError
    from bookrec.logging import setup_logging
    from bookrec.store import StoreError

    settings = get_settings()
    setup_logging(settings.log_level)
    try:
        report = run_batch(settings, data_dir=data, store_url=store, preset=preset, show_progress=not quiet)
    except (BatchError, PresetError, DatasetError, StoreError) as exc:
        Console(stderr=True).print(f"[red]batch failed:[/red] {exc}")
        raise typer.Exit(code=1) from None
    Console().print(
        f"published version {report.version}: {report.users_published:,} of {report.n_users:,} readers have recommendations"
    )
