"""Tier 2: exact Bayesian fold-in of many readers at once.

The same mathematics as :mod:`bookrec.model.foldin` (which folds in one reader for the API):
for each kept sample s the reader's x = [u, b] has the Gaussian conditional

    P_s = blockdiag(Lambda_U,s, tau_b,s) + alpha_s F^T F,   F rows = [v_sj, 1] for rated j
    h_s = blockdiag(Lambda_U,s, tau_b,s) [mu_U,s, 0] + alpha_s F^T (r - mu_s - c_sj)

and the predictive of item j is the mixture over s of N(mu_s + c_sj + f_sj . m_s,
f_sj^T P_s^-1 f_sj + 1/alpha_s). Here the per-(reader, sample) solves run in one numba kernel
over all readers (storing W = L^-1 of the precision's Cholesky factor, so f^T Cov f = ||W f||^2),
the predictive means of every item come from one BLAS product per chunk of readers, and the
exact mixture quantiles are computed only for each reader's top n. The model's own readers
(tier 1) go through the same product with their kept posterior draws in place of the fold-in.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm
from numba import njit, prange

from bookrec.model.kernels.topn import mixture_quantiles_fast, topn_dense


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
def _posterior_precision(prec, lin, a, b, items, ratings, item_factors, item_bias, mu, alpha, lambda_user,
                         prior_h, tau_user_bias, s, f):
    """Fill prec (lower triangle + mirrored) and lin = h for reader rows a..b under sample s."""
    k = item_factors.shape[2]
    d = k + 1
    for i in range(d):
        for j in range(d):
            prec[i, j] = 0.0
    for i in range(k):
        for j in range(k):
            prec[i, j] = lambda_user[s, i, j]
        lin[i] = prior_h[s, i]
    prec[k, k] = tau_user_bias[s]
    lin[k] = 0.0
    for p in range(a, b):
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


@njit(parallel=True, cache=True)
def _fold(indptr, items, ratings, item_factors, item_bias, mu, alpha, lambda_user, prior_h, tau_user_bias,
          with_inverse):
    """Posterior means (U, S, k+1) of every reader's (factors, bias) per sample and, when
    ``with_inverse``, W = L^-1 (U, S, k+1, k+1) lower triangular, where P = L L^T is the
    posterior precision: the covariance is W^T W, so f^T Cov f = ||W f||^2. Without it the
    second array is empty (the screening product needs the means only)."""
    n_users = indptr.shape[0] - 1
    n_s, _, k = item_factors.shape
    d = k + 1
    means = np.empty((n_users, n_s, d))
    inv_chols = np.empty((n_users if with_inverse else 0, n_s, d, d))
    for u in prange(n_users):
        prec = np.empty((d, d))
        lin = np.empty(d)
        f = np.empty(d)
        y = np.empty(d)
        for s in range(n_s):
            _posterior_precision(prec, lin, indptr[u], indptr[u + 1], items, ratings, item_factors, item_bias, mu,
                                 alpha, lambda_user, prior_h, tau_user_bias, s, f)
            _cholesky_inplace(prec)
            _chol_solve(prec, lin, y, means[u, s])
            if with_inverse:
                _lower_inverse(prec, inv_chols[u, s])
    return means, inv_chols


@njit(parallel=True, cache=True)
def pair_components(means, inv_chols, local_user, items, item_factors, item_bias, mu, alpha):
    """Mixture components (P, S) means and sds of the predictive for (folded reader, item) pairs."""
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
            m = mu[s] + item_bias[s, j]
            for i in range(d):
                m += f[i] * means[u, s, i]
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
def fold_top_components(indptr, items, ratings, means, top, item_factors, item_bias, factors_by_item, bias_by_item,
                        mu, alpha, lambda_user, prior_h, tau_user_bias):
    """Mixture components (U * n, S) of each reader's top-n items, recomputing each (reader,
    sample) Cholesky factor L instead of storing covariances: f^T P^-1 f = ||L^-1 f||^2 by one
    forward substitution per item. ``factors_by_item (I, S, k)`` / ``bias_by_item (I, S)`` are the
    item-major copies, so the inner loop over samples reads memory in order."""
    n_users, n = top.shape
    n_s, _, k = item_factors.shape
    d = k + 1
    out_m = np.empty((n_users * n, n_s))
    out_s = np.empty((n_users * n, n_s))
    for u in prange(n_users):
        chol = np.empty((n_s, d, d))
        lin = np.empty(d)
        f = np.empty(d)
        w = np.empty(d)
        for s in range(n_s):
            _posterior_precision(chol[s], lin, indptr[u], indptr[u + 1], items, ratings, item_factors, item_bias,
                                 mu, alpha, lambda_user, prior_h, tau_user_bias, s, f)
            _cholesky_inplace(chol[s])
        for t in range(n):
            j = top[u, t]
            row = u * n + t
            for s in range(n_s):
                for i in range(k):
                    f[i] = factors_by_item[j, s, i]
                f[k] = 1.0
                m = mu[s] + bias_by_item[j, s]
                for i in range(d):
                    m += f[i] * means[u, s, i]
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
def known_top_components(x, top, factors_by_item, bias_by_item, mu, alpha):
    """Components for the model's own readers (per-sample draws x (U, S, k+1)) of their top n."""
    n_users, n = top.shape
    n_s = mu.shape[0]
    k = factors_by_item.shape[2]
    out_m = np.empty((n_users * n, n_s))
    out_s = np.empty((n_users * n, n_s))
    for u in prange(n_users):
        for t in range(n):
            j = top[u, t]
            row = u * n + t
            for s in range(n_s):
                m = mu[s] + bias_by_item[j, s] + x[u, s, k]
                for i in range(k):
                    m += factors_by_item[j, s, i] * x[u, s, i]
                out_m[row, s] = m
                out_s[row, s] = 1.0 / math.sqrt(alpha[s])
    return out_m, out_s


class BatchFoldIn:
    """Fold in readers from the serving arrays (the same dict the API uses) in chunks."""

    def __init__(self, arrays: dict, level: float) -> None:
        self.item_factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float64)
        self.item_bias = np.ascontiguousarray(arrays["item_bias"], dtype=np.float64)
        self.mu = np.asarray(arrays["mu"], dtype=np.float64)
        self.alpha = np.asarray(arrays["alpha"], dtype=np.float64)
        self.lambda_user = np.ascontiguousarray(arrays["lambda_user"], dtype=np.float64)
        self.tau = np.asarray(arrays["tau_user_bias"], dtype=np.float64)
        self.rating_range = tuple(float(x) for x in arrays["rating_range"])
        self.level = level
        self.probs = np.array([(1 - level) / 2, (1 + level) / 2])
        self.z = norm.ppf(self.probs)
        n_s, n_items, k = self.item_factors.shape
        # (S*(k+1), I): per sample the item factors transposed and a row of ones (for the bias),
        # so that [m_s1, ..., m_sS] @ stacked / S is the predictive mean minus the constant part.
        stacked = np.empty((n_s, k + 1, n_items))
        stacked[:, :k, :] = np.transpose(self.item_factors, (0, 2, 1))
        stacked[:, k, :] = 1.0
        # float32 for the screening product (BLAS sgemm, half the time of dgemm); the shown means
        # and intervals of the chosen items are recomputed in float64 from the components.
        self.stacked = np.ascontiguousarray(stacked.reshape(n_s * (k + 1), n_items), dtype=np.float32)
        self.constant = (self.mu[:, None] + self.item_bias).mean(axis=0)
        self.factors_by_item = np.ascontiguousarray(np.transpose(self.item_factors, (1, 0, 2)))
        self.bias_by_item = np.ascontiguousarray(self.item_bias.T)
        # The prior's linear term Lambda_U mu_U, per sample: all the kernels need of mu_U.
        self.prior_h = np.einsum("sab,sb->sa", self.lambda_user, np.asarray(arrays["mu_user"], dtype=np.float64))

    def fold(self, rated: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """rated: (n_readers, n_items) explicit ratings on model items -> (means, chols)."""
        rated = rated.tocsr()
        rated.sort_indices()
        return _fold(
            rated.indptr.astype(np.int64), rated.indices.astype(np.int64), rated.data.astype(np.float64),
            self.item_factors, self.item_bias, self.mu, self.alpha, self.lambda_user, self.prior_h, self.tau, True,
        )

    def predict(self, means, chols, local_user, items):
        """(mean, lower, upper) clipped to the rating range, for (reader, item) pairs."""
        comp_m, comp_s = pair_components(
            means, chols, np.asarray(local_user, dtype=np.int64), np.asarray(items, dtype=np.int64),
            self.item_factors, self.item_bias, self.mu, self.alpha,
        )
        q = mixture_quantiles_fast(comp_m, comp_s, self.probs, self.z)
        lo, hi = self.rating_range
        return np.clip(comp_m.mean(axis=1), lo, hi), np.clip(q[:, 0], lo, hi), np.clip(q[:, 1], lo, hi)

    def components(self, means, chols, local_user, items):
        return pair_components(
            means, chols, np.asarray(local_user, dtype=np.int64), np.asarray(items, dtype=np.int64),
            self.item_factors, self.item_bias, self.mu, self.alpha,
        )

    def recommend(self, rated: sp.csr_matrix, exclude: sp.csr_matrix, n: int, chunk: int = 2048):
        """Fold in readers from their ratings, then top n by predictive mean per reader:
        (items, mean, lower, upper), each (n_readers, n), -1 / NaN where nothing is left."""
        rated = rated.tocsr()
        rated.sort_indices()
        exclude = exclude.tocsr()
        out = empty_result(rated.shape[0], n)
        for a in range(0, rated.shape[0], chunk):
            b = min(a + chunk, rated.shape[0])
            part = rated[a:b]
            args = (part.indptr.astype(np.int64), part.indices.astype(np.int64), part.data.astype(np.float64))
            means, _ = _fold(*args, self.item_factors, self.item_bias, self.mu, self.alpha, self.lambda_user,
                             self.prior_h, self.tau, False)

            def components(top, means=means, args=args):
                return fold_top_components(*args, means, top, self.item_factors, self.item_bias, self.factors_by_item,
                                           self.bias_by_item, self.mu, self.alpha, self.lambda_user, self.prior_h,
                                           self.tau)

            self._top(means, components, exclude[a:b], n, out, a)
        return out

    def recommend_known(self, x: np.ndarray, exclude: sp.csr_matrix, n: int, out=None, offset: int = 0):
        """Top n for readers given by per-sample draws ``x (U, S, k+1)`` (factors then bias)."""
        out = out if out is not None else empty_result(x.shape[0], n)
        x = np.ascontiguousarray(x, dtype=np.float64)

        def components(top):
            return known_top_components(x, top, self.factors_by_item, self.bias_by_item, self.mu, self.alpha)

        self._top(x, components, exclude.tocsr(), n, out, offset)
        return out

    def _top(self, means, components, exclude, n, out, a):
        items, mean, lower, upper = out
        n_s = self.mu.shape[0]
        n_rows = means.shape[0]
        n_eff = min(n, self.stacked.shape[1])
        b = a + n_rows
        score = means.reshape(n_rows, -1).astype(np.float32) @ self.stacked
        score /= n_s
        score += self.constant[None, :].astype(np.float32)
        top, top_score = topn_dense(score, exclude.indptr.astype(np.int64), exclude.indices.astype(np.int64), n_eff)
        del score
        valid = top >= 0
        top = np.maximum(top, 0)
        comp_m, comp_s = components(top)
        q = mixture_quantiles_fast(comp_m, comp_s, self.probs, self.z)
        lo_r, hi_r = self.rating_range
        shape = (n_rows, n_eff)
        raw = comp_m.mean(axis=1).reshape(shape)
        lo = np.clip(q[:, 0], lo_r, hi_r).reshape(shape)
        hi = np.clip(q[:, 1], lo_r, hi_r).reshape(shape)
        # float32 screening may order near-ties differently from the exact means: re-sort the
        # chosen n by their exact (unclipped) mean, ties by item index, so the list is monotone.
        order = _order_rows(np.where(valid, raw, -np.inf), top)
        top, raw, lo, hi, valid = (np.take_along_axis(arr, order, axis=1) for arr in (top, raw, lo, hi, valid))
        m = np.clip(raw, lo_r, hi_r)
        items[a:b, :n_eff] = np.where(valid, top, -1)
        mean[a:b, :n_eff] = np.where(valid, m, np.nan)
        lower[a:b, :n_eff] = np.where(valid, lo, np.nan)
        upper[a:b, :n_eff] = np.where(valid, hi, np.nan)


def empty_result(n_readers: int, n: int):
    return (np.full((n_readers, n), -1, dtype=np.int64), np.full((n_readers, n), np.nan),
            np.full((n_readers, n), np.nan), np.full((n_readers, n), np.nan))


def _order_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row: descending values, ties by ascending idx (invalid slots sort last)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    by_idx = np.argsort(idx, axis=1, kind="stable")
    by_val = np.argsort(-np.take_along_axis(v, by_idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_idx, by_val, axis=1)
