"""The batch's vectorised scorers give the same numbers as the model's own per-reader code:
tier 1 equals BPMF.recommend_all, tier 2 equals bookrec.model.foldin (the API's fold-in), and
the compiled top-n selections equal a plain sort."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bookrec.batch import pipeline as P
from bookrec.batch.foldin_batch import BatchFoldIn
from bookrec.batch.presets import resolve_parameters
from bookrec.batch.topn import mixture_quantiles_fast, topk_csr_rows, topn_dense, topn_sparse_with_prior
from bookrec.model import kernels
from scipy.stats import norm
from bookrec.config import Settings
from bookrec.data.synth import generate
from bookrec.model.foldin import fold_in_from_arrays, predict_fold_in, rank_items_for_fold_in

N = 10


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernels")
    s = Settings(n_samples=10, burn_in=10, max_kept_samples=10, top_n=N, tuned_config_path=tmp / "absent.json")
    c = P.prepare(generate("small", seed=7).dataset, s, resolve_parameters(s, "development"))
    P.train(c, show_progress=False)
    P.assign_tiers(c)
    return c


def test_tier1_equals_recommend_all(ctx):
    pre = P.precompute(ctx)
    users = ctx.tiers["personal"]
    _, exclude = P._core_matrices(ctx, users)
    items, mean, lower, upper = ctx.model.recommend_all(np.arange(len(users)), N, exclude_csr=exclude, level=0.9)
    ours = pre.personal
    work_to_core = {w: i for i, w in enumerate(ctx.core_works.tolist())}
    ours_items = np.vectorize(work_to_core.get)(ours.works)
    # identical lists except where two items' means tie to float32 precision
    same = (ours_items == items).all(axis=1)
    assert same.mean() > 0.99
    np.testing.assert_allclose(ours.predicted[same], mean[same], atol=1e-9)
    np.testing.assert_allclose(ours.lower[same], lower[same], atol=1e-6)
    np.testing.assert_allclose(ours.upper[same], upper[same], atol=1e-6)


def test_tier2_equals_the_api_fold_in(ctx):
    users = ctx.tiers["folded_in"][:40]
    rated, exclude = P._core_matrices(ctx, users)
    folder = BatchFoldIn(ctx.serving, 0.9)
    items, mean, lower, upper = folder.recommend(rated, exclude, N)
    for r in range(len(users)):
        row, ex = rated[r], exclude[r]
        fold = fold_in_from_arrays(ctx.serving, row.indices, row.data)
        ref_items, ref_mean, ref_lo, ref_hi = rank_items_for_fold_in(ctx.serving, fold, n=N, exclude=ex.indices)
        assert list(items[r]) == list(ref_items)
        np.testing.assert_allclose(mean[r], ref_mean, atol=1e-9)
        np.testing.assert_allclose(lower[r], ref_lo, atol=1e-6)
        np.testing.assert_allclose(upper[r], ref_hi, atol=1e-6)
        m, lo, hi = predict_fold_in(ctx.serving, fold, np.arange(5))
        means, chols = folder.fold(rated[r])
        m2, lo2, hi2 = folder.predict(means, chols, np.zeros(5, dtype=np.int64), np.arange(5))
        np.testing.assert_allclose(m2, m, atol=1e-9)


def test_compiled_top_n_equals_sorting():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 50, size=(200, 300)).astype(np.float64)  # many ties
    excl = sp.random(200, 300, density=0.1, random_state=2, format="csr")
    idx, val = topn_dense(scores, excl.indptr.astype(np.int64), excl.indices.astype(np.int64), 7)
    for r in range(200):
        allowed = np.setdiff1d(np.arange(300), excl[r].indices)
        ref = allowed[np.lexsort((allowed, -scores[r, allowed]))][:7]
        assert list(idx[r]) == list(ref)

    m = sp.random(100, 400, density=0.05, random_state=3, format="csr")
    m.data = np.round(m.data * 5)
    ptr, ind, dat = topk_csr_rows(m.indptr.astype(np.int64), m.indices, m.data, 4)
    for r in range(100):
        row = m[r]
        ref = row.indices[np.lexsort((row.indices, -row.data))][:4]
        assert sorted(ind[ptr[r]:ptr[r + 1]]) == sorted(ref)

    prior = rng.random(400)
    order = np.argsort(-prior, kind="stable")
    seen = sp.random(100, 400, density=0.02, random_state=4, format="csr")
    idx, from_sim = topn_sparse_with_prior(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data,
                                           prior, order, seen.indptr.astype(np.int64), seen.indices.astype(np.int64), 6)
    dense = m.toarray()
    for r in range(100):
        score = dense[r] + prior
        score[seen[r].indices] = -np.inf
        ref = np.lexsort((np.arange(400), -score))[:6]
        assert list(idx[r]) == list(ref)
        assert list(from_sim[r]) == list(dense[r, ref] > 0)


def test_fast_mixture_quantiles_equal_the_model_kernel():
    rng = np.random.default_rng(5)
    means = rng.normal(7, rng.uniform(0.01, 2.0, (3000, 1)), (3000, 40))  # narrow to wide spreads
    sds = rng.uniform(0.3, 2.0, (3000, 40))
    means[:5] = 8.0  # degenerate: all components equal
    probs = np.array([0.025, 0.05, 0.5, 0.95, 0.975])
    fast = mixture_quantiles_fast(means, sds, probs, norm.ppf(probs))
    ref = kernels.mixture_quantiles(means, sds, probs)
    np.testing.assert_allclose(fast, ref, atol=1e-7)
