"""The relevance model's posterior equals the regression it claims to be, computed directly.

For item j, the Bayesian regression of column x_j on the other columns with prior precision
lambda_i = l2 + popularity_l2 * n_i on the weight of item i (in units of the noise) has posterior
mean A^-1 X_-j^T x_j and covariance sigma_j^2 A^-1, where A = X_-j^T X_-j + diag(lambda_-j). The model computes both for every item from one inverse of the full Gram
matrix (block inversion); here each item's regression is solved on its own and compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.model.relevance import ItemRelevance, binary_matrix, holdout_rows, top_per_row

L2 = 3.0


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n_users, n_items = 300, 40
    taste = rng.integers(0, 4, n_users)
    genre = rng.integers(0, 4, n_items)
    p = np.where(taste[:, None] == genre[None, :], 0.25, 0.03)
    x = sp.csr_matrix((rng.random((n_users, n_items)) < p).astype(np.float32))
    return x


POPULARITY_L2 = {"ease": 0.0, "edlae": 0.5}


@pytest.fixture(scope="module", params=sorted(POPULARITY_L2))
def model(data, request):
    return ItemRelevance(l2=L2, popularity_l2=POPULARITY_L2[request.param], min_item_interactions=1).fit(data)


def _direct(x: np.ndarray, j: int, model: ItemRelevance):
    """Posterior mean, covariance scale and sigma_j^2 of item j's own regression."""
    lam = L2 + model.popularity_l2 * x.sum(axis=0)
    others = np.delete(np.arange(x.shape[1]), j)
    xo, y = x[:, others], x[:, j]
    a = xo.T @ xo + np.diag(lam[others])
    a_inv = np.linalg.inv(a)
    b = a_inv @ xo.T @ y
    sigma2 = (np.sum((y - xo @ b) ** 2) + b @ (lam[others] * b)) / x.shape[0]
    return others, b, a_inv, sigma2


def test_weights_and_their_sds_equal_each_items_own_regression(data, model):
    x = data.toarray().astype(np.float64)
    assert len(model.items_) == x.shape[1]
    for j in (0, 7, 23):
        others, b, a_inv, sigma2 = _direct(x, j, model)
        lj = model.local_[j]
        np.testing.assert_allclose(model.noise_var_[lj], sigma2, rtol=1e-5)
        for i_pos, i in enumerate(others[:10]):
            local, mean, sd = model.weights_from(i)
            np.testing.assert_allclose(mean[lj], b[i_pos], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(sd[lj], np.sqrt(sigma2 * a_inv[i_pos, i_pos]), rtol=1e-4)


def test_scores_and_sds_equal_the_direct_posterior(data, model):
    x = data.toarray().astype(np.float64)
    rows = np.arange(12)
    mean, sd = model.score(data[rows])
    for r in rows:
        for j in (1, 9, 30):
            if x[r, j]:
                continue  # the score of an item the reader already has is not a prediction
            others, b, a_inv, sigma2 = _direct(x, j, model)
            h = x[r, others]
            lj = model.local_[j]
            np.testing.assert_allclose(mean[r, lj], h @ b, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(sd[r, lj], np.sqrt(sigma2 * h @ a_inv @ h), rtol=1e-4, atol=1e-7)


def test_recommend_excludes_history_sorts_and_names_the_strongest_reason(data, model):
    items, mean, sd, because = model.recommend(data[:50], 5)
    x = data.toarray()
    for r in range(50):
        assert not set(items[r]) & set(np.flatnonzero(x[r]))
        assert np.all(np.diff(mean[r]) <= 0)
        hist = np.flatnonzero(x[r])
        if not len(hist):
            assert np.all(because[r] == -1)
            continue
        for j, why in zip(items[r], because[r]):
            weights = [model.weights_from(i)[1][model.local_[j]] for i in hist]
            assert why == hist[int(np.argmax(weights))]


def test_neighbour_arrays_hold_each_items_strongest_weights(model):
    arrays = model.neighbour_arrays(k=6)
    for c in (0, 5, 17):
        _, mean, sd = model.weights_from(model.items_[c])
        ref = top_per_row(mean[None, :], 6)[0]
        assert list(arrays["neighbours"][c]) == list(ref)
        np.testing.assert_allclose(arrays["weights"][c], mean[ref], rtol=1e-5)
        np.testing.assert_allclose(arrays["weight_sd"][c], sd[ref], rtol=1e-5)


def test_candidates_are_the_most_read_items_with_enough_readers(data):
    counts = np.asarray(data.sum(axis=0)).ravel()
    m = ItemRelevance(l2=L2, max_items=10, min_item_interactions=int(np.sort(counts)[-5])).fit(data)
    assert len(m.items_) <= 10
    assert np.all(counts[m.items_] >= m.min_item_interactions)
    assert np.all(np.diff(counts[m.items_]) <= 0)
    items, _, _, _ = m.recommend(data[:20], 3)
    assert np.isin(items[items >= 0], m.items_).all()


def test_automatic_ridge_is_the_grid_value_with_the_best_held_out_recall(data):
    m = ItemRelevance(l2="auto", min_item_interactions=1, seed=1).fit(data)
    key = (m.l2_, m.popularity_l2_)
    assert key in m.l2_validation_ and len(m.l2_validation_) > 1
    assert m.l2_validation_[key] == max(m.l2_validation_.values())


def test_holdout_rows_keeps_one_and_holds_out_a_fifth():
    x = binary_matrix(np.repeat(np.arange(4), [1, 2, 5, 10]), np.r_[0, 0, 1, np.arange(5), np.arange(10)], 4, 10)
    kept, held = holdout_rows(x, 0.2, seed=0)
    assert list(np.diff(held.indptr)) == [0, 1, 1, 2]
    assert list(np.diff(kept.indptr)) == [1, 1, 4, 8]
    assert (kept + held - x).nnz == 0 or abs(kept + held - x).sum() == 0


def test_relevance_beats_popularity_on_held_out_reading():
    """On the structured generator, held-out interactions come back more often than by popularity."""
    from bookrec.data.prep import IndexMap, attach_work_keys
    from bookrec.data.synth import generate

    ds = generate("small", seed=11).dataset
    r = attach_work_keys(ds.ratings, ds.books)
    users, works = IndexMap.from_values(r["user_id"].to_numpy()), IndexMap.from_values(r["work_key"].to_numpy())
    x = binary_matrix(users.encode(r["user_id"].to_numpy()), works.encode(r["work_key"].to_numpy()), len(users), len(works))
    train, test = holdout_rows(x, 0.2, seed=0)
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    m = ItemRelevance(seed=0).fit(train)
    items, _, _, _ = m.recommend(train[rows], 10)
    pop = np.asarray(train.sum(axis=0)).ravel().astype(np.float64)
    pop_scores = np.tile(pop, (len(rows), 1))
    pop_scores[train[rows].nonzero()] = -np.inf
    pop_items = top_per_row(pop_scores, 10)

    def hits(lists):
        return np.array([len(set(lst) & set(test[r].indices)) for lst, r in zip(lists, rows)], dtype=np.float64)

    diff = hits(items) - hits(pop_items)
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    assert z > 3.0, (hits(items).mean(), hits(pop_items).mean(), z)
