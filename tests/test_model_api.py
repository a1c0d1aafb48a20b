"""The estimator's API: predictive intervals, recommendations, fold-in, persistence, callbacks, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.model import BPMF, NotFittedError
from bookrec.model.artifact import ArtifactError, artifact_paths
from bookrec.contracts.serving import ServingModel
from bookrec.model.foldin import fold_in_from_arrays, predict_fold_in, rank_items_for_fold_in
from bookrec.model.metrics import mixture_quantiles
from tests.support.simulate import simulate_ratings


@pytest.fixture(scope="module")
def fitted():
    sim = simulate_ratings(n_users=400, n_items=250, n_ratings=24_000, n_factors=3, noise_sd=1.0, seed=7)
    model = BPMF(n_factors=4, n_samples=60, burn_in=40, max_kept_samples=40, seed=3, show_progress=False)
    model.fit(sim.user_idx, sim.item_idx, sim.ratings, sim.n_users, sim.n_items)
    return sim, model


def test_fitted_attributes_follow_the_contract(fitted):
    sim, m = fitted
    s, k = m.n_kept_, m.n_factors
    assert s == 40  # 2 chains x 60 draws, thinned to the budget of 40
    assert m.user_factors_.shape == (s, sim.n_users, k) and m.user_factors_.dtype == np.float32
    assert m.item_factors_.shape == (s, sim.n_items, k) and m.item_bias_.shape == (s, sim.n_items)
    assert m.lambda_user_.shape == (s, k, k) and m.mu_item_.shape == (s, k) and m.tau_item_bias_.shape == (s,)
    assert set(m.traces_) >= {"alpha", "mu", "train_rmse", "pred_0"} and m.traces_["alpha"].shape == (2, 60)
    d = m.diagnostics_
    assert d["converged"] == (d["max_rhat"] < d["rhat_threshold"] and min(d["min_ess_bulk"], d["min_ess_tail"]) >= d["min_ess"])
    assert {"log_norm_U", "log_norm_V", "log_det_Lambda_U", "log_det_Lambda_V"} <= set(d["rhat"])
    assert d["slowest"]["name"] in d["rhat"] and d["summary"].startswith("slowest ")
    assert set(m.serving_arrays()) == set(ServingModel.number_fields())


def test_same_seed_same_model_whatever_the_chain_mode(fitted):
    sim, m = fitted
    assert m.chain_mode_ == "sweep"  # "auto"
    other = BPMF(**{**m.get_params(), "chain_mode": "threads"}).fit(
        sim.user_idx, sim.item_idx, sim.ratings, sim.n_users, sim.n_items)
    np.testing.assert_array_equal(other.user_factors_, m.user_factors_)
    np.testing.assert_array_equal(other.alpha_, m.alpha_)
    third = BPMF(**{**m.get_params(), "seed": 4}).fit(sim.user_idx, sim.item_idx, sim.ratings, sim.n_users, sim.n_items)
    assert not np.allclose(third.alpha_, m.alpha_)


def test_interval_is_the_mixture_quantile(fitted):
    _, m = fitted
    u, i = np.array([0, 5, 17]), np.array([3, 9, 100])
    mean, lo, hi = m.predict_interval(u, i, level=0.8)
    # Brute force: draw from the mixture of N(pred_s, 1/alpha_s) and take empirical quantiles.
    means, sds = m.predictive_components(u, i)
    rng = np.random.default_rng(0)
    n = 400_000
    comp = rng.integers(0, means.shape[1], n)
    for row in range(3):
        draws = means[row, comp] + sds[comp] * rng.standard_normal(n)
        q = np.quantile(draws, [0.1, 0.9])
        # Quantile SE ~ sqrt(p (1-p) / n) / density ~ 0.0005 / 0.15 ~ 0.003 here; allow 0.02.
        np.testing.assert_allclose([lo[row], hi[row]], np.clip(q, 1, 10), atol=0.02)
        assert mean[row] == pytest.approx(np.clip(means[row].mean(), 1, 10))
    # Exact quantiles of a single Gaussian: N(0, 1) at 0.975 is 1.959964.
    assert mixture_quantiles(np.zeros((1, 1)), np.ones((1, 1)), [0.975])[0, 0] == pytest.approx(1.959964, abs=1e-6)


def test_recommend_matches_brute_force_and_exclusions(fitted):
    sim, m = fitted
    seen = sp.csr_matrix((np.ones(sim.ratings.size), (sim.user_idx, sim.item_idx)), shape=(sim.n_users, sim.n_items))
    users = np.array([0, 1, 2, 50])
    items, mean, lower, upper = m.recommend_all(users, n=5, exclude_csr=seen)
    for row, u in enumerate(users):
        pred = m.predict(np.full(sim.n_items, u), np.arange(sim.n_items))
        pred[seen[u].indices] = -np.inf
        np.testing.assert_array_equal(items[row], np.argsort(-pred, kind="stable")[:5])
        assert not set(items[row]) & set(seen[u].indices)
        assert np.all(lower[row] <= mean[row]) and np.all(mean[row] <= upper[row])
    one = m.recommend(50, n=5, exclude=seen[50].indices)
    np.testing.assert_array_equal(one[0], items[3])
    # Risk-averse ranking is ordered by the lower bound; Thompson sampling is reproducible by seed.
    it_lo, _, lo_lo, _ = m.recommend_all(users, n=5, exclude_csr=seen, rank_by="lower")
    assert np.all(np.diff(lo_lo, axis=1) <= 1e-12)
    a = m.recommend_all(users, n=5, exclude_csr=seen, rank_by="sample", seed=1)[0]
    b = m.recommend_all(users, n=5, exclude_csr=seen, rank_by="sample", seed=1)[0]
    np.testing.assert_array_equal(a, b)


def test_similar_items_prefers_the_item_itself_direction(fitted):
    sim, m = fitted
    items, sim_mean, sim_sd = m.similar_items(10, n=5)
    assert 10 not in items and np.all(np.diff(sim_mean) <= 0) and np.all(sim_sd >= 0)
    assert np.all(np.abs(sim_mean) <= 1.0)


def test_fold_in_of_a_training_user_matches_the_trained_user(fitted):
    sim, m = fitted
    counts = np.bincount(sim.user_idx, minlength=sim.n_users)
    user = int(np.argmax(counts))
    mine = sim.user_idx == user
    fold = m.fold_in(sim.item_idx[mine], sim.ratings[mine])
    all_items = np.arange(sim.n_items)
    folded_mean, folded_lo, folded_hi = predict_fold_in(m.serving_arrays(), fold, all_items)
    trained_mean = m.predict(np.full(sim.n_items, user), all_items)
    # Same conditional, so the two differ only by Monte Carlo noise of the trained user's draws
    # (posterior sd of a prediction ~0.3 for a user with ~150 ratings, / sqrt(40 samples) ~ 0.05).
    assert np.mean(np.abs(folded_mean - trained_mean)) < 0.1
    assert np.corrcoef(folded_mean, trained_mean)[0, 1] > 0.98
    assert np.all(folded_lo <= folded_mean) and np.all(folded_mean <= folded_hi)


def test_fold_in_from_arrays_ranks_unrated_items(fitted):
    sim, m = fitted
    arrays = {k: np.array(v) for k, v in m.serving_arrays().items()}
    rated = np.array([1, 2, 3])
    fold = fold_in_from_arrays(arrays, rated, [9.0, 8.0, 2.0])
    assert fold.mean.shape == (m.n_kept_, m.n_factors + 1) and fold.draws.shape == fold.mean.shape
    items, mean, lo, hi = rank_items_for_fold_in(arrays, fold, n=10)
    assert len(items) == 10 and not set(items) & set(rated)
    assert np.all(np.diff(mean) <= 1e-12) and np.all(lo <= mean) and np.all(mean <= hi)
    items_lo, _, lo_lo, _ = rank_items_for_fold_in(arrays, fold, n=10, rank_by="lower")
    assert np.all(np.diff(lo_lo) <= 1e-12)
    # A reader who loves a book gets a higher predicted rating for it than one who hates it.
    love = fold_in_from_arrays(arrays, [5], [10.0])
    hate = fold_in_from_arrays(arrays, [5], [1.0])
    assert love.bias.mean() > hate.bias.mean()
    with pytest.raises(ValueError):
        fold_in_from_arrays(arrays, [sim.n_items], [5.0])


def test_save_load_round_trip_is_exact(fitted, tmp_path):
    _, m = fitted
    npz, manifest = m.save(tmp_path / "model.npz")
    loaded = BPMF.load(tmp_path / "model.npz")
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_", "mu_", "alpha_", "lambda_user_", "mu_user_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(m, name))
    for name, trace in m.traces_.items():
        np.testing.assert_array_equal(loaded.traces_[name], trace)
    assert loaded.get_params() == m.get_params()
    assert loaded.diagnostics_["converged"] == m.diagnostics_["converged"]
    u, i = np.arange(10), np.arange(10)
    np.testing.assert_array_equal(loaded.predict_interval(u, i)[1], m.predict_interval(u, i)[1])
    assert json.loads(manifest.read_text())["sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "missing"])
def test_corrupted_artifact_is_refused(fitted, tmp_path, damage):
    _, m = fitted
    npz, manifest = m.save(tmp_path / "model.npz")
    data = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        npz.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "manifest":
        manifest.write_text(manifest.read_text()[:-20])
    else:
        npz.unlink()
    with pytest.raises(ArtifactError):
        BPMF.load(tmp_path / "model.npz")
    assert artifact_paths(tmp_path / "model") == (tmp_path / "model.npz", tmp_path / "model.json")


def test_callback_sees_running_metrics_and_can_abort():
    sim = simulate_ratings(n_users=200, n_items=120, n_ratings=6_000, n_factors=2, seed=9)
    held = np.arange(0, sim.ratings.size, 10)
    train = np.setdiff1d(np.arange(sim.ratings.size), held)
    seen = []

    def callback(step, metrics):
        seen.append((step, metrics))
        if step >= 20:
            raise KeyboardInterrupt("pruned")  # stands in for optuna.TrialPruned: any exception propagates

    model = BPMF(n_factors=2, n_samples=50, burn_in=5, seed=0, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        model.fit(sim.user_idx[train], sim.item_idx[train], sim.ratings[train], sim.n_users, sim.n_items,
                  eval_set=(sim.user_idx[held], sim.item_idx[held], sim.ratings[held]), callback=callback, eval_every=10)
    assert [s for s, _ in seen] == [10, 20]
    assert {"rmse", "nll", "coverage90"} <= set(seen[-1][1]) and 0.5 < seen[-1][1]["rmse"] < 2.0


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        BPMF().fit([0, 1], [0], [5.0, 6.0])
    with pytest.raises(ValueError):
        BPMF().fit([0, -1], [0, 1], [5.0, 6.0])
    with pytest.raises(ValueError):
        BPMF().fit([0, 1], [0, 1], [5.0, np.nan])
    with pytest.raises(NotFittedError, match="not fitted yet"):
        BPMF().predict([0], [0])


def test_the_chains_starting_points_are_progress_too(monkeypatch):
    """The warm start (where the first fit in a process compiles the kernels) is a progress task of
    its own, so that a log off a terminal is not silent while it runs."""
    import logging

    from bookrec.logging import LogProgress
    from bookrec.model import bpmf

    shown: list[LogProgress] = []

    def recording_progress(enabled):
        shown.append(LogProgress(logging.getLogger("bookrec.test"), 60.0))
        return shown[-1]

    monkeypatch.setattr(bpmf, "_progress", recording_progress)
    sim = simulate_ratings(n_users=30, n_items=20, n_ratings=200, seed=3)
    BPMF(n_factors=2, burn_in=2, n_samples=4, n_chains=3, max_kept_samples=6, seed=1, show_progress=True).fit(
        sim.user_idx, sim.item_idx, sim.ratings, n_users=sim.n_users, n_items=sim.n_items)
    tasks = [task for progress in shown for task in progress._tasks.values()]
    assert [t["description"] for t in tasks] == ["Starting chains", "Gibbs sampling"]
    assert tasks[0]["completed"] == tasks[0]["total"] == 3
