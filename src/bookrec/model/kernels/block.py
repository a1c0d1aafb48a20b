"""The Gibbs block: every row of one side drawn from its Gaussian conditional."""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bookrec.model.kernels.arrays import LaneColumns, LaneScratch, Likelihood, RowScratch, StatScratch
from bookrec.model.kernels.compile import twin
from bookrec.model.kernels.lanes import draw_lanes, draw_lanes_precision, lane_stats
from bookrec.model.kernels.normals import fill_normals, row_state
from bookrec.model.kernels.partials import new_partials, reduce_partials, store_partial
from bookrec.model.kernels.prefetch import prefetch_ratings, prefetch_rows
from bookrec.model.kernels.rows import accumulate_columns, draw_row_many, row_stats_from_sums


# Over 80 lines: its three parallel loops (one per row form) fill one set of per-task partial
# statistics, reduced once; as separate kernels each would dispatch, allocate and reduce its own.
def _sample_block(rated, other, mu, alpha, prior, out, seed, groups, draw, with_stats):
    """Draw (``draw=False``: set to the conditional mode) every row of ``out`` from its Gaussian conditional.

    ``rated`` is the side's ratings (Csr, columns index ``other``'s rows), ``prior`` its PriorForms
    (:mod:`bookrec.model.kernels.arrays`). Row i draws its normals from its own stream (``seed``, i).
    When drawing, the rows listed in ``groups.few_rows``/``few_ptr`` (see ``few_rating_groups``: most
    rows in BookCrossing) are drawn lanes at a time in the conditioning form, those in ``mid_rows``
    (``mid_rating_rows``) lanes at a time in precision form, every other row (the longest) one at a
    time in precision form.

    Returns the move statistics of ``_move_stats`` for the new state, computed while each row's
    ratings are at hand (with ``with_stats``; zeros otherwise), with z = [x_f * other_f,
    other_bias, x_bias, 1]: called for the books (``other`` = readers) that is exactly
    ``_move_stats`` over the readers' rows, without a second pass over the ratings.
    """
    indptr = rated.indptr
    indices = rated.indices
    few_rows = groups.few_rows
    few_ptr = groups.few_ptr
    mid_rows = groups.mid_rows
    lanes = groups.lanes
    n_rows = indptr.shape[0] - 1
    dim = out.shape[1]
    k = dim - 1
    n_stats = k + 3
    noise_var = 1.0 / alpha
    noise_sd = math.sqrt(noise_var)
    likelihood = Likelihood(other, mu, alpha, noise_sd, noise_var)
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
    part_g, part_r, part_e2 = new_partials(n_slots, n_stats)
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
        row_scratch = RowScratch(feats, target, row_bias, prec, lin, ftf, fty)
        stat_scratch = StatScratch(cf, fx, sww, syw, scale)
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
                prefetch_ratings(other, indices, indptr[nxt], indptr[nxt + 1])
            if draw:
                fill_normals(row_state(seed, i), z, dim)
            draw_row_many(i, rated, likelihood, prior, z, row_scratch, out, draw=draw)
            if with_stats:
                e2 += row_stats_from_sums(i, m, row_scratch, out, stat_scratch, gg, rr)
        if with_stats:
            store_partial(part_g, part_r, part_e2, c, gg, rr, e2)
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
            scratch = LaneScratch(z, zs, feats, resid, hmat, small, g, target, other_bias)
            # The lanes' move statistics are gathered as columns and reduced a batch at a time: long
            # contiguous dot products instead of a short lane loop per pair of statistics.
            batch = max(256, lanes * width)
            z_rows = np.empty((n_stats, batch))
            e_rows = np.empty(batch)
            columns = LaneColumns(z_rows, e_rows)
            ones = np.ones(n_stats)
            gg = np.zeros((n_stats, n_stats))
            rr = np.zeros(n_stats)
            e2 = 0.0
            n_kept = 0
            for blk in range(task * per_task, min(n_blocks, (task + 1) * per_task)):
                b0 = start + blk * lanes
                n_live = min(lanes, few_ptr[m + 1] - b0)
                if blk + 1 < min(n_blocks, (task + 1) * per_task):  # the next block's rows, while this one computes
                    prefetch_rows(other, indices, indptr, few_rows[b0 + lanes:min(b0 + 2 * lanes, few_ptr[m + 1])])
                if with_stats and n_kept + n_live * m > batch:
                    e2 += accumulate_columns(z_rows, e_rows, n_kept, ones, gg, rr)
                    n_kept = 0
                n_kept = draw_lanes(few_rows[b0:b0 + n_live], m, rated, likelihood, prior, seed, scratch, out, columns,
                                    n_kept, with_stats=with_stats)
            if with_stats:
                e2 += accumulate_columns(z_rows, e_rows, n_kept, ones, gg, rr)
                store_partial(part_g, part_r, part_e2, few_slot[m] + task, gg, rr, e2)
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
        mid_scratch = RowScratch(mid_feats, mid_target, mid_bias, mid_prec, mid_lin, mid_ftf, mid_fty)
        mid_stat_scratch = StatScratch(mid_cf, mid_fx, mid_sums, mid_syw, mid_scale)
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
                prefetch_rows(other, indices, indptr, mid_rows[nb0:min(nb0 + mid_lanes, n_mid)])
            last = mid_rows[b0 + n_live - 1]
            last_len = indptr[last + 1] - indptr[last]
            draw_lanes_precision(mid_rows[b0:b0 + n_live], last_len, rated, likelihood, prior, seed, z, zs, mid_scratch,
                                 out)
            if with_stats:
                e2 += lane_stats(last_len, mid_scratch, mid_stat_scratch, gg, rr)
        if with_stats:
            store_partial(part_g, part_r, part_e2, mid_slot + task, gg, rr, e2)
    return reduce_partials(part_g, part_r, part_e2)


# error_model="numpy": no zero-divisor check (and branch) at every division in the lane loops; the
# divisors are Cholesky pivots, positive by construction.
sample_block_par = twin(_sample_block, True, fastmath=True, nogil=True, error_model="numpy")
sample_block_ser = twin(_sample_block, False, fastmath=True, nogil=True, error_model="numpy")
