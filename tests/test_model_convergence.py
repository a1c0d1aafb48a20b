"""On the data part's `small` preset: chains converge (R-hat) and the model beats the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.config import Settings
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.model import BPMF
from bookrec.model.baselines import BiasBaseline, GlobalMean
from bookrec.model.metrics import evaluate_predictive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_fit():
    training = prepare_training(generate("small", seed=42).dataset, Settings())
    # k = 3 with 2 chains x (300 burn-in + 1,000 draws): the slowest mode (the train RMSE, i.e. how
    # the variance splits between signal and noise) has an autocorrelation time of ~15-30 sweeps
    # here, so 1,000 draws per chain are needed for split R-hat to settle below 1.05.
    model = BPMF(n_factors=3, burn_in=300, n_samples=1_000, seed=0, show_progress=False)
    model.fit(*training.train, training.n_users, training.n_items)
    return training, model


def test_rhat_below_threshold_on_small_preset(small_fit):
    _, model = small_fit
    d = model.diagnostics_
    tracked = ({"alpha", "mu", "train_rmse", "log_norm_U", "log_norm_V", "log_det_Lambda_U", "log_det_Lambda_V"}
               | {f"pred_{n}" for n in range(20)})
    assert set(d["rhat"]) == tracked
    bad = {name: value for name, value in d["rhat"].items() if not value < 1.05}
    assert not bad, bad


def test_beats_baselines_on_small_preset(small_fit):
    training, model = small_fit
    u, i, r = training.train
    ours = evaluate_predictive(model, *training.test)
    for baseline in (GlobalMean().fit(u, i, r), BiasBaseline().fit(u, i, r, training.n_users, training.n_items)):
        theirs = evaluate_predictive(baseline, *training.test)
        assert ours["rmse"] < theirs["rmse"], (ours["rmse"], theirs["rmse"])
        assert ours["nll"] < theirs["nll"], (ours["nll"], theirs["nll"])
    # Integer ratings from thresholds: the Gaussian predictive still covers 85-95% at 90%
    # (n ~ 4,000 held-out ratings: binomial SE 0.5%).
    assert 0.85 <= ours["coverage"]["0.9"] <= 0.95
