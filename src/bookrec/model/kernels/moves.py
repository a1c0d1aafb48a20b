"""The group moves: their statistics, the scale moves, and affine maps of a side's rows and moments."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from bookrec.model.kernels.compile import twin
from bookrec.model.kernels.normals import _GOLDEN, _mix64, _unit, row_state
from bookrec.model.kernels.partials import new_partials, reduce_partials, store_partial
from bookrec.model.kernels.rows import accumulate_row_stats


def _move_stats(indptr, indices, ratings, rows, cols, mu):
    """Sufficient statistics of the group moves, one pass over the ratings.

    With z = [u_i1 v_j1, ..., u_ik v_jk, b_i, c_j, 1] (the additive parts of a prediction and a
    constant) and e = r - mu - (z_1 + ... + z_{k+2}) the residual: returns G = sum z z^T
    ((k+3) x (k+3)), R = sum e z (R[k+2] = sum e) and sum e^2.
    Per row z = D w with D = diag(u_i, b_i, 1, 1) and w = [v_j, 1, c_j, 1], so the row's ratings
    are gathered feature-major and sum w w^T is a set of contiguous dot products.
    """
    n_rows = indptr.shape[0] - 1
    k = rows.shape[1] - 1
    m = k + 3
    max_len = 1
    for i in range(n_rows):
        max_len = max(max_len, indptr[i + 1] - indptr[i])
    n_chunks = min(n_rows, 256)
    chunk = (n_rows + n_chunks - 1) // max(n_chunks, 1)
    part_g, part_r, part_e2 = new_partials(n_chunks, m)
    for c in prange(n_chunks):
        w = np.empty((m, max_len))
        e = np.empty(max_len)
        scale = np.empty(m)
        gg = np.zeros((m, m))
        rr = np.zeros(m)
        e2 = 0.0
        for i in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            lo = indptr[i]
            n = indptr[i + 1] - lo
            if n == 0:
                continue
            for a in range(k):
                scale[a] = rows[i, a]
            scale[k] = rows[i, k]
            scale[k + 1] = 1.0
            scale[k + 2] = 1.0
            for q in range(n):
                j = indices[lo + q]
                pred = rows[i, k] + cols[j, k]
                for a in range(k):
                    w[a, q] = cols[j, a]
                    pred += rows[i, a] * cols[j, a]
                w[k, q] = 1.0
                w[k + 1, q] = cols[j, k]
                w[k + 2, q] = 1.0
                e[q] = ratings[lo + q] - mu - pred
                e2 += e[q] * e[q]
            accumulate_row_stats(w, e, n, scale, gg, rr)
        store_partial(part_g, part_r, part_e2, c, gg, rr, e2)
    return reduce_partials(part_g, part_r, part_e2)


move_stats_par = twin(_move_stats, True, fastmath=True, nogil=True)
move_stats_ser = twin(_move_stats, False, fastmath=True, nogil=True)


@njit(inline="always", cache=True)
def _scale_log_density(t, alpha, big_a, big_b, power, d):
    value = -0.5 * alpha * (big_a * math.exp(2.0 * t) - 2.0 * big_b * math.exp(t)) - power * t - d * math.exp(-2.0 * t)
    if math.isfinite(value):
        return value
    return -math.inf  # a far-out proposal: rejected


@njit(cache=True)
def _draw_scale(alpha, big_a, big_b, power, d, normals, uniforms):
    """One draw of s = e^t for log pi(t) = -alpha/2 (A e^2t - 2 B e^t) - power t - d e^-2t by
    len(normals) independence Metropolis-Hastings steps from t = 0, with a Laplace proposal
    centred on the mode (found by Newton; the target is log-concave near it)."""
    if big_a <= 0.0:
        return 1.0
    t = 0.0
    for _ in range(30):
        e1, e2, em2 = math.exp(t), math.exp(2.0 * t), math.exp(-2.0 * t)
        g = -alpha * (big_a * e2 - big_b * e1) - power + 2.0 * d * em2
        h = -alpha * (2.0 * big_a * e2 - big_b * e1) - 4.0 * d * em2
        if h >= 0.0:
            h = -abs(h) - 1.0
        step = min(max(g / h, -0.5), 0.5)
        t -= step
        if abs(step) < 1e-10:
            break
    e1, e2, em2 = math.exp(t), math.exp(2.0 * t), math.exp(-2.0 * t)
    h = -alpha * (2.0 * big_a * e2 - big_b * e1) - 4.0 * d * em2
    sd = 1.2 / math.sqrt(max(-h, 1e-12))  # slightly wider than the Laplace fit: robust tails
    current = 0.0
    for step_index in range(normals.shape[0]):
        prop = t + sd * normals[step_index]
        log_ratio = (_scale_log_density(prop, alpha, big_a, big_b, power, d)
                     - _scale_log_density(current, alpha, big_a, big_b, power, d)
                     - (-0.5 * ((prop - t) / sd) ** 2 + 0.5 * ((current - t) / sd) ** 2))
        if math.log(uniforms[step_index]) < log_ratio:
            current = prop
    return math.exp(current)


@njit(cache=True)
def scale_moves(gram, resid, sum_e2, alpha, stat_index, power, prior_d, normals, uniforms):
    """The scale moves of one sweep in order: move n scales the part z_m (m = stat_index[n]) of every
    prediction by s_n drawn by ``_draw_scale`` (power[n], prior_d[n]; normals[n] and uniforms[n]:
    one row per MH step), and updates the move statistics (gram = sum z z^T, resid = sum e z) in
    place exactly: e -> e - (s - 1) z_m. Returns the scales and the new sum e^2."""
    n_moves = stat_index.shape[0]
    scales = np.ones(n_moves)
    for n in range(n_moves):
        m = stat_index[n]
        s = _draw_scale(alpha, gram[m, m], resid[m] + gram[m, m], power[n], prior_d[n], normals[n], uniforms[n])
        scales[n] = s
        if s != 1.0:
            delta = s - 1.0
            sum_e2 += delta * (delta * gram[m, m] - 2.0 * resid[m])
            for a in range(resid.shape[0]):
                resid[a] -= delta * gram[m, a]
            resid[m] *= s
            for a in range(resid.shape[0]):  # row and column m; gram[m, m] is scaled twice: s^2
                gram[m, a] *= s
                gram[a, m] *= s
    return scales, sum_e2


@njit(cache=True)
def affine_move(n, total, gram, composed, shift, transform, offset):
    """One move x -> T x + e of every row of a side, on its moments and its pending map, without
    touching the rows: (sum x, sum x x^T) become (T s + n e, T G T^T + m e^T + e m^T + n e e^T) with
    m = T s, and the pending map x -> A x + c becomes x -> (T A) x + (T c + e). Exact, O(k^3); loops,
    because at this size a BLAS call costs more than the arithmetic."""
    dim = total.shape[0]
    moved = np.zeros(dim)
    new_shift = offset.copy()
    tg = np.zeros((dim, dim))
    new_composed = np.zeros((dim, dim))
    for a in range(dim):
        for c in range(dim):
            t = transform[a, c]
            moved[a] += t * total[c]
            new_shift[a] += t * shift[c]
            for b in range(dim):
                tg[a, b] += t * gram[c, b]
                new_composed[a, b] += t * composed[c, b]
    new_gram = np.empty((dim, dim))
    for a in range(dim):
        for b in range(dim):
            acc = moved[a] * offset[b] + offset[a] * moved[b] + n * offset[a] * offset[b]
            for c in range(dim):
                acc += tg[a, c] * transform[b, c]
            new_gram[a, b] = acc
    return moved + n * offset, new_gram, new_composed, new_shift


def _side_moments(rows):
    """(column sums, X^T X) of an (n, k + 1) side. Each chunk of rows is transposed into a small
    buffer first, so that every entry is a long contiguous dot product (a BLAS syrk on this
    tall, thin shape ran at a third of the speed)."""
    n, dim = rows.shape
    width = 256
    n_chunks = (n + width - 1) // width
    n_parts = min(n_chunks, 64)
    per_part = (n_chunks + n_parts - 1) // max(n_parts, 1)
    part_sum = np.zeros((n_parts, dim))
    part_sq = np.zeros((n_parts, dim, dim))
    for part in prange(n_parts):
        cols = np.empty((dim, width))
        ones = np.ones(width)
        dim_ones = np.ones(dim)
        total = np.zeros(dim)
        square = np.zeros((dim, dim))
        for c in range(part * per_part, min(n_chunks, (part + 1) * per_part)):
            lo = c * width
            count = min(width, n - lo)
            for q in range(count):
                for a in range(dim):
                    cols[a, q] = rows[lo + q, a]
            accumulate_row_stats(cols, ones, count, dim_ones, square, total)
        for a in range(dim):
            part_sum[part, a] = total[a]
            for b in range(a + 1):
                part_sq[part, a, b] = square[a, b]
    square = part_sq.sum(axis=0)
    for a in range(dim):
        for b in range(a):
            square[b, a] = square[a, b]
    return part_sum.sum(axis=0), square


side_moments_par = twin(_side_moments, True, fastmath=True, nogil=True)
side_moments_ser = twin(_side_moments, False, fastmath=True, nogil=True)


def _affine_rows(rows, diag, bias_row, offset):
    """rows <- rows T^T + offset for T with a diagonal factor block: factors scaled and shifted,
    the bias (last column) replaced by bias_row . row + offset[k]. One pass for all of a sweep's moves."""
    k = rows.shape[1] - 1
    for i in prange(rows.shape[0]):
        bias = offset[k]
        for a in range(k + 1):
            bias += bias_row[a] * rows[i, a]
        for a in range(k):
            rows[i, a] = diag[a] * rows[i, a] + offset[a]
        rows[i, k] = bias


affine_rows_par = twin(_affine_rows, True, fastmath=True, nogil=True)
affine_rows_ser = twin(_affine_rows, False, fastmath=True, nogil=True)


@njit(inline="always", cache=True)
def _gig_psi(x, alpha, lam):
    return -alpha * (math.cosh(x) - 1.0) - lam * (math.exp(x) - x - 1.0)


@njit(inline="always", cache=True)
def _gig_psi_prime(x, alpha, lam):
    return -alpha * math.sinh(x) - lam * (math.exp(x) - 1.0)


@njit(cache=True)
def gig_draw(lam, omega, state):
    """One draw of GIG(lam, omega), density proportional to y^(lam-1) exp(-omega (y + 1/y) / 2),
    by Devroye's (2014) rejection from the log-concave density of log y; lam < 0 as the reciprocal
    of GIG(-lam, omega). Returns (y, the advanced SplitMix64 state).

    With X = log y - asinh(lam / omega), log f(X) = psi(X) + const, psi(0) = 0 = max psi, and
    psi(x) = -a (cosh x - 1) - lam (e^x - x - 1), a = sqrt(omega^2 + lam^2) - lam. The envelope is 1
    on [-s', t'] and the tangents of psi at t and -s outside it; it dominates exp(psi) for every
    t, s > 0 because psi is concave, so the draw is exact whatever t and s are (Devroye's choices
    below only keep the acceptance rate high, above 0.5 for all parameters)."""
    flip = lam < 0.0
    lam = abs(lam)
    alpha = math.sqrt(omega * omega + lam * lam) - lam
    x = -_gig_psi(1.0, alpha, lam)
    if x > 2.0:
        t = math.sqrt(2.0 / (alpha + lam))
    elif x < 0.5:
        t = math.log(4.0 / (alpha + 2.0 * lam))
    else:
        t = 1.0
    x = -_gig_psi(-1.0, alpha, lam)
    if x > 2.0:
        s = math.sqrt(4.0 / (alpha * math.cosh(1.0) + lam))
    elif x < 0.5:
        s = math.log(1.0 + 1.0 / alpha + math.sqrt(1.0 / (alpha * alpha) + 2.0 / alpha))
        if lam > 0.0:
            s = min(1.0 / lam, s)
    else:
        s = 1.0
    eta, zeta = -_gig_psi(t, alpha, lam), -_gig_psi_prime(t, alpha, lam)
    theta, xi = -_gig_psi(-s, alpha, lam), _gig_psi_prime(-s, alpha, lam)
    p, r = 1.0 / xi, 1.0 / zeta
    t_flat, s_flat = t - r * eta, s - p * theta
    q = t_flat + s_flat
    while True:
        state = state + _GOLDEN
        u = _unit(_mix64(state))
        state = state + _GOLDEN
        v = _unit(_mix64(state))
        state = state + _GOLDEN
        w = _unit(_mix64(state))
        if u < q / (p + q + r):
            x = -s_flat + q * v
            chi = 1.0
        elif u < (q + r) / (p + q + r):
            x = t_flat - r * math.log(v)
            chi = math.exp(-eta - zeta * (x - t))
        else:
            x = -s_flat + p * math.log(v)
            chi = math.exp(-theta + xi * (x + s))
        if w * chi <= math.exp(_gig_psi(x, alpha, lam)):
            break
    y = (lam / omega + math.sqrt(1.0 + lam * lam / (omega * omega))) * math.exp(x)
    return (1.0 / y if flip else y), state


@njit(cache=True)
def balance_scales(lam_u_diag, lam_v_diag, w0_inv_diag, power, seed):
    """The balance moves' scales s_a, one per latent dimension: s_a^2 ~ GIG(power, 2 d_V, 2 d_U) with
    d_U = (W0^-1)_aa Lambda_U,aa / 2 and d_V the same for the items (``Chain._balance``), i.e.
    s_a^2 = sqrt(d_U / d_V) GIG(power, omega = 2 sqrt(d_U d_V)). ``seed`` keys the draws' stream."""
    k = lam_u_diag.shape[0]
    out = np.empty(k)
    state = row_state(seed, 0)
    for a in range(k):
        d_u = 0.5 * w0_inv_diag[a] * lam_u_diag[a]
        d_v = 0.5 * w0_inv_diag[a] * lam_v_diag[a]
        y, state = gig_draw(power, 2.0 * math.sqrt(d_u * d_v), state)
        out[a] = math.sqrt(math.sqrt(d_u / d_v) * y)
    return out



def _affine_rows_full(rows, transform, offset):
    """rows <- rows T^T + offset for any (k + 1) x (k + 1) map T: what ``_affine_rows`` does for a
    diagonal factor block, for the maps of a sweep with shear moves (``Chain._shear``). One pass."""
    dim = rows.shape[1]
    for i in prange(rows.shape[0]):
        x = np.empty(dim)
        for a in range(dim):
            x[a] = rows[i, a]
        for a in range(dim):
            acc = offset[a]
            for c in range(dim):
                acc += transform[a, c] * x[c]
            rows[i, a] = acc


affine_rows_full_par = twin(_affine_rows_full, True, fastmath=True, nogil=True)
affine_rows_full_ser = twin(_affine_rows_full, False, fastmath=True, nogil=True)


@njit(cache=True)
def shear_moves(pairs, normals, lam_u, mu_u, lam_v, mu_v, w0_scale, var_factor, mean_sign):
    """The pairwise shear moves of one sweep (``Chain._shear``), in the order of ``pairs`` (rows (a, b),
    a != b). Move (a, b): U -> U A, V -> V A^-T with A = I + h e_b e_a^T (u_.a += h u_.b, v_.b -= h v_.a),
    the hyperparameters carried along (mu_U -> A^T mu_U, Lambda_U -> A^-1 Lambda_U A^-T, mu_V -> A^-1 mu_V,
    Lambda_V -> A^T Lambda_V A), and
        h ~ N((Lambda_U,ab - Lambda_V,ab) / (Lambda_U,aa + Lambda_V,bb), w0_scale / (Lambda_U,aa + Lambda_V,bb)),
    h = mean + sd normals[p]. ``var_factor`` and ``mean_sign`` are 1 for the derived move (tests set
    them wrong on purpose). The arguments are not modified.
    Returns (A_total with U -> U A_total, Lambda_U, mu_U, Lambda_V, mu_V after the moves)."""
    k = lam_u.shape[0]
    lu = lam_u.copy()
    lv = lam_v.copy()
    mu = mu_u.copy()
    mv = mu_v.copy()
    total = np.eye(k)
    for p in range(pairs.shape[0]):
        a = pairs[p, 0]
        b = pairs[p, 1]
        denom = lu[a, a] + lv[b, b]
        if not denom > 0.0:
            continue
        mean = (lu[a, b] - lv[a, b]) / denom
        h = mean_sign * mean + math.sqrt(var_factor * w0_scale / denom) * normals[p]
        # Lambda_U -> A^-1 Lambda_U A^-T: row b -= h row a, then column b -= h column a; mu_U,a += h mu_U,b
        for c in range(k):
            lu[b, c] -= h * lu[a, c]
        for c in range(k):
            lu[c, b] -= h * lu[c, a]
        mu[a] += h * mu[b]
        # Lambda_V -> A^T Lambda_V A: row a += h row b, then column a += h column b; mu_V,b -= h mu_V,a
        for c in range(k):
            lv[a, c] += h * lv[b, c]
        for c in range(k):
            lv[c, a] += h * lv[c, b]
        mv[b] -= h * mv[a]
        # total <- total A: column a += h column b
        for c in range(k):
            total[c, a] += h * total[c, b]
    return total, lu, mu, lv, mv
