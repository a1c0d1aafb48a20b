"""Compiled helpers of the relevance model (:mod:`bookrec.model.relevance`)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def strongest_history_item(indptr, indices, precision, candidates):
    """Per row and candidate j (-1 = none): the history item i with the largest weight
    b_ij = -P_ij / P_jj, as a position into ``indices`` (-1 when the row has no history).
    P_jj > 0 is the same for every i, so the largest weight is the smallest P_ij."""
    n_rows, n = candidates.shape
    out = np.full((n_rows, n), -1, dtype=np.int64)
    for r in prange(n_rows):
        start, stop = indptr[r], indptr[r + 1]
        if start == stop:
            continue
        for t in range(n):
            j = candidates[r, t]
            if j < 0:
                continue
            best = start
            best_value = precision[indices[start], j]
            for p in range(start + 1, stop):
                value = precision[indices[p], j]
                if value < best_value:
                    best_value = value
                    best = p
            out[r, t] = best
    return out


@njit(cache=True)
def add_cooccurrences(indptr, indices, gram):
    """gram[i, j] += 1 for every pair of items (i, j) in a row, i == j included: X^T X of a binary
    matrix accumulated in place, with no sparse intermediate (whose size the heaviest readers set)."""
    for r in range(len(indptr) - 1):
        start, stop = indptr[r], indptr[r + 1]
        for p in range(start, stop):
            i = indices[p]
            for q in range(start, stop):
                gram[i, indices[q]] += 1.0
