"""Studies: where trials are stored, how they are sampled and pruned, and what is written at the end.

A study lives in an Optuna storage named by URL, so several `bookrec optimize` workers, on one
machine or many, can share it:

- ``sqlite:///var/optuna.db`` (default): one file, fine for a few workers on one machine;
- ``postgresql://user:password@host:5432/db`` (any SQLAlchemy RDB URL): workers on many machines;
- ``redis://host:6379/0`` (or ``rediss://``): an Optuna journal kept in Redis/Valkey/Dragonfly;
- ``journal:///path/to/file.log``: a journal file on a shared file system.

The best parameters are recorded in the study itself (user attribute ``best_params``, read by
`bookrec batch --tuned-from URL` on any machine) and in ``settings.tuned_config_path`` as JSON, the
file `bookrec batch` reads by default (format in :func:`tuned_config_payload`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from bookrec.contracts.tuning import BEST_PARAMS_ATTR, open_optuna_storage
from bookrec.contracts.urls import redact_url
from bookrec.exitcodes import interruption
from bookrec.optimize.interrupts import InterruptGuard
from bookrec.optimize.objective import (
    OBJECTIVES,
    ObjectiveOptions,
    TuningData,
    make_objective,
)

log = logging.getLogger(__name__)

PrunerName = Literal["median", "hyperband", "none"]

CONFIG_FORMAT_VERSION = 1


# --- storage ---------------------------------------------------------------------------------


def make_storage(url: str, *, heartbeat_seconds: int | None = 60) -> optuna.storages.BaseStorage:
    """The Optuna storage ``url`` names (schemes in the module docstring; ValueError for another),
    created if it does not exist yet. RDB storages get a heartbeat, so the trial of a worker that
    died is re-queued (see :func:`bookrec.contracts.tuning.open_optuna_storage`)."""
    return open_optuna_storage(url, read_only=False, heartbeat_seconds=heartbeat_seconds)


# --- sampler, pruner, study ----------------------------------------------------------------


def make_pruner(name: PrunerName, max_steps: int, eval_every: int) -> optuna.pruners.BasePruner:
    """Median or Hyperband pruning over Gibbs sweeps (the step reported is the sweep number)."""
    if name == "median":
        # Judge a trial only once 5 trials have finished (the sampler's random start-up trials,
        # so the median is over diverse points) and only after 4 reports: the running NLL of the
        # first few kept draws is noisy, and a trial with heavy thinning has fewer draws then.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=4 * eval_every, interval_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2 * eval_every, max_resource=max(max_steps, 4 * eval_every))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")


def make_sampler(seed: int | None, multi_objective: bool) -> optuna.samplers.BaseSampler:
    """TPE, as in Optuna's examples; ``constant_liar`` keeps parallel workers from piling onto one point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=not multi_objective,
            constant_liar=True,
            n_startup_trials=5,
        )


def open_study(
    storage_url: str,
    study_name: str,
    *,
    multi_objective: bool = False,
    objective: str = "nll",
    pruner: PrunerName = "median",
    max_steps: int = 200,
    eval_every: int = 5,
    seed: int | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    setup: dict[str, Any] | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when another worker created it first (same name, same storage).

    Returns ``(study, created)``; ``created`` is True in the one worker that created it. ``setup``
    (see :func:`trial_setup`) must match the one the study was created with (ValueError).
    """
    directions = ["minimize", "minimize"] if multi_objective else ["minimize"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own summary replaces Optuna's per-trial lines
    storage = storage if storage is not None else make_storage(storage_url)
    sampler = make_sampler(seed, multi_objective)
    pruner_obj = make_pruner(pruner, max_steps, eval_every)
    try:
        # Exactly one worker succeeds here (the storage enforces unique study names); it alone
        # seeds the study with its starting points, so simultaneous workers never duplicate them.
        study = optuna.create_study(
            storage=storage, study_name=study_name, directions=directions, sampler=sampler, pruner=pruner_obj
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner_obj)
        created = False
    expected = [optuna.study.StudyDirection.MINIMIZE] * len(directions)
    if list(study.directions) != expected:
        raise ValueError(
            f"study {study_name!r} already exists with {len(study.directions)} objective(s); "
            "use another --study name to switch between single- and multi-objective mode"
        )
    stored_objective = study.user_attrs.get("objective")
    if stored_objective is None:
        study.set_user_attr("objective", objective)
        study.set_user_attr("metric_names", [objective, "train_seconds"] if multi_objective else [objective])
    elif stored_objective != objective:
        raise ValueError(
            f"study {study_name!r} optimises validation {stored_objective}, not {objective}; use another --study name"
        )
    if setup is not None:
        _check_same_setup(study, setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([objective, "train_seconds"] if multi_objective else [objective])
    return study, created


TRIAL_SETUP_ATTR = "trial_setup"


def trial_setup(data: TuningData, options: ObjectiveOptions) -> dict[str, Any]:
    """What a trial's score depends on besides its parameters: the data, the chain count and the
    fixed model arguments (as JSON stores them)."""
    return json.loads(json.dumps(
        {"data_fingerprint": data.fingerprint(), "n_chains": options.space.n_chains, "fixed": options.fixed}
    ))


def _check_same_setup(study: optuna.Study, setup: dict[str, Any]) -> None:
    """Scores from other data or another chain count are not comparable: a study resumed on
    refreshed data would choose among both and record the winner under the new data's fingerprint."""
    recorded = study.user_attrs.get(TRIAL_SETUP_ATTR)
    if recorded is None:
        study.set_user_attr(TRIAL_SETUP_ATTR, setup)
        return
    changed = [f"{key} was {recorded.get(key)!r}, now {value!r}" for key, value in setup.items() if recorded.get(key) != value]
    if changed:
        raise ValueError(
            f"study {study.study_name!r} holds trials scored with another setup ({'; '.join(changed)}); "
            "use another --study name"
        )


# --- choosing the result ---------------------------------------------------------------------


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def choose_trial(study: optuna.Study, quality_tolerance: float = 0.01) -> FrozenTrial:
    """The trial whose parameters are written.

    Single objective: the best trial. Multi-objective: among the Pareto front, the fastest trial
    whose validation quality is within ``quality_tolerance`` (nats of NLL / rating points of CRPS)
    of the best quality on the front: a knee that trades a negligible loss for speed.
    """
    if len(study.directions) == 1:
        return study.best_trial
    front = study.best_trials
    if not front:
        raise ValueError("the study has no completed trial")
    best_quality = min(t.values[0] for t in front)
    eligible = [t for t in front if t.values[0] <= best_quality + quality_tolerance]
    return min(eligible, key=lambda t: (t.values[1], t.values[0]))


# --- the tuned config file -------------------------------------------------------------------


def tuned_config_payload(
    study: optuna.Study, trial: FrozenTrial, storage_url: str, data_fingerprint: str | None = None
) -> dict[str, Any]:
    """The JSON document `bookrec batch` reads. ``params`` holds BPMF constructor keyword arguments."""
    objective = study.user_attrs.get("objective", "nll")
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    payload: dict[str, Any] = {
        "format": CONFIG_FORMAT_VERSION,
        "params": dict(trial.user_attrs.get("bpmf_params", trial.params)),
        "study": study.study_name,
        "n_trials": counts["complete"] + counts["pruned"] + counts["fail"],
        "trial_counts": counts,
        "trial_number": trial.number,
        "best_value": trial.values[0],
        "objective": objective,
        "multi_objective": len(study.directions) > 1,
        "validation_metrics": {k: trial.user_attrs.get(k) for k in ("rmse", "nll", "crps", "coverage90", "train_seconds")},
        "storage": redact_url(storage_url),
        "data_fingerprint": data_fingerprint,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(study.directions) > 1:
        payload["pareto_front"] = [
            {"trial": t.number, objective: t.values[0], "train_seconds": t.values[1]}
            for t in sorted(study.best_trials, key=lambda t: t.values[0])
        ]
    return payload


class TunedConfigError(Exception):
    """The tuned-parameters file cannot be written (shown to the user as one line)."""


def check_writable(path: Path) -> None:
    """Raise :class:`TunedConfigError` unless :func:`write_tuned_config` could write ``path``.

    Called before the first trial: finding out after an hour of trials loses the file (the study
    keeps the trials, but few know `--export`). The write is a rename in the parent folder, so the
    folder, not the file, must be writable; the folder is created as the write would create it.
    """
    path = Path(path)
    if path.is_dir():
        raise TunedConfigError(f"{path} is a directory: give a file path for the tuned parameters")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TunedConfigError(f"cannot write the tuned parameters to {path}: {parent} is not a directory")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise TunedConfigError(f"cannot write the tuned parameters to {path}: {exc.strerror or exc}") from None


def write_tuned_config(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically (temporary file + rename) so the batch never reads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def record_best_in_study(
    study: optuna.Study, storage_url: str, quality_tolerance: float = 0.01, data_fingerprint: str | None = None
) -> tuple[FrozenTrial, dict[str, Any]] | None:
    """Choose over every finished trial of the study (all workers') and record the document in it.

    Workers finishing together may each write a choice made from an older snapshot; a worker
    re-reads after writing and writes again while trials finished meanwhile, so the last write is
    made from a snapshot holding every trial finished before it. None when no trial has finished.
    """
    while True:
        done = {t.number for t in finished_trials(study)}
        if not done:
            return None
        chosen = choose_trial(study, quality_tolerance)
        payload = tuned_config_payload(study, chosen, storage_url, data_fingerprint)
        study.set_user_attr(BEST_PARAMS_ATTR, payload)
        if {t.number for t in finished_trials(study)} == done:
            return chosen, payload


def recorded_best(storage_url: str, study_name: str) -> dict[str, Any]:
    """The document recorded by :func:`record_best_in_study`.

    ValueError when the storage file, the study or the record is absent."""
    # Read-only: a missing SQLite file or journal is a ValueError, not a new empty storage.
    storage = open_optuna_storage(storage_url, read_only=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {redact_url(storage_url)}") from None
    payload = study.user_attrs.get(BEST_PARAMS_ATTR)
    if not isinstance(payload, dict):
        raise ValueError(f"study {study_name!r} has no recorded best parameters (run `bookrec optimize` on it)")
    return payload


def read_tuned_config(path: Path) -> dict[str, Any]:
    """Read and check the file written by :func:`write_tuned_config`."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("params"), dict):
        raise ValueError(f"{path} is not a bookrec tuned-parameters file (no 'params' object)")
    return payload


# --- running -----------------------------------------------------------------------------------


@dataclass
class OptimizationResult:
    study: optuna.Study
    chosen: FrozenTrial | None
    config_path: Path | None
    payload: dict[str, Any] | None
    wall_seconds: float
    trials_run_here: int
    pareto_front: list[FrozenTrial] = field(default_factory=list)


class OptimizationInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``interrupt``) stopped the trials. ``result`` holds what the trials finished
    before it gave: the best is recorded in the study and written to the file, as at the end of a full run."""

    def __init__(self, result: OptimizationResult, interrupt: KeyboardInterrupt) -> None:
        super().__init__()
        self.result = result
        self.interrupt = interrupt


class _QuietInterruptedTrial(logging.Filter):
    """Drops Optuna's two warnings for the trial Ctrl-C stopped (a traceback, then "failed with
    value None"): the user stopped it, and the command says so in one line."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None and interruption(record.exc_info[1]) is not None:
            self._dropped = message.split(" failed", 1)[0]  # "Trial 12"
            return False
        return not (self._dropped is not None and message.startswith(f"{self._dropped} failed with value"))


class TrialLog:
    """One log line per finished trial, for a worker without a progress bar (not on a terminal,
    --json): without it a log shows nothing of the search until its end."""

    def __init__(self, n_trials: int, objective: str) -> None:
        self.n_trials = n_trials
        self.objective = objective
        self.done = 0

    def __call__(self, _study: optuna.Study, trial: FrozenTrial) -> None:
        self.done += 1
        objective = self.objective
        if trial.state == TrialState.COMPLETE:
            outcome = f"complete, validation {objective} {_fmt(trial.values[0])}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at sweep {trial.user_attrs.get('pruned_at_sweep', '?')}"
        else:
            outcome = f"{trial.state.name.lower()}: {trial.user_attrs.get('fail_reason', 'see the warning above')}"
        log.info("trial %d %s (%d/%d here)", trial.number, outcome, self.done, self.n_trials)


def _close_connections(storage: optuna.storages.BaseStorage) -> None:
    """A second Ctrl-C inside a database write (see :mod:`bookrec.optimize.interrupts`) can leave its
    connection holding SQLite's write lock: closing an RDB storage's pooled connections rolls that
    transaction back."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def run_optimization(
    data: TuningData,
    *,
    n_trials: int,
    timeout: float | None = None,
    storage_url: str,
    study_name: str,
    options: ObjectiveOptions | None = None,
    pruner: PrunerName = "median",
    sampler_seed: int | None = None,
    config_path: Path | None = None,
    enqueue: Sequence[dict[str, Any]] = (),
    start_points: Sequence[dict[str, Any]] = (),
    show_progress: bool = False,
    storage: optuna.storages.BaseStorage | None = None,
) -> OptimizationResult:
    """Run ``n_trials`` trials in this process (other workers may add theirs to the same study),
    then record the study's best parameters in the study and write them to ``config_path`` (when given).

    ``data`` holds only the train and validation splits: the test split cannot be reached from here.
    ``start_points`` (trial parameters, e.g. the current default configuration) are enqueued as the
    first trials when this call creates the study; ``enqueue`` is enqueued unless already present.
    ``config_path`` is checked before the first trial (:class:`TunedConfigError`). Ctrl-C records and
    writes the best finished trial, then raises :class:`OptimizationInterrupted`.
    """
    options = options or ObjectiveOptions()
    if options.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}")
    if config_path is not None:
        check_writable(config_path)
    storage = storage if storage is not None else make_storage(storage_url)
    study, created = open_study(
        storage_url,
        study_name,
        multi_objective=options.multi_objective,
        objective=options.objective,
        pruner=pruner,
        max_steps=options.max_sweeps,
        eval_every=options.eval_every,
        seed=sampler_seed,
        storage=storage,
        setup=trial_setup(data, options),
    )
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    if created:
        for params in start_points:
            study.enqueue_trial(params)
    started = time.perf_counter()
    finished_here: list[int] = []
    quiet = _QuietInterruptedTrial()
    optimize_logger = logging.getLogger("optuna.study._optimize")
    optimize_logger.addFilter(quiet)
    try:
        _run_trials(study, storage, data, options, n_trials, timeout, show_progress, finished_here)
    except (KeyboardInterrupt, SystemError) as exc:
        interrupt = interruption(exc)
        if interrupt is None:
            raise
        # The finished trials are in the study: keep their best as a full run would, so stopping
        # a long search early loses nothing (the interrupted trial is already marked failed).
        _close_connections(storage)
        result = _finish(study, storage_url, options, data, config_path, started, finished_here)
        raise OptimizationInterrupted(result, interrupt) from None
    finally:
        optimize_logger.removeFilter(quiet)
    return _finish(study, storage_url, options, data, config_path, started, finished_here)


def _run_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, data: TuningData, options: ObjectiveOptions,
    n_trials: int, timeout: float | None, show_progress: bool, finished_here: list[int],
) -> None:
    """``study.optimize`` with Ctrl-C kept out of Optuna's bookkeeping (:mod:`bookrec.optimize.interrupts`)."""
    guard = InterruptGuard()
    # Optuna keeps the study's storage (its cache over ours) in `_storage`: every call goes through it.
    with guard.installed(getattr(study, "_storage", storage)):
        study.optimize(
            guard.objective(make_objective(data, options)),
            n_trials=n_trials,
            timeout=timeout,
            gc_after_trial=False,
            show_progress_bar=show_progress,
            # An extreme prior can make a Cholesky factorisation fail: that trial is recorded as
            # failed and the search goes on; any other exception is a bug and stops the worker.
            catch=(np.linalg.LinAlgError, FloatingPointError),
            callbacks=[lambda _study, trial: finished_here.append(trial.number)]
            + ([] if show_progress else [TrialLog(n_trials, options.objective)]) + [guard.raise_held],
        )


def _finish(
    study: optuna.Study, storage_url: str, options: ObjectiveOptions, data: TuningData, config_path: Path | None,
    started: float, finished_here: list[int],
) -> OptimizationResult:
    """Record the study's best trial in the study and write it to ``config_path`` (when given)."""
    wall = time.perf_counter() - started
    chosen = None
    payload = None
    written = None
    recorded = record_best_in_study(study, storage_url, options.quality_tolerance, data.fingerprint())
    if recorded is not None:
        chosen, payload = recorded
        if config_path is not None:
            try:
                written = write_tuned_config(config_path, payload)
            except OSError as exc:  # the check before the trials passed: the disk filled, the folder went
                raise TunedConfigError(
                    f"cannot write the tuned parameters to {config_path}: {exc.strerror or exc}; they are recorded "
                    f"in study {study.study_name!r} (`bookrec optimize --export --out FILE` writes them)"
                ) from None
    front = list(study.best_trials) if options.multi_objective and finished_trials(study) else []
    return OptimizationResult(study, chosen, written, payload, wall, len(finished_here), front)


# --- reporting ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def summary_tables(result: OptimizationResult, top: int = 10):
    """Rich tables: the best trials (or the Pareto front) and the chosen parameters."""
    from rich.table import Table

    study = result.study
    objective = study.user_attrs.get("objective", "nll")
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    title = (
        f"study {study.study_name!r} (minimising validation {objective}{' and training time' if len(study.directions) > 1 else ''}): "
        f"{len(trials)} trials "
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + f" ({result.trials_run_here} run here in {result.wall_seconds:.1f}s)"
    )
    table = Table(title=title)
    multi = len(study.directions) > 1
    columns = ["trial", "state", "val nll", "val crps", "val rmse", "val cov90", "train s"]
    for col in columns + (["pareto"] if multi else []):
        table.add_column(col, justify="right")
    done = finished_trials(study)
    front_numbers = {t.number for t in result.pareto_front}
    shown = sorted(result.pareto_front if multi else done, key=lambda t: t.values[0])[: None if multi else top]
    for t in shown:
        marker = "*" if result.chosen is not None and t.number == result.chosen.number else ""
        row = [
            f"{t.number}{marker}",
            t.state.name.lower(),
            _fmt(t.user_attrs.get("nll")),
            _fmt(t.user_attrs.get("crps")),
            _fmt(t.user_attrs.get("rmse")),
            _fmt(t.user_attrs.get("coverage90"), 3),
            _fmt(t.user_attrs.get("train_seconds"), 3),
        ]
        table.add_row(*row, *(["yes" if t.number in front_numbers else ""] if multi else []))
    tables = [table]
    if result.chosen is not None:
        params = Table(title=f"chosen parameters (trial {result.chosen.number})")
        params.add_column("parameter")
        params.add_column("value", justify="right")
        for key, value in result.chosen.user_attrs.get("bpmf_params", result.chosen.params).items():
            params.add_row(key, _fmt(value))
        tables.append(params)
    return tables
