"""CLI command of bookrec.optimize: `bookrec optimize`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer


def optimize(
    trials: Optional[int] = typer.Option(
        None, "--trials", "-n", min=1,
        help="Trials this worker runs (default: OPTIMIZER_N_CALLS / BOOKREC_OPTIMIZER_N_CALLS, 20). "
        "Start several workers on one --storage to share the search.",
    ),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", min=1, help="Stop starting new trials after this many seconds (default: settings.optimizer_timeout)."
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage",
        help="Optuna storage URL: sqlite:///var/optuna.db (default), postgresql://user:pass@host/db, "
        "redis://host:6379/0 (journal) or journal:///path.",
    ),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: settings.optuna_study)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Normalised data directory (default: settings.data_dir)."),
    objective: str = typer.Option("nll", "--objective", help="Validation quality to minimise: nll or crps."),
    multi_objective: bool = typer.Option(
        False, "--multi-objective", help="Minimise (quality, training seconds); reports the Pareto front."
    ),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Sampler seed (default: random, so simultaneous workers explore different points)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", help="Where to write the best parameters (default: settings.tuned_config_path)."
    ),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write the tuned-parameters file."),
    start_from_default: bool = typer.Option(
        True, "--start-from-default/--no-start-from-default",
        help="When this worker creates the study, make the model's default configuration its first trial.",
    ),
) -> None:
    """Tune BPMF hyperparameters with Optuna on the validation split and write the best ones for `bookrec batch`."""
    from rich.console import Console

    from bookrec.config import get_settings
    from bookrec.data.io import DatasetError
    from bookrec.logging import setup_logging
    from bookrec.optimize.objective import (
        OBJECTIVES,
        ObjectiveOptions,
        load_tuning_data,
        objective_options_from_settings,
    )
    from bookrec.optimize.space import default_bpmf_kwargs, from_bpmf_kwargs
    from bookrec.optimize.study import redact_url, run_optimization, summary_tables

    settings = get_settings()
    setup_logging(settings.log_level)
    logging.getLogger("arviz").setLevel(logging.WARNING)  # its import-time notes are not ours to show
    console = Console()
    if objective not in OBJECTIVES:
        raise typer.BadParameter(f"choose one of {', '.join(OBJECTIVES)}", param_hint="--objective")
    if pruner not in ("median", "hyperband", "none"):
        raise typer.BadParameter("choose median, hyperband or none", param_hint="--pruner")
    n_trials = trials if trials is not None else settings.optimizer_n_calls
    storage_url = storage or settings.optuna_storage
    study_name = study or settings.optuna_study
    data_dir = data or settings.data_dir
    try:
        tuning_data = load_tuning_data(data_dir, settings)
    except DatasetError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from None
    options: ObjectiveOptions = objective_options_from_settings(
        settings, objective=objective, multi_objective=multi_objective
    )
    console.print(
        f"study [bold]{study_name}[/bold] on {redact_url(storage_url)}: {n_trials} trial(s), validation "
        f"{objective}{' + training seconds' if multi_objective else ''}, "
        f"{len(tuning_data.train[2]):,} train / {len(tuning_data.validation[2]):,} validation ratings"
    )
    try:
        result = run_optimization(
            tuning_data,
            n_trials=n_trials,
            timeout=timeout if timeout is not None else settings.optimizer_timeout,
            storage_url=storage_url,
            study_name=study_name,
            options=options,
            pruner=pruner,  # type: ignore[arg-type]
            sampler_seed=seed,
            config_path=None if no_write else (output or settings.tuned_config_path),
            start_points=[from_bpmf_kwargs(default_bpmf_kwargs(options.space.n_chains))] if start_from_default else (),
            show_progress=console.is_terminal,
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=1) from None
    except Exception as exc:  # storage unreachable, bad credentials: say which storage, not the password
        if type(exc).__module__.split(".")[0] not in {"sqlalchemy", "redis", "psycopg"}:
            raise
        console.print(f"[red]cannot use Optuna storage {redact_url(storage_url)}: {type(exc).__name__}[/red]")
        raise typer.Exit(code=1) from None
    for table in summary_tables(result):
        console.print(table)
    if result.chosen is None:
        console.print("[red]no trial completed; nothing written[/red]")
        raise typer.Exit(code=1)
    if result.config_path is not None:
        console.print(f"best parameters written to [bold]{result.config_path}[/bold] (read by `bookrec batch`)")
    console.print(f"open the study in a browser: optuna-dashboard {redact_url(storage_url)}")
