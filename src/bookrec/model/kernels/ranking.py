"""Whole-catalogue recommendation for many users at once, from stored posterior samples."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from bookrec.model.kernels.predict import mixture_bracket, mixture_moments, mixture_quantile_one, sample_prediction
from bookrec.model.kernels.topn import top_n


@njit(inline="always", cache=True)
def _candidate_intervals(samples, u, cand, probs, lowers, uppers):
    """Write the central interval [probs[0], probs[1]] of user u's predictive mixture of each item
    of ``cand`` into lowers, uppers (inlined: compiled with the caller's options)."""
    n_s = samples.mu.shape[0]
    n_c = cand.shape[0]
    comp_m = np.empty((n_c, n_s))
    comp_s = np.empty((n_c, n_s))
    for q in range(n_c):
        j = cand[q]
        for s in range(n_s):
            comp_m[q, s] = sample_prediction(samples.user_factors, samples.user_bias, samples.item_factors,
                                             samples.item_bias, samples.mu, s, u, j)
            comp_s[q, s] = samples.noise_sd[s]
    for q in range(n_c):
        row_m = comp_m[q]
        row_s = comp_s[q]
        lo, hi = mixture_bracket(row_m, row_s)
        start, _ = mixture_moments(row_m, row_s)
        lowers[q] = mixture_quantile_one(row_m, row_s, probs[0], lo, hi, start)
        uppers[q] = mixture_quantile_one(row_m, row_s, probs[1], lo, hi, start)


@njit(parallel=True, fastmath=True, cache=True)
def recommend_block(users, samples, exclude, n, mode, z_level, probs, sample_choice, n_candidates):
    """Top-n items for each user of ``users`` from stored posterior samples
    (:class:`~bookrec.model.kernels.arrays.StoredSamples`), skipping ``exclude``'s columns of each
    user (:class:`~bookrec.model.kernels.arrays.Exclusions`, rows indexed by user).

    mode 0 = posterior predictive mean, 1 = lower bound of the central interval, 2 = one
    posterior draw per user (Thompson; ``sample_choice[b]`` is that user's sample index).
    For mode 1 the screening score is mean - z * sd of the mixture (exact mixture variance);
    the best ``n_candidates`` by that score get exact mixture quantiles and are re-ranked by them.
    Returns items, mean, lower, upper, each (n_users, n); missing slots are -1 / NaN.
    """
    user_factors = samples.user_factors
    user_bias = samples.user_bias
    item_factors = samples.item_factors
    item_bias = samples.item_bias
    mu = samples.mu
    noise_sd = samples.noise_sd
    excl_indptr = exclude.indptr
    excl_indices = exclude.indices
    n_users = users.shape[0]
    n_s, n_items, k = item_factors.shape
    out_items = np.full((n_users, n), -1, dtype=np.int64)
    out_mean = np.full((n_users, n), np.nan)
    out_lower = np.full((n_users, n), np.nan)
    out_upper = np.full((n_users, n), np.nan)
    noise_var_mean = 0.0
    for s in range(n_s):
        noise_var_mean += noise_sd[s] * noise_sd[s]
    noise_var_mean /= n_s
    for b in prange(n_users):
        u = users[b]
        mean = np.zeros(n_items)
        sq = np.zeros(n_items)
        chosen = np.empty(n_items)
        for s in range(n_s):
            ub = user_bias[s, u] + mu[s]
            for j in range(n_items):
                pred = ub + item_bias[s, j]
                for a in range(k):
                    pred += user_factors[s, u, a] * item_factors[s, j, a]
                mean[j] += pred
                sq[j] += pred * pred
                if mode == 2 and s == sample_choice[b]:
                    chosen[j] = pred
        excluded = np.zeros(n_items, dtype=np.bool_)
        for p in range(excl_indptr[u], excl_indptr[u + 1]):
            excluded[excl_indices[p]] = True
        score = np.empty(n_items)
        for j in range(n_items):
            mean[j] /= n_s
            if mode == 0:
                score[j] = mean[j]
            elif mode == 1:
                var = max(sq[j] / n_s - mean[j] * mean[j], 0.0) + noise_var_mean
                score[j] = mean[j] - z_level * math.sqrt(var)
            else:
                score[j] = chosen[j]
        m_cand = n_candidates if mode == 1 else n
        cand = top_n(score, m_cand, excluded)
        n_c = cand.shape[0]
        lowers = np.empty(n_c)
        uppers = np.empty(n_c)
        _candidate_intervals(samples, u, cand, probs, lowers, uppers)
        if mode == 1:
            no_excl = np.zeros(n_c, dtype=np.bool_)
            order = top_n(lowers, min(n, n_c), no_excl)
        else:
            order = np.arange(min(n, n_c))
        for q in range(order.shape[0]):
            c = order[q]
            out_items[b, q] = cand[c]
            out_mean[b, q] = mean[cand[c]]
            out_lower[b, q] = lowers[c]
            out_upper[b, q] = uppers[c]
    return out_items, out_mean, out_lower, out_upper
