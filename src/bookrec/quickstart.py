"""`bookrec run`: the whole system on the embedded defaults (the README's first command).

Prepare data (synthetic unless a real copy was imported) -> run the batch into the store
(``settings.store_url``, the embedded SQLite file by default) -> report coverage -> serve the
API and the web page on http://127.0.0.1:8000.
"""

from __future__ import annotations

import typer

from bookrec.batch.cli import BatchPreset
from bookrec.exitcodes import REFUSED
from bookrec.data.cli import PresetName


def run(
    data_preset: PresetName = typer.Option(
        None, "--data-preset", "--preset",
        help="Synthetic data size when no real data was imported (default: BOOKREC_SYNTH_PRESET, small)", show_default=False,
    ),
    batch_preset: BatchPreset = typer.Option(
        None, "--batch-preset", help="Batch quality preset (default: BOOKREC_ENVIRONMENT)", show_default=False
    ),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the API after publishing (--no-serve: stop after the batch)"),
    force: bool = typer.Option(False, "--force", help="Publish even when the publish gate refuses (recorded in the meta)"),
    host: str = typer.Option(None, "--host", help="Interface to serve on (default: BOOKREC_API_HOST, 127.0.0.1)", show_default=False),
    port: int = typer.Option(
        None, "--port", min=1, max=65535, help="Port to serve on (default: BOOKREC_API_PORT, 8000)", show_default=False
    ),
) -> None:
    """Prepare data, train and publish recommendations for every reader, then serve them."""
    from rich.console import Console

    from bookrec.batch.gate import PublishRefused
    from bookrec.batch.pipeline import BatchError, run_batch
    from bookrec.batch.presets import PresetError
    from bookrec.config import get_settings
    from bookrec.data.cli import ensure_data_and_report
    from bookrec.exitcodes import stops_cleanly
    from bookrec.store import StoreError

    settings = get_settings()
    console = Console()
    host = host or settings.api_host
    port = port or settings.api_port
    if serve:
        _check_port_free(host, port)
    dataset = ensure_data_and_report(settings, data_preset.value if data_preset else settings.synth_preset)
    try:
        with stops_cleanly("interrupted: nothing was published", prefix="batch"):
            report = run_batch(settings, preset=batch_preset.value if batch_preset else None, dataset=dataset, force=force)
    except PublishRefused as exc:
        Console(stderr=True).print(f"[red]batch {exc}[/red]")
        raise typer.Exit(code=REFUSED) from None
    except (BatchError, PresetError, StoreError) as exc:
        Console(stderr=True).print(f"[red]batch failed:[/red] {exc}")
        raise typer.Exit(code=1) from None
    share = 100.0 * report.users_published / max(report.n_users, 1)
    tiers = ", ".join(f"{name} {n:,}" for name, n in report.coverage_by_tier.items())
    console.print(
        f"[bold]{report.users_published:,} of {report.n_users:,} readers ({share:.1f}%) have recommendations[/bold] "
        f"({tiers}); version {report.version} in {settings.store_url}"
    )
    if not serve:
        return
    from bookrec.api.cli import serve as serve_api

    serve_api(host=host, port=port, workers=settings.api_workers, store_url=None)


def _check_port_free(host: str, port: int) -> None:
    """Stop before minutes of training when the API could not bind its port afterwards."""
    from bookrec.api.cli import check_port_free

    check_port_free(host, port, hint="bookrec run --port 8001; nothing was trained")
