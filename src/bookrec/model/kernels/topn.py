"""Top-n selection: the one selection rule of the project, for one row, dense rows and CSR rows.

Each row keeps a small descending buffer of its best n entries; a new entry is inserted only
when it beats the current n-th, so a row of C scores costs about C comparisons. Ties are
broken by the smaller column index, so results never depend on thread scheduling.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def _better(v, i, bv, bi):
    return v > bv or (v == bv and i < bi)


@njit(inline="always", cache=True)
def _insert(best_v, best_i, size, n, v, i):
    """Insert (v, i) into the descending buffer of `size` entries (capacity n); returns new size."""
    if n <= 0:  # an empty buffer has no n-th entry: best_v[n - 1] would read and write outside it
        return size
    if size == n and not _better(v, i, best_v[n - 1], best_i[n - 1]):
        return size
    pos = size if size < n else n - 1
    while pos > 0 and _better(v, i, best_v[pos - 1], best_i[pos - 1]):
        if pos < n:
            best_v[pos] = best_v[pos - 1]
            best_i[pos] = best_i[pos - 1]
        pos -= 1
    best_v[pos] = v
    best_i[pos] = i
    return size + 1 if size < n else size


@njit(cache=True)
def top_n(scores, n, excluded):
    """Indices of the n largest scores (descending, ties by lower index), skipping ``excluded``
    (a boolean mask); fewer than n when not enough items remain."""
    best_v = np.empty(n)
    best_i = np.empty(n, dtype=np.int64)
    size = 0
    if n > 0:
        for j in range(scores.shape[0]):
            if not excluded[j]:
                size = _insert(best_v, best_i, size, n, scores[j], np.int64(j))
    return best_i[:size].copy()


@njit(parallel=True, cache=True)
def top_n_rows(scores, excl_indptr, excl_indices, n):
    """Top n columns of each row of a dense score matrix, skipping each row's excluded columns
    (CSR ``excl_indptr``/``excl_indices``, one row per score row).

    Returns (idx, val) of shape (rows, n); -1 / -inf where a row has fewer than n columns left.
    """
    m, c = scores.shape
    idx = np.full((m, n), -1, dtype=np.int64)
    val = np.full((m, n), -np.inf)
    n_blocks = min(m, 64)
    for blk in prange(n_blocks):
        excluded = np.zeros(c, dtype=np.bool_)  # one buffer per block, cleared row by row
        best_v = np.empty(n)
        best_i = np.empty(n, dtype=np.int64)
        for r in range(blk * m // n_blocks, (blk + 1) * m // n_blocks):
            for p in range(excl_indptr[r], excl_indptr[r + 1]):
                excluded[excl_indices[p]] = True
            size = 0
            for j in range(c):
                if not excluded[j]:
                    size = _insert(best_v, best_i, size, n, scores[r, j], np.int64(j))
            for t in range(size):
                idx[r, t] = best_i[t]
                val[r, t] = best_v[t]
            for p in range(excl_indptr[r], excl_indptr[r + 1]):
                excluded[excl_indices[p]] = False
    return idx, val


@njit(parallel=True, cache=True)
def top_n_csr(indptr, indices, data, n):
    """Keep the n largest entries of each CSR row (ties: lower column) -> (indptr, indices, data)."""
    n_rows = indptr.shape[0] - 1
    out_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    for r in range(n_rows):
        out_ptr[r + 1] = out_ptr[r] + min(n, indptr[r + 1] - indptr[r])
    out_idx = np.empty(out_ptr[-1], dtype=np.int32)
    out_val = np.empty(out_ptr[-1], dtype=np.float32)
    for r in prange(n_rows):
        o = out_ptr[r]
        m = out_ptr[r + 1] - o
        best_v = out_val[o:o + m]
        best_i = out_idx[o:o + m]
        size = 0
        for p in range(indptr[r], indptr[r + 1]):
            size = _insert(best_v, best_i, size, m, data[p], indices[p])
    return out_ptr, out_idx, out_val
