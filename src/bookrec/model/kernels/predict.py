"""Predictions from a state or from stored samples, and Gaussian mixture quantiles, densities and CRPS."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from bookrec.model.kernels.compile import twin


_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _predict_pairs(rows, cols, mu, users, items, out):
    """out[p] = mu + b_u + c_i + u . v for a list of (user, item) pairs."""
    k = rows.shape[1] - 1
    for p in prange(users.shape[0]):
        i = users[p]
        j = items[p]
        pred = mu + rows[i, k] + cols[j, k]
        for a in range(k):
            pred += rows[i, a] * cols[j, a]
        out[p] = pred


predict_pairs_par = twin(_predict_pairs, True, fastmath=True, nogil=True)
predict_pairs_ser = twin(_predict_pairs, False, fastmath=True, nogil=True)


@njit(inline="always", cache=True)
def sample_prediction(user_factors, user_bias, item_factors, item_bias, mu, s, u, j):
    """mu + b_u + c_j + u . v of reader u and book j in stored posterior sample s."""
    pred = mu[s] + user_bias[s, u] + item_bias[s, j]
    for a in range(user_factors.shape[2]):
        pred += user_factors[s, u, a] * item_factors[s, j, a]
    return pred


@njit(parallel=True, fastmath=True, cache=True)
def predict_samples(user_factors, user_bias, item_factors, item_bias, mu, users, items):
    """Per-sample predictions ``(n_pairs, S)`` from stored (float32) posterior samples."""
    n_samples = mu.shape[0]
    n = users.shape[0]
    out = np.empty((n, n_samples))
    for p in prange(n):
        i = users[p]
        j = items[p]
        for s in range(n_samples):
            out[p, s] = sample_prediction(user_factors, user_bias, item_factors, item_bias, mu, s, i, j)
    return out


# ----------------------------------------------------------------------------- mixtures
@njit(inline="always", cache=True)
def _norm_cdf(z):
    return 0.5 * math.erfc(-z / _SQRT2)


@njit(cache=True)
def mixture_quantile_one(means, sds, prob, lo, hi, start):
    """Quantile of (1/S) sum_s N(means[s], sds[s]^2): safeguarded Newton inside the bisection
    bracket [lo, hi], from ``start`` (clamped into the bracket)."""
    n = means.shape[0]
    a = lo
    b = hi
    x = min(max(start, a), b)
    for _ in range(100):
        cdf = 0.0
        pdf = 0.0
        for s in range(n):
            z = (x - means[s]) / sds[s]
            cdf += _norm_cdf(z)
            pdf += math.exp(-0.5 * z * z) * _INV_SQRT_2PI / sds[s]
        cdf /= n
        pdf /= n
        f = cdf - prob
        if abs(f) < 1e-10:
            return x
        if f > 0.0:
            b = x
        else:
            a = x
        if b - a < 1e-9 * (1.0 + abs(x)):
            return 0.5 * (a + b)
        step_ok = pdf > 1e-300
        if step_ok:
            xn = x - f / pdf
            if xn <= a or xn >= b:
                step_ok = False
        if step_ok:
            x = xn
        else:
            x = 0.5 * (a + b)
    return x


@njit(cache=True)
def mixture_moments(means, sds):
    """Mean and sd of the mixture (1/S) sum_s N(means[s], sds[s]^2). Not inlined: inside a
    fastmath caller the sums would be reassociated and the starting point change."""
    n = means.shape[0]
    m = 0.0
    sq = 0.0
    for s in range(n):
        m += means[s]
        sq += means[s] * means[s] + sds[s] * sds[s]
    m /= n
    return m, math.sqrt(max(sq / n - m * m, 1e-300))


@njit(inline="always", cache=True)
def mixture_bracket(means, sds):
    """[min(mean) - 9 max(sd), max(mean) + 9 max(sd)]: contains every quantile of the mixture for
    probabilities in (1e-15, 1 - 1e-15)."""
    lo = np.inf
    hi = -np.inf
    smax = 0.0
    for s in range(means.shape[0]):
        lo = min(lo, means[s])
        hi = max(hi, means[s])
        smax = max(smax, sds[s])
    return lo - 9.0 * smax, hi + 9.0 * smax


def _mixture_quantiles(means, sds, probs, start_z=None):
    """Quantiles of equally weighted Gaussian mixtures, one mixture per row.

    means, sds: (n, S) (sds may be a broadcast view); probs: (m,) -> (n, m).
    Each root is searched inside ``mixture_bracket``. Newton starts at the mixture mean or, given
    ``start_z`` (the standard normal quantiles of ``probs``), at the moment-matched normal's
    quantile mean + z sd: usually within a few hundredths, 2-3 steps instead of ~10.
    """
    n = means.shape[0]
    n_probs = probs.shape[0]
    out = np.empty((n, n_probs))
    for p in prange(n):
        row_m = means[p]
        row_s = sds[p]
        lo, hi = mixture_bracket(row_m, row_s)
        m, sd = mixture_moments(row_m, row_s)
        for q in range(n_probs):
            start = m if start_z is None else m + start_z[q] * sd
            out[p, q] = mixture_quantile_one(row_m, row_s, probs[q], lo, hi, start)
    return out


mixture_quantiles = twin(_mixture_quantiles, True)
# Single-threaded twin for request paths: numba's default (workqueue) threading layer must not be
# entered by two Python threads at once, and a few thousand mixtures take milliseconds anyway.
mixture_quantiles_ser = twin(_mixture_quantiles, False, nogil=True)


@njit(parallel=True, cache=True)
def mixture_logpdf(y, means, sds):
    """log of (1/S) sum_s N(y; means[s], sds[s]^2) per row (log-sum-exp)."""
    n, n_s = means.shape
    out = np.empty(n)
    for p in prange(n):
        best = -np.inf
        for s in range(n_s):
            z = (y[p] - means[p, s]) / sds[p, s]
            v = -0.5 * z * z - math.log(sds[p, s])
            best = max(best, v)
        acc = 0.0
        for s in range(n_s):
            z = (y[p] - means[p, s]) / sds[p, s]
            acc += math.exp(-0.5 * z * z - math.log(sds[p, s]) - best)
        out[p] = best + math.log(acc / n_s) - 0.5 * math.log(2.0 * math.pi)
    return out


@njit(inline="always", cache=True)
def _crps_a(mean, var):
    """E|X| for X ~ N(mean, var)."""
    sd = math.sqrt(var)
    z = mean / sd
    return 2.0 * sd * math.exp(-0.5 * z * z) * _INV_SQRT_2PI + mean * (2.0 * _norm_cdf(z) - 1.0)


@njit(parallel=True, cache=True)
def mixture_crps(y, means, sds):
    """Exact CRPS of an equally weighted Gaussian mixture (Grimit et al. 2006):
    CRPS = E|X - y| - 0.5 E|X - X'|, both expectations in closed form."""
    n, n_s = means.shape
    out = np.empty(n)
    for p in prange(n):
        t1 = 0.0
        for s in range(n_s):
            t1 += _crps_a(y[p] - means[p, s], sds[p, s] * sds[p, s])
        t2 = 0.0
        for s in range(n_s):
            for t in range(s + 1, n_s):
                t2 += 2.0 * _crps_a(means[p, s] - means[p, t], sds[p, s] ** 2 + sds[p, t] ** 2)
            t2 += _crps_a(0.0, 2.0 * sds[p, s] ** 2)
        out[p] = t1 / n_s - 0.5 * t2 / (n_s * n_s)
    return out
