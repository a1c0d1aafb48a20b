"""The search space: every dimension is a :class:`bookrec.model.BPMF` constructor argument.

The dimensions are the tunable parameters of :mod:`bookrec.contracts.params` (their ``search``
ranges and help); a pair such as ``bias_prior = (shape, rate)`` is searched as two dimensions.
Nothing here is decorative: each value suggested by a trial ends up in the keyword arguments the
model is built with (``tests/test_optimize_space.py`` fits the model with two values of each
dimension and checks that the fitted posterior changes).

``max_kept_samples`` is not searched: it is set to ``n_chains * ceil(n_samples / thin)`` so that
the model keeps exactly the draws the trial asked for (a smaller cap would thin further and make
``thin`` a no-op); it is written with the other parameters so the batch keeps the same draws.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from bookrec.contracts.params import BOOL, INT, MODEL_PARAMS, PAIR, TUNABLE_PARAMS, Search, default

#: Trial parameter names, in the order they are suggested.
SEARCHED = tuple(name for param in TUNABLE_PARAMS for name, _ in MODEL_PARAMS[param].dimensions())


class SearchSpace:
    """The range of each dimension (inclusive): the contract's, except those given as ``name=(low, high)``.
    Positive scale parameters are searched on a log scale (as the contract says)."""

    def __init__(self, n_chains: int = default("n_chains"), **bounds: tuple[float, float]) -> None:
        unknown = set(bounds) - set(SEARCHED)
        if unknown:
            raise TypeError(f"not a dimension of the search space: {', '.join(sorted(unknown))}")
        self.n_chains = n_chains
        self.ranges: dict[str, Search] = {}
        for param in TUNABLE_PARAMS:
            for name, search in MODEL_PARAMS[param].dimensions():
                low, high = bounds.get(name, (search.low, search.high))
                self.ranges[name] = Search(low, high, search.log)

    def __repr__(self) -> str:
        return f"SearchSpace(n_chains={self.n_chains}, ranges={self.ranges})"

    @property
    def max_sweeps(self) -> int:
        """Most post-burn-in sweeps a trial can run (the step axis of the pruner)."""
        return int(self.ranges["n_samples"].high)


def kept_samples(n_samples: int, thin: int, n_chains: int) -> int:
    """``max_kept_samples`` that keeps every ``thin``-th of ``n_samples`` draws in each chain."""
    return n_chains * math.ceil(n_samples / thin)


def to_bpmf_kwargs(values: dict[str, Any], n_chains: int) -> dict[str, Any]:
    """Trial parameters -> BPMF keyword arguments (plain JSON types: the batch reads them back)."""
    out: dict[str, Any] = {}
    for name in TUNABLE_PARAMS:
        param = MODEL_PARAMS[name]
        if param.kind == PAIR:
            out[name] = [float(values[trial_name]) for trial_name in param.trial_names]
        elif param.kind == BOOL:
            out[name] = bool(values[name])
        else:
            out[name] = int(values[name]) if param.kind == INT else float(values[name])
    out["n_chains"] = int(n_chains)
    out["max_kept_samples"] = kept_samples(out["n_samples"], out["thin"], n_chains)
    return out


def from_bpmf_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """BPMF keyword arguments -> trial parameters (to enqueue a known configuration, e.g. the default)."""
    out: dict[str, Any] = {}
    for name in TUNABLE_PARAMS:
        param = MODEL_PARAMS[name]
        if param.kind == PAIR:
            out.update(zip(param.trial_names, (float(x) for x in kwargs[name])))
        else:
            out[name] = kwargs[name]
    return out


def suggest_params(trial: optuna.Trial, space: SearchSpace | None = None) -> dict[str, Any]:
    """Suggest one configuration and return it as BPMF keyword arguments."""
    s = space or SearchSpace()
    values: dict[str, Any] = {}
    for param in TUNABLE_PARAMS:
        kind = MODEL_PARAMS[param].kind
        for name, _ in MODEL_PARAMS[param].dimensions():
            r = s.ranges[name]
            if kind == BOOL:
                values[name] = trial.suggest_categorical(name, [True, False])
            elif kind == INT:
                values[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
            else:
                values[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return to_bpmf_kwargs(values, s.n_chains)


def default_bpmf_kwargs(n_chains: int = default("n_chains"), **overrides: Any) -> dict[str, Any]:
    """The model's own defaults (bookrec.contracts.params) as searched keyword arguments, plus
    ``overrides`` (trial parameters)."""
    values = from_bpmf_kwargs({name: default(name) for name in TUNABLE_PARAMS})
    values.update(overrides)
    return to_bpmf_kwargs(values, n_chains)
