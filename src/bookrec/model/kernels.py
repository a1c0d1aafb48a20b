"""Compiled (numba) kernels of the Gibbs sampler and of prediction.

Layout used everywhere: one side of the rating matrix (users or items) is an ``(n, k + 1)``
float64 array whose first ``k`` columns are the latent factors and whose last column is the bias.
With that layout one kernel samples both sides: for a user, the "features" of a rating are
``[v_j, 1]`` and its target is ``r_ij - mu - c_j``, so the factors and the bias are drawn
*jointly* from their Gaussian conditional (better mixing than two separate blocks, same cost).

Randomness inside the kernels comes from a counter-based generator (SplitMix64 keyed by a
per-block seed and the row number) turned into normals by a ziggurat: every row gets its own
stream, so results are identical whatever the number of threads and however ``prange``
distributes rows, and a normal costs a few nanoseconds (NumPy's generator: 11-14 ns here).
Each kernel exists twice: ``*_par`` (prange over rows, both cores) and ``*_ser`` (one thread,
releases the GIL) for running chains in parallel threads.
"""

from __future__ import annotations

import math
import types

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 1.0 / 9007199254740992.0
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _twin(func, parallel: bool, **options):
    """A compiled twin (parallel or serial) of one kernel, compiled from its own copy of ``func``.

    numba's on-disk cache names entries by the function's qualified name and line, not by the
    ``parallel`` flag: two twins of one function would load each other's machine code (the
    ``*_par`` kernels silently ran on one thread, and a ``*_ser`` one could come back parallel).
    """
    name = f"{func.__name__}_{'par' if parallel else 'ser'}"
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = func.__doc__
    return njit(parallel=parallel, cache=True, **options)(copy)


# ----------------------------------------------------------------------------- random numbers
# Ziggurat for N(0, 1) (Marsaglia & Tsang 2000) with 256 layers of equal area ZIG_AREA under
# f(x) = exp(-x^2 / 2). Edge e[0] = ZIG_AREA / f(R) is the base strip's width (rectangle plus tail),
# e[1] = R, e[i + 1] = f^-1(f(e[i]) + ZIG_AREA / e[i]), e[256] = 0. Layer i is the box of width e[i]
# between heights f(e[i]) and f(e[i + 1]); a uniform x in it with |x| < e[i + 1] is under the curve
# (99.3% of draws), the rest go through the exact wedge test or, from the base, the tail method.
ZIG_R = 3.6541528853610088
ZIG_AREA = 0.00492867323399


def _ziggurat_tables():
    def f(x):
        return math.exp(-0.5 * x * x)

    edges = np.zeros(257)
    edges[0] = ZIG_AREA / f(ZIG_R)
    edges[1] = ZIG_R
    for i in range(1, 255):
        edges[i + 1] = math.sqrt(-2.0 * math.log(ZIG_AREA / edges[i] + f(edges[i])))
    scale = 2.0**52  # the magnitude is a 52-bit integer
    widths = edges[:256] / scale
    accept = np.floor(edges[1:] / edges[:256] * scale).astype(np.uint64)
    heights = np.array([0.0] + [f(e) for e in edges[1:]])  # heights[i] = f(e[i]); heights[256] = 1
    return widths, accept, heights


ZIG_WIDTH, ZIG_ACCEPT, ZIG_HEIGHT = _ziggurat_tables()


@njit(inline="always", cache=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def row_state(seed, row):
    """Initial SplitMix64 state of one row's private stream."""
    return _mix64(np.uint64(seed) ^ (np.uint64(row + 1) * _GOLDEN))


@njit(inline="always", cache=True)
def _unit(bits):
    """A uniform double in (0, 1) from 53 random bits."""
    return (np.float64(bits >> np.uint64(11)) + 0.5) * _TWO_POW_M53


@njit(cache=True)
def fill_normals(state, out, n):
    """Fill ``out[:n]`` with independent N(0, 1) draws; returns the advanced state."""
    i = 0
    while i < n:
        state = state + _GOLDEN
        bits = _mix64(state)
        layer = np.int64(bits & np.uint64(0xFF))
        negative = (bits >> np.uint64(8)) & np.uint64(1)
        magnitude = bits >> np.uint64(12)
        x = np.float64(magnitude) * ZIG_WIDTH[layer]
        if magnitude >= ZIG_ACCEPT[layer]:
            if layer == 0:  # the tail beyond R (Marsaglia 1964)
                while True:
                    state = state + _GOLDEN
                    tx = -math.log(_unit(_mix64(state))) / ZIG_R
                    state = state + _GOLDEN
                    ty = -math.log(_unit(_mix64(state)))
                    if ty + ty > tx * tx:
                        break
                x = ZIG_R + tx
            else:  # the wedge: uniform height within the layer against the density
                state = state + _GOLDEN
                lo_f = ZIG_HEIGHT[layer]
                height = lo_f + _unit(_mix64(state)) * (ZIG_HEIGHT[layer + 1] - lo_f)
                if height >= math.exp(-0.5 * x * x):
                    continue
        out[i] = -x if negative else x
        i += 1
    return state


# ----------------------------------------------------------------------------- memory prefetch
@intrinsic
def _prefetch(typingctx, array, row, col):
    """Ask the CPU to start loading ``array[row, col]`` into cache (LLVM's prefetch hint; no effect on results)."""
    if not (isinstance(array, nbtypes.Array) and array.ndim == 2
            and isinstance(row, nbtypes.Integer) and isinstance(col, nbtypes.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, value, kind, nbtypes.intp) for value, kind in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, index)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return nbtypes.void(array, row, col), codegen


@njit(inline="always", cache=True)
def _prefetch_ratings(other, indices, lo, hi):
    """Prefetch the rows of ``other`` that ratings lo..hi-1 point to (both ends of each row: a row of
    k + 1 doubles can straddle two cache lines). The rows are scattered through memory; on the full
    data a block spends most of its time waiting for them without this."""
    last = other.shape[1] - 1
    for q in range(lo, hi):
        j = indices[q]
        _prefetch(other, j, 0)
        _prefetch(other, j, last)


@njit(inline="always", cache=True)
def _prefetch_rows(other, indices, indptr, rows):
    """``_prefetch_ratings`` for every rating of the given rows (a block about to be drawn)."""
    for row in rows:
        _prefetch_ratings(other, indices, indptr[row], indptr[row + 1])


# ----------------------------------------------------------------------------- the Gibbs block
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
def _lane_cholesky(mat, n):
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
def _lane_solve_lower(chol, n, vec):
    """vec[:, l] <- L_l^-1 vec[:, l] for every lane (forward substitution with ``_lane_cholesky``'s factor)."""
    lanes = chol.shape[2]
    for a in range(n):
        for q in range(a):
            for l in range(lanes):
                vec[a, l] -= chol[a, q, l] * vec[q, l]
        for l in range(lanes):
            vec[a, l] /= chol[a, a, l]


@njit(inline="always", cache=True)
def _lane_solve_upper(chol, n, vec):
    """vec[:, l] <- L_l^-T vec[:, l] for every lane (back substitution)."""
    lanes = chol.shape[2]
    for a in range(n - 1, -1, -1):
        for q in range(a + 1, n):
            for l in range(lanes):
                vec[a, l] -= chol[q, a, l] * vec[q, l]
        for l in range(lanes):
            vec[a, l] /= chol[a, a, l]


@njit(inline="always", cache=True)
def _draw_lanes(rows, n_live, m, indptr, indices, ratings, other, mu, noise_sd, noise_var, prior_mean, prior_chol,
                prior_chol_t, seed, z, zs, feats, resid, hmat, small, g, out, with_stats, target, other_bias,
                z_rows, e_rows, n_kept):
    """Exact draws for up to LANES rows with m ratings each, by conditioning a prior draw (Matheron's rule):

        x0 ~ N(m0, S0),  e ~ N(0, I / alpha),   x = x0 + S0 F^T (F S0 F^T + I / alpha)^-1 (y - F x0 - e)

    is distributed as the conditional N(P^-1 h, P^-1). With S0 = C C^T, x0 = m0 + C z and
    H = C^T F^T this is x = m0 + C (z + H w), S w = y - F m0 - H^T z - e, S = H^T H + I / alpha:
    O(m dim^2 / 2) and an m x m Cholesky instead of building and factorising the dim x dim precision.
    Dead lanes (n_live <= l < LANES) compute on zeros and are not written back. With
    ``with_stats`` each live rating's z and e (see ``_sample_block``) are appended to z_rows
    (column-wise) and e_rows after the ``n_kept`` already there; returns the new count.
    """
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
    _lane_cholesky(small, m)
    _lane_solve_lower(small, m, resid)
    _lane_solve_upper(small, m, resid)
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


@njit(inline="always", cache=True)
def _draw_lanes_precision(rows, n_live, width, indptr, indices, ratings, other, mu, alpha, prior_prec, prior_h, seed,
                          z, zs, feats, target, other_bias, ftf, fty, prec, lin, out):
    """``_draw_row_many`` for up to ``lanes`` rows with at most ``width`` ratings each, lane index
    innermost: the F^T F sums, the (k+1) x (k+1) Cholesky and both solves of many rows as vector steps,
    where one row at a time they are short loops and a chain of dependent divisions and square roots
    (28% less time for the readers' block of the k-core, on one core). A lane's
    ratings beyond its own count are zero features and targets, which add nothing to F^T F or F^T y.
    Leaves each lane's F^T F (lower triangle) in ``ftf``, F^T y in ``fty``, the draw in ``lin`` and the
    other side's biases c_j in ``other_bias``, for the move statistics (``_lane_stats``).
    """
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
    _lane_cholesky(prec, dim)  # P = L L^T
    _lane_solve_lower(prec, dim, lin)  # L y = h
    for a in range(dim):
        for l in range(lanes):
            lin[a, l] += zs[a, l]
    _lane_solve_upper(prec, dim, lin)  # L^T x = y + z: the mean plus a N(0, P^-1) draw
    for l in range(n_live):
        for a in range(dim):
            out[rows[l], a] = lin[a, l]


@njit(inline="always", cache=True)
def _draw_row_many(i, lo, m, indices, ratings, other, mu, alpha, prior_prec, prior_h, z, draw,
                   feats, target, other_bias, prec, lin, ftf, fty, out):
    """Draw (or, with ``draw=False``, set to the mode) row i from its conditional in precision form:

        P = prior_prec + alpha * sum_j f_j f_j^T,   h = prior_h + alpha * sum_j f_j (r_ij - mu - other_j[k]),
        x_i ~ N(P^-1 h, P^-1) drawn as  m + L^-T z  with  P = L L^T.

    Leaves sum_j f_j f_j^T in ``ftf`` and sum_j f_j y_j in ``fty``, the gathered
    features in ``feats``, the targets y_j in ``target`` and the other side's biases c_j in
    ``other_bias``, for the row's move statistics.
    """
    dim = out.shape[1]
    k = dim - 1
    # The row's features gathered feature-major, so that every entry of F^T F is a contiguous
    # dot product the compiler vectorises (3-5x faster than rank-1 updates).
    for q in range(m):
        j = indices[lo + q]
        for a in range(k):
            feats[a, q] = other[j, a]
        feats[k, q] = 1.0
        other_bias[q] = other[j, k]
        target[q] = ratings[lo + q] - mu - other[j, k]
    for a in range(dim):
        acc = 0.0
        for q in range(m):
            acc += feats[a, q] * target[q]
        fty[a] = acc
        lin[a] = prior_h[a] + alpha * acc
        for b in range(a + 1):
            acc = 0.0
            for q in range(m):
                acc += feats[a, q] * feats[b, q]
            ftf[a, b] = acc
            ftf[b, a] = acc
            prec[a, b] = prior_prec[a, b] + alpha * acc
    for a in range(dim):  # Cholesky P = L L^T in place (lower triangle)
        s = prec[a, a]
        for q in range(a):
            s -= prec[a, q] * prec[a, q]
        if s <= 0.0:
            s = 1e-12
        d = math.sqrt(s)
        prec[a, a] = d
        inv = 1.0 / d
        for b in range(a + 1, dim):
            t = prec[b, a]
            for q in range(a):
                t -= prec[b, q] * prec[a, q]
            prec[b, a] = t * inv
    for a in range(dim):  # forward solve L y = h
        t = lin[a]
        for q in range(a):
            t -= prec[a, q] * lin[q]
        lin[a] = t / prec[a, a]
    if draw:
        for a in range(dim):
            lin[a] += z[a]
    for a in range(dim - 1, -1, -1):  # back solve L^T x = y (+ z): mean plus a N(0, P^-1) draw
        t = lin[a]
        for q in range(a + 1, dim):
            t -= prec[q, a] * lin[q]
        lin[a] = t / prec[a, a]
    for a in range(dim):
        out[i, a] = lin[a]


@njit(inline="always", cache=True)
def _fill_w_row(row, source, ftf, cf, fty, fx, sww, syw):
    """Row ``row`` of sum w w^T (but the c_j column) and of sum e w, where w's entry ``row`` is f's entry
    ``source``."""
    k = ftf.shape[0] - 1
    for b in range(k):
        sww[row, b] = ftf[source, b]
    sww[row, k] = cf[source]
    sww[row, k + 1] = ftf[source, k]
    sww[row, k + 2] = ftf[source, k]
    syw[row] = fty[source] - fx[source]


@njit(inline="always", cache=True)
def _row_stats_from_sums(i, m, feats, target, other_bias, ftf, fty, out, cf, fx, sww, syw, scale, gg, rr):
    """Add one precision-form row's move statistics to gg, rr; returns its sum e^2 (see ``_stats_from_sums``).
    ``feats`` is the row's features feature-major, ``ftf`` its full (symmetric) F^T F; every sum over
    the ratings is a contiguous dot product."""
    dim = out.shape[1]
    for a in range(dim):
        acc = 0.0
        for q in range(m):
            acc += other_bias[q] * feats[a, q]
        cf[a] = acc
    cc = 0.0
    cy = 0.0
    yy = 0.0
    for q in range(m):
        c = other_bias[q]
        cc += c * c
        cy += c * target[q]
        yy += target[q] * target[q]
    return _stats_from_sums(out[i], ftf, fty, cf, cc, cy, yy, fx, sww, syw, scale, gg, rr)


@njit(inline="always", cache=True)
def _lane_stats(width, feats, target, other_bias, ftf, fty, lin, cf, fx, sums, syw, scale, gg, rr):
    """``_stats_from_sums`` for every lane of ``_draw_lanes_precision`` at once, lane index innermost;
    returns the lanes' sum e^2. Dead lanes and padded ratings have zero features, targets and c_j,
    so they add exactly nothing. cf, fx (dim x lanes), sums (5 x lanes), syw, scale (n_stats x
    lanes) are scratch.
    """
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
    # Per w = [v_j, c_j, 1, 1]: the scale D and sum e w (see _stats_from_sums).
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


@njit(inline="always", cache=True)
def _stats_from_sums(x, ftf, fty, cf, cc, cy, yy, fx, sww, syw, scale, gg, rr):
    """Add the move statistics of one drawn row x to gg, rr; returns its sum e^2.

    Per rating z = D w with w = [v_j, c_j, 1, 1] and D = diag(x_f, 1, x_bias, 1), e = y_j - f_j . x,
    f_j = [v_j, 1]. So sum z z^T = D (sum w w^T) D and sum e z = D (sum y w - sum w f^T x), all
    from the row's F^T F (full, symmetric) and F^T y, already built for the draw, plus the sums
    with c_j (cf = sum c f, cc = sum c^2, cy = sum c y; yy = sum y^2): per rating ~k + 3
    multiply-adds instead of (k + 3)(k + 4) / 2. fx, sww, syw, scale are scratch.
    """
    dim = x.shape[0]
    k = dim - 1
    n_stats = k + 3
    e2 = yy
    cx = 0.0
    for a in range(dim):
        acc = 0.0
        for b in range(dim):
            acc += ftf[a, b] * x[b]
        fx[a] = acc
        e2 += x[a] * (acc - 2.0 * fty[a])
        cx += cf[a] * x[a]
    # sum w w^T, sum y w and sum w f^T x in the order of w
    for a in range(k):
        _fill_w_row(a, a, ftf, cf, fty, fx, sww, syw)
        scale[a] = x[a]
    _fill_w_row(k + 1, k, ftf, cf, fty, fx, sww, syw)  # both trailing entries of w are the constant 1
    _fill_w_row(k + 2, k, ftf, cf, fty, fx, sww, syw)
    for b in range(k):
        sww[k, b] = cf[b]
    sww[k, k] = cc
    sww[k, k + 1] = cf[k]
    sww[k, k + 2] = cf[k]
    syw[k] = cy - cx
    scale[k] = 1.0
    scale[k + 1] = x[k]
    scale[k + 2] = 1.0
    for a in range(n_stats):
        rr[a] += scale[a] * syw[a]
        for b in range(a + 1):
            gg[a, b] += scale[a] * scale[b] * sww[a, b]
    return e2


@njit(inline="always", cache=True)
def _store_partial(part_g, part_r, part_e2, slot, gg, rr, e2):
    """One parallel task's move statistics (gg: lower triangle) into its slot of the partial sums."""
    for a in range(rr.shape[0]):
        part_r[slot, a] = rr[a]
        for b in range(a + 1):
            part_g[slot, a, b] = gg[a, b]
    part_e2[slot] = e2


def _sample_block(indptr, indices, ratings, other, mu, alpha, prior, out, seed, draw, few_rows, few_ptr, mid_rows,
                  lanes, with_stats):
    """Draw (``draw=False``: set to the conditional mode) every row of ``out`` from its Gaussian conditional.

    ``prior`` is (precision P0, P0 m0, mean m0, C, C^T) with C C^T = P0^-1. Row i draws its
    normals from its own stream (``seed``, i). When drawing, the rows listed in
    ``few_rows``/``few_ptr`` (see ``few_rating_groups``: most rows in BookCrossing) are drawn lanes
    at a time in the conditioning form, those in ``mid_rows`` (``mid_rating_rows``) lanes at a time in
    precision form, every other row (the longest) one at a time in precision form.

    Returns the move statistics of ``_move_stats`` for the new state, computed while each row's
    ratings are at hand (with ``with_stats``; zeros otherwise), with z = [x_f * other_f,
    other_bias, x_bias, 1]: called for the books (``other`` = readers) that is exactly
    ``_move_stats`` over the readers' rows, without a second pass over the ratings.
    """
    prior_prec, prior_h, prior_mean, prior_chol, prior_chol_t = prior
    n_rows = indptr.shape[0] - 1
    dim = out.shape[1]
    k = dim - 1
    n_stats = k + 3
    noise_var = 1.0 / alpha
    noise_sd = math.sqrt(noise_var)
    few_max = few_ptr.shape[0] - 2 if draw else -1
    n_mid = mid_rows.shape[0] if draw else 0
    mid_max = few_max  # rows with up to mid_max ratings are drawn in lanes
    if n_mid > 0:
        mid_max = indptr[mid_rows[n_mid - 1] + 1] - indptr[mid_rows[n_mid - 1]]
    max_len = 1
    for i in range(n_rows):
        max_len = max(max_len, indptr[i + 1] - indptr[i])
    n_chunks = min(n_rows, 64)
    chunk = (n_rows + n_chunks - 1) // max(n_chunks, 1)
    max_tasks = 32
    max_mid_tasks = 16
    mid_lanes = 4 * lanes  # longer lane loops: the F^T F step is one short loop per (rating, entry)
    n_mid_blocks = (n_mid + mid_lanes - 1) // mid_lanes
    # One slot of partial statistics per task: the row chunks, each count's lane tasks, the mid lane tasks.
    few_slot = np.empty(few_max + 2, dtype=np.int64)
    few_slot[0] = n_chunks
    for m in range(few_max + 1):
        few_slot[m + 1] = few_slot[m] + min((few_ptr[m + 1] - few_ptr[m] + lanes - 1) // lanes, max_tasks)
    mid_slot = few_slot[few_max + 1]
    n_slots = (mid_slot + min(n_mid_blocks, max_mid_tasks)) if with_stats else 0
    part_g = np.zeros((n_slots, n_stats, n_stats))
    part_r = np.zeros((n_slots, n_stats))
    part_e2 = np.zeros(n_slots)
    for c in prange(n_chunks):
        prec = np.empty((dim, dim))
        lin = np.empty(dim)
        ftf = np.empty((dim, dim))
        fty = np.empty(dim)
        feats = np.empty((dim, max_len))
        target = np.empty(max_len)
        row_bias = np.empty(max_len)
        z = np.empty(dim)
        cf = np.empty(dim)
        fx = np.empty(dim)
        sww = np.empty((n_stats, n_stats))
        syw = np.empty(n_stats)
        scale = np.empty(n_stats)
        gg = np.zeros((n_stats, n_stats))
        rr = np.zeros(n_stats)
        e2 = 0.0
        end = min(n_rows, (c + 1) * chunk)
        for i in range(c * chunk, end):
            lo = indptr[i]
            m = indptr[i + 1] - lo
            if m <= mid_max:
                continue
            nxt = i + 1  # the next row drawn here
            while nxt < end and indptr[nxt + 1] - indptr[nxt] <= mid_max:
                nxt += 1
            if nxt < end:
                _prefetch_ratings(other, indices, indptr[nxt], indptr[nxt + 1])
            if draw:
                fill_normals(row_state(seed, i), z, dim)
            _draw_row_many(i, lo, m, indices, ratings, other, mu, alpha, prior_prec, prior_h, z, draw,
                           feats, target, row_bias, prec, lin, ftf, fty, out)
            if with_stats:
                e2 += _row_stats_from_sums(i, m, feats, target, row_bias, ftf, fty, out, cf, fx, sww, syw, scale,
                                           gg, rr)
        if with_stats:
            _store_partial(part_g, part_r, part_e2, c, gg, rr, e2)
    width = max(few_max, 1)
    for m in range(few_max + 1):
        start = few_ptr[m]
        n_blocks = (few_ptr[m + 1] - start + lanes - 1) // lanes
        n_tasks = min(n_blocks, max_tasks)
        per_task = (n_blocks + n_tasks - 1) // max(n_tasks, 1)
        for task in prange(n_tasks):
            z = np.empty(dim + width)
            zs = np.empty((dim, lanes))
            feats = np.empty((width, k, lanes))
            resid = np.empty((width, lanes))
            hmat = np.empty((width, dim, lanes))
            small = np.empty((width, width, lanes))
            g = np.empty((dim, lanes))
            target = np.empty((width, lanes))
            other_bias = np.empty((width, lanes))
            # The lanes' move statistics are gathered as columns and reduced a batch at a time: long
            # contiguous dot products instead of a short lane loop per pair of statistics.
            batch = max(256, lanes * width)
            z_rows = np.empty((n_stats, batch))
            e_rows = np.empty(batch)
            ones = np.ones(n_stats)
            gg = np.zeros((n_stats, n_stats))
            rr = np.zeros(n_stats)
            e2 = 0.0
            n_kept = 0
            for blk in range(task * per_task, min(n_blocks, (task + 1) * per_task)):
                b0 = start + blk * lanes
                n_live = min(lanes, few_ptr[m + 1] - b0)
                if blk + 1 < min(n_blocks, (task + 1) * per_task):  # the next block's rows, while this one computes
                    _prefetch_rows(other, indices, indptr, few_rows[b0 + lanes:min(b0 + 2 * lanes, few_ptr[m + 1])])
                if with_stats and n_kept + n_live * m > batch:
                    e2 += _accumulate_columns(z_rows, e_rows, n_kept, ones, gg, rr)
                    n_kept = 0
                n_kept = _draw_lanes(few_rows[b0:b0 + n_live], n_live, m, indptr, indices, ratings, other, mu,
                                     noise_sd, noise_var, prior_mean, prior_chol, prior_chol_t, seed, z, zs, feats,
                                     resid, hmat, small, g, out, with_stats, target, other_bias, z_rows, e_rows,
                                     n_kept)
            if with_stats:
                e2 += _accumulate_columns(z_rows, e_rows, n_kept, ones, gg, rr)
                _store_partial(part_g, part_r, part_e2, few_slot[m] + task, gg, rr, e2)
    n_tasks = min(n_mid_blocks, max_mid_tasks)
    mid_width = max(mid_max, 1)
    for task in prange(n_tasks):
        z = np.empty(dim)
        zs = np.empty((dim, mid_lanes))
        mid_feats = np.empty((mid_width, dim, mid_lanes))
        mid_target = np.empty((mid_width, mid_lanes))
        mid_ftf = np.empty((dim, dim, mid_lanes))
        mid_fty = np.empty((dim, mid_lanes))
        mid_prec = np.empty((dim, dim, mid_lanes))
        mid_lin = np.empty((dim, mid_lanes))
        mid_bias = np.empty((mid_width, mid_lanes))
        mid_cf = np.empty((dim, mid_lanes))
        mid_fx = np.empty((dim, mid_lanes))
        mid_sums = np.empty((5, mid_lanes))
        mid_syw = np.empty((n_stats, mid_lanes))
        mid_scale = np.empty((n_stats, mid_lanes))
        gg = np.zeros((n_stats, n_stats))
        rr = np.zeros(n_stats)
        e2 = 0.0
        # Blocks dealt round-robin to a few tasks: the rows are sorted by count, so contiguous runs
        # of blocks would hand the longest rows all to the last thread.
        for blk in range(task, n_mid_blocks, n_tasks):
            b0 = blk * mid_lanes
            n_live = min(mid_lanes, n_mid - b0)
            if blk + n_tasks < n_mid_blocks:  # this task's next block
                nb0 = (blk + n_tasks) * mid_lanes
                _prefetch_rows(other, indices, indptr, mid_rows[nb0:min(nb0 + mid_lanes, n_mid)])
            last = mid_rows[b0 + n_live - 1]
            _draw_lanes_precision(mid_rows[b0:b0 + n_live], n_live, indptr[last + 1] - indptr[last], indptr, indices,
                                  ratings, other, mu, alpha, prior_prec, prior_h, seed, z, zs, mid_feats, mid_target,
                                  mid_bias, mid_ftf, mid_fty, mid_prec, mid_lin, out)
            if with_stats:
                e2 += _lane_stats(indptr[last + 1] - indptr[last], mid_feats, mid_target, mid_bias, mid_ftf, mid_fty,
                                  mid_lin, mid_cf, mid_fx, mid_sums, mid_syw, mid_scale, gg, rr)
        if with_stats:
            _store_partial(part_g, part_r, part_e2, mid_slot + task, gg, rr, e2)
    # Explicit loops: numba's sum(axis=0) over the slots cost ~1 ms per call, more than the
    # statistics themselves.
    gram = np.zeros((n_stats, n_stats))
    resid = np.zeros(n_stats)
    sum_e2 = 0.0
    for slot in range(n_slots):
        sum_e2 += part_e2[slot]
        for a in range(n_stats):
            resid[a] += part_r[slot, a]
            for b in range(a + 1):
                gram[a, b] += part_g[slot, a, b]
    for a in range(n_stats):
        for b in range(a):
            gram[b, a] = gram[a, b]
    return gram, resid, sum_e2


# error_model="numpy": no zero-divisor check (and branch) at every division in the lane loops; the
# divisors are Cholesky pivots, positive by construction.
sample_block_par = _twin(_sample_block, True, fastmath=True, nogil=True, error_model="numpy")
sample_block_ser = _twin(_sample_block, False, fastmath=True, nogil=True, error_model="numpy")


@njit(inline="always", cache=True)
def _accumulate_columns(w, e, n, scale, gg, rr):
    """``_accumulate_row_stats`` over the first n columns; returns their sum e^2."""
    _accumulate_row_stats(w, e, n, scale, gg, rr)
    e2 = 0.0
    for q in range(n):
        e2 += e[q] * e[q]
    return e2


@njit(inline="always", cache=True)
def _accumulate_row_stats(w, e, n, scale, gg, rr):
    """gg += D (sum_q w_q w_q^T) D (lower triangle) and rr += D sum_q e_q w_q for one row's n
    ratings, D = diag(scale); w is feature-major (features x ratings)."""
    m = scale.shape[0]
    # Index w[a, q] directly: a row view (w[a]) in this loop costs two atomic reference
    # count updates in a serial kernel, which doubled its time.
    for a in range(m):
        acc = 0.0
        for q in range(n):
            acc += e[q] * w[a, q]
        rr[a] += scale[a] * acc
        for b in range(a + 1):
            acc = 0.0
            for q in range(n):
                acc += w[a, q] * w[b, q]
            gg[a, b] += scale[a] * scale[b] * acc


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
    part_g = np.zeros((n_chunks, m, m))
    part_r = np.zeros((n_chunks, m))
    part_e2 = np.zeros(n_chunks)
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
            _accumulate_row_stats(w, e, n, scale, gg, rr)
        for a in range(m):
            part_r[c, a] = rr[a]
            for b in range(a + 1):
                part_g[c, a, b] = gg[a, b]
                part_g[c, b, a] = gg[a, b]
        part_e2[c] = e2
    return part_g.sum(axis=0), part_r.sum(axis=0), part_e2.sum()


move_stats_par = _twin(_move_stats, True, fastmath=True, nogil=True)
move_stats_ser = _twin(_move_stats, False, fastmath=True, nogil=True)


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


# ----------------------------------------------------------------------------- hyperparameters
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
def shift_draw(n_other, total_other, gram_other, lam, own_mean, mu0, tau_other, beta0, tau0, mu_offset, normals):
    """One draw of the shift a ~ N(P^-1 h, P^-1) of ``Chain._shift_factors`` from the other side's
    moments (n, sum x, sum x x^T over rows [v_j, c_j]), drawn as L^-T (L^-1 h + z) with P = L L^T:
        P = tau0 vbar vbar^T + beta0 Lambda + tau_c W^T W,      W rows w_j = v_j - vbar
        h = tau0 mu_offset vbar - beta0 Lambda (mu_own - mu0) + tau_c W^T c
    """
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


@njit(cache=True)
def block_prior_forms(lam, mean, tau):
    """The prior of one row [factors, bias] in the forms ``_sample_block`` reads:
    (precision P0, P0 m0, mean m0, C, C^T) with C lower-triangular and C C^T = P0^-1."""
    k = mean.shape[0]
    prec = np.zeros((k + 1, k + 1))
    prec[:k, :k] = lam
    prec[k, k] = tau
    prior_mean = np.zeros(k + 1)
    prior_mean[:k] = mean
    cov = np.linalg.inv(prec)
    chol = np.linalg.cholesky(0.5 * (cov + cov.T))
    return prec, prec @ prior_mean, prior_mean, chol, np.ascontiguousarray(chol.T)


@njit(cache=True)
def side_prior_draw(n, total, gram, mu0, beta0, w0_inv, nu0, chi2, normals, tau):
    """A side's (mean, Lambda) from the Normal-Wishart conditional given its moments over the rows
    [factors, bias] (``normal_wishart_sample`` on the factor part), and the forms of the block
    prior for those and the bias precision ``tau`` (``block_prior_forms``): one call per side and sweep."""
    k = mu0.shape[0]
    mean, lam = normal_wishart_sample(n, total[:k].copy(), np.ascontiguousarray(gram[:k, :k]), mu0, beta0, w0_inv,
                                      nu0, chi2, normals)
    return mean, lam, block_prior_forms(lam, mean, tau)


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
            _accumulate_row_stats(cols, ones, count, dim_ones, square, total)
        for a in range(dim):
            part_sum[part, a] = total[a]
            for b in range(a + 1):
                part_sq[part, a, b] = square[a, b]
    square = part_sq.sum(axis=0)
    for a in range(dim):
        for b in range(a):
            square[b, a] = square[a, b]
    return part_sum.sum(axis=0), square


side_moments_par = _twin(_side_moments, True, fastmath=True, nogil=True)
side_moments_ser = _twin(_side_moments, False, fastmath=True, nogil=True)


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


affine_rows_par = _twin(_affine_rows, True, fastmath=True, nogil=True)
affine_rows_ser = _twin(_affine_rows, False, fastmath=True, nogil=True)


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


predict_pairs_par = _twin(_predict_pairs, True, fastmath=True, nogil=True)
predict_pairs_ser = _twin(_predict_pairs, False, fastmath=True, nogil=True)


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


mixture_quantiles = _twin(_mixture_quantiles, True)
# Single-threaded twin for request paths: numba's default (workqueue) threading layer must not be
# entered by two Python threads at once, and a few thousand mixtures take milliseconds anyway.
mixture_quantiles_ser = _twin(_mixture_quantiles, False, nogil=True)


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
