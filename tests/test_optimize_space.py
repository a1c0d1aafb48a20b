"""Every searched parameter reaches the model and changes training (the earlier tuner searched a
parameter nothing read)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from bookrec.config import Settings
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.model import BPMF
from bookrec.contracts.params import BOOL, INT, MODEL_PARAMS, TUNABLE_PARAMS
from bookrec.optimize.space import SEARCHED, SearchSpace, kept_samples, suggest_params

# Bounds that admit short runs (the contract's start at 10 burn-in / 20 samples): the question is
# whether a value is *read*, not whether it is good.
SPACE = SearchSpace(burn_in=(5, 20), n_samples=(5, 20))


def _points(at: float) -> dict:
    """Each dimension of the space at the fraction ``at`` of its range (booleans: True below one half),
    read from the contract so that a newly tunable parameter is tested without editing this file."""
    values = {}
    for param in TUNABLE_PARAMS:
        kind = MODEL_PARAMS[param].kind
        for name, _ in MODEL_PARAMS[param].dimensions():
            r = SPACE.ranges[name]
            x = r.low * (r.high / r.low) ** at if r.log else r.low + at * (r.high - r.low)
            values[name] = (at < 0.5) if kind == BOOL else round(x) if kind == INT else x
    return values


BASE, OTHER = _points(1 / 3), _points(2 / 3)


@pytest.fixture(scope="module")
def tiny():
    return prepare_training(generate("tiny", seed=3).dataset, Settings(seed=3))


def fitted_predictive(tiny, trial_params: dict) -> tuple[dict, np.ndarray]:
    """Build the model exactly as the objective does (suggest_params on a trial), fit, and return
    the kwargs and the posterior-predictive draws on the validation pairs."""
    kwargs = suggest_params(optuna.trial.FixedTrial(trial_params), SPACE)
    model = BPMF(**kwargs, seed=11, show_progress=False)
    model.fit(*tiny.train, n_users=tiny.n_users, n_items=tiny.n_items)
    means, sds = model.predictive_components(tiny.validation[0], tiny.validation[1])
    return kwargs, np.concatenate([means.ravel(), np.asarray(sds).ravel()])


def test_the_space_is_the_contracts_tunable_parameters():
    # factors, Normal-Wishart strengths, bias hyperprior, noise prior, mu's prior, burn-in, samples,
    # thinning, warm start: every one the contract gives a search range, and nothing else.
    assert {"n_factors", "beta0", "w0_scale", "bias_prior", "alpha_prior", "mu_prior_precision", "burn_in",
            "n_samples", "thin", "warm_start"} <= set(TUNABLE_PARAMS)
    expected = [n for p in MODEL_PARAMS.values() if p.tunable for n in (p.trial_names or (p.name,))]
    assert list(SEARCHED) == expected
    kwargs = suggest_params(optuna.trial.FixedTrial(BASE), SPACE)
    assert set(kwargs) == set(TUNABLE_PARAMS) | {"n_chains", "max_kept_samples"}
    assert all(BASE[name] != OTHER[name] for name in SEARCHED)


def test_same_parameters_same_seed_give_identical_fits(tiny):
    # The control for the next test: with equal parameters, training is reproducible bit for bit,
    # so any difference below is caused by the parameter, not by chance.
    _, first = fitted_predictive(tiny, BASE)
    _, second = fitted_predictive(tiny, BASE)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", SEARCHED)
def test_each_searched_parameter_changes_training(tiny, name):
    base_kwargs, base = fitted_predictive(tiny, BASE)
    changed_kwargs, changed = fitted_predictive(tiny, {**BASE, name: OTHER[name]})
    assert changed_kwargs != base_kwargs
    assert base.shape != changed.shape or not np.array_equal(base, changed), f"{name} did not change the fit"


def test_thin_is_honoured_not_overridden_by_the_sample_cap(tiny):
    # max_kept_samples is derived so that the model keeps every thin-th draw, not fewer.
    for n_samples, thin in ((12, 2), (13, 3), (10, 4), (7, 1)):
        kwargs = suggest_params(optuna.trial.FixedTrial({**BASE, "n_samples": n_samples, "thin": thin}), SPACE)
        model = BPMF(**kwargs, seed=0, show_progress=False).fit(*tiny.train, n_users=tiny.n_users, n_items=tiny.n_items)
        assert model.n_kept_ == kwargs["n_chains"] * (n_samples // thin)
        assert kwargs["max_kept_samples"] == kept_samples(n_samples, thin, kwargs["n_chains"])
