"""The objective: train BPMF on the train split, score it on the validation split.

The test split never enters this module: :class:`TuningData` holds the train and validation
arrays only, and it is all the objective receives. Test figures are computed elsewhere (the
benchmark), after the search has chosen.

Quality is the validation negative log predictive density (``nll``, default) or CRPS
(``crps``): both reward accurate means *and* honest intervals, unlike RMSE alone. RMSE, NLL,
CRPS, 90% coverage and training seconds are stored as trial user attributes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import optuna

from bookrec.optimize.space import SearchSpace, suggest_params

Triplet = tuple[np.ndarray, np.ndarray, np.ndarray]
ObjectiveName = Literal["nll", "crps"]
OBJECTIVES = ("nll", "crps")


@dataclass(frozen=True)
class TuningData:
    """Everything a trial may look at: train and validation triplets and the index sizes."""

    train: Triplet
    validation: Triplet
    n_users: int
    n_items: int

    @classmethod
    def from_training(cls, training) -> "TuningData":
        """Keep only train + validation of a :class:`bookrec.data.prep.TrainingData`.

        ``training.test`` and ``training.ratings`` (which contains the test rows) are not read.
        """
        return cls(
            train=tuple(np.asarray(a) for a in training.train),
            validation=tuple(np.asarray(a) for a in training.validation),
            n_users=int(training.n_users),
            n_items=int(training.n_items),
        )

    def fingerprint(self) -> str:
        """A hash of the train and validation triplets: which data the tuned parameters were chosen on."""
        import hashlib

        digest = hashlib.sha256()
        for part in (*self.train, *self.validation):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()[:16]

    def __post_init__(self) -> None:
        if len(self.validation[2]) == 0:
            raise ValueError("the validation split is empty: set BOOKREC_VALIDATION_FRACTION > 0 to tune")
        for name, part in (("train", self.train), ("validation", self.validation)):
            if not np.all(np.isfinite(part[2])):
                raise ValueError(f"the {name} split has non-finite ratings")


@dataclass
class ObjectiveOptions:
    """How trials are run. ``fixed`` holds BPMF keyword arguments that are not searched."""

    objective: ObjectiveName = "nll"
    multi_objective: bool = False
    eval_every: int = 5
    # Each report is a storage write and a pruning check, so a long trial (an enqueued
    # configuration outside the space's chain lengths) reports less often.
    max_reports: int = 40
    seed: int = 42
    space: SearchSpace = field(default_factory=SearchSpace)
    fixed: dict[str, Any] = field(default_factory=dict)
    quality_tolerance: float = 0.01
    interval_level: float = 0.9

    @property
    def max_sweeps(self) -> int:
        return self.space.max_sweeps


def validation_metrics(model, validation: Triplet, level: float = 0.9) -> dict[str, float]:
    """RMSE, NLL, CRPS and central-interval coverage of a fitted model's posterior predictive
    (the mixture over kept draws, noise included) on a held-out triplet."""
    from bookrec.model import metrics as M

    u, i, r = validation
    means, sds = model.predictive_components(u, i)
    means, sds = M._as_2d(means, sds)
    lo, hi = model.rating_range
    point = np.clip(means.mean(axis=1), lo, hi)
    intervals = M.interval_metrics(r, means, sds, levels=(level,), rating_range=model.rating_range)
    return {
        "rmse": M.rmse(r, point),
        "nll": M.mixture_nll(r, means, sds),
        "crps": M.mixture_crps(r, means, sds),
        "coverage90": intervals["coverage"][str(level)],
    }


def objective(trial: optuna.Trial, data: TuningData, options: ObjectiveOptions) -> float | tuple[float, float]:
    """One trial: suggest parameters, train on ``data.train``, score on ``data.validation``.

    Every ``options.eval_every`` sweeps the model's callback reports the running validation
    metric; the pruner may stop a hopeless trial there (single-objective mode only: Optuna
    cannot prune multi-objective studies).
    """
    from bookrec.model import BPMF

    params = suggest_params(trial, options.space)
    trial.set_user_attr("bpmf_params", params)
    metric = options.objective
    can_prune = not options.multi_objective

    def report(step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(report_metric)
        if value is None or not can_prune:
            return
        value = float(value)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"validation {report_metric} is not finite at sweep {step}")
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_sweep", int(step))
            raise optuna.TrialPruned(f"validation {report_metric}={value:.4f} at sweep {step}")

    model = BPMF(**params, **options.fixed, seed=options.seed, show_progress=False)
    # The running metric of the model's callback is the NLL of the kept draws so far; CRPS is not
    # computed there, so a CRPS study prunes on NLL (both are proper scores of the same predictive).
    report_metric = metric if metric in ("nll", "rmse") else "nll"
    started = time.perf_counter()
    # Without pruning (multi-objective) the running evaluation would only slow the fit down and
    # inflate the training time that is being minimised, so it is switched off there.
    monitoring = {} if options.multi_objective else {
        "eval_set": data.validation, "callback": report, "eval_every": report_every(params["n_samples"], options),
    }
    model.fit(*data.train, n_users=data.n_users, n_items=data.n_items, **monitoring)
    train_seconds = time.perf_counter() - started
    scores = validation_metrics(model, data.validation, options.interval_level)
    scores["train_seconds"] = train_seconds
    for key, value in scores.items():
        trial.set_user_attr(key, value)
    if options.multi_objective:
        return scores[metric], train_seconds
    return scores[metric]


def report_every(n_samples: int, options: ObjectiveOptions) -> int:
    """Sweeps between running-metric reports: ``eval_every``, or a multiple of it that keeps a trial
    to about ``max_reports`` reports (a multiple, so every trial reports at steps the pruner compares)."""
    every = options.eval_every
    return every * max(1, math.ceil(n_samples / (every * options.max_reports)))


def make_objective(data: TuningData, options: ObjectiveOptions) -> Callable[[optuna.Trial], Any]:
    """The ``func(trial)`` Optuna's ``study.optimize`` expects."""

    def _objective(trial: optuna.Trial):
        try:
            value = objective(trial, data, options)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            # Optuna logs why a trial failed but stores only FAIL: keep the reason in the study, where
            # the summary, another worker and optuna-dashboard can see it.
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        quality = value[0] if isinstance(value, tuple) else value
        if not math.isfinite(quality):  # Optuna fails the trial for it
            trial.set_user_attr("fail_reason", f"validation {options.objective} is {quality}")
        return value

    return _objective


def fixed_model_kwargs(settings) -> dict[str, Any]:
    """BPMF arguments that are not searched: taken from the settings the batch uses too."""
    return {"rating_range": (settings.rating_min, settings.rating_max)}


def objective_options_from_settings(settings, **overrides: Any) -> ObjectiveOptions:
    """Options for a study run with ``settings`` (``overrides`` win)."""
    space = SearchSpace(n_chains=settings.n_chains or SearchSpace().n_chains)
    values: dict[str, Any] = {"seed": settings.seed, "space": space, "fixed": fixed_model_kwargs(settings)}
    values.update(overrides)
    return ObjectiveOptions(**values)


def load_tuning_data(data_dir, settings) -> TuningData:
    """Load the data directory, prepare it as the batch does, and keep train + validation only."""
    from bookrec.data.io import load_dataset
    from bookrec.data.prep import prepare_training

    training = prepare_training(load_dataset(data_dir, with_truth=False), settings)
    return TuningData.from_training(training)
