"""The two baselines every report shows beside the model: global mean, and user + book bias.

Both give a Gaussian predictive so that intervals, NLL and CRPS are scored by the same code as
the model (``metrics.evaluate_predictive``). The bias baseline's predictive variance is that of
a new rating, not of a training residual: the fitted residuals understate it (the biases were
fitted to them) and a sparse reader's or book's bias is itself uncertain, so training-residual
intervals under-cover on held-out ratings and flatter any model compared against them.
"""

from __future__ import annotations

import numpy as np


class GlobalMean:
    """Predicts the training mean for everyone."""

    name = "global mean"

    def __init__(self, rating_range: tuple[float, float] = (1.0, 10.0)):
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))

    def fit(self, user_idx, item_idx, ratings, n_users=None, n_items=None) -> GlobalMean:
        r = np.asarray(ratings, dtype=np.float64)
        if r.size == 0:
            raise ValueError("no ratings to fit")
        self.mean_ = float(r.mean())
        self.sd_ = float(r.std()) or 1.0
        return self

    def predict(self, user_idx, item_idx) -> np.ndarray:
        return np.clip(np.full(np.asarray(user_idx).shape[0], self.mean_), *self.rating_range)

    def predictive_components(self, user_idx, item_idx):
        n = np.asarray(user_idx).shape[0]
        return np.full((n, 1), self.mean_), np.full((n, 1), self.sd_)


class BiasBaseline:
    """r ~ mu + b_user + c_book, regularised least squares fitted by alternating updates.

    b_u = sum(r - mu - c) / (reg_user + n_u), c_i = sum(r - mu - b) / (reg_item + n_i): shrinks
    the biases of users/books with few ratings toward zero. Unknown indices get bias 0.

    Read as a Bayesian ridge (b_u ~ N(0, sigma^2 / reg_user), likewise c_i), a new rating's
    predictive variance is sigma^2 (1 + 1 / (reg_user + n_u) + 1 / (reg_item + n_i)), the cross
    term between b_u and c_i left out; sigma^2 = RSS / (n - effective parameters), the effective
    count being the ridge's hat-matrix trace 1 + sum n_u / (n_u + reg_user) + sum n_i / (n_i + reg_item).
    ``sd_`` is sigma.
    """

    name = "user + book bias"

    def __init__(self, reg_user: float = 5.0, reg_item: float = 5.0, n_iter: int = 15,
                 rating_range: tuple[float, float] = (1.0, 10.0)):
        self.reg_user = reg_user
        self.reg_item = reg_item
        self.n_iter = n_iter
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))

    def fit(self, user_idx, item_idx, ratings, n_users=None, n_items=None) -> BiasBaseline:
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        r = np.asarray(ratings, dtype=np.float64)
        if r.size == 0:
            raise ValueError("no ratings to fit")
        n_users = int(u.max()) + 1 if n_users is None else int(n_users)
        n_items = int(i.max()) + 1 if n_items is None else int(n_items)
        self.mu_ = float(r.mean())
        count_u = np.bincount(u, minlength=n_users)
        count_i = np.bincount(i, minlength=n_items)
        b = np.zeros(n_users)
        c = np.zeros(n_items)
        for _ in range(self.n_iter):
            b = np.bincount(u, weights=r - self.mu_ - c[i], minlength=n_users) / (self.reg_user + count_u)
            c = np.bincount(i, weights=r - self.mu_ - b[u], minlength=n_items) / (self.reg_item + count_i)
        self.user_bias_, self.item_bias_ = b, c
        resid = r - (self.mu_ + b[u] + c[i])
        self.user_var_ = _posterior_share(count_u, self.reg_user)
        self.item_var_ = _posterior_share(count_i, self.reg_item)
        # The ridge's hat-matrix trace: each bias counts n / (n + reg) of a parameter.
        n_params = 1.0 + (count_u * self.user_var_).sum() + (count_i * self.item_var_).sum()
        self.sd_ = float(np.sqrt(np.sum(resid**2) / max(r.size - n_params, 1.0))) or 1.0
        return self

    def _raw(self, user_idx, item_idx) -> np.ndarray:
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        b = np.where((u >= 0) & (u < self.user_bias_.shape[0]), self.user_bias_[np.clip(u, 0, self.user_bias_.shape[0] - 1)], 0.0)
        c = np.where((i >= 0) & (i < self.item_bias_.shape[0]), self.item_bias_[np.clip(i, 0, self.item_bias_.shape[0] - 1)], 0.0)
        return self.mu_ + b + c

    def predict(self, user_idx, item_idx) -> np.ndarray:
        return np.clip(self._raw(user_idx, item_idx), *self.rating_range)

    def _bias_var(self, idx, var: np.ndarray, reg: float) -> np.ndarray:
        """Posterior variance of a bias in units of sigma^2; an index unseen in training has the prior's."""
        idx = np.asarray(idx, dtype=np.int64)
        known = (idx >= 0) & (idx < var.shape[0])
        return np.where(known, var[np.clip(idx, 0, max(var.shape[0] - 1, 0))], _posterior_share(np.zeros(1), reg)[0])

    def predictive_components(self, user_idx, item_idx):
        raw = self._raw(user_idx, item_idx)
        share = (1.0 + self._bias_var(user_idx, self.user_var_, self.reg_user)
                 + self._bias_var(item_idx, self.item_var_, self.reg_item))
        return raw[:, None], (self.sd_ * np.sqrt(share))[:, None]


def _posterior_share(counts: np.ndarray, reg: float) -> np.ndarray:
    """1 / (n + reg); without ratings and without a prior (reg 0) the bias is unknown, taken as sigma^2."""
    total = np.asarray(counts, dtype=np.float64) + reg
    return np.divide(1.0, total, out=np.ones_like(total), where=total > 0)
