"""Bayesian-shrunk book means (normal-normal, variances by moments): the rating model of readers
and works outside BPMF, with an honest predictive interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bookrec.model.interactions import Interactions
from bookrec.model.metrics import central_z


@dataclass
class RatingModel:
    """Normal-normal shrinkage of book means, with variances estimated by the method of moments.

    rating = theta_w + b_u + noise; theta_w ~ N(m, tau2), b_u ~ N(0, tau2_user), noise ~ N(0, sigma2).
    Posterior of theta_w given its n_w explicit ratings: precision 1/tau2 + n_w/sigma2. It is the
    rating "prior" of the non-model tiers: a predicted rating is a shrunk book mean (plus a shrunk
    reader offset when the reader has explicit ratings) and its interval is the posterior
    predictive one, sqrt(sigma2 + var(theta_w) + var(b_u)) wide per z.
    """

    global_mean: float
    sigma2: float  # within-book (residual) variance
    tau2: float  # between-book variance of true means
    tau2_user: float  # between-reader variance of offsets
    post_mean: np.ndarray  # per work
    post_var: np.ndarray  # per work
    rating_min: float
    rating_max: float

    @classmethod
    def fit(cls, interactions: Interactions, n_works: int, rating_min: float, rating_max: float) -> "RatingModel":
        w, r, u = interactions.explicit_work, interactions.explicit_rating.astype(np.float64), interactions.explicit_user
        if len(r) == 0:
            mid = (rating_min + rating_max) / 2
            var = ((rating_max - rating_min) / 4) ** 2
            return cls(mid, var, var, 0.0, np.full(n_works, mid), np.full(n_works, var), rating_min, rating_max)
        m = float(r.mean())
        n = np.bincount(w, minlength=n_works).astype(np.float64)
        s = np.bincount(w, weights=r, minlength=n_works)
        mean_w = np.divide(s, n, out=np.full(n_works, m), where=n > 0)
        resid = r - mean_w[w]
        dof = float(len(r) - np.count_nonzero(n))
        sigma2 = float((resid**2).sum() / dof) if dof > 0 else float(r.var())
        sigma2 = max(sigma2, 1e-3)
        # Between-book variance: var of book means among well-rated books minus their noise share.
        well = n >= 5
        if well.sum() >= 2:
            tau2 = float(np.var(mean_w[well]) - np.mean(sigma2 / n[well]))
        else:
            tau2 = float(np.var(mean_w[n > 0])) if (n > 0).sum() >= 2 else sigma2
        tau2 = max(tau2, 0.01 * sigma2)
        prec = 1.0 / tau2 + n / sigma2
        post_var = 1.0 / prec
        post_mean = post_var * (m / tau2 + s / sigma2)
        # Reader offsets around the shrunk book means, same moment estimator.
        res_u = r - post_mean[w]
        n_users = int(u.max()) + 1
        nu = np.bincount(u, minlength=n_users).astype(np.float64)
        su = np.bincount(u, weights=res_u, minlength=n_users)
        well_u = nu >= 5
        if well_u.sum() >= 2:
            tau2_user = float(np.var(su[well_u] / nu[well_u]) - np.mean(sigma2 / nu[well_u]))
        else:
            tau2_user = 0.0
        tau2_user = max(tau2_user, 0.01 * sigma2)
        # The within-book spread holds the readers' offsets too; predictions add the offset
        # variance separately, so take it out of the noise (else it is counted twice).
        sigma2 = max(sigma2 - tau2_user, 0.25 * sigma2)
        return cls(m, sigma2, tau2, tau2_user, post_mean, post_var, rating_min, rating_max)

    def user_offsets(self, interactions: Interactions, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of each reader's offset from their explicit ratings (0 if none)."""
        n_users = interactions.n_users
        res = interactions.explicit_rating - self.post_mean[interactions.explicit_work]
        nu = np.bincount(interactions.explicit_user, minlength=n_users).astype(np.float64)
        su = np.bincount(interactions.explicit_user, weights=res, minlength=n_users)
        prec = 1.0 / self.tau2_user + nu[user_idx] / self.sigma2
        var = 1.0 / prec
        return var * su[user_idx] / self.sigma2, var

    def predictive(
        self, works: np.ndarray, level: float, offset: np.ndarray | float = 0.0, offset_var: np.ndarray | float = 0.0,
        mean: np.ndarray | None = None, mean_var: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted, lower, upper) for works (any shape); optional per-work mean override (segments)."""
        mu = self.post_mean[works] if mean is None else mean
        var = self.post_var[works] if mean_var is None else mean_var
        pred = mu + offset
        sd = np.sqrt(self.sigma2 + var + offset_var)
        z = central_z(level)
        lo = np.clip(pred - z * sd, self.rating_min, self.rating_max)
        hi = np.clip(pred + z * sd, self.rating_min, self.rating_max)
        return np.clip(pred, self.rating_min, self.rating_max), lo, hi


def fallback_predictive(rating_model: RatingModel, works: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The book-level model's predictive mean and sd of a reader with no explicit ratings."""
    rm = rating_model
    return rm.post_mean[works], np.sqrt(rm.sigma2 + rm.post_var[works] + rm.tau2_user)
