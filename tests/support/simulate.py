"""Ratings drawn from the model's own generative story, with known truth (for the model tests).

The data part's synthetic presets are the realistic BookCrossing-shaped data; this small generator
exists so that model tests can control the truth exactly (noise level, continuous ratings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Simulated:
    user_idx: np.ndarray
    item_idx: np.ndarray
    ratings: np.ndarray
    n_users: int
    n_items: int
    mu: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    noise_sd: float

    def mean_of(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (self.mu + self.user_bias[users] + self.item_bias[items]
                + np.einsum("nk,nk->n", self.user_factors[users], self.item_factors[items]))


def simulate_ratings(
    n_users: int = 500,
    n_items: int = 300,
    n_ratings: int = 20_000,
    n_factors: int = 3,
    noise_sd: float = 1.0,
    mu: float = 5.5,
    bias_sd: float = 0.7,
    factor_sd: float = 0.6,
    integer: bool = False,
    rating_range: tuple[float, float] = (1.0, 10.0),
    seed: int = 0,
) -> Simulated:
    """Distinct (user, item) pairs with skewed activity/popularity and Gaussian ratings.

    With ``integer=True`` the ratings are rounded and clipped to ``rating_range`` like real
    1-10 ratings; otherwise they stay continuous (no clipping, so the noise is exactly Gaussian).
    """
    rng = np.random.default_rng(seed)
    if n_ratings > n_users * n_items // 2:
        raise ValueError("n_ratings too large for distinct pairs")
    # Lognormal activity and popularity weights: a few heavy users and popular items, every row non-empty.
    user_w = rng.lognormal(0.0, 0.8, n_users)
    item_w = rng.lognormal(0.0, 0.8, n_items)
    base_u = np.arange(n_users)
    base_i = rng.integers(0, n_items, n_users)
    seen = set(zip(base_u.tolist(), base_i.tolist()))
    extra_i = np.arange(n_items)
    extra_u = rng.integers(0, n_users, n_items)
    pairs_u = list(base_u)
    pairs_i = list(base_i)
    for u, i in zip(extra_u.tolist(), extra_i.tolist()):
        if (u, i) not in seen:
            seen.add((u, i))
            pairs_u.append(u)
            pairs_i.append(i)
    while len(pairs_u) < n_ratings:
        m = 2 * (n_ratings - len(pairs_u))
        us = rng.choice(n_users, m, p=user_w / user_w.sum())
        its = rng.choice(n_items, m, p=item_w / item_w.sum())
        for u, i in zip(us.tolist(), its.tolist()):
            if (u, i) not in seen:
                seen.add((u, i))
                pairs_u.append(u)
                pairs_i.append(i)
                if len(pairs_u) == n_ratings:
                    break
    users = np.asarray(pairs_u, dtype=np.int64)
    items = np.asarray(pairs_i, dtype=np.int64)
    sim = Simulated(
        user_idx=users, item_idx=items, ratings=np.empty(0), n_users=n_users, n_items=n_items, mu=mu,
        user_bias=bias_sd * rng.standard_normal(n_users), item_bias=bias_sd * rng.standard_normal(n_items),
        user_factors=factor_sd * rng.standard_normal((n_users, n_factors)),
        item_factors=factor_sd * rng.standard_normal((n_items, n_factors)),
        noise_sd=noise_sd,
    )
    r = sim.mean_of(users, items) + noise_sd * rng.standard_normal(users.shape[0])
    if integer:
        r = np.clip(np.rint(r), rating_range[0], rating_range[1])
    sim.ratings = r.astype(np.float32)
    return sim


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/held-out index split of n ratings."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_out = int(round(fraction * n))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])
