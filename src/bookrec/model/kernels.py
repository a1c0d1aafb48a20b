"""Compiled (numba) kernels of the Gibbs sampler and of prediction.

Layout used everywhere: one side of the rating matrix (users or items) is an ``(n, k + 1)``
float64 array whose first ``k`` columns are the latent factors and whose last column is the bias.
With that layout one kernel samples both sides: for a user, the "features" of a rating are
``[v_j, 1]`` and its target is ``r_ij - mu - c_j``, so the factors and the bias are drawn
*jointly* from their Gaussian conditional (better mixing than two separate blocks, same cost).

Randomness inside the kernels comes from a counter-based generator (SplitMix64 keyed by the
chain seed, the sweep and the row number) rather than numba's per-thread global state: every
row gets its own stream, so results are identical whatever the number of threads and however
``prange`` distributes rows. Each kernel exists twice: ``*_par`` (prange over rows, both cores)
and ``*_ser`` (one thread, releases the GIL) for running chains in parallel threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 1.0 / 9007199254740992.0
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------- random numbers
@njit(inline="always", cache=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def row_state(seed, row):
    """Initial SplitMix64 state of one row's private stream."""
    return _mix64(np.uint64(seed) ^ (np.uint64(row + 1) * _GOLDEN))


@njit(cache=True)
def fill_normals(state, out):
    """Fill ``out`` with N(0, 1) draws (Box-Muller); returns the advanced state."""
    n = out.shape[0]
    i = 0
    while i < n:
        state = state + _GOLDEN
        u1 = (np.float64(_mix64(state) >> np.uint64(11)) + 0.5) * _TWO_POW_M53
        state = state + _GOLDEN
        u2 = (np.float64(_mix64(state) >> np.uint64(11)) + 0.5) * _TWO_POW_M53
        radius = math.sqrt(-2.0 * math.log(u1))
        out[i] = radius * math.cos(2.0 * math.pi * u2)
        if i + 1 < n:
            out[i + 1] = radius * math.sin(2.0 * math.pi * u2)
        i += 2
    return state


# ----------------------------------------------------------------------------- the Gibbs block
def _sample_block(indptr, indices, ratings, other, mu, alpha, prior_prec, prior_h, out, seed, draw):
    """Draw (or, with ``draw=False``, set to the mode) every row of ``out`` from its conditional.

    Row i: precision  P = prior_prec + alpha * sum_j f_j f_j^T,   f_j = [other_j[:k], 1]
           linear     h = prior_h    + alpha * sum_j f_j (r_ij - mu - other_j[k])
           x_i ~ N(P^-1 h, P^-1), drawn as  m + L^-T z  with  P = L L^T.
    ``prior_h`` is ``prior_prec @ prior_mean`` (computed once per sweep by the caller).
    """
    n_rows = indptr.shape[0] - 1
    dim = out.shape[1]
    k = dim - 1
    max_len = 1
    for i in range(n_rows):
        max_len = max(max_len, indptr[i + 1] - indptr[i])
    n_chunks = min(n_rows, 512)
    chunk = (n_rows + n_chunks - 1) // max(n_chunks, 1)
    for c in prange(n_chunks):
        prec = np.empty((dim, dim))
        lin = np.empty(dim)
        z = np.empty(dim)
        # The row's features gathered feature-major, so that every entry of F^T F is a
        # contiguous dot product the compiler vectorises (3-5x faster than rank-1 updates).
        feats = np.empty((dim, max_len))
        target = np.empty(max_len)
        start = c * chunk
        stop = min(n_rows, start + chunk)
        for i in range(start, stop):
            lo = indptr[i]
            m = indptr[i + 1] - lo
            for q in range(m):
                j = indices[lo + q]
                for a in range(k):
                    feats[a, q] = other[j, a]
                feats[k, q] = 1.0
                target[q] = ratings[lo + q] - mu - other[j, k]
            for a in range(dim):
                fa = feats[a]
                acc = 0.0
                for q in range(m):
                    acc += fa[q] * target[q]
                lin[a] = prior_h[a] + alpha * acc
                for b in range(a + 1):
                    fb = feats[b]
                    acc = 0.0
                    for q in range(m):
                        acc += fa[q] * fb[q]
                    prec[a, b] = prior_prec[a, b] + alpha * acc
            # Cholesky P = L L^T in place (lower triangle).
            for a in range(dim):
                s = prec[a, a]
                for q in range(a):
                    s -= prec[a, q] * prec[a, q]
                if s <= 0.0:
                    s = 1e-12
                d = math.sqrt(s)
                prec[a, a] = d
                for b in range(a + 1, dim):
                    t = prec[b, a]
                    for q in range(a):
                        t -= prec[b, q] * prec[a, q]
                    prec[b, a] = t / d
            # Forward solve L y = h (y stored in lin).
            for a in range(dim):
                t = lin[a]
                for q in range(a):
                    t -= prec[a, q] * lin[q]
                lin[a] = t / prec[a, a]
            if draw:
                fill_normals(row_state(seed, i), z)
                for a in range(dim):
                    lin[a] += z[a]
            # Back solve L^T x = y (+ z): mean plus a N(0, P^-1) draw in one solve.
            for a in range(dim - 1, -1, -1):
                t = lin[a]
                for q in range(a + 1, dim):
                    t -= prec[q, a] * lin[q]
                lin[a] = t / prec[a, a]
            for a in range(dim):
                out[i, a] = lin[a]


sample_block_par = njit(parallel=True, fastmath=True, cache=True, nogil=True)(_sample_block)
sample_block_ser = njit(fastmath=True, cache=True, nogil=True)(_sample_block)


def _residual_sums(indptr, indices, ratings, rows, cols):
    """Sums of e and e^2 over all ratings, e = r - (b_i + c_j + u_i . v_j) (mu left out)."""
    n_rows = indptr.shape[0] - 1
    k = rows.shape[1] - 1
    n_chunks = min(n_rows, 512)
    chunk = (n_rows + n_chunks - 1) // max(n_chunks, 1)
    part1 = np.zeros(n_chunks)
    part2 = np.zeros(n_chunks)
    for c in prange(n_chunks):
        s1 = 0.0
        s2 = 0.0
        for i in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                pred = rows[i, k] + cols[j, k]
                for a in range(k):
                    pred += rows[i, a] * cols[j, a]
                e = ratings[p] - pred
                s1 += e
                s2 += e * e
        part1[c] = s1
        part2[c] = s2
    return part1.sum(), part2.sum()


residual_sums_par = njit(parallel=True, fastmath=True, cache=True, nogil=True)(_residual_sums)
residual_sums_ser = njit(fastmath=True, cache=True, nogil=True)(_residual_sums)


def _move_stats(indptr, indices, ratings, rows, cols, mu):
    """Sufficient statistics of the scale moves, one pass over the ratings.

    With z = [u_i1 v_j1, ..., u_ik v_jk, b_i, c_j] (the additive parts of a prediction) and
    e = r - mu - sum(z) the residual: G = sum z z^T ((k+2) x (k+2)) and R = sum e z.
    """
    n_rows = indptr.shape[0] - 1
    k = rows.shape[1] - 1
    m = k + 2
    n_chunks = min(n_rows, 256)
    chunk = (n_rows + n_chunks - 1) // max(n_chunks, 1)
    part_g = np.zeros((n_chunks, m, m))
    part_r = np.zeros((n_chunks, m))
    for c in prange(n_chunks):
        z = np.empty(m)
        gg = np.zeros((m, m))
        rr = np.zeros(m)
        for i in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                z[k] = rows[i, k]
                z[k + 1] = cols[j, k]
                e = ratings[p] - mu - z[k] - z[k + 1]
                for a in range(k):
                    z[a] = rows[i, a] * cols[j, a]
                    e -= z[a]
                for a in range(m):
                    rr[a] += e * z[a]
                    for b in range(a + 1):
                        gg[a, b] += z[a] * z[b]
        for a in range(m):
            part_r[c, a] = rr[a]
            for b in range(a + 1):
                part_g[c, a, b] = gg[a, b]
                part_g[c, b, a] = gg[a, b]
    return part_g.sum(axis=0), part_r.sum(axis=0)


move_stats_par = njit(parallel=True, fastmath=True, cache=True, nogil=True)(_move_stats)
move_stats_ser = njit(fastmath=True, cache=True, nogil=True)(_move_stats)


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


predict_pairs_par = njit(parallel=True, fastmath=True, cache=True, nogil=True)(_predict_pairs)
predict_pairs_ser = njit(fastmath=True, cache=True, nogil=True)(_predict_pairs)


@njit(parallel=True, fastmath=True, cache=True)
def predict_samples(user_factors, user_bias, item_factors, item_bias, mu, users, items):
    """Per-sample predictions ``(n_pairs, S)`` from stored (float32) posterior samples."""
    n_samples = mu.shape[0]
    k = user_factors.shape[2]
    n = users.shape[0]
    out = np.empty((n, n_samples))
    for p in prange(n):
        i = users[p]
        j = items[p]
        for s in range(n_samples):
            pred = mu[s] + user_bias[s, i] + item_bias[s, j]
            for a in range(k):
                pred += user_factors[s, i, a] * item_factors[s, j, a]
            out[p, s] = pred
    return out


# ----------------------------------------------------------------------------- mixtures
@njit(inline="always", cache=True)
def _norm_cdf(z):
    return 0.5 * math.erfc(-z / _SQRT2)


@njit(cache=True)
def _mixture_quantile_one(means, sds, prob, lo, hi):
    """Quantile of (1/S) sum_s N(means[s], sds[s]^2): safeguarded Newton inside a bisection bracket."""
    n = means.shape[0]
    # Start from the mixture mean (clamped into the bracket); Newton then converges in a few steps.
    m = 0.0
    for s in range(n):
        m += means[s]
    m /= n
    a = lo
    b = hi
    x = min(max(m, a), b)
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


def _mixture_quantiles(means, sds, probs):
    """Quantiles of equally weighted Gaussian mixtures, one mixture per row.

    means, sds: (n, S) (sds may be a broadcast view); probs: (m,) -> (n, m).
    The bracket [min(mean) - 9 max(sd), max(mean) + 9 max(sd)] always contains the quantile
    for probabilities in (1e-15, 1 - 1e-15).
    """
    n = means.shape[0]
    n_probs = probs.shape[0]
    out = np.empty((n, n_probs))
    for p in prange(n):
        row_m = means[p]
        row_s = sds[p]
        lo = np.inf
        hi = -np.inf
        smax = 0.0
        for s in range(row_m.shape[0]):
            lo = min(lo, row_m[s])
            hi = max(hi, row_m[s])
            smax = max(smax, row_s[s])
        lo -= 9.0 * smax
        hi += 9.0 * smax
        for q in range(n_probs):
            out[p, q] = _mixture_quantile_one(row_m, row_s, probs[q], lo, hi)
    return out


mixture_quantiles = njit(parallel=True, cache=True)(_mixture_quantiles)
# Single-threaded twin for request paths: numba's default (workqueue) threading layer must not be
# entered by two Python threads at once, and a few thousand mixtures take milliseconds anyway.
mixture_quantiles_ser = njit(cache=True, nogil=True)(_mixture_quantiles)


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


# ----------------------------------------------------------------------------- top-n selection
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
                pred = mu[s] + user_bias[s, u] + item_bias[s, j]
                for a in range(k):
                    pred += user_factors[s, u, a] * item_factors[s, j, a]
                comp_m[q, s] = pred
                comp_s[q, s] = noise_sd[s]
        lowers = np.empty(n_c)
        uppers = np.empty(n_c)
        for q in range(n_c):
            lo = np.inf
            hi = -np.inf
            smax = 0.0
            for s in range(n_s):
                lo = min(lo, comp_m[q, s])
                hi = max(hi, comp_m[q, s])
                smax = max(smax, comp_s[q, s])
            lowers[q] = _mixture_quantile_one(comp_m[q], comp_s[q], probs[0], lo - 9 * smax, hi + 9 * smax)
            uppers[q] = _mixture_quantile_one(comp_m[q], comp_s[q], probs[1], lo - 9 * smax, hi + 9 * smax)
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
