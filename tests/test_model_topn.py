"""Top-N evaluation (bookrec.model.topn), its baselines (bookrec.model.topn_baselines) and the
ranking bench's plug-in point for the project's recommender."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bookrec.model.topn import (
    evaluate_topn,
    holdout_split,
    interactions_from_dataset,
    liked_threshold,
    paired_se,
    popularity_rank,
)
from bookrec.model.topn_baselines import (
    ALS,
    BPR,
    EASE,
    ItemKNN,
    Popularity,
    default_grids,
    interaction_matrix,
    tune,
)

L2 = math.log2


# ---------------------------------------------------------------------------------- metrics
def _hand_case():
    """Readers 0, 1, 2 over 10 works. Held out: reader 0 -> works 2 (rated 9), 5 (no rating),
    7 (rated 4); reader 1 -> work 3 (rated 8); reader 2 -> nothing."""
    test = (np.array([0, 0, 0, 1]), np.array([2, 5, 7, 3]), np.array([9.0, 0.0, 4.0, 8.0]))
    recommended = np.array([[5, 1, 2, -1], [0, 4, 6, 3], [5, 0, 8, 9]])
    popularity = np.arange(10, 0, -1)  # work j has popularity rank j + 1
    return recommended, np.array([0, 1, 2]), test, popularity


def test_recall_ndcg_mrr_by_hand():
    rec, users, test, pop = _hand_case()
    res = evaluate_topn(rec, users, test, (1, 10), pop, ks=(2, 4))
    pu = res.per_user
    # reader 0, all held-out {2, 5, 7}: @2 the list [5, 1] hits at rank 1 only
    assert pu["recall@2"][0] == pytest.approx(1 / 2)  # hits / min(k, relevant) = 1 / 2
    assert pu["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / L2(3)))
    assert pu["mrr@2"][0] == pytest.approx(1.0)
    # @4 the list [5, 1, 2, -1] hits at ranks 1 and 3
    assert pu["recall@4"][0] == pytest.approx(2 / 3)
    assert pu["ndcg@4"][0] == pytest.approx((1 + 1 / L2(4)) / (1 + 1 / L2(3) + 1 / L2(4)))
    # reader 1, held-out {3}: no hit @2, hit at rank 4 @4
    assert (pu["recall@2"][1], pu["ndcg@2"][1], pu["mrr@2"][1]) == (0.0, 0.0, 0.0)
    assert pu["recall@4"][1] == pytest.approx(1.0)
    assert pu["ndcg@4"][1] == pytest.approx(1 / L2(5))
    assert pu["mrr@4"][1] == pytest.approx(1 / 4)
    # reader 2 has nothing held out: undefined, and left out of the averages
    assert np.isnan(pu["recall@4"][2]) and np.isnan(pu["mrr@2"][2])
    assert res.users_all == 2
    assert res.metrics["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert res.metrics["mrr@4"] == pytest.approx((1 + 1 / 4) / 2)
    # liked (>= 7.3 on 1-10): reader 0 -> {2} only (5 is unrated, 7 is rated 4); reader 1 -> {3}
    assert res.users_liked == 2
    assert pu["recall@2_liked"][0] == 0.0
    assert pu["recall@4_liked"][0] == pytest.approx(1.0)
    assert pu["ndcg@4_liked"][0] == pytest.approx(1 / L2(4))
    assert pu["mrr@4_liked"][0] == pytest.approx(1 / 3)


def test_beyond_accuracy_by_hand():
    rec, users, test, pop = _hand_case()
    res = evaluate_topn(rec, users, test, (1, 10), pop, ks=(2,))
    m = res.metrics
    # top-2 lists: {5, 1}, {0, 4}, {5, 0}
    assert m["distinct@2"] == 4 and m["coverage@2"] == pytest.approx(0.4)
    assert m["top_share@2"] == pytest.approx(2 / 3)  # works 0 and 5 are in 2 of the 3 lists
    assert m["overlap@2"] == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)  # Jaccard of the 3 pairs
    assert m["novelty@2"] == pytest.approx(np.mean([6, 2, 1, 5, 6, 1]))  # popularity ranks
    summary = res.summary()
    assert summary["eval_users"] == 3 and isinstance(summary["recall@2"], float)


def test_empty_slots_and_repeats_do_not_count():
    test = (np.array([0, 0]), np.array([1, 2]), np.array([0.0, 0.0]))
    pop = np.ones(5)
    blank = evaluate_topn(np.array([[-1, -1, -1]]), [0], test, (1, 10), pop, ks=(3,))
    assert blank.metrics["recall@3"] == 0.0 and blank.metrics["distinct@3"] == 0
    assert np.isnan(blank.metrics["top_share@3"])
    repeated = evaluate_topn(np.array([[1, 1, 1]]), [0], test, (1, 10), pop, ks=(3,))
    assert repeated.metrics["recall@3"] == pytest.approx(1 / 2)
    assert repeated.metrics["ndcg@3"] == pytest.approx(1 / (1 + 1 / L2(3)))
    with pytest.raises(ValueError):
        evaluate_topn(np.array([[5]]), [0], test, (1, 10), pop, ks=(1,))  # item 5 outside 5 works


def test_ndcg_matches_scikit_learn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(3)
    n_users, n_items, k = 40, 60, 10
    scores = rng.random((n_users, n_items))
    relevant = rng.random((n_users, n_items)) < 0.08
    relevant[np.arange(n_users), rng.integers(0, n_items, n_users)] = True  # every reader has one
    top = np.argsort(-scores, axis=1)[:, :k]
    u, i = np.nonzero(relevant)
    res = evaluate_topn(top, np.arange(n_users), (u, i, np.zeros(u.size)), (1, 10), np.ones(n_items), ks=(k,))
    expected = [ndcg_score(relevant[r:r + 1].astype(float), scores[r:r + 1], k=k) for r in range(n_users)]
    np.testing.assert_allclose(res.per_user[f"ndcg@{k}"], expected, rtol=1e-12)
    recall = [relevant[r, top[r]].sum() / min(k, relevant[r].sum()) for r in range(n_users)]
    np.testing.assert_allclose(res.per_user[f"recall@{k}"], recall, rtol=1e-12)


def test_liked_threshold_on_both_scales():
    assert liked_threshold((1, 10)) == pytest.approx(7.3)
    assert liked_threshold((0.5, 5)) == pytest.approx(3.65)
    pop = np.ones(6)
    rec = np.array([[0, 1, 2, 3, 4, 5]])
    # 1-10: 7 is not liked, 8 is (and 7.3 itself is, the threshold being inclusive); 0 never
    ten = evaluate_topn(rec, [0], ([0] * 4, [0, 1, 2, 3], [7.0, 8.0, 7.3, 0.0]), (1, 10), pop, ks=(6,))
    assert ten.per_user["recall@6_liked"][0] == 1.0
    assert ten.per_user["ndcg@6_liked"][0] == pytest.approx((1 / L2(3) + 1 / L2(4)) / (1 + 1 / L2(3)))
    # 0.5-5: 3.5 is not liked, 4 is
    five = evaluate_topn(rec, [0], ([0, 0], [4, 5], [3.5, 4.0]), (0.5, 5), pop, ks=(1, 6))
    assert five.per_user["recall@1_liked"][0] == 0.0  # the first slot (work 0) is not held out
    assert five.per_user["mrr@6_liked"][0] == pytest.approx(1 / 6)
    assert five.per_user["mrr@6"][0] == pytest.approx(1 / 5)


def test_paired_se_and_compare():
    a = np.array([1.0, 2.0, 3.0, np.nan])
    b = np.array([0.0, 0.0, 1.0, 5.0])
    # differences 1, 2, 2 (the NaN reader is dropped): sd = sqrt(1/3), se = sd / sqrt(3) = 1/3
    assert paired_se(a, b) == pytest.approx(1 / 3)
    assert paired_se(a, a) == 0.0
    assert np.isnan(paired_se([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_se([1.0, 2.0], [1.0])
    rec, users, test, pop = _hand_case()
    good = evaluate_topn(rec, users, test, (1, 10), pop, ks=(4,))
    bad = evaluate_topn(np.full_like(rec, -1), users, test, (1, 10), pop, ks=(4,))
    diff, se = good.compare(bad, "recall@4")
    assert diff == pytest.approx((2 / 3 + 1) / 2)
    assert se == pytest.approx(paired_se([2 / 3, 1.0], [0.0, 0.0]))


def test_popularity_rank():
    np.testing.assert_allclose(popularity_rank([5, 9, 5, 1]), [2.5, 1, 2.5, 4])


# ------------------------------------------------------------------------------ interactions
def test_interactions_average_explicit_ratings_per_work():
    books = pd.DataFrame({"isbn": ["a1", "a2", "b1"], "work_key": ["wa", "wa", "wb"]})
    ratings = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 3],
        "isbn": ["a1", "a2", "b1", "a1", "a2", "zz"],  # zz is not in the books file
        "rating": np.array([8, 0, 0, 0, 0, 9], dtype=np.float32),
    })
    u, i, r, users, items = interactions_from_dataset(SimpleNamespace(ratings=ratings, books=books))
    got = {(users.decode([a])[0], items.decode([b])[0]): float(c) for a, b, c in zip(u, i, r)}
    # reader 1 rated one edition of wa 8 and touched the other: 8 (unrated rows do not dilute)
    assert got == {(1, "wa"): 8.0, (1, "wb"): 0.0, (2, "wa"): 0.0}
    assert list(users.values) == [1, 2]


# ----------------------------------------------------------------------------------- split
def _pairs(counts):
    u = np.repeat(np.arange(len(counts)), counts)
    i = np.concatenate([np.arange(c) * 7 + 3 for c in counts]).astype(np.int64)
    return u, i, np.arange(u.size, dtype=np.float32)


def test_holdout_fractions_and_train_kept():
    counts = [1, 2, 3, 5, 10, 13, 40]
    u, i, r = _pairs(counts)
    train, test = holdout_split(u, i, r, fraction=0.2, seed=4)
    held = np.bincount(test[0], minlength=len(counts))
    kept = np.bincount(train[0], minlength=len(counts))
    # round(0.2 n), at least 1, at least one kept; one interaction: nothing held out
    assert held.tolist() == [0, 1, 1, 1, 2, 3, 8]
    assert (kept >= 1).all() and (held + kept == counts).all()
    # every pair lands in exactly one part, with its rating
    both = np.r_[train[0] * 1000 + train[1], test[0] * 1000 + test[1]]
    assert np.unique(both).size == u.size
    lookup = dict(zip(u * 1000 + i, r))
    assert all(lookup[a * 1000 + b] == c for a, b, c in zip(*test))
    _, none = holdout_split(u, i, r, fraction=0.2, seed=4, min_interactions=11)
    assert np.unique(none[0]).tolist() == [5, 6]


def test_holdout_seeded_and_order_independent():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 300, 6000)
    i = rng.integers(0, 10**6, 6000)
    r = np.zeros(6000, np.float32)
    key = lambda part: set(zip(part[0].tolist(), part[1].tolist()))  # noqa: E731
    _, a = holdout_split(u, i, r, seed=1)
    _, b = holdout_split(u, i, r, seed=1)
    _, c = holdout_split(u, i, r, seed=2)
    perm = rng.permutation(6000)
    _, d = holdout_split(u[perm], i[perm], r[perm], seed=1)
    assert key(a) == key(b) == key(d)
    assert key(a) != key(c)
    assert 0.18 < len(a[0]) / 6000 < 0.22


# ------------------------------------------------------------------------------- baselines
ALL_BASELINES = [
    Popularity(), EASE(l2=50.0), ItemKNN(neighbours=50, shrink=5.0),
    ALS(factors=16, regularization=0.1, alpha=5.0, iterations=10, num_threads=1),
    BPR(factors=32, learning_rate=0.01, iterations=100, num_threads=1),  # one thread: hogwild SGD is not reproducible
]


@pytest.mark.parametrize("model", ALL_BASELINES, ids=lambda m: m.name)
def test_exclusion_and_empty_slots(model):
    # 6 readers x 5 works; exclusion holds more than the fitted matrix
    X = sp.csr_matrix(np.array([
        [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 0, 1],
    ], dtype=np.float32))
    model.fit(X)
    users = np.array([0, 2, 5])
    exclude = X[users].toarray()
    exclude[0, 4] = 1  # reader 0 also may not get work 4
    exclude[1] = 1  # reader 2: everything excluded
    rec = model.recommend_all(users, 4, sp.csr_matrix(exclude))
    assert rec.shape == (3, 4)
    assert sorted(rec[0, :2].tolist()) == [2, 3] and (rec[0, 2:] == -1).all()
    assert (rec[1] == -1).all()
    assert set(rec[2, :3].tolist()) == {0, 2, 3} and rec[2, 3] == -1
    default = model.recommend_all(users, 3)  # default exclusion: the fitted rows
    for row, u in zip(default, users):
        assert not set(row[row >= 0].tolist()) & set(X[u].indices.tolist())


@pytest.fixture(scope="module")
def tiny_split():
    from bookrec.data.synth import generate

    u, i, r, users, items = interactions_from_dataset(generate("tiny", seed=0).dataset)
    train, test = holdout_split(u, i, r, 0.2, seed=0)
    X = interaction_matrix(train[0], train[1], len(users), len(items))
    return X, test


def _random_lists(X, users, n, seed):
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), n), dtype=np.int64)
    for row, u in enumerate(users):
        pool = np.setdiff1d(np.arange(X.shape[1]), X[u].indices)
        out[row] = rng.choice(pool, n, replace=False)
    return out


@pytest.mark.parametrize("model", ALL_BASELINES, ids=lambda m: m.name)
def test_baselines_beat_random(model, tiny_split):
    X, test = tiny_split
    users = np.unique(test[0])
    pop = np.asarray(X.sum(axis=0)).ravel()
    res = evaluate_topn(model.fit(X).recommend_all(users, 10, X[users]), users, test, (1, 10), pop, ks=(10,))
    chance = evaluate_topn(_random_lists(X, users, 10, 0), users, test, (1, 10), pop, ks=(10,))
    diff, se = res.compare(chance, "recall@10")
    assert res.metrics["recall@10"] > 1.5 * chance.metrics["recall@10"]
    assert diff > 3 * se


def test_ease_matches_closed_form():
    rng = np.random.default_rng(1)
    X = sp.csr_matrix((rng.random((30, 12)) < 0.3).astype(np.float32))
    model = EASE(l2=3.0).fit(X)
    G = (X.T @ X).toarray() + 3.0 * np.eye(12)
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    keep = model.items_
    np.testing.assert_allclose(model.B_, B[np.ix_(keep, keep)], rtol=1e-4, atol=1e-6)
    limited = EASE(l2=3.0, max_items=4).fit(X)
    assert limited.items_.size == 4
    rec = limited.recommend_all(np.arange(30), 12)
    assert set(rec[rec >= 0].tolist()) <= set(limited.items_.tolist())


def test_als_is_seeded(tiny_split):
    X, _ = tiny_split
    a = ALS(factors=8, iterations=3, seed=5).fit(X)
    b = ALS(factors=8, iterations=3, seed=5).fit(X)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    assert a.item_factors_.shape == (X.shape[1], 8)


def test_tune_picks_the_best_validation_recall(tiny_split):
    X, test = tiny_split
    fit_part, validation = holdout_split(*sp.find(X)[:2], np.zeros(X.nnz), 0.2, seed=1)
    X_fit = interaction_matrix(fit_part[0], fit_part[1], *X.shape)
    grid = [{"neighbours": 2, "shrink": 0.0}, {"neighbours": 100, "shrink": 0.0}]
    best, table = tune(ItemKNN, grid, X_fit, validation, np.unique(validation[0]), n=10)
    assert len(table) == 2 and best in grid
    assert table[grid.index(best)]["recall@10"] == max(row["recall@10"] for row in table)
    grids = default_grids(X)
    assert len(grids["ALS"]) == 8 and len(grids["BPR"]) == 4 and len(grids["ItemKNN"]) == 8
    l2 = [g["l2"] for g in grids["EASE"]]
    assert l2 == sorted(l2) and l2[-1] / l2[0] == pytest.approx(64, rel=0.01)


# ------------------------------------------------------------------------- bench plug-in point
class _FakeRecommender:
    """Stands in for bookrec.model.Recommender: popularity among explicitly rated works."""

    def __init__(self, seed=0, rating_range=(1.0, 10.0)):
        self.seed, self.rating_range = seed, rating_range

    def fit(self, user_idx, item_idx, ratings, n_users, n_items):
        self.n_users_, self.n_items_ = n_users, n_items
        self.fitted_ratings = np.asarray(ratings)
        self.score = np.bincount(item_idx, weights=np.asarray(ratings) > 0, minlength=n_items)
        self.seen = sp.csr_matrix((np.ones(len(user_idx)), (user_idx, item_idx)), shape=(n_users, n_items))
        self.rating_model_ = self  # the bench's "every work by rating" row asks the rating model directly
        return self

    def recommend_all(self, users, n, exclude_csr=None, rank_by="for_you"):
        scores = np.tile(self.score, (len(users), 1)).astype(float)
        scores[exclude_csr[users].toarray() > 0] = -np.inf  # indexed by reader id
        items = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        items = np.where(np.take_along_axis(scores, items, axis=1) > -np.inf, items, -1)
        self.exclude_rows = exclude_csr.shape[0]
        rows = np.repeat(np.asarray(users), n)
        self.excluded_overlap = int(np.asarray(self.seen[rows, np.maximum(items.ravel(), 0)]).ravel()[items.ravel() >= 0].sum())
        return items, scores[:, :n]


def test_project_recommender_plugs_in(monkeypatch):
    import bookrec.model
    from bookrec.bench import ranking
    from bookrec.data.synth import generate

    monkeypatch.setattr(bookrec.model, "Recommender", _FakeRecommender, raising=False)
    dataset = generate("tiny", seed=0).dataset
    base = [ranking.ModelSpec("Popularity", Popularity, [{}])]
    specs = base + ranking.project_recommender(
        ranking.BenchContext(0, 0, None, seed=3))  # the lookup is only used when fitting
    assert [s.name for s in specs] == ["Popularity", "bookrec"]
    assert sorted(specs[1].variants) == sorted([f" {m}" for m in ranking.RANK_BY_MODES] + [" BPMF mean, every work"])

    seen = {}

    def provider(ctx):
        spec = ranking.project_recommender(ctx)[0]
        build = spec.factory
        spec.factory = lambda **p: seen.setdefault("adapter", build(**p))
        return [spec]

    monkeypatch.setattr(ranking, "EXTRA_MODELS", [provider])
    monkeypatch.setattr(ranking, "baseline_specs", lambda X, ctx: base)
    report = ranking.run_ranking(dataset, seed=3)
    rows = report["models"]
    assert list(rows) == ["Popularity", "bookrec for_you", "bookrec mean", "bookrec lower", "bookrec sample",
                          "bookrec BPMF mean, every work"]
    assert report["best_baseline"] == "Popularity"
    assert all("metrics" in row for row in rows.values())
    fake = seen["adapter"].model
    # ratings reached the model (0 = an unrated interaction), with the constructor defaults
    assert set(np.unique(fake.fitted_ratings > 0)) == {False, True} and fake.seed == 3
    # the exclusion rows were moved to the readers' ids: every list avoids the reader's train works
    assert fake.excluded_overlap == 0 and fake.exclude_rows == fake.n_users_
    assert rows["bookrec mean"]["metrics"]["recall@10"] > 0
    assert rows["Popularity"]["recall@10_vs_best"]["diff"] == 0.0
