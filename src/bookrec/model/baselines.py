"""The two baselines every report shows beside the model: global mean, and user + book bias.

Both give a Gaussian predictive (residual sd of the training ratings) so that intervals, NLL and
CRPS are scored by the same code as the model (``metrics.evaluate_predictive``).
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
        self.sd_ = float(np.sqrt(np.mean(resid**2))) or 1.0
        return self

    def _raw(self, user_idx, item_idx) -> np.ndarray:
        u = np.asarray(user_idx, dtype=np.int64)
        i = np.asarray(item_idx, dtype=np.int64)
        b = np.where((u >= 0) & (u < self.user_bias_.shape[0]), self.user_bias_[np.clip(u, 0, self.user_bias_.shape[0] - 1)], 0.0)
        c = np.where((i >= 0) & (i < self.item_bias_.shape[0]), self.item_bias_[np.clip(i, 0, self.item_bias_.shape[0] - 1)], 0.0)
        return self.mu_ + b + c

    def predict(self, user_idx, item_idx) -> np.ndarray:
        return np.clip(self._raw(user_idx, item_idx), *self.rating_range)

    def predictive_components(self, user_idx, item_idx):
        raw = self._raw(user_idx, item_idx)
        return raw[:, None], np.full((raw.shape[0], 1), self.sd_)
