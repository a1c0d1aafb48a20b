"""Fold-in kernels: the exact per-sample Gaussian posterior of many readers at once.

For each kept sample s a reader's x = [u, b] has precision P_s = blockdiag(Lambda_U,s, tau_b,s)
+ alpha_s F^T F and linear term h_s = [Lambda_U,s mu_U,s, 0] + alpha_s F^T (r - mu_s - c_sj), F rows
= [v_sj, 1] for rated j (see :mod:`bookrec.model.foldin`). The serving arrays come as a
:class:`~bookrec.model.kernels.arrays.FoldInModel`, the readers' ratings as a
:class:`~bookrec.model.kernels.arrays.Csr` over model items.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _cholesky_inplace(a):
    """Lower Cholesky factor of a symmetric positive-definite matrix, written over `a` (upper part zeroed)."""
    d = a.shape[0]
    for j in range(d):
        acc = a[j, j]
        for k in range(j):
            acc -= a[j, k] * a[j, k]
        a[j, j] = np.sqrt(acc)
        for i in range(j + 1, d):
            acc = a[i, j]
            for k in range(j):
                acc -= a[i, k] * a[j, k]
            a[i, j] = acc / a[j, j]
        for i in range(j):
            a[i, j] = 0.0


@njit(cache=True)
def _chol_solve(lower, b, y, x):
    """x = (L L^T)^-1 b with y as scratch (no allocation)."""
    d = lower.shape[0]
    for i in range(d):
        acc = b[i]
        for k in range(i):
            acc -= lower[i, k] * y[k]
        y[i] = acc / lower[i, i]
    for i in range(d - 1, -1, -1):
        acc = y[i]
        for k in range(i + 1, d):
            acc -= lower[k, i] * x[k]
        x[i] = acc / lower[i, i]


@njit(cache=True)
def _lower_inverse(lower, inv):
    """inv = L^-1 (lower triangular), written into `inv` (no allocation)."""
    d = lower.shape[0]
    for c in range(d):
        for i in range(c):
            inv[i, c] = 0.0
        inv[c, c] = 1.0 / lower[c, c]
        for i in range(c + 1, d):
            acc = 0.0
            for k in range(c, i):
                acc -= lower[i, k] * inv[k, c]
            inv[i, c] = acc / lower[i, i]


@njit(inline="always", cache=True)
def _posterior_precision(prec, lin, rated, u, model, s, f):
    """Fill prec (lower triangle + mirrored) and lin = h for reader row u of ``rated`` under sample s."""
    items = rated.indices
    ratings = rated.values
    item_factors = model.item_factors
    item_bias = model.item_bias
    mu = model.mu
    alpha = model.alpha
    k = item_factors.shape[2]
    d = k + 1
    for i in range(d):
        for j in range(d):
            prec[i, j] = 0.0
    for i in range(k):
        for j in range(k):
            prec[i, j] = model.lambda_user[s, i, j]
        lin[i] = model.prior_h[s, i]
    prec[k, k] = model.tau_user_bias[s]
    lin[k] = 0.0
    for p in range(rated.indptr[u], rated.indptr[u + 1]):
        j_item = items[p]
        for i in range(k):
            f[i] = item_factors[s, j_item, i]
        f[k] = 1.0
        t = ratings[p] - mu[s] - item_bias[s, j_item]
        for i in range(d):
            lin[i] += alpha[s] * f[i] * t
            for j in range(i + 1):
                prec[i, j] += alpha[s] * f[i] * f[j]
    for i in range(d):
        for j in range(i + 1, d):
            prec[i, j] = prec[j, i]


@njit(inline="always", cache=True)
def _component_mean(mu_s, item_bias, item_row, reader_row):
    """One sample's predictive mean mu + c_j + b + v_j . u of a reader row (u, b) for an item row v_j."""
    k = item_row.shape[0]
    m = mu_s + item_bias + reader_row[k]
    for i in range(k):
        m += item_row[i] * reader_row[i]
    return m


@njit(parallel=True, cache=True)
def fold_readers(rated, model, with_inverse):
    """Posterior means (U, S, k+1) of every reader's (factors, bias) per sample and, when
    ``with_inverse``, W = L^-1 (U, S, k+1, k+1) lower triangular, where P = L L^T is the
    posterior precision: the covariance is W^T W, so f^T Cov f = ||W f||^2. Without it the
    second array is empty (the screening product needs the means only)."""
    n_users = rated.indptr.shape[0] - 1
    n_s, _, k = model.item_factors.shape
    d = k + 1
    means = np.empty((n_users, n_s, d))
    inv_chols = np.empty((n_users if with_inverse else 0, n_s, d, d))
    for u in prange(n_users):
        prec = np.empty((d, d))
        lin = np.empty(d)
        f = np.empty(d)
        y = np.empty(d)
        for s in range(n_s):
            _posterior_precision(prec, lin, rated, u, model, s, f)
            _cholesky_inplace(prec)
            _chol_solve(prec, lin, y, means[u, s])
            if with_inverse:
                _lower_inverse(prec, inv_chols[u, s])
    return means, inv_chols


@njit(parallel=True, cache=True)
def pair_components(means, inv_chols, local_user, items, model):
    """Mixture components (P, S) means and sds of the predictive for (folded reader, item) pairs."""
    item_factors = model.item_factors
    item_bias = model.item_bias
    mu = model.mu
    alpha = model.alpha
    n_pairs = local_user.shape[0]
    n_s, _, k = item_factors.shape
    d = k + 1
    out_m = np.empty((n_pairs, n_s))
    out_s = np.empty((n_pairs, n_s))
    for p in prange(n_pairs):
        u = local_user[p]
        j = items[p]
        f = np.empty(d)
        for s in range(n_s):
            for i in range(k):
                f[i] = item_factors[s, j, i]
            f[k] = 1.0
            m = _component_mean(mu[s], item_bias[s, j], item_factors[s, j], means[u, s])
            # f^T Cov f = || W f ||^2 with W = L^-1 lower triangular
            var = 1.0 / alpha[s]
            for r in range(d):
                acc = 0.0
                for c in range(r + 1):
                    acc += inv_chols[u, s, r, c] * f[c]
                var += acc * acc
            out_m[p, s] = m
            out_s[p, s] = math.sqrt(var)
    return out_m, out_s


@njit(parallel=True, cache=True)
def fold_top_components(rated, means, top, model):
    """Mixture components (U * n, S) of each reader's top-n items, recomputing each (reader,
    sample) Cholesky factor L instead of storing covariances: f^T P^-1 f = ||L^-1 f||^2 by one
    forward substitution per item. The item-major copies of the model let the inner loop over
    samples read memory in order."""
    factors_by_item = model.factors_by_item
    bias_by_item = model.bias_by_item
    mu = model.mu
    alpha = model.alpha
    n_users, n = top.shape
    n_s, _, k = model.item_factors.shape
    d = k + 1
    out_m = np.empty((n_users * n, n_s))
    out_s = np.empty((n_users * n, n_s))
    for u in prange(n_users):
        chol = np.empty((n_s, d, d))
        lin = np.empty(d)
        f = np.empty(d)
        w = np.empty(d)
        for s in range(n_s):
            _posterior_precision(chol[s], lin, rated, u, model, s, f)
            _cholesky_inplace(chol[s])
        for t in range(n):
            j = top[u, t]
            row = u * n + t
            for s in range(n_s):
                for i in range(k):
                    f[i] = factors_by_item[j, s, i]
                f[k] = 1.0
                m = _component_mean(mu[s], bias_by_item[j, s], factors_by_item[j, s], means[u, s])
                var = 1.0 / alpha[s]
                for i in range(d):
                    acc = f[i]
                    for q in range(i):
                        acc -= chol[s, i, q] * w[q]
                    w[i] = acc / chol[s, i, i]
                    var += w[i] * w[i]
                out_m[row, s] = m
                out_s[row, s] = math.sqrt(var)
    return out_m, out_s


@njit(parallel=True, cache=True)
def known_top_components(x, top, model):
    """Components for the model's own readers (per-sample draws x (U, S, k+1)) of their top n."""
    factors_by_item = model.factors_by_item
    bias_by_item = model.bias_by_item
    mu = model.mu
    alpha = model.alpha
    n_users, n = top.shape
    n_s = mu.shape[0]
    out_m = np.empty((n_users * n, n_s))
    out_s = np.empty((n_users * n, n_s))
    for u in prange(n_users):
        for t in range(n):
            j = top[u, t]
            row = u * n + t
            for s in range(n_s):
                out_m[row, s] = _component_mean(mu[s], bias_by_item[j, s], factors_by_item[j, s], x[u, s])
                out_s[row, s] = 1.0 / math.sqrt(alpha[s])
    return out_m, out_s
