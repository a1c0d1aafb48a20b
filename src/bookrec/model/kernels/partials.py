"""Per-task partial sums of the move statistics (sum z z^T, sum e z, sum e^2) and their reduction.

Each parallel task writes its own slot; the slots are summed by explicit loops afterwards: numba's
``sum(axis=0)`` over a few hundred slots cost about 1 ms per call, more than the statistics themselves.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", cache=True)
def new_partials(n_slots, n_stats):
    return np.zeros((n_slots, n_stats, n_stats)), np.zeros((n_slots, n_stats)), np.zeros(n_slots)


@njit(inline="always", cache=True)
def store_partial(part_g, part_r, part_e2, slot, gg, rr, e2):
    """One task's statistics (gg: lower triangle) into its slot."""
    for a in range(rr.shape[0]):
        part_r[slot, a] = rr[a]
        for b in range(a + 1):
            part_g[slot, a, b] = gg[a, b]
    part_e2[slot] = e2


@njit(inline="always", cache=True)
def reduce_partials(part_g, part_r, part_e2):
    """(gram (full, symmetric), resid, sum e^2) summed over the slots."""
    n_slots, n_stats = part_r.shape
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
