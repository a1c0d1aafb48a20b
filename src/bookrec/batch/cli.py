"""CLI command of bookrec.batch: `bookrec batch`."""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from bookrec.batch.presets import PRESETS

log = logging.getLogger("bookrec.batch")

# The choices are the presets themselves, so an unknown name is a usage error that lists them.
BatchPreset = Enum("BatchPreset", {name: name for name in PRESETS}, type=str)  # type: ignore[misc]


def batch(
    preset: BatchPreset = typer.Option(
        None, "--preset", help="Quality preset (default: BOOKREC_ENVIRONMENT / ENVIRONMENT)", show_default=False
    ),
    data: Path = typer.Option(None, "--data", help="Normalised data directory (default: BOOKREC_DATA_DIR)"),
    store: str = typer.Option(None, "--store", help="Store URL: redis://..., rediss://... or sqlite:///path (default: BOOKREC_STORE_URL)"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary table; the summary is still logged"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout (implies --quiet)"),
    force: bool = typer.Option(False, "--force", help="Publish even when the publish gate refuses (recorded in the meta)"),
    require_converged: bool = typer.Option(
        False, "--require-converged", help="Also refuse a model whose chains did not converge (BOOKREC_REQUIRE_CONVERGED)"
    ),
    tuned_from: str = typer.Option(
        None, "--tuned-from",
        help="Read the tuned parameters from this Optuna storage URL (postgresql://..., sqlite:///...) instead of the "
        "local tuned file (default: BOOKREC_TUNED_FROM)",
    ),
    study: str = typer.Option(
        None, "--study", help="Study of --tuned-from (default: BOOKREC_TUNED_STUDY, else BOOKREC_OPTUNA_STUDY)"
    ),
    scheduler: str = typer.Option(
        None, "--scheduler",
        help="Run the chains and the precompute on the Dask cluster of this scheduler, tcp://HOST:PORT "
        "(default: BOOKREC_DASK_SCHEDULER; unset = one process)",
    ),
) -> None:
    """Train, evaluate and publish recommendations for every reader, atomically.

    Parameters come from the preset, then the tuned parameters (those `bookrec optimize` recorded
    in its study with --tuned-from, else the tuner's file BOOKREC_TUNED_CONFIG_PATH when it
    exists), then explicit BOOKREC_* variables (BOOKREC_N_FACTORS, BOOKREC_N_SAMPLES,
    BOOKREC_BURN_IN, BOOKREC_THIN, BOOKREC_N_CHAINS, BOOKREC_MAX_KEPT_SAMPLES, BOOKREC_TOP_N, ...).
    With --scheduler the chains and the precompute run on that Dask cluster, with the same
    result (docs/DEPLOYMENT.md, "More than one machine").
    A failed run leaves the previously published version serving. With BOOKREC_METRICS_TEXTFILE
    set, the outcome and duration are written there for node_exporter's textfile collector.
    """
    from bookrec.batch.pipeline import run_batch
    from bookrec.config import get_settings
    from bookrec.exitcodes import FAILURE, OK, USAGE, fail
    from bookrec.logging import console
    from bookrec.store import StoreError, parse_store_url

    settings = _settings(get_settings(), require_converged, tuned_from, study)
    started = time.time()
    code = FAILURE
    try:
        try:
            parse_store_url(store or settings.store_url)
        except StoreError as exc:
            code = USAGE
            fail(str(exc), code=code, prefix="batch failed:")
        try:
            report = run_batch(settings, data_dir=data, store_url=store, preset=preset.value if preset else None,
                               show_progress=not (quiet or as_json), force=force, scheduler=scheduler)
        except BaseException as exc:
            code, message, prefix = _failure(exc)
            fail(message, code=code, prefix=prefix)
        code = OK
    finally:
        _write_textfile(settings.metrics_textfile, code, started)
    summary = batch_summary(report)
    log_summary(summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    console().print(
        f"published version {report.version}: {report.users_published:,} of {report.n_users:,} readers have recommendations"
    )


def _failure(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, message, prefix) of a run that failed with ``exc``; anything else is raised again."""
    from bookrec.batch.gate import PublishRefused
    from bookrec.batch.pipeline import BatchError
    from bookrec.batch.presets import PresetError, TunedStorageUnavailable
    from bookrec.data.io import DatasetError
    from bookrec.exitcodes import FAILURE, REFUSED, USAGE, interrupt_exit_code
    from bookrec.store import StoreError

    if isinstance(exc, PublishRefused):
        return REFUSED, str(exc), "batch"  # "batch refused to publish: <reasons>"
    if isinstance(exc, TunedStorageUnavailable):
        return FAILURE, str(exc), "batch failed:"
    if isinstance(exc, (PresetError, DatasetError)):
        return USAGE, str(exc), "batch failed:"
    if isinstance(exc, (StoreError, BatchError)):
        return FAILURE, str(exc), "batch failed:"
    code = interrupt_exit_code(exc)
    if code is None:
        raise exc
    log.warning("batch interrupted (exit code %d): nothing was published, the serving version is unchanged", code)
    return code, "interrupted: nothing was published, the serving version is unchanged", "batch"


def _settings(settings, require_converged: bool, tuned_from: str | None, study: str | None):
    """The settings with the command's options applied."""
    from bookrec.exitcodes import USAGE, fail

    if require_converged:
        settings = settings.model_copy(update={"require_converged": True})
    if study and not (tuned_from or settings.tuned_from):
        fail("--study names the study of --tuned-from; give --tuned-from too", code=USAGE, prefix="batch failed:")
    if tuned_from or study:
        settings = settings.model_copy(update={"tuned_from": tuned_from or settings.tuned_from,
                                               "tuned_study": study or settings.tuned_study})
    return settings


def batch_summary(report: Any) -> dict[str, Any]:
    """What an operator needs from a run: version, convergence verdict, test metrics, stage times."""
    meta = report.meta or {}
    convergence = meta.get("convergence") or {}
    metrics = meta.get("test_metrics") or {}
    return {
        "version": report.version,
        "preset": report.preset,
        "readers": report.n_users,
        "readers_with_recommendations": report.users_published,
        "coverage_by_tier": report.coverage_by_tier,
        "converged": bool(convergence.get("converged")),
        "convergence": convergence.get("summary"),
        "predictions_pass": convergence.get("predictions_pass"),
        "max_rhat": convergence.get("max_rhat"),
        "min_ess_bulk": convergence.get("min_ess_bulk"),
        "test_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "stage_seconds": {k: round(float(v), 3) for k, v in report.stage_seconds.items()},
        "parameters": report.parameters,
        "publish_gate": meta.get("publish_gate"),
    }


def log_summary(summary: dict[str, Any]) -> None:
    log.info("published version %s (preset %s): %s of %s readers have recommendations", summary["version"],
             summary["preset"], f"{summary['readers_with_recommendations']:,}", f"{summary['readers']:,}")
    verdict = "converged" if summary["converged"] else "NOT converged"
    passing = "; every traced prediction passes" if not summary["converged"] and summary.get("predictions_pass") else ""
    log.info("convergence: %s%s%s", verdict, f" ({summary['convergence']})" if summary["convergence"] else "", passing)
    if summary["test_metrics"]:
        log.info("test metrics: %s", ", ".join(f"{k} {_number(v)}" for k, v in summary["test_metrics"].items()))
    log.info("stage times: %s", ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"].items()))


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _write_textfile(path: Path | None, code: int, started: float) -> None:
    """The run's outcome for node_exporter's textfile collector (written whole, then renamed)."""
    if path is None:
        return
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    finished = time.time()
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, registry=registry).set(value)

    gauge("bookrec_batch_last_run_timestamp_seconds", "When the last batch run ended", finished)
    gauge("bookrec_batch_last_run_duration_seconds", "How long the last batch run took", finished - started)
    gauge("bookrec_batch_last_run_success", "1 when the last batch run published a version, else 0", float(code == 0))
    gauge("bookrec_batch_last_run_exit_code", "Exit code of the last batch run (0 ok, 1 failed, 2 bad input, 3 refused, 130 Ctrl-C, 143 SIGTERM)",
          code)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), registry)
    except OSError as exc:
        log.warning("cannot write the metrics textfile %s: %s", path, exc)
