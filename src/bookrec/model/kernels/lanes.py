"""Drawing many short rows at once, lane index innermost (conditioning and precision forms)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from bookrec.model.kernels.normals import fill_normals, row_state


# Rows with few ratings are drawn LANES at a time, lane index innermost: the small dense algebra of
# one row (11-wide loops, an m x m Cholesky) does not vectorise, the same step across 8 rows does.
# The kernels take the lane count as an argument: with the constant, LLVM fully unrolls each lane
# loop into scalar code before its loop vectoriser runs (numba leaves SLP vectorisation off).
LANES = 8


@njit(cache=True)
def few_rating_groups(indptr, few_max):
    """Rows with at most ``few_max`` ratings grouped by count: ``rows[ptr[m]:ptr[m + 1]]`` have m."""
    n_rows = indptr.shape[0] - 1
    counts = np.zeros(few_max + 2, dtype=np.int64)
    for i in range(n_rows):
        m = indptr[i + 1] - indptr[i]
        if m <= few_max:
            counts[m + 1] += 1
    ptr = np.cumsum(counts)
    rows = np.empty(ptr[-1], dtype=np.int64)
    fill = ptr[:-1].copy()
    for i in range(n_rows):
        m = indptr[i + 1] - indptr[i]
        if m <= few_max:
            rows[fill[m]] = i
            fill[m] += 1
    return rows, ptr


@njit(cache=True)
def mid_rating_rows(indptr, few_max, mid_max):
    """Rows with more than ``few_max`` and at most ``mid_max`` ratings, sorted by their count (stable),
    so that LANES consecutive rows have nearly the same count and little padding."""
    n_rows = indptr.shape[0] - 1
    span = max(mid_max - few_max, 0)
    counts = np.zeros(span + 1, dtype=np.int64)
    for i in range(n_rows):
        m = indptr[i + 1] - indptr[i]
        if few_max < m <= mid_max:
            counts[m - few_max] += 1
    fill = np.zeros(span + 1, dtype=np.int64)
    for s in range(1, span + 1):
        fill[s] = fill[s - 1] + counts[s - 1]
    rows = np.empty(fill[span] + counts[span], dtype=np.int64)
    for i in range(n_rows):
        m = indptr[i + 1] - indptr[i]
        if few_max < m <= mid_max:
            rows[fill[m - few_max]] = i
            fill[m - few_max] += 1
    return rows


@njit(inline="always", cache=True)
def lane_cholesky(mat, n):
    """Cholesky factor, in place, of the leading n x n block of every lane's matrix ``mat[:, :, l]``
    (lower triangle read and written; every step is a loop over the lanes)."""
    lanes = mat.shape[2]
    for a in range(n):
        for q in range(a):
            for l in range(lanes):
                mat[a, a, l] -= mat[a, q, l] * mat[a, q, l]
        for l in range(lanes):
            mat[a, a, l] = math.sqrt(max(mat[a, a, l], 1e-12))
        for b in range(a + 1, n):
            for q in range(a):
                for l in range(lanes):
                    mat[b, a, l] -= mat[b, q, l] * mat[a, q, l]
            for l in range(lanes):
                mat[b, a, l] /= mat[a, a, l]


@njit(inline="always", cache=True)
def lane_solve_lower(chol, n, vec):
    """vec[:, l] <- L_l^-1 vec[:, l] for every lane (forward substitution with ``lane_cholesky``'s factor)."""
    lanes = chol.shape[2]
    for a in range(n):
        for q in range(a):
            for l in range(lanes):
                vec[a, l] -= chol[a, q, l] * vec[q, l]
        for l in range(lanes):
            vec[a, l] /= chol[a, a, l]


@njit(inline="always", cache=True)
def lane_solve_upper(chol, n, vec):
    """vec[:, l] <- L_l^-T vec[:, l] for every lane (back substitution)."""
    lanes = chol.shape[2]
    for a in range(n - 1, -1, -1):
        for q in range(a + 1, n):
            for l in range(lanes):
                vec[a, l] -= chol[q, a, l] * vec[q, l]
        for l in range(lanes):
            vec[a, l] /= chol[a, a, l]


# Over 80 lines: inlined into the block once per lane block (thousands per sweep); split into
# non-inlined steps, each call would pass the lane buffers again.
@njit(inline="always", cache=True)
def draw_lanes(rows, m, rated, likelihood, prior, seed, scratch, out, columns, n_kept, with_stats):
    """Exact draws for up to LANES rows with m ratings each, by conditioning a prior draw (Matheron's rule):

        x0 ~ N(m0, S0),  e ~ N(0, I / alpha),   x = x0 + S0 F^T (F S0 F^T + I / alpha)^-1 (y - F x0 - e)

    is distributed as the conditional N(P^-1 h, P^-1). With S0 = C C^T, x0 = m0 + C z and
    H = C^T F^T this is x = m0 + C (z + H w), S w = y - F m0 - H^T z - e, S = H^T H + I / alpha:
    O(m dim^2 / 2) and an m x m Cholesky instead of building and factorising the dim x dim precision.
    Dead lanes (n_live <= l < LANES) compute on zeros and are not written back. With
    ``with_stats`` each live rating's z and e (see ``_sample_block``) are appended to ``columns``
    after the ``n_kept`` already there; returns the new count. ``rows`` are the live lanes' rows.
    """
    n_live = rows.shape[0]
    indptr = rated.indptr
    indices = rated.indices
    ratings = rated.values
    other = likelihood.other
    mu = likelihood.mu
    noise_sd = likelihood.noise_sd
    noise_var = likelihood.noise_var
    prior_mean = prior.mean
    prior_chol = prior.chol
    prior_chol_t = prior.chol_t
    z = scratch.z
    zs = scratch.zs
    feats = scratch.feats
    resid = scratch.resid
    hmat = scratch.hmat
    small = scratch.small
    g = scratch.g
    target = scratch.target
    other_bias = scratch.other_bias
    z_rows = columns.z_rows
    e_rows = columns.e_rows
    dim = out.shape[1]
    k = dim - 1
    lanes = zs.shape[1]
    # All lanes' ratings are gathered before any normal is drawn: the rows of ``other`` are scattered
    # through memory, and a gather loop with nothing else in it keeps many of those loads in flight.
    for l in range(n_live):
        lo = indptr[rows[l]]
        for q in range(m):
            j = indices[lo + q]
            for a in range(k):
                feats[q, a, l] = other[j, a]
            other_bias[q, l] = other[j, k]
            target[q, l] = ratings[lo + q] - mu - other[j, k]
    for l in range(lanes):
        if l < n_live:
            fill_normals(row_state(seed, rows[l]), z, dim + m)
            for a in range(dim):
                zs[a, l] = z[a]
            for q in range(m):
                resid[q, l] = target[q, l] - noise_sd * z[dim + q]
        else:
            for a in range(dim):
                zs[a, l] = 0.0
            for q in range(m):
                for a in range(k):
                    feats[q, a, l] = 0.0
                other_bias[q, l] = 0.0
                target[q, l] = 0.0
                resid[q, l] = 0.0
    for q in range(m):
        # h = C^T f with f = [features, 1]; resid -= f . m0 + h . z
        for a in range(dim):
            c_bias = prior_chol_t[a, k]
            for l in range(lanes):
                hmat[q, a, l] = c_bias
            for b in range(a, k):
                c = prior_chol_t[a, b]
                for l in range(lanes):
                    hmat[q, a, l] += c * feats[q, b, l]
        for l in range(lanes):
            resid[q, l] -= prior_mean[k]
        for a in range(k):
            c = prior_mean[a]
            for l in range(lanes):
                resid[q, l] -= c * feats[q, a, l]
        for a in range(dim):
            for l in range(lanes):
                resid[q, l] -= hmat[q, a, l] * zs[a, l]
    # S = H^T H + I / alpha, Cholesky in place, then S w = resid (w stored in resid).
    for p in range(m):
        for q in range(p + 1):
            for l in range(lanes):
                small[p, q, l] = noise_var if p == q else 0.0
            for a in range(dim):
                for l in range(lanes):
                    small[p, q, l] += hmat[p, a, l] * hmat[q, a, l]
    lane_cholesky(small, m)
    lane_solve_lower(small, m, resid)
    lane_solve_upper(small, m, resid)
    # x = m0 + C (z + H w)
    for a in range(dim):
        for l in range(lanes):
            g[a, l] = zs[a, l]
        for q in range(m):
            for l in range(lanes):
                g[a, l] += hmat[q, a, l] * resid[q, l]
    for a in range(dim):
        for l in range(lanes):
            zs[a, l] = prior_mean[a]  # zs reused for x
        for b in range(a + 1):
            c = prior_chol[a, b]
            for l in range(lanes):
                zs[a, l] += c * g[b, l]
    for l in range(n_live):
        for a in range(dim):
            out[rows[l], a] = zs[a, l]
    if with_stats:
        for l in range(n_live):
            for q in range(m):
                t = target[q, l] - zs[k, l]
                for a in range(k):
                    z_rows[a, n_kept] = zs[a, l] * feats[q, a, l]
                    t -= zs[a, l] * feats[q, a, l]
                z_rows[k, n_kept] = other_bias[q, l]
                z_rows[k + 1, n_kept] = zs[k, l]
                z_rows[k + 2, n_kept] = 1.0
                e_rows[n_kept] = t
                n_kept += 1
    return n_kept


# Over 80 lines: inlined into the block once per lane block (thousands per sweep); split into
# non-inlined steps, each call would pass the lane buffers again.
@njit(inline="always", cache=True)
def draw_lanes_precision(rows, width, rated, likelihood, prior, seed, z, zs, scratch, out):
    """``draw_row_many`` for up to ``lanes`` rows with at most ``width`` ratings each, lane index
    innermost: the F^T F sums, the (k+1) x (k+1) Cholesky and both solves of many rows as vector steps,
    where one row at a time they are short loops and a chain of dependent divisions and square roots.
    A lane's ratings beyond its own count are zero features and targets, which add nothing to F^T F or F^T y.
    Leaves each lane's F^T F (lower triangle) in ``ftf``, F^T y in ``fty``, the draw in ``lin`` and the
    other side's biases c_j in ``other_bias``, for the move statistics (``lane_stats``). ``scratch``
    is a RowScratch of lane-major buffers; ``z`` a row's normals.
    """
    n_live = rows.shape[0]
    indptr = rated.indptr
    indices = rated.indices
    ratings = rated.values
    other = likelihood.other
    mu = likelihood.mu
    alpha = likelihood.alpha
    prior_prec = prior.precision
    prior_h = prior.h
    feats = scratch.feats
    target = scratch.target
    other_bias = scratch.other_bias
    prec = scratch.prec
    lin = scratch.lin
    ftf = scratch.ftf
    fty = scratch.fty
    dim = out.shape[1]
    k = dim - 1
    lanes = zs.shape[1]
    for l in range(lanes):
        m = 0
        if l < n_live:
            i = rows[l]
            lo = indptr[i]
            m = indptr[i + 1] - lo
            fill_normals(row_state(seed, i), z, dim)
            for a in range(dim):
                zs[a, l] = z[a]
            for q in range(m):
                j = indices[lo + q]
                for a in range(k):
                    feats[q, a, l] = other[j, a]
                feats[q, k, l] = 1.0
                other_bias[q, l] = other[j, k]
                target[q, l] = ratings[lo + q] - mu - other[j, k]
        else:
            for a in range(dim):
                zs[a, l] = 0.0
        for q in range(m, width):
            for a in range(dim):
                feats[q, a, l] = 0.0
            other_bias[q, l] = 0.0
            target[q, l] = 0.0
    for a in range(dim):
        for l in range(lanes):
            fty[a, l] = 0.0
        for b in range(a + 1):
            for l in range(lanes):
                ftf[a, b, l] = 0.0
    for q in range(width):
        for a in range(dim):
            for l in range(lanes):
                fty[a, l] += feats[q, a, l] * target[q, l]
            for b in range(a + 1):
                for l in range(lanes):
                    ftf[a, b, l] += feats[q, a, l] * feats[q, b, l]
    for a in range(dim):
        h = prior_h[a]
        for l in range(lanes):
            lin[a, l] = h + alpha * fty[a, l]
        for b in range(a + 1):
            p = prior_prec[a, b]
            for l in range(lanes):
                prec[a, b, l] = p + alpha * ftf[a, b, l]
    lane_cholesky(prec, dim)  # P = L L^T
    lane_solve_lower(prec, dim, lin)  # L y = h
    for a in range(dim):
        for l in range(lanes):
            lin[a, l] += zs[a, l]
    lane_solve_upper(prec, dim, lin)  # L^T x = y + z: the mean plus a N(0, P^-1) draw
    for l in range(n_live):
        for a in range(dim):
            out[rows[l], a] = lin[a, l]


# Over 80 lines: inlined into the block once per lane block (thousands per sweep); split into
# non-inlined steps, each call would pass the lane buffers again.
@njit(inline="always", cache=True)
def lane_stats(width, scratch, stat_scratch, gg, rr):
    """``stats_from_sums`` for every lane of ``draw_lanes_precision`` at once, lane index innermost;
    returns the lanes' sum e^2. Dead lanes and padded ratings have zero features, targets and c_j,
    so they add exactly nothing. ``scratch`` is what ``draw_lanes_precision`` left; ``stat_scratch``'s
    cf, fx (dim x lanes), sums (5 x lanes), syw, scale (n_stats x lanes) are scratch.
    """
    feats = scratch.feats
    target = scratch.target
    other_bias = scratch.other_bias
    lin = scratch.lin
    ftf = scratch.ftf
    fty = scratch.fty
    cf = stat_scratch.cf
    fx = stat_scratch.fx
    sums = stat_scratch.sums
    syw = stat_scratch.syw
    scale = stat_scratch.scale
    dim, lanes = lin.shape
    k = dim - 1
    n_stats = k + 3
    for a in range(dim):
        for l in range(lanes):
            cf[a, l] = 0.0
            fx[a, l] = 0.0
    for t in range(5):  # sum c^2, sum c y, sum y^2, cf . x, x . (fx - 2 fty)
        for l in range(lanes):
            sums[t, l] = 0.0
    for q in range(width):
        for l in range(lanes):
            sums[0, l] += other_bias[q, l] * other_bias[q, l]
            sums[1, l] += other_bias[q, l] * target[q, l]
            sums[2, l] += target[q, l] * target[q, l]
        for a in range(dim):
            for l in range(lanes):
                cf[a, l] += other_bias[q, l] * feats[q, a, l]
    for a in range(dim):  # fx = F^T F x from the lower triangle
        for b in range(a):
            for l in range(lanes):
                fx[a, l] += ftf[a, b, l] * lin[b, l]
                fx[b, l] += ftf[a, b, l] * lin[a, l]
        for l in range(lanes):
            fx[a, l] += ftf[a, a, l] * lin[a, l]
    for a in range(dim):
        for l in range(lanes):
            sums[3, l] += cf[a, l] * lin[a, l]
            sums[4, l] += lin[a, l] * (fx[a, l] - 2.0 * fty[a, l])
    e2 = 0.0
    for l in range(lanes):
        e2 += sums[2, l] + sums[4, l]
    # Per w = [v_j, c_j, 1, 1]: the scale D and sum e w (see stats_from_sums).
    for a in range(k):
        for l in range(lanes):
            scale[a, l] = lin[a, l]
            syw[a, l] = fty[a, l] - fx[a, l]
    for l in range(lanes):
        scale[k, l] = 1.0
        syw[k, l] = sums[1, l] - sums[3, l]
        scale[k + 1, l] = lin[k, l]
        syw[k + 1, l] = fty[k, l] - fx[k, l]
        scale[k + 2, l] = 1.0
        syw[k + 2, l] = syw[k + 1, l]
    for a in range(n_stats):
        acc = 0.0
        for l in range(lanes):
            acc += scale[a, l] * syw[a, l]
        rr[a] += acc
        # Entry a of w is f's entry fa (a factor, or the constant 1), or c_j (a == k).
        fa = a
        if a > k:
            fa = k
        for b in range(a + 1):
            fb = b
            if b > k:
                fb = k
            acc = 0.0
            if a == k and b == k:
                for l in range(lanes):
                    acc += sums[0, l]
            elif a == k:
                for l in range(lanes):
                    acc += scale[b, l] * cf[fb, l]
            elif b == k:
                for l in range(lanes):
                    acc += scale[a, l] * cf[fa, l]
            else:
                for l in range(lanes):
                    acc += scale[a, l] * scale[b, l] * ftf[fa, fb, l]
            gg[a, b] += acc
    return e2
