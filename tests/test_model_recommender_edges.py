"""bookrec.model.Recommender at the edges: bad arguments are refused with a message, degenerate data
(no item read often enough to be a relevance candidate) falls back to the most read books."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bookrec.model.recommender import Recommender


def read_only_data(seed: int = 0, n_users: int = 40, n_items: int = 15):
    """Interactions without ratings (0 = read, not rated): no rating model to sample, so fits are fast."""
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((n_users, n_items)) < 0.3)
    return u, i, np.zeros(len(u)), n_users, n_items


@pytest.fixture(scope="module")
def fitted():
    u, i, r, n_users, n_items = read_only_data()
    return Recommender(relevance_l2=5.0).fit(u, i, r, n_users=n_users, n_items=n_items)


# A wrong n once read and wrote outside a numba buffer: run where a crash cannot take pytest down.
SIMILAR_WITH_N_BELOW_ONE = textwrap.dedent("""
    import numpy as np
    from bookrec.model.kernels.topn import top_n_csr
    from bookrec.model.recommender import Recommender
    from bookrec.model.relevance import top_per_row

    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((200, 120)) < 0.1)
    rec = Recommender(relevance_l2=10.0).fit(u, i, np.zeros(len(u)), n_users=200, n_items=120)
    item = int(rec.relevance_.items_[0])
    for n in (0, -1):
        try:
            rec.similar_items(item, n)
        except ValueError as e:
            print("refused:", e)
    print("top_per_row:", top_per_row(rng.random((3, 200)), 0).shape)
    ptr, idx, val = top_n_csr(np.array([0, 3], np.int64), np.array([0, 1, 2], np.int32),
                              np.ones(3, np.float32), 0)
    print("top_n_csr:", ptr.tolist(), len(idx))
""")


def test_similar_items_with_n_below_one_is_refused_and_the_kernels_keep_nothing():
    done = subprocess.run([sys.executable, "-c", SIMILAR_WITH_N_BELOW_ONE], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines == ["refused: n must be >= 1", "refused: n must be >= 1", "top_per_row: (3, 0)",
                     "top_n_csr: [0, 0] 0"], done.stdout


def test_similar_items_refuses_an_item_outside_the_model_like_bpmf(fitted):
    with pytest.raises(IndexError, match="item index out of range"):
        fitted.similar_items(fitted.n_items_, 3)
    with pytest.raises(IndexError, match="item index out of range"):
        fitted.similar_items(-1, 3)
    for item in (1.5, np.inf):
        with pytest.raises(ValueError, match="item must be an integer index"):
            fitted.similar_items(item, 3)
    items, weight, sd = fitted.similar_items(int(fitted.relevance_.items_[0]), 3)
    assert len(items) == len(weight) == len(sd) == 3


@pytest.mark.parametrize("l2", ["auto", 1.0])
@pytest.mark.parametrize("data, settings", [
    (([0, 1, 2], [0, 1, 2]), {}),  # every book read once, below min_item_interactions
    (([0, 1, 2, 2], [0, 1, 2, 0]), {"min_item_interactions": 10**9}),
], ids=["read-once", "huge-minimum"])
def test_without_relevance_candidates_every_reader_gets_the_most_read_books(l2, data, settings, capfd):
    u, i = data
    model = Recommender(relevance_l2=l2, **settings).fit(u, i, np.zeros(len(u)))
    assert len(model.relevance_.items_) == 0 and model.relevance_.l2_ > 0
    items, score, *_ = model.recommend_all([0, 1, 2], n=2)
    popularity = np.bincount(i, minlength=3)
    order = np.lexsort((np.arange(3), -popularity))
    for row, user in zip(items, (0, 1, 2)):
        read = set(np.asarray(i)[np.asarray(u) == user])
        expected = [j for j in order if j not in read][:2]
        assert row.tolist() == expected + [-1] * (2 - len(expected))
    assert np.all(score[items >= 0] > 0)
    printed = capfd.readouterr()
    assert "DPOTRI" not in printed.err + printed.out  # LAPACK's complaint about a 0 x 0 matrix


def test_a_single_rated_interaction_and_three_ratings_fit():
    one = Recommender().fit([0], [0], [5])
    assert one.rating_model_ is None and len(one.relevance_.items_) == 0
    items, *_ = one.recommend_all([0], n=3)
    assert np.all(items == -1)  # the only book is read already
    rated = Recommender(n_samples=4, burn_in=2, n_chains=1, n_factors=2).fit([0, 1, 2], [0, 1, 2], [5, 6, 7])
    items, score, mean, *_ = rated.recommend_all([0, 1, 2], n=2)
    assert np.sort(items, axis=1).tolist() == [[1, 2], [0, 2], [0, 1]]  # every unread book
    assert np.all((mean >= 1) & (mean <= 10))


def test_fold_in_needs_n_of_at_least_one(fitted):
    for n in (0, -3):
        with pytest.raises(ValueError, match="n must be >= 1"):
            fitted.fold_in([0, 1], [5, 7], n=n)


@pytest.mark.parametrize("ratings, message", [
    ([500, 7], "rating_range"), ([-5, 7], "0 \\(no rating\\) or positive"), ([np.nan, 7], "finite"),
])
def test_fold_in_checks_ratings_as_fit_does(fitted, ratings, message):
    with pytest.raises(ValueError, match=message):
        fitted.fold_in([0, 1], ratings)
    with pytest.raises(ValueError, match=message):
        Recommender().fit([0, 1], [0, 1], ratings)


def test_fold_in_takes_0_as_read_not_rated_and_refuses_fractional_items(fitted):
    unrated, *_ = fitted.fold_in([0, 1], [0, 0], n=4)
    assert len(unrated) == 4 and not {0, 1} & set(unrated)
    with pytest.raises(ValueError, match="item_idx must hold integer indices"):
        fitted.fold_in([0, 1.7], [5, 7])
    with pytest.raises(IndexError, match="out of range"):
        fitted.fold_in([0, fitted.n_items_], [5, 7])


def test_fractional_indices_are_refused_like_bpmf_but_integral_floats_are_indices(fitted):
    u, i, r, n_users, n_items = read_only_data()
    with pytest.raises(ValueError, match="user_idx must hold integer indices"):
        Recommender().fit(u + 0.7, i, r)
    with pytest.raises(ValueError, match="item_idx must hold integer indices"):
        Recommender().fit(u, i + 0.5, r)
    with pytest.raises(ValueError, match="users must hold integer indices"):
        fitted.recommend_all([0.5, 1])
    as_floats = Recommender(relevance_l2=5.0).fit(u.astype(float), i.astype(float), r, n_users=n_users,
                                                  n_items=n_items)
    np.testing.assert_array_equal(as_floats.recommend_all(np.arange(5.0), n=3)[0],
                                  fitted.recommend_all(np.arange(5), n=3)[0])


def test_an_array_rating_range_is_kept_as_given_and_shown():
    from sklearn.base import clone

    bounds = np.array([0.5, 5])
    model = Recommender(rating_range=bounds, n_candidates=30)
    assert repr(model) == "Recommender(rating_range=array([0.5, 5. ]), n_candidates=30)"
    assert model.get_params()["rating_range"] is bounds
    copy = clone(model)
    np.testing.assert_array_equal(copy.rating_range, bounds)
    assert repr(copy) == repr(model)
    assert model.liked_threshold == pytest.approx(3.65)
    assert repr(Recommender(rating_range=np.array([1.0, 10.0]))) == "Recommender()"  # the default's value
    with pytest.raises(ValueError, match="explicit ratings must lie in rating_range \\(0.5, 5\\)"):
        model.fit([0, 1], [0, 1], [3, 7])
