"""The estimator at the edges of its input: what the compiled kernels would read without bounds
checks is refused with a ValueError, an aborted fit leaves no half-filled model, and a saved model
survives a failed save and refuses a manifest that misstates its arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.model import BPMF, NotFittedError
from bookrec.model.artifact import ArtifactError, artifact_paths
from tests.support.simulate import simulate_ratings


@pytest.fixture(scope="module")
def small():
    sim = simulate_ratings(n_users=60, n_items=40, n_ratings=900, n_factors=2, noise_sd=1.0, seed=5)
    model = BPMF(n_factors=2, n_samples=20, burn_in=10, max_kept_samples=10, seed=1, show_progress=False)
    model.fit(sim.user_idx, sim.item_idx, np.clip(sim.ratings, 1, 10), sim.n_users, sim.n_items)
    return sim, model


@pytest.mark.parametrize("exclude", [
    [10**12], [-1], [40],  # an index past the items, a negative one, the first past the end
])
def test_recommend_refuses_exclusions_outside_the_items(small, exclude):
    _, m = small
    with pytest.raises(ValueError, match="exclude"):
        m.recommend(0, n=3, exclude=exclude)


@pytest.mark.parametrize("exclude_csr, message", [
    (sp.csr_matrix((60, 41)), "shape"),  # one column too many
    (sp.csr_matrix((40, 60)), "shape"),  # transposed: items x users
    ((np.array([0, 5]), np.array([1, 2])), "indptr"),  # indptr ends past its indices
    ((np.array([0, 2, 1]), np.array([1, 2])), "indptr"),  # decreasing
    ((np.array([], dtype=np.int64), np.array([], dtype=np.int64)), "indptr"),
], ids=["extra-column", "transposed", "indptr-past-end", "decreasing", "empty-indptr"])
def test_recommend_all_refuses_malformed_exclusions(small, exclude_csr, message):
    _, m = small
    with pytest.raises(ValueError, match=message):
        m.recommend_all([0, 1], n=3, exclude_csr=exclude_csr)


def test_a_valid_exclusion_matrix_with_fewer_rows_still_works(small):
    _, m = small
    excl = sp.csr_matrix((np.ones(2), ([0, 0], [3, 4])), shape=(10, 40))
    items, *_ = m.recommend_all([0, 20], n=38, exclude_csr=excl)
    assert not {3, 4} & set(items[0]) and {3, 4} <= set(items[1])


def test_lower_bound_ranking_fills_every_slot_whatever_the_candidate_count(small):
    _, m = small
    items, mean, lower, upper = m.recommend_all([0], n=3, rank_by="lower", n_candidates=1)
    assert (items >= 0).all() and np.all(np.diff(lower[0]) <= 0)
    for bad in ({"n": 0}, {"n": 3, "n_candidates": 0}, {"n": 3, "n_candidates": -1}):
        with pytest.raises(ValueError, match="at least 1"):
            m.recommend_all([0], rank_by="lower", **bad)


def test_settings_that_keep_no_draw_or_too_few_are_refused():
    sim = simulate_ratings(n_users=20, n_items=10, n_ratings=80, n_factors=1, noise_sd=1.0, seed=2)
    with pytest.raises(ValueError, match="must be at least thin"):
        BPMF(n_samples=2, thin=3, show_progress=False).fit(sim.user_idx, sim.item_idx, np.clip(sim.ratings, 1, 10))
    with pytest.raises(ValueError, match="at least n_chains"):
        BPMF(n_samples=4, max_kept_samples=1, n_chains=2, show_progress=False).fit(
            sim.user_idx, sim.item_idx, np.clip(sim.ratings, 1, 10))
    with pytest.raises(ValueError, match="same length"):
        BPMF(n_samples=4, burn_in=2, show_progress=False).fit(
            sim.user_idx, sim.item_idx, np.clip(sim.ratings, 1, 10), eval_set=([0, 1], [0, 1], [5.0]))
    with pytest.raises(ValueError, match="finite"):
        BPMF(n_samples=4, burn_in=2, show_progress=False).fit(
            sim.user_idx, sim.item_idx, np.clip(sim.ratings, 1, 10), eval_set=([0, 1], [0, 1], [5.0, np.nan]))


def test_ratings_outside_the_range_are_fitted_with_a_warning():
    with pytest.warns(UserWarning, match=r"ratings run from -3 to 50, outside rating_range \[1, 10\]"):
        BPMF(n_samples=4, burn_in=2, show_progress=False).fit([0, 1, 2], [0, 1, 2], [50.0, -3.0, 7.0])


def test_an_aborted_fit_leaves_an_unfitted_model_not_a_stale_one(small):
    sim, _ = small
    m = BPMF(n_factors=2, n_samples=20, burn_in=5, max_kept_samples=10, seed=1, show_progress=False)
    m.fit([0, 1, 2], [0, 1, 2], [5.0, 6.0, 7.0], n_users=2000, n_items=3)
    assert m.n_users_ == 2000

    def prune(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        m.fit([0, 1, 2], [0, 1, 2], [5.0, 6.0, 7.0], eval_set=([0], [1], [6.0]), callback=prune, eval_every=1)
    assert not hasattr(m, "n_users_") and not hasattr(m, "user_factors_")
    with pytest.raises(NotFittedError):
        m.recommend_all([1999])


@pytest.mark.parametrize("call", [
    lambda m: m.predict_interval([0], [0]),
    lambda m: m.recommend(0),
    lambda m: m.recommend_all([0]),
    lambda m: m.similar_items(0),
], ids=["predict_interval", "recommend", "recommend_all", "similar_items"])
def test_every_method_says_the_model_is_not_fitted(call):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        call(BPMF())


def test_clone_keeps_pair_parameters_given_as_lists():
    from sklearn.base import clone

    m = BPMF().set_params(bias_prior=[2.0, 2.0], rating_range=np.array([0.5, 5.0]))
    copy = clone(m)
    assert list(copy.bias_prior) == [2.0, 2.0] and list(copy.rating_range) == [0.5, 5.0]


def test_a_failed_save_leaves_the_saved_model_loadable(small, tmp_path):
    _, m = small
    path = tmp_path / "model"
    m.save(path)
    with pytest.raises(ArtifactError, match="not JSON"):
        m.save(path, metadata={"x": object()})
    loaded = BPMF.load(path)
    np.testing.assert_array_equal(loaded.predict([0, 1], [2, 3]), m.predict([0, 1], [2, 3]))
    # numpy arrays and paths in the metadata are written as JSON lists and strings
    m.save(path, metadata={"x": np.arange(3), "where": tmp_path})
    assert BPMF.load(str(path) + ".json").metadata_ == {"x": [0, 1, 2], "where": str(tmp_path)}


@pytest.mark.parametrize("tamper", [
    lambda man: man.update(n_users=10**9),
    lambda man: man.update(n_items=1),
    lambda man: man["params"].update(n_factors="x"),
    lambda man: man["params"].update(unknown=1),
    lambda man: man.pop("n_kept"),
], ids=["n_users", "n_items", "bad-param", "unknown-param", "missing-key"])
def test_load_refuses_a_manifest_that_misstates_the_model(small, tmp_path, tamper):
    _, m = small
    npz, manifest = artifact_paths(tmp_path / "model")
    m.save(npz)
    doc = json.loads(manifest.read_text())
    tamper(doc)
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError):
        BPMF.load(npz)
