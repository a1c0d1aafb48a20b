"""The Gibbs blocks sample the right conditional distributions (closed forms computed here, independently)."""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.model import kernels
from bookrec.model.sampler import RatingMatrix, normal_wishart_posterior, sample_normal_wishart

# Tolerances: a Monte Carlo estimate from N independent draws is within 4.5 standard errors of
# its expectation except with probability ~7e-6 per checked quantity; with at most ~40
# quantities per test the chance of a false failure is < 3e-4 (and the seeds are fixed).
Z_TOL = 4.5


def _tiny_problem(seed=3, n_users=4, n_items=6, k=2):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), n_items)
    items = np.tile(np.arange(n_items), n_users)
    keep = rng.random(users.size) < 0.8
    users, items = users[keep], items[keep]
    ratings = rng.normal(6.0, 2.0, users.size)
    data = RatingMatrix.build(users, items, ratings, n_users, n_items)
    item_side = np.column_stack([rng.normal(0, 0.8, (n_items, k)), rng.normal(0, 0.5, n_items)])
    a = rng.normal(size=(k, k))
    lam = a @ a.T + np.eye(k)
    mean_u = rng.normal(0, 0.3, k)
    tau = 2.5
    prior_prec = np.zeros((k + 1, k + 1))
    prior_prec[:k, :k] = lam
    prior_prec[k, k] = tau
    prior_mean = np.r_[mean_u, 0.0]
    return data, users, items, ratings, item_side, prior_prec, prior_mean


def _closed_form(user, users, items, ratings, item_side, prior_prec, prior_mean, mu, alpha):
    """Textbook Bayesian linear regression for x = [u, b]: y = r - mu - c_j = [v_j, 1] . x + noise."""
    k = item_side.shape[1] - 1
    mine = users == user
    feats = np.column_stack([item_side[items[mine], :k], np.ones(mine.sum())])
    y = ratings[mine] - mu - item_side[items[mine], k]
    precision = prior_prec + alpha * feats.T @ feats
    cov = np.linalg.inv(precision)
    mean = cov @ (prior_prec @ prior_mean + alpha * feats.T @ y)
    return mean, cov


@pytest.mark.parametrize("parallel", [False, True])
def test_user_block_matches_analytic_gaussian(parallel):
    data, users, items, ratings, item_side, prior_prec, prior_mean = _tiny_problem()
    mu, alpha = 6.1, 0.7
    kernel = kernels.sample_block_par if parallel else kernels.sample_block_ser
    n_users, dim = data.n_users, item_side.shape[1]
    out = np.zeros((n_users, dim))
    prior_h = prior_prec @ prior_mean
    n_draws = 20_000
    draws = np.empty((n_draws, n_users, dim))
    for t in range(n_draws):
        kernel(data.user_indptr, data.user_items, data.user_ratings, item_side, mu, alpha,
               prior_prec, prior_h, out, 1_000 + t, True)
        draws[t] = out
    # With draw=False the kernel returns the conditional mean exactly (the ALS/MAP step).
    mode = np.zeros_like(out)
    kernel(data.user_indptr, data.user_items, data.user_ratings, item_side, mu, alpha,
           prior_prec, prior_h, mode, 0, False)
    for user in range(n_users):
        mean, cov = _closed_form(user, users, items, ratings, item_side, prior_prec, prior_mean, mu, alpha)
        np.testing.assert_allclose(mode[user], mean, rtol=1e-9, atol=1e-9)
        sample = draws[:, user, :]
        se_mean = np.sqrt(np.diag(cov) / n_draws)
        assert np.all(np.abs(sample.mean(axis=0) - mean) < Z_TOL * se_mean)
        # SE of a sample covariance entry (Gaussian data): sqrt((S_aa S_bb + S_ab^2) / N).
        emp_cov = np.cov(sample, rowvar=False)
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_draws)
        assert np.all(np.abs(emp_cov - cov) < Z_TOL * se_cov)


def test_kernel_streams_do_not_depend_on_threads():
    data, _, _, _, item_side, prior_prec, prior_mean = _tiny_problem(n_users=300, n_items=40)
    args = (data.user_indptr, data.user_items, data.user_ratings, item_side, 6.0, 0.8, prior_prec, prior_prec @ prior_mean)
    a = np.zeros((data.n_users, item_side.shape[1]))
    b = np.zeros_like(a)
    kernels.sample_block_par(*args, a, 42, True)
    kernels.sample_block_ser(*args, b, 42, True)
    np.testing.assert_array_equal(a, b)
    kernels.sample_block_ser(*args, b, 43, True)
    assert not np.allclose(a, b)


def test_normal_wishart_update_uses_centred_scatter():
    rng = np.random.default_rng(5)
    k, n = 3, 40
    # Factors far from the prior mean 0: an uncentred scatter would be wrong by n * xbar xbar^T.
    factors = rng.normal(2.0, 0.5, (n, k))
    mu0, beta0, nu0 = np.zeros(k), 2.0, float(k)
    w0_inv = np.eye(k)
    # Independent closed form (Bishop 2006, eq. 2.154ff / Salakhutdinov & Mnih 2008, eq. 14).
    xbar = factors.mean(axis=0)
    s_bar = (factors - xbar).T @ (factors - xbar) / n
    w_n = np.linalg.inv(w0_inv + n * s_bar + beta0 * n / (beta0 + n) * np.outer(mu0 - xbar, mu0 - xbar))
    nu_n, beta_n = nu0 + n, beta0 + n
    mu_n = (beta0 * mu0 + n * xbar) / beta_n
    got = normal_wishart_posterior(factors, mu0, beta0, w0_inv, nu0)
    np.testing.assert_allclose(got[0], mu_n, rtol=1e-12)
    np.testing.assert_allclose(got[2], w_n, rtol=1e-10)
    assert got[1] == beta_n and got[3] == nu_n

    n_draws = 20_000
    lams = np.empty((n_draws, k, k))
    means = np.empty((n_draws, k))
    for t in range(n_draws):
        means[t], lams[t] = sample_normal_wishart(factors, mu0, beta0, w0_inv, nu0, rng)
    # Wishart(W, nu): E = nu W, Var(L_ab) = nu (W_ab^2 + W_aa W_bb).
    expected = nu_n * w_n
    se = np.sqrt(nu_n * (w_n**2 + np.outer(np.diag(w_n), np.diag(w_n))) / n_draws)
    assert np.all(np.abs(lams.mean(axis=0) - expected) < Z_TOL * se)
    # mu_U | Lambda ~ N(mu_n, (beta_n Lambda)^-1): marginally centred on mu_n, with covariance
    # E[(beta_n Lambda)^-1] = W_n^-1 / (beta_n (nu_n - k - 1)).
    marg_cov = np.linalg.inv(w_n) / (beta_n * (nu_n - k - 1))
    assert np.all(np.abs(means.mean(axis=0) - mu_n) < Z_TOL * np.sqrt(np.diag(marg_cov) / n_draws))
