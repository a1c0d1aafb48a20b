"""Evaluation metrics: point accuracy, calibrated intervals, proper scores, coverage.

Every predictive distribution is handled as an equally weighted Gaussian mixture given by
``means (n, S)`` and ``sds (n, S)`` (a single Gaussian is the case S = 1), so the model and the
baselines are scored by exactly the same code.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Protocol

import numpy as np

from bookrec.model import kernels

LEVELS = (0.5, 0.8, 0.9, 0.95)


class Predictive(Protocol):
    def predictive_components(self, user_idx, item_idx) -> tuple[np.ndarray, np.ndarray]: ...

    rating_range: tuple[float, float]


def central_z(level: float) -> float:
    """z such that a normal's central ``level`` interval is mean +- z sd (0.9 -> 1.645)."""
    return NormalDist().inv_cdf((1 + level) / 2)


def rmse(y, pred) -> float:
    y = np.asarray(y, dtype=np.float64)
    return float(np.sqrt(np.mean((y - np.asarray(pred, dtype=np.float64)) ** 2))) if y.size else float("nan")


def mae(y, pred) -> float:
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean(np.abs(y - np.asarray(pred, dtype=np.float64)))) if y.size else float("nan")


def _as_2d(means, sds):
    """means (n, S); sds (S,) [same noise for every row] or (n, S) -> two contiguous (n, S) arrays."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim == 1:
        means = means[:, None]
    sds = np.broadcast_to(np.asarray(sds, dtype=np.float64), means.shape)
    return np.ascontiguousarray(means), np.ascontiguousarray(sds)


def mixture_quantiles(means, sds, probs) -> np.ndarray:
    """Quantiles (n, len(probs)) of the mixtures (exact, by safeguarded Newton on the CDF)."""
    means, sds = _as_2d(means, sds)
    return kernels.mixture_quantiles(means, sds, np.asarray(probs, dtype=np.float64))


def mixture_interval(means, sds, level: float, rating_range=None):
    """Mean, lower and upper bound of the central ``level`` interval, optionally clipped."""
    means2, sds2 = _as_2d(means, sds)
    q = kernels.mixture_quantiles(means2, sds2, np.array([(1 - level) / 2, (1 + level) / 2]))
    mean = means2.mean(axis=1)
    lower, upper = q[:, 0], q[:, 1]
    if rating_range is not None:
        lo, hi = rating_range
        mean, lower, upper = np.clip(mean, lo, hi), np.clip(lower, lo, hi), np.clip(upper, lo, hi)
    return mean, lower, upper


def mixture_logpdfs(y, means, sds) -> np.ndarray:
    """Log predictive density of each y under its (unclipped) mixture."""
    means, sds = _as_2d(means, sds)
    return kernels.mixture_logpdf(np.asarray(y, dtype=np.float64), means, sds)


def mixture_nll(y, means, sds) -> float:
    """Mean negative log predictive density of the (unclipped) mixture."""
    return float(-np.mean(mixture_logpdfs(y, means, sds)))


def mixture_crps(y, means, sds, max_components: int = 100) -> float:
    """Mean CRPS of the mixture (closed form; components evenly subsampled beyond max_components)."""
    means, sds = _as_2d(means, sds)
    if means.shape[1] > max_components:
        keep = np.linspace(0, means.shape[1] - 1, max_components).round().astype(int)
        means, sds = np.ascontiguousarray(means[:, keep]), np.ascontiguousarray(sds[:, keep])
    return float(np.mean(kernels.mixture_crps(np.asarray(y, dtype=np.float64), means, sds)))


def interval_metrics(y, means, sds, levels=LEVELS, rating_range=None) -> dict:
    """Coverage and mean width of central intervals at each level."""
    means2, sds2 = _as_2d(means, sds)
    y = np.asarray(y, dtype=np.float64)
    probs = np.array([p for lv in levels for p in ((1 - lv) / 2, (1 + lv) / 2)])
    q = kernels.mixture_quantiles(means2, sds2, probs)
    if rating_range is not None:
        q = np.clip(q, rating_range[0], rating_range[1])
    coverage, width = {}, {}
    for n, lv in enumerate(levels):
        lo, hi = q[:, 2 * n], q[:, 2 * n + 1]
        coverage[str(lv)] = float(np.mean((y >= lo) & (y <= hi)))
        width[str(lv)] = float(np.mean(hi - lo))
    return {"coverage": coverage, "width": width}


def catalogue_coverage(recommended_items: np.ndarray, n_items: int) -> float:
    """Fraction of the catalogue that appears in at least one top-n list (-1 = empty slot)."""
    items = np.asarray(recommended_items).ravel()
    items = items[items >= 0]
    return float(np.unique(items).shape[0] / n_items) if n_items else float("nan")


def evaluate_predictive(model: Predictive, user_idx, item_idx, y, levels=LEVELS) -> dict:
    """Held-out rating metrics of one model (BPMF or a baseline) on (user, item, rating) triples.

    Top-N ranking is judged by :mod:`bookrec.model.topn` (every untouched item ranked), not by
    re-ordering each reader's few held-out items."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    means, sds = model.predictive_components(user_idx, item_idx)
    means, sds = _as_2d(means, sds)
    lo, hi = model.rating_range
    point = np.clip(means.mean(axis=1), lo, hi)
    out = {"n": int(y.shape[0]), "rmse": rmse(y, point), "mae": mae(y, point),
           "nll": mixture_nll(y, means, sds), "crps": mixture_crps(y, means, sds)}
    out.update(interval_metrics(y, means, sds, levels, rating_range=model.rating_range))
    return out
