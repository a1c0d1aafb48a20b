"""bookrec.model.Recommender: the notebook API (scikit-learn style) on data of another scale."""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.model import NotFittedError
from bookrec.model.recommender import RANK_BY, Recommender


def stars_data(seed: int = 0, n_users: int = 400, n_items: int = 120):
    """0.5-5 stars, every interaction rated (MovieLens-like), with taste groups."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 3, n_users)
    genre = rng.integers(0, 3, n_items)
    quality = rng.normal(0, 0.6, n_items)
    pick = np.where(taste[:, None] == genre[None, :], 0.18, 0.03)
    u, i = np.nonzero(rng.random((n_users, n_items)) < pick)
    latent = 3.0 + quality[i] + np.where(taste[u] == genre[i], 0.7, -0.4) + rng.normal(0, 0.6, len(u))
    ratings = np.clip(np.round(latent * 2) / 2, 0.5, 5.0)
    return u, i, ratings, n_users, n_items


@pytest.fixture(scope="module")
def fitted():
    u, i, r, n_users, n_items = stars_data()
    model = Recommender(rating_range=(0.5, 5), n_samples=40, burn_in=20, seed=3)
    return model.fit(u, i, r, n_users=n_users, n_items=n_items), (u, i, r)


def test_clone_and_params_round_trip():
    from sklearn.base import clone

    model = Recommender(rating_range=(0.5, 5), n_candidates=30, like_weight=2.0)
    copy = clone(model)
    assert copy is not model
    assert copy.get_params() == model.get_params()
    assert copy.set_params(like_weight=0.5).like_weight == 0.5
    with pytest.raises(ValueError):
        model.set_params(not_a_parameter=1)


def test_every_estimator_clones_with_its_parameters():
    from sklearn.base import clone

    from bookrec.model import BPMF
    from bookrec.model.relevance import ItemRelevance

    for model in (BPMF(rating_range=(0.5, 5), n_factors=3, balance_move=False), BPMF(), ItemRelevance(l2=50.0)):
        copy = clone(model)
        assert copy is not model and type(copy) is type(model)
        assert copy.get_params() == model.get_params()


def test_liked_threshold_is_the_top_30_percent_of_the_scale():
    assert Recommender(rating_range=(1, 10)).liked_threshold == pytest.approx(7.3)
    assert Recommender(rating_range=(0.5, 5)).liked_threshold == pytest.approx(3.65)


def test_every_mode_orders_the_same_candidates_by_its_own_score(fitted):
    model, (u, i, _) = fitted
    users = np.arange(60)
    out = {mode: model.recommend_all(users, n=model.n_candidates, rank_by=mode, seed=1) for mode in RANK_BY}
    seen = model.seen_
    for mode, (items, score, mean, lower, upper) in out.items():
        assert items.shape == score.shape == mean.shape == (60, model.n_candidates)
        for r in users:
            row = items[r][items[r] >= 0]
            assert not set(row) & set(seen[r].indices)
            assert set(row) == set(out["for_you"][0][r][out["for_you"][0][r] >= 0])
            assert np.all(np.diff(score[r][: len(row)]) <= 1e-12)
        ok = items >= 0
        assert np.all((lower[ok] <= mean[ok] + 1e-9) & (mean[ok] <= upper[ok] + 1e-9))
        assert np.all((lower[ok] >= 0.5) & (upper[ok] <= 5))
    np.testing.assert_allclose(out["mean"][1], out["mean"][2])  # mean mode's score is the mean
    np.testing.assert_allclose(out["lower"][1], out["lower"][3])


def test_recommendations_follow_the_readers_taste(fitted):
    model, (u, i, r) = fitted
    _, _, _, n_users, n_items = stars_data()
    rng = np.random.default_rng(0)
    taste = rng.integers(0, 3, n_users)
    genre = rng.integers(0, 3, n_items)
    items, *_ = model.recommend_all(np.arange(n_users), n=10)
    same = (genre[items] == taste[:, None])[items >= 0]
    assert same.mean() > 0.6  # a third would be chance


def test_exclusion_defaults_to_fitted_interactions_and_can_be_given(fitted):
    model, _ = fitted
    items, *_ = model.recommend(5, n=10)
    assert not set(items) & set(model.seen_[5].indices)
    banned = items[:3]
    again, *_ = model.recommend(5, n=10, exclude=banned)
    assert not set(again) & set(banned)


def test_reasons_are_books_the_reader_read(fitted):
    model, _ = fitted
    out = model.recommend_all(np.arange(30), n=10, return_reasons=True)
    reasons = out[5]
    for r in range(30):
        assert set(reasons[r][reasons[r] >= 0]) <= set(model.seen_[r].indices)
        assert (reasons[r] >= 0).mean() > 0.5


def test_a_reader_with_nothing_gets_the_most_read_books():
    u, i, r, n_users, n_items = stars_data(seed=1)
    model = Recommender(rating_range=(0.5, 5), n_samples=20, burn_in=10).fit(u, i, r, n_users=n_users + 1, n_items=n_items)
    items, score, *_ = model.recommend_all([n_users], n=5)
    counts = np.bincount(i, minlength=n_items)
    assert set(items[0]) <= set(np.argsort(-counts, kind="stable")[:model.n_candidates])
    assert np.all(np.isfinite(score[0]))


def test_fold_in_from_books_read_but_not_rated(fitted):
    model, _ = fitted
    read = model.seen_[7].indices[:6]
    items, score, mean, lower, upper = model.fold_in(read, None, n=8)
    assert len(items) == 8 and not set(items) & set(read)
    assert np.all(np.diff(score) <= 1e-12)
    rated = model.fold_in(read, np.full(len(read), 4.5), n=8, rank_by="mean")
    assert np.all(np.diff(rated[2]) <= 1e-12)


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(ValueError, match="rating_range"):
        Recommender(rating_range=(1, 5)).fit([0, 1], [0, 1], [3, 7])
    with pytest.raises(ValueError, match="non-negative"):
        Recommender().fit([0, -1], [0, 1], [3, 7])
    with pytest.raises(ValueError, match="same length"):
        Recommender().fit([0, 1], [0], [3, 7])
    with pytest.raises(NotFittedError, match="not fitted"):
        Recommender().recommend_all([0])
