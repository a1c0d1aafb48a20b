"""The hyperparameter draws: Normal-Wishart, the shift move's Gaussian, the block prior forms."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bookrec.model.kernels.arrays import PriorForms


# Small dense algebra (k x k) done a few times per sweep: compiled, because NumPy's per-call
# overhead (a few microseconds per inv, cholesky or outer) added up to a tenth of a k-core sweep.
@njit(cache=True)
def normal_wishart_params(n, total, gram, mu0, beta0, w0_inv, nu0):
    """The Normal-Wishart update from (n, sum x, sum x x^T): (mu_n, beta_n, W_n, nu_n).

    Uses the *centred* scatter S = sum (x - xbar)(x - xbar)^T = sum x x^T - n xbar xbar^T (the
    earlier system used the uncentred one, which is wrong):
    W_n^-1 = W0^-1 + S + beta0 N / (beta0 + N) (mu0 - xbar)(mu0 - xbar)^T.
    """
    xbar = total / n if n > 0 else np.zeros_like(mu0)
    scatter = gram - n * np.outer(xbar, xbar)
    beta_n = beta0 + n
    nu_n = nu0 + n
    mu_n = (beta0 * mu0 + n * xbar) / beta_n
    d = mu0 - xbar
    w_n = np.linalg.inv(w0_inv + scatter + (beta0 * n / beta_n) * np.outer(d, d))
    return mu_n, beta_n, 0.5 * (w_n + w_n.T), nu_n


@njit(cache=True)
def normal_wishart_sample(n, total, gram, mu0, beta0, w0_inv, nu0, chi2, normals):
    """(mean, Lambda) from the Normal-Wishart conditional given the moments.

    Lambda ~ Wishart(W_n, nu_n) by the Bartlett decomposition: Lambda = (L A)(L A)^T with
    W_n = L L^T and A lower triangular, A_ii = sqrt(chi2[i]) (chi-square with nu_n - i degrees of
    freedom), A_ij = the first k(k-1)/2 ``normals`` below the diagonal; then
    mean = mu_n + R^-1 z with beta_n Lambda = R^T R and z the last k ``normals``.
    """
    k = mu0.shape[0]
    mu_n, beta_n, w_n, _ = normal_wishart_params(n, total, gram, mu0, beta0, w0_inv, nu0)
    bartlett = np.zeros((k, k))
    used = 0
    for a in range(k):
        bartlett[a, a] = math.sqrt(chi2[a])
        for b in range(a):
            bartlett[a, b] = normals[used]
            used += 1
    la = np.linalg.cholesky(w_n) @ bartlett
    lam = la @ la.T
    upper = np.linalg.cholesky(beta_n * lam).T
    z = normals[used:used + k].copy()
    for a in range(k - 1, -1, -1):  # upper^-1 z by back substitution
        for b in range(a + 1, k):
            z[a] -= upper[a, b] * z[b]
        z[a] /= upper[a, a]
    return mu_n + z, lam


@njit(cache=True)
def shift_draw(other_moments, lam, own_mean, mu0, tau_other, beta0, tau0, mu_offset, normals):
    """One draw of the shift a ~ N(P^-1 h, P^-1) of ``Chain._shift_factors`` from the other side's
    moments (n, sum x, sum x x^T over rows [v_j, c_j]), drawn as L^-T (L^-1 h + z) with P = L L^T:
        P = tau0 vbar vbar^T + beta0 Lambda + tau_c W^T W,      W rows w_j = v_j - vbar
        h = tau0 mu_offset vbar - beta0 Lambda (mu_own - mu0) + tau_c W^T c
    """
    n_other, total_other, gram_other = other_moments
    k = lam.shape[0]
    vbar = total_other[:k] / n_other
    scatter = gram_other[:k, :k] - n_other * np.outer(vbar, vbar)  # W^T W
    w_c = gram_other[:k, k] - vbar * total_other[k]  # W^T c
    prec = tau0 * np.outer(vbar, vbar) + beta0 * lam + tau_other * scatter
    lin = tau0 * mu_offset * vbar - beta0 * (lam @ (own_mean - mu0)) + tau_other * w_c
    chol = np.linalg.cholesky(prec)
    for a in range(k):  # forward: L y = h
        for b in range(a):
            lin[a] -= chol[a, b] * lin[b]
        lin[a] /= chol[a, a]
    for a in range(k):
        lin[a] += normals[a]
    for a in range(k - 1, -1, -1):  # back: L^T x = y + z
        for b in range(a + 1, k):
            lin[a] -= chol[b, a] * lin[b]
        lin[a] /= chol[a, a]
    return lin, vbar


@njit(cache=True)
def block_prior_forms(lam, mean, tau):
    """The prior of one row [factors, bias] in the forms ``_sample_block`` reads (PriorForms):
    precision P0, P0 m0, mean m0, C, C^T with C lower-triangular and C C^T = P0^-1."""
    k = mean.shape[0]
    prec = np.zeros((k + 1, k + 1))
    prec[:k, :k] = lam
    prec[k, k] = tau
    prior_mean = np.zeros(k + 1)
    prior_mean[:k] = mean
    cov = np.linalg.inv(prec)
    chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    return PriorForms(prec, prec @ prior_mean, prior_mean, chol, np.ascontiguousarray(chol.T))


@njit(cache=True)
def side_prior_draw(n, total, gram, mu0, beta0, w0_inv, nu0, chi2, normals, tau):
    """A side's (mean, Lambda) from the Normal-Wishart conditional given its moments over the rows
    [factors, bias] (``normal_wishart_sample`` on the factor part), and the forms of the block
    prior for those and the bias precision ``tau`` (``block_prior_forms``): one call per side and sweep."""
    k = mu0.shape[0]
    mean, lam = normal_wishart_sample(n, total[:k].copy(), np.ascontiguousarray(gram[:k, :k]), mu0, beta0, w0_inv,
                                      nu0, chi2, normals)
    return mean, lam, block_prior_forms(lam, mean, tau)
