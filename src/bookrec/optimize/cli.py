"""CLI command of bookrec.optimize: `bookrec optimize`."""

from __future__ import annotations

import json
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class Objective(str, Enum):
    nll = "nll"
    crps = "crps"


class Pruner(str, Enum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


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
    objective: Objective = typer.Option(Objective.nll, "--objective", help="Validation quality to minimise."),
    multi_objective: bool = typer.Option(
        False, "--multi-objective", help="Minimise (quality, training seconds); reports the Pareto front."
    ),
    pruner: Pruner = typer.Option(Pruner.median, "--pruner", help="How unpromising trials are stopped early."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Sampler seed (default: random, so simultaneous workers explore different points)."
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "--out", help="Where to write the best parameters (default: settings.tuned_config_path)."
    ),
    export: bool = typer.Option(False, "--export", help="Run no trial: write the best parameters recorded in the "
                                "study to the tuned-parameters file."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write the tuned-parameters file."),
    start_from_default: bool = typer.Option(
        True, "--start-from-default/--no-start-from-default",
        help="When this worker creates the study, make the model's default configuration its first trial.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result (best trial, Pareto front, file written) as JSON."),
) -> None:
    """Tune BPMF hyperparameters with Optuna on the validation split and record the best ones for `bookrec batch`.

    The best of all the study's trials is recorded in the study (`bookrec batch --tuned-from`) and the tuned file."""
    import optuna

    from bookrec.config import get_settings
    from bookrec.logging import console as make_console
    from bookrec.optimize.objective import objective_options_from_settings
    from bookrec.optimize.space import default_bpmf_kwargs, from_bpmf_kwargs
    from bookrec.optimize.study import redact_url, run_optimization

    settings = get_settings()
    console = make_console(quiet=as_json)
    # Optuna's warnings through bookrec's handler (one format, JSON lines when not on a terminal).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    objective_name, n_trials = objective.value, trials if trials is not None else settings.optimizer_n_calls
    storage_url = storage or settings.optuna_storage
    study_name = study or settings.optuna_study
    config_path = None if no_write else (output or settings.tuned_config_path)
    if export:
        _export(console, storage_url, study_name, output or settings.tuned_config_path, as_json)
        return
    options = objective_options_from_settings(settings, objective=objective_name, multi_objective=multi_objective)
    tuning_data = _tuning_data(config_path, data or settings.data_dir, settings)
    with _stopped_early(storage_url, study_name), _storage_errors(storage_url):
        console.print(
            f"study [bold]{study_name}[/bold] on {redact_url(storage_url)}: {n_trials} trial(s), validation "
            f"{objective_name}{' + training seconds' if multi_objective else ''}, "
            f"{len(tuning_data.train[2]):,} train / {len(tuning_data.validation[2]):,} validation ratings"
        )
        result = run_optimization(
            tuning_data, n_trials=n_trials, timeout=timeout if timeout is not None else settings.optimizer_timeout,
            storage_url=storage_url, study_name=study_name, options=options,
            pruner=pruner.value,  # type: ignore[arg-type]
            sampler_seed=seed, config_path=config_path,
            start_points=[from_bpmf_kwargs(default_bpmf_kwargs(options.space.n_chains))] if start_from_default else (),
            show_progress=console.is_terminal and not as_json,
            storage=_open_storage(storage_url),
        )
    _report(console, result, as_json, study_name, redact_url(storage_url))


def _tuning_data(config_path: Optional[Path], data_dir, settings):
    """The train and validation splits; first, that the tuned file can be written, so that a
    read-only path is found before the trials rather than after them."""
    from bookrec.data.io import DatasetError
    from bookrec.exitcodes import USAGE, fail, stops_cleanly
    from bookrec.optimize.objective import load_tuning_data
    from bookrec.optimize.study import TunedConfigError, check_writable

    try:
        # Loading a large data set takes a while: Ctrl-C or SIGTERM there is a stop, not a traceback.
        with stops_cleanly("before the first trial: nothing was run or written", prefix="interrupted:"):
            if config_path is not None:
                check_writable(config_path)
            return load_tuning_data(data_dir, settings)
    except (DatasetError, ValueError, TunedConfigError) as exc:
        fail(str(exc), code=USAGE)


@contextmanager
def _stopped_early(storage_url: str, study_name: str):
    """Ctrl-C, and a tuned file that could not be written after the trials, as one line each."""
    from bookrec.exitcodes import FAILURE, fail, interrupted_code
    from bookrec.optimize.study import OptimizationInterrupted, TunedConfigError, redact_url

    try:
        yield
    except OptimizationInterrupted as exc:
        fail(_interrupted_line(exc.result, study_name, redact_url(storage_url)), code=interrupted_code(exc.interrupt),
             prefix="interrupted:")
    except KeyboardInterrupt as exc:  # before the trials, or a second Ctrl-C while the best was being recorded
        fail(f"the finished trials are in study {study_name!r}; `bookrec optimize --export --storage "
             f"{redact_url(storage_url)} --study {study_name}` writes the best one once it is recorded",
             code=interrupted_code(exc), prefix="interrupted:")
    except TunedConfigError as exc:
        fail(str(exc), code=FAILURE)


def _interrupted_line(result, study_name: str, storage: str) -> str:
    """What Ctrl-C left: how many trials finished and where their best one went."""
    from bookrec.optimize.study import finished_trials

    done = f"{result.trials_run_here} trial(s) finished here, {len(finished_trials(result.study))} completed in study {study_name!r}"
    if result.chosen is None:
        return f"{done}; no completed trial, nothing written"
    if result.config_path is not None:
        return f"{done}; the best (trial {result.chosen.number}) is written to {result.config_path}"
    return (f"{done}; the best (trial {result.chosen.number}) is recorded in the study: "
            f"`bookrec optimize --export --storage {storage} --study {study_name}` writes it")


def _open_storage(storage_url: str):
    """The storage, opened here so that an OSError can only mean a sqlite or journal path that
    cannot be created (bad input), not a failure during the trials."""
    from bookrec.exitcodes import USAGE, fail
    from bookrec.optimize.study import make_storage, redact_url

    try:
        return make_storage(storage_url)
    except OSError as exc:
        fail(f"cannot use Optuna storage {redact_url(storage_url)}: {exc.strerror or exc}"
             + (f" ({exc.filename})" if exc.filename else ""), code=USAGE)


@contextmanager
def _storage_errors(storage_url: str):
    """Storage and study problems as one line and an exit code, never a traceback."""
    from bookrec.contracts.tuning import storage_error_message
    from bookrec.exitcodes import FAILURE, USAGE, fail
    from bookrec.optimize.study import redact_url

    try:
        yield
    except ValueError as exc:  # an unsupported URL, no such study, a study made for another objective
        fail(str(exc), code=USAGE)
    except Exception as exc:  # storage unreachable, bad credentials: say which storage, not the password
        if type(exc).__module__.split(".")[0] not in {"sqlalchemy", "redis", "psycopg", "optuna"}:
            raise
        # Exit 1 like every storage or store that does not answer (README, exit codes), 2 for a URL
        # that is malformed; the driver's message tells a refused connection from a wrong password.
        fail(f"cannot use Optuna storage {redact_url(storage_url)}: {storage_error_message(exc, storage_url)}",
             code=USAGE if _malformed_url(exc) else FAILURE)


def _malformed_url(exc: Exception) -> bool:
    """SQLAlchemy's verdict on the URL itself (``sqlite://file.db``, an unknown driver): bad input."""
    import sqlalchemy.exc

    return isinstance(exc, sqlalchemy.exc.ArgumentError)


def _export(console, storage_url: str, study_name: str, output: Path, as_json: bool) -> None:
    """Write the best parameters recorded in the study, running no trial."""
    from bookrec.exitcodes import USAGE, fail
    from bookrec.optimize.study import recorded_best, redact_url, write_tuned_config

    with _storage_errors(storage_url):
        payload = recorded_best(storage_url, study_name)
    try:
        written = write_tuned_config(output, payload)
    except OSError as exc:
        fail(f"cannot write the tuned parameters to {output}: {exc.strerror or exc}", code=USAGE)
    if as_json:
        typer.echo(json.dumps({"study": study_name, "storage": redact_url(storage_url), "tuned_parameters": payload,
                               "written_to": str(written)}, indent=1, default=str))
        return
    console.print(f"best parameters of study [bold]{study_name}[/bold] (trial {payload.get('trial_number')}) "
                  f"written to [bold]{written}[/bold]")


def _report(console, result, as_json: bool, study_name: str, storage: str) -> None:
    """The summary tables (and the JSON document); fails when no trial completed."""
    from bookrec.exitcodes import FAILURE, fail
    from bookrec.optimize.study import summary_tables

    if as_json:
        typer.echo(json.dumps(_result_json(result, study_name, storage), indent=1, default=str))
    for table in summary_tables(result):
        console.print(table)
    if result.chosen is None:
        fail("no trial completed; nothing written", code=FAILURE)
    console.print(f"best parameters (trial {result.chosen.number}) recorded in study [bold]{study_name}[/bold] "
                  f"(read by `bookrec batch --tuned-from {storage} --study {study_name}`)")
    if result.config_path is not None:
        console.print(f"best parameters written to [bold]{result.config_path}[/bold] (read by `bookrec batch`)")
    console.print(f"open the study in a browser: optuna-dashboard {storage}")


def _trial(trial) -> dict:
    return {"number": trial.number, "values": trial.values, "params": trial.params}


def _result_json(result, study_name: str, storage: str) -> dict:
    return {
        "study": study_name,
        "storage": storage,
        "trials_run_here": result.trials_run_here,
        "trials_in_study": len(result.study.trials),
        "wall_seconds": result.wall_seconds,
        "best": _trial(result.chosen) if result.chosen is not None else None,
        "pareto_front": [_trial(t) for t in result.pareto_front],
        "tuned_parameters": result.payload,
        "written_to": str(result.config_path) if result.config_path is not None else None,
    }
