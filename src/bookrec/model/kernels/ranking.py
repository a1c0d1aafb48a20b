"""Top-n selection and whole-catalogue recommendation for many users at once."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from bookrec.model.kernels.predict import mixture_bracket, mixture_quantile_one, sample_prediction


@njit(cache=True)
def _sift_down(heap_v, heap_i, pos, size):
    """Min-heap on heap_v (ties: larger index counts as smaller, so lower ids win)."""
    while True:
        left = 2 * pos + 1
        if left >= size:
            return
        small = left
        right = left + 1
        if right < size and (
            heap_v[right] < heap_v[left] or (heap_v[right] == heap_v[left] and heap_i[right] > heap_i[left])
        ):
            small = right
        if heap_v[small] < heap_v[pos] or (heap_v[small] == heap_v[pos] and heap_i[small] > heap_i[pos]):
            heap_v[pos], heap_v[small] = heap_v[small], heap_v[pos]
            heap_i[pos], heap_i[small] = heap_i[small], heap_i[pos]
            pos = small
        else:
            return


@njit(cache=True)
def top_n(scores, n, excluded):
    """Indices of the n largest scores (descending, ties by lower index), skipping excluded ones.

    ``excluded`` is a boolean mask; returns fewer than n when not enough items remain.
    """
    size = 0
    heap_v = np.empty(n)
    heap_i = np.empty(n, dtype=np.int64)
    for j in range(scores.shape[0]):
        if excluded[j] or n == 0:
            continue
        v = scores[j]
        if size < n:
            heap_v[size] = v
            heap_i[size] = j
            size += 1
            if size == n:
                for pos in range(n // 2 - 1, -1, -1):
                    _sift_down(heap_v, heap_i, pos, n)
        elif v > heap_v[0]:
            heap_v[0] = v
            heap_i[0] = j
            _sift_down(heap_v, heap_i, 0, n)
    if size < n:
        order = np.argsort(-heap_v[:size], kind="mergesort")
        return heap_i[:size][order]
    # Sort descending by value, ascending index on ties.
    keys = np.empty(size)
    for q in range(size):
        keys[q] = -heap_v[q]
    order = np.argsort(keys, kind="mergesort")
    out = heap_i[order]
    # Stable re-order of equal values by index.
    for q in range(1, size):
        r = q
        while r > 0 and heap_v[order[r - 1]] == heap_v[order[r]] and out[r - 1] > out[r]:
            out[r - 1], out[r] = out[r], out[r - 1]
            order[r - 1], order[r] = order[r], order[r - 1]
            r -= 1
    return out


@njit(parallel=True, fastmath=True, cache=True)
def recommend_block(
    users, user_factors, user_bias, item_factors, item_bias, mu, noise_sd,
    excl_indptr, excl_indices, n, mode, z_level, probs, sample_choice, n_candidates,
):
    """Top-n items for each user of ``users`` from stored posterior samples.

    mode 0 = posterior predictive mean, 1 = lower bound of the central interval, 2 = one
    posterior draw per user (Thompson; ``sample_choice[b]`` is that user's sample index).
    For mode 1 the screening score is mean - z * sd of the mixture (exact mixture variance);
    the best ``n_candidates`` by that score get exact mixture quantiles and are re-ranked by them.
    Returns items, mean, lower, upper, each (n_users, n); missing slots are -1 / NaN.
    """
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
        comp_m = np.empty((n_c, n_s))
        comp_s = np.empty((n_c, n_s))
        for q in range(n_c):
            j = cand[q]
            for s in range(n_s):
                comp_m[q, s] = sample_prediction(user_factors, user_bias, item_factors, item_bias, mu, s, u, j)
                comp_s[q, s] = noise_sd[s]
        lowers = np.empty(n_c)
        uppers = np.empty(n_c)
        for q in range(n_c):
            row_m = comp_m[q]
            row_s = comp_s[q]
            lo, hi = mixture_bracket(row_m, row_s)
            lowers[q] = mixture_quantile_one(row_m, row_s, probs[0], lo, hi)
            uppers[q] = mixture_quantile_one(row_m, row_s, probs[1], lo, hi)
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
