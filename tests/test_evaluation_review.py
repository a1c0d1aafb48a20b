"""The offline evaluation audited as a recommender-systems reviewer would: the top-N metrics
against a brute-force reference, the ranking protocol's splits (nothing held out reaches a fit,
validation alone tunes, train and validation works never come back at test time), full-catalogue
ranking by the baselines, and the bias baseline's predictive intervals on data from its own model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import rankdata

from bookrec.model.baselines import BiasBaseline
from bookrec.model.metrics import interval_metrics
from bookrec.model.topn import evaluate_topn, holdout_split, interactions_from_dataset, liked_threshold
from bookrec.model.topn_baselines import ALS, BPR, EASE, ItemKNN, Popularity

RATING_RANGE = (1.0, 10.0)


# ------------------------------------------------------------------- metrics by brute force
def _deduped(row, k):
    """The first k slots with empty slots and repeats blanked (a repeat is not a second hit)."""
    out = []
    for item in row[:k]:
        out.append(int(item) if item >= 0 and int(item) not in out else -1)
    return out


def _reference_accuracy(lists, relevant, k):
    """recall = hits / min(k, |rel|), NDCG with binary gains and ideal DCG over min(k, |rel|),
    MRR = 1 / rank of the first hit; NaN for a reader with nothing relevant."""
    if not relevant:
        return math.nan, math.nan, math.nan
    hits = [item in relevant for item in lists]
    dcg = sum(1 / math.log2(pos + 2) for pos, hit in enumerate(hits) if hit)
    ideal = sum(1 / math.log2(pos + 2) for pos in range(min(k, len(relevant))))
    first = next((1 / (pos + 1) for pos, hit in enumerate(hits) if hit), 0.0)
    return sum(hits) / min(k, len(relevant)), dcg / ideal, first


def _random_case(rng):
    n_items, n_eval = int(rng.integers(1, 40)), int(rng.integers(1, 15))
    rec = rng.integers(-1, n_items, (n_eval, int(rng.integers(1, 15))))
    users = rng.permutation(n_eval + 4)[:n_eval]  # test rows of readers not evaluated are ignored
    m = int(rng.integers(0, 60))
    tu, ti = rng.integers(0, n_eval + 4, m), rng.integers(0, n_items, m)
    tr = rng.choice([0.0, 1.0, 5.0, 7.0, 7.3, 8.0, 10.0], m)  # 0 = read, not rated: never "liked"
    _, first = np.unique(tu * n_items + ti, return_index=True)  # one row per (reader, work), as the harness has
    ks = tuple(sorted({int(x) for x in rng.integers(1, 20, 2)}))
    return rec, users, (tu[first], ti[first], tr[first]), ks


def test_accuracy_metrics_match_a_brute_force_reference():
    rng = np.random.default_rng(11)
    threshold = liked_threshold(RATING_RANGE)
    for _ in range(200):
        rec, users, (tu, ti, tr), ks = _random_case(rng)
        res = evaluate_topn(rec, users, (tu, ti, tr), RATING_RANGE, rng.random(rec.max() + 2), ks=ks,
                            n_items=int(max(rec.max(), ti.max(initial=0))) + 1)
        for k in ks:
            for suffix, liked_only in (("", False), ("_liked", True)):
                expected = np.array([
                    _reference_accuracy(_deduped(row, k), {int(i) for u2, i, r in zip(tu, ti, tr)
                                                           if u2 == u and (not liked_only or (r > 0 and r >= threshold))}, k)
                    for row, u in zip(rec, users)])
                for col, name in enumerate(("recall", "ndcg", "mrr")):
                    got = res.per_user[f"{name}@{k}{suffix}"]
                    np.testing.assert_allclose(got, expected[:, col], rtol=1e-12, atol=0)
                    defined = np.isfinite(expected[:, col])
                    if defined.any():  # averages over readers with something relevant only
                        assert res.metrics[f"{name}@{k}{suffix}"] == pytest.approx(expected[defined, col].mean(), rel=1e-12)
                    else:
                        assert math.isnan(res.metrics[f"{name}@{k}{suffix}"])


def test_beyond_accuracy_metrics_match_a_brute_force_reference():
    rng = np.random.default_rng(12)
    no_test = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    for _ in range(200):
        n_items, n_eval = int(rng.integers(1, 30)), int(rng.integers(1, 12))
        rec = rng.integers(-1, n_items, (n_eval, int(rng.integers(1, 12))))
        popularity = rng.integers(0, 5, n_items).astype(float)  # ties share their mean rank
        k = int(rng.integers(1, 14))
        m = evaluate_topn(rec, np.arange(n_eval), no_test, RATING_RANGE, popularity, ks=(k,)).metrics
        lists = [[i for i in _deduped(row, k) if i >= 0] for row in rec]
        flat = [i for lst in lists for i in lst]
        non_empty = sum(1 for lst in lists if lst)
        ranks = rankdata(-popularity, method="average")
        pairs = [(set(a), set(b)) for a, b in itertools.combinations(lists, 2) if a or b]
        expected = {
            "distinct": len(set(flat)), "coverage": len(set(flat)) / n_items,
            "top_share": max(flat.count(i) for i in set(flat)) / non_empty if flat else math.nan,
            "novelty": float(np.mean(ranks[flat])) if flat else math.nan,
            "overlap": float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else math.nan,
        }
        for name, value in expected.items():
            got = m[f"{name}@{k}"]
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, rel=1e-12), name


# ------------------------------------------------------------------------ the ranking protocol
class _RecordingPopularity(Popularity):
    """The real popularity baseline, recording what it was fitted on and asked to exclude."""

    log: list = []

    def __init__(self, tag: int = 0):
        self.tag = tag

    def fit(self, X):
        self.log.append(("fit", self.tag, sp.csr_matrix(X, copy=True)))
        return super().fit(X)

    def recommend_all(self, users, n, exclude_csr=None):
        out = super().recommend_all(users, n, exclude_csr)
        self.log.append(("rank", self.tag, np.asarray(users).copy(), sp.csr_matrix(exclude_csr, copy=True), out))
        return out


def _pairs(X) -> set:
    coo = sp.csr_matrix(X).tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def _rows_pairs(users, X) -> set:
    coo = sp.csr_matrix(X).tocoo()
    return set(zip(np.asarray(users)[coo.row].tolist(), coo.col.tolist()))


@pytest.fixture(scope="module")
def tiny_dataset():
    from bookrec.data.synth import generate

    return generate("tiny", seed=5).dataset


def test_ranking_protocol_keeps_held_out_interactions_out_of_every_fit(tiny_dataset):
    from bookrec.bench import ranking

    seed = 9
    _RecordingPopularity.log = []
    spec = ranking.ModelSpec("Recorded", _RecordingPopularity, [{"tag": 1}, {"tag": 2}])
    report = ranking.run_ranking(tiny_dataset, seed=seed, specs=[spec])
    # The same splits, recomputed from the documented protocol.
    u, i, r, _, _ = interactions_from_dataset(tiny_dataset)
    train, test = holdout_split(u, i, r, 0.2, seed)
    fit_part, validation = holdout_split(*train, 0.2, seed + 1)
    as_set = lambda part: set(zip(part[0].tolist(), part[1].tolist()))  # noqa: E731
    test_pairs, val_pairs, fit_pairs = as_set(test), as_set(validation), as_set(fit_part)
    assert test_pairs and val_pairs and not (test_pairs & val_pairs)

    fits = [(tag, _pairs(X)) for kind, tag, X in (e for e in _RecordingPopularity.log if e[0] == "fit")]
    ranks = [e[1:] for e in _RecordingPopularity.log if e[0] == "rank"]
    assert [tag for tag, _ in fits] == [1, 2, 1]  # the grid on the fit part, then the chosen params refitted
    for _, seen in fits[:2]:  # tuning fits: neither validation nor test
        assert seen == fit_pairs
    assert fits[2][1] == fit_pairs | val_pairs  # the refit: train (fit part + validation), never test

    for tag, users, exclude, recs in ranks[:2]:  # tuning: validation readers, fit part excluded, validation reachable
        assert set(users.tolist()) == set(validation[0].tolist())
        assert _rows_pairs(users, exclude) == {(a, b) for a, b in fit_pairs if a in set(users.tolist())}
    users, exclude, recs = ranks[2][1:]
    # every reader with a held-out interaction is evaluated, and their train and validation works are excluded
    assert set(users.tolist()) == set(test[0].tolist()) and report["eval_users"] == len(users)
    assert _rows_pairs(users, exclude) == {(a, b) for a, b in fit_pairs | val_pairs if a in set(users.tolist())}
    shown = {(int(a), int(b)) for a, row in zip(users, recs) for b in row if b >= 0}
    assert not shown & (fit_pairs | val_pairs)


def test_a_sample_of_evaluated_readers_is_seeded(tiny_dataset):
    from bookrec.bench import ranking

    def evaluated(seed):
        _RecordingPopularity.log = []
        ranking.run_ranking(tiny_dataset, seed=seed, max_eval_users=40,
                            specs=[ranking.ModelSpec("Recorded", _RecordingPopularity, [{}])])
        return [e[2].tolist() for e in _RecordingPopularity.log if e[0] == "rank"][-1]

    first, again, other = evaluated(3), evaluated(3), evaluated(4)
    assert len(first) == 40 and first == again and first != other


@pytest.mark.parametrize("model", [
    Popularity(), EASE(l2=5.0), ItemKNN(neighbours=3, shrink=1.0),
    ALS(factors=4, iterations=3, num_threads=1), BPR(factors=4, iterations=5, num_threads=1),
], ids=lambda m: m.name)
def test_baselines_rank_every_unseen_item_not_a_sample(model):
    rng = np.random.default_rng(2)
    dense = (rng.random((25, 18)) < 0.25).astype(np.float32)
    dense[:, 17] = 0  # a work nobody read in train
    X = sp.csr_matrix(dense)
    model.fit(X)
    users = np.arange(25)
    ranked = model.recommend_all(users, 18, X)
    # EASE's item-item matrix covers the works read in train; the others cover the whole catalogue
    catalogue = set(np.flatnonzero(np.asarray(X.sum(axis=0)).ravel() > 0).tolist()) if model.name == "EASE" else set(range(18))
    for u, row in zip(users, ranked):
        items = row[row >= 0].tolist()
        assert len(items) == len(set(items))
        assert set(items) == catalogue - set(X[u].indices.tolist())


# ------------------------------------------------------------------- the rating baseline
def test_bias_baseline_intervals_cover_new_ratings_of_its_own_model():
    """Ratings drawn from the bias model itself with the ridge's prior (b ~ N(0, sigma^2 / reg)):
    the baseline's predictive is then nearly the exact posterior predictive, so its central
    intervals must cover held-out ratings at their level. Readers have 2-7 ratings, where a
    training-residual sd (no bias uncertainty, no degrees of freedom) covers about 86% at 90%."""
    rng = np.random.default_rng(0)
    n_users, n_items, sigma, reg = 4000, 300, 1.0, 5.0
    b = rng.normal(0, sigma / math.sqrt(reg), n_users)
    c = rng.normal(0, sigma / math.sqrt(reg), n_items)
    u = np.repeat(np.arange(n_users), rng.integers(2, 8, n_users))
    i = rng.integers(0, n_items, u.size)
    y = 5.0 + b[u] + c[i] + rng.normal(0, sigma, u.size)
    held = rng.random(u.size) < 0.2
    wide = (-100.0, 100.0)  # no clipping: the Gaussian model itself is checked
    model = BiasBaseline(reg_user=reg, reg_item=reg, rating_range=wide).fit(u[~held], i[~held], y[~held], n_users, n_items)
    means, sds = model.predictive_components(u[held], i[held])
    coverage = interval_metrics(y[held], means, sds, levels=(0.5, 0.9), rating_range=wide)["coverage"]
    n = int(held.sum())
    for level in (0.5, 0.9):
        # 4 binomial standard errors; the left-out b-c cross term only widens the truth slightly
        assert abs(coverage[str(level)] - level) < 4 * math.sqrt(level * (1 - level) / n), coverage
    assert model.sd_ == pytest.approx(sigma, rel=0.03)  # sigma^2 has n - p degrees of freedom; n ~ 14,000
