"""Items similar to an item by their BPMF factors: the posterior mean and sd of the cosine of the
two factor vectors over the kept samples (used by BPMF.similar_items and the API)."""

from __future__ import annotations

import numpy as np

from bookrec.model import kernels


def unit_factors(item_factors: np.ndarray) -> np.ndarray:
    """(S, I, k) item factors scaled to unit length per sample (a zero vector stays zero)."""
    return item_factors / np.maximum(np.linalg.norm(item_factors, axis=2, keepdims=True), 1e-12)


def similar_items(unit: np.ndarray, item: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n items whose factors are closest to ``item``'s by posterior mean cosine (ties: lower
    index; the item itself excluded): (items, mean, sd) from ``unit_factors``."""
    cos = np.einsum("sik,sk->si", unit, unit[:, item, :], dtype=np.float64)  # (S, I)
    mean, sd = cos.mean(axis=0), cos.std(axis=0)
    excluded = np.zeros(mean.shape[0], dtype=bool)
    excluded[item] = True
    top = kernels.top_n(mean, int(n), excluded)
    return top, mean[top], sd[top]
