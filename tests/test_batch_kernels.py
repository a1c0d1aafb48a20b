"""The batch's vectorised scorers give the same numbers as the model's own per-reader code:
the for-you ranker's ratings equal BPMF.predict_interval for the model's readers and the API's
fold-in (bookrec.model.foldin) for folded-in readers, its candidates are the relevance model's,
and the compiled top-n selections equal a plain sort."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scipy.stats import norm

from bookrec.batch import pipeline as P
from bookrec.batch.presets import resolve_parameters
from bookrec.config import Settings
from bookrec.data.synth import generate
from bookrec.model import kernels
from bookrec.model.foldin import fold_in_from_arrays, predict_fold_in
from bookrec.model.foryou import FoldedReaders, KnownReaders
from bookrec.model.similar import similar_items, unit_factors

N = 10


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernels")
    s = Settings(n_samples=10, burn_in=10, max_kept_samples=10, top_n=N, tuned_config_path=tmp / "absent.json")
    c = P.prepare(generate("small", seed=7).dataset, s, resolve_parameters(s, "development"))
    P.train(c, show_progress=False)
    P.fit_relevance(c)
    P.assign_tiers(c)
    return c


def _core_index(ctx, works):
    work_to_core = np.full(len(ctx.catalog), -1)
    work_to_core[ctx.core_works] = np.arange(len(ctx.core_works))
    return work_to_core[np.maximum(works, 0)]


def test_personal_ratings_equal_bpmf_predict_interval(ctx):
    users = ctx.tiers["personal"][:300]
    m = ctx.model
    block = P.ranker(ctx).rank(users, KnownReaders.of(m, slice(0, 300)))
    core = _core_index(ctx, block.works)
    ok = (block.works >= 0) & (core >= 0)
    assert ok.mean() > 0.5  # most candidates are model works, so the comparison has power
    rows = np.nonzero(ok)[0]
    mean, lower, upper = m.predict_interval(rows, core[ok], level=0.9)
    np.testing.assert_allclose(block.predicted[ok], mean, atol=1e-6)
    np.testing.assert_allclose(block.lower[ok], lower, atol=1e-5)
    np.testing.assert_allclose(block.upper[ok], upper, atol=1e-5)


def test_folded_in_ratings_equal_the_api_fold_in(ctx):
    users = ctx.tiers["folded_in"][:40]
    rated, _ = P._core_matrices(ctx, users)
    block = P.ranker(ctx).rank(users, FoldedReaders(rated))
    core = _core_index(ctx, block.works)
    checked = 0
    for r in range(len(users)):
        ok = (block.works[r] >= 0) & (core[r] >= 0)
        fold = fold_in_from_arrays(ctx.serving, rated[r].indices, rated[r].data)
        mean, lower, upper = predict_fold_in(ctx.serving, fold, core[r][ok])
        np.testing.assert_allclose(block.predicted[r][ok], mean, atol=1e-9)
        np.testing.assert_allclose(block.lower[r][ok], lower, atol=1e-6)
        np.testing.assert_allclose(block.upper[r][ok], upper, atol=1e-6)
        checked += int(ok.sum())
    assert checked > 100


def test_for_you_lists_are_the_relevance_candidates_sorted_by_score(ctx):
    s = ctx.settings
    users = ctx.tiers["similar_reading"][:200]
    block = P.ranker(ctx).rank(users)
    seen = ctx.interactions.seen[users]
    cand, rel, _, _ = ctx.relevance.recommend(seen, s.n_candidates, seen)
    for r in range(len(users)):
        items = block.works[r][block.works[r] >= 0]
        assert len(items) == N
        assert set(items) <= set(cand[r])  # every mode ranks the relevance model's candidates
        assert not set(items) & set(seen[r].indices)  # nothing the reader touched
        sc = block.score[r][: len(items)]
        assert np.all(np.diff(sc) <= 0)
        np.testing.assert_allclose(sc, np.maximum(block.relevance[r], 0)[: len(items)]
                                   * block.p_liked[r][: len(items)] ** s.like_weight, rtol=1e-12)
    for mode, key in (("mean", "predicted"), ("lower", "lower")):
        other = P.ranker(ctx).rank(users, mode=mode)
        assert np.all(np.diff(getattr(other, key), axis=1) <= 1e-12)
        assert np.isin(other.works, cand).all()


def test_compiled_top_n_equals_sorting():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 50, size=(200, 300)).astype(np.float64)  # many ties
    excl = sp.random(200, 300, density=0.1, random_state=2, format="csr")
    idx, val = kernels.top_n_rows(scores, excl.indptr.astype(np.int64), excl.indices.astype(np.int64), 7)
    for r in range(200):
        allowed = np.setdiff1d(np.arange(300), excl[r].indices)
        ref = allowed[np.lexsort((allowed, -scores[r, allowed]))][:7]
        assert list(idx[r]) == list(ref)
        mask = np.zeros(300, dtype=bool)
        mask[excl[r].indices] = True
        assert list(kernels.top_n(scores[r], 7, mask)) == list(ref)
    kept = sp.random(200, 300, density=0.2, random_state=3, format="csr")
    kept.data = np.round(kept.data * 10).astype(np.float32)  # ties again
    ptr, cols, vals = kernels.top_n_csr(kept.indptr.astype(np.int64), kept.indices.astype(np.int32), kept.data, 5)
    for r in range(200):
        row_cols, row_vals = kept[r].indices, kept[r].data
        order = np.lexsort((row_cols, -row_vals))[:5]
        assert list(cols[ptr[r]:ptr[r + 1]]) == list(row_cols[order])


def test_quantiles_from_the_moment_matched_start_equal_those_from_the_mean():
    rng = np.random.default_rng(5)
    means = rng.normal(7, rng.uniform(0.01, 2.0, (3000, 1)), (3000, 40))  # narrow to wide spreads
    sds = rng.uniform(0.3, 2.0, (3000, 40))
    means[:5] = 8.0  # degenerate: all components equal
    probs = np.array([0.025, 0.05, 0.5, 0.95, 0.975])
    fast = kernels.mixture_quantiles(means, sds, probs, norm.ppf(probs))
    ref = kernels.mixture_quantiles(means, sds, probs)
    np.testing.assert_allclose(fast, ref, atol=1e-7)


def test_similar_items_are_the_highest_mean_cosines():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(7, 50, 4))
    factors[:, 5] = 0.0  # a zero vector: cosine 0 with everything, no division by zero
    unit = unit_factors(factors)
    cos = np.einsum("sik,sk->si", unit, unit[:, 3, :])
    mean, sd = cos.mean(axis=0), cos.std(axis=0)
    mean[3] = -np.inf
    ref = np.lexsort((np.arange(50), -mean))[:10]
    items, got_mean, got_sd = similar_items(unit, 3, 10)
    assert list(items) == list(ref)
    np.testing.assert_array_equal(got_mean, mean[ref])
    np.testing.assert_array_equal(got_sd, sd[ref])
