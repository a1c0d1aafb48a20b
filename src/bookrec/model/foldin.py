"""Folding a new reader into a trained model, from plain arrays only (used by the API).

For each kept posterior sample s, the reader's factors and bias x = [u, b] have the exact
Gaussian conditional given that sample's item factors/biases, mu, alpha and user hyperparameters:

    P_s = blockdiag(Lambda_U,s, tau_b,s) + alpha_s F^T F,     F rows = [v_sj, 1] for rated j
    h_s = blockdiag(Lambda_U,s, tau_b,s) [mu_U,s, 0] + alpha_s F^T (r - mu_s - c_sj)
    x | s ~ N(P_s^-1 h_s, P_s^-1)

Integrating x out analytically, the predictive of item j is the mixture over s of
N(mu_s + c_sj + f_sj . m_s,  f_sj^T P_s^-1 f_sj + 1/alpha_s): exact, no Monte Carlo over x.

Every kept sample keeps its equal weight 1/S: the samples are not reweighted by
p(new ratings | sample). Each per-sample posterior is exact; the mixture is only approximately
the full posterior given the new ratings (what a refit with the reader included would give),
close when a few ratings barely move the rest of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bookrec.model import kernels
from bookrec.model.metrics import central_z

# Everything here runs on request paths (possibly several threads at once): only single-threaded,
# GIL-free kernels are used (numba's workqueue threading layer is not re-entrant across threads).

SERVING_KEYS = ("item_factors", "item_bias", "mu", "alpha", "mu_user", "lambda_user", "tau_user_bias", "rating_range")


@dataclass
class FoldIn:
    """Posterior of a folded-in reader: per kept sample, mean and Cholesky factor of the covariance."""

    mean: np.ndarray  # (S, k + 1): factors then bias
    cov_chol: np.ndarray  # (S, k + 1, k + 1), lower: cov = C C^T
    draws: np.ndarray  # (S, k + 1): one draw per sample
    item_idx: np.ndarray
    ratings: np.ndarray

    @property
    def factors(self) -> np.ndarray:
        return self.mean[:, :-1]

    @property
    def bias(self) -> np.ndarray:
        return self.mean[:, -1]


def _validate(arrays, item_idx, ratings):
    missing = [k for k in SERVING_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"serving arrays lack {missing}")
    item_idx = np.asarray(item_idx, dtype=np.int64).ravel()
    ratings = np.asarray(ratings, dtype=np.float64).ravel()
    if item_idx.shape != ratings.shape:
        raise ValueError("item_idx and ratings must have the same length")
    n_items = arrays["item_factors"].shape[1]
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= n_items):
        raise ValueError(f"item index out of range [0, {n_items})")
    if not np.all(np.isfinite(ratings)):
        raise ValueError("ratings must be finite")
    return item_idx, ratings


def fold_in_from_arrays(arrays: dict, item_idx, ratings, seed: int | None = None) -> FoldIn:
    """Exact per-sample Gaussian posterior of a new reader's (factors, bias). Milliseconds.

    Per-sample posteriors, no interval (``predict_fold_in`` gives those). The kept samples are
    weighted equally, not by p(new ratings | sample): exact given each sample, an approximation of
    the posterior of the whole model given the new ratings."""
    item_idx, ratings = _validate(arrays, item_idx, ratings)
    v = np.asarray(arrays["item_factors"][:, item_idx, :], dtype=np.float64)  # (S, n, k)
    c = np.asarray(arrays["item_bias"][:, item_idx], dtype=np.float64)  # (S, n)
    mu = np.asarray(arrays["mu"], dtype=np.float64)
    alpha = np.asarray(arrays["alpha"], dtype=np.float64)
    lam = np.asarray(arrays["lambda_user"], dtype=np.float64)
    mu_user = np.asarray(arrays["mu_user"], dtype=np.float64)
    tau = np.asarray(arrays["tau_user_bias"], dtype=np.float64)
    n_s, _, k = v.shape
    dim = k + 1
    feats = np.concatenate([v, np.ones((n_s, v.shape[1], 1))], axis=2)  # (S, n, k+1)
    prior = np.zeros((n_s, dim, dim))
    prior[:, :k, :k] = lam
    prior[:, k, k] = tau
    prior_mean = np.concatenate([mu_user, np.zeros((n_s, 1))], axis=1)
    prec = prior + alpha[:, None, None] * np.einsum("sna,snb->sab", feats, feats)
    target = ratings[None, :] - mu[:, None] - c  # (S, n)
    lin = np.einsum("sab,sb->sa", prior, prior_mean) + alpha[:, None] * np.einsum("sna,sn->sa", feats, target)
    mean = np.linalg.solve(prec, lin[:, :, None])[:, :, 0]
    cov = np.linalg.inv(prec)
    cov = 0.5 * (cov + np.transpose(cov, (0, 2, 1)))
    cov_chol = np.linalg.cholesky(cov)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_s, dim))
    draws = mean + np.einsum("sab,sb->sa", cov_chol, z)
    return FoldIn(mean=mean, cov_chol=cov_chol, draws=draws, item_idx=item_idx, ratings=ratings)


def fold_in_components(arrays: dict, fold: FoldIn, items=None) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mixture components (means, sds), each (n_items, S), for the folded-in reader."""
    v = arrays["item_factors"] if items is None else arrays["item_factors"][:, items, :]
    c = arrays["item_bias"] if items is None else arrays["item_bias"][:, items]
    v = np.asarray(v, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    mu = np.asarray(arrays["mu"], dtype=np.float64)
    alpha = np.asarray(arrays["alpha"], dtype=np.float64)
    k = v.shape[2]
    means = mu[:, None] + c + fold.mean[:, k][:, None] + np.einsum("sik,sk->si", v, fold.mean[:, :k])
    # f^T Cov f = || C^T f ||^2 with f = [v, 1].
    ct = np.transpose(fold.cov_chol, (0, 2, 1))  # (S, k+1, k+1)
    proj = np.matmul(v, np.transpose(ct[:, :, :k], (0, 2, 1))) + ct[:, :, k][:, None, :]
    var = np.einsum("sia,sia->si", proj, proj) + 1.0 / alpha[:, None]
    return np.ascontiguousarray(means.T), np.ascontiguousarray(np.sqrt(var).T)


def rank_items_for_fold_in(arrays: dict, fold: FoldIn, n: int = 10, exclude=None, rank_by: str = "mean",
                           level: float = 0.9, seed: int | None = None, n_candidates: int | None = None):
    """Top-n items for a folded-in reader: (items, mean, lower, upper), clipped to the rating range.

    rank_by: "mean" (predictive mean), "lower" (lower end of the central ``level`` interval,
    risk-averse) or "sample" (Thompson: rank by one posterior draw of the reader under one
    randomly chosen kept sample). Exact mixture quantiles are computed for the best
    ``n_candidates`` by a moment-matched screening score (all items when rank_by="lower" and
    n_candidates is None would be exact but slower; the default screens 4n + 50).
    ``exclude`` defaults to the items the reader rated.
    """
    if rank_by not in ("mean", "lower", "sample"):
        raise ValueError("rank_by must be mean, lower or sample")
    k = arrays["item_factors"].shape[2]
    n_s, n_items = arrays["item_bias"].shape
    excluded = np.zeros(n_items, dtype=bool)
    excluded[fold.item_idx if exclude is None else np.asarray(exclude, dtype=np.int64)] = True
    if rank_by == "lower":  # the screening score needs every item's mixture variance
        means, sds = fold_in_components(arrays, fold)
        mean = means.mean(axis=1)
        z = central_z(level)
        var = (means**2 + sds**2).mean(axis=1) - mean**2
        score = mean - z * np.sqrt(np.maximum(var, 0))
    else:  # only the predictive means (S x I x k), variances for the n winners below
        mu = np.asarray(arrays["mu"], dtype=np.float64)
        per_sample = (mu[:, None] + fold.mean[:, k][:, None] + arrays["item_bias"]
                      + np.matmul(arrays["item_factors"], fold.mean[:, :k, None].astype(np.float32))[:, :, 0])
        mean = per_sample.mean(axis=0)
        if rank_by == "mean":
            score = mean
        else:
            rng = np.random.default_rng(seed)
            s = int(rng.integers(n_s))
            x = fold.draws[s]
            score = (float(arrays["mu"][s]) + arrays["item_bias"][s].astype(np.float64) + x[k]
                     + arrays["item_factors"][s].astype(np.float64) @ x[:k])
    m_cand = n if rank_by != "lower" else (n_candidates or 4 * n + 50)
    cand = kernels.top_n(np.ascontiguousarray(score, dtype=np.float64), int(m_cand), excluded)
    cand_means, cand_sds = fold_in_components(arrays, fold, cand)
    q = kernels.mixture_quantiles_ser(cand_means, cand_sds, np.array([(1 - level) / 2, (1 + level) / 2]))
    if rank_by == "lower":
        order = np.lexsort((cand, -q[:, 0]))[:n]
        cand, q = cand[order], q[order]
    lo, hi = (float(x) for x in arrays["rating_range"])
    return cand, np.clip(mean[cand], lo, hi), np.clip(q[:, 0], lo, hi), np.clip(q[:, 1], lo, hi)


def predict_fold_in(arrays: dict, fold: FoldIn, items, level: float = 0.9):
    """Mean, lower, upper of the folded-in reader's predictive for the given items (clipped)."""
    items = np.asarray(items, dtype=np.int64)
    means, sds = fold_in_components(arrays, fold, items)
    q = kernels.mixture_quantiles_ser(means, sds, np.array([(1 - level) / 2, (1 + level) / 2]))
    lo, hi = (float(x) for x in arrays["rating_range"])
    return np.clip(means.mean(axis=1), lo, hi), np.clip(q[:, 0], lo, hi), np.clip(q[:, 1], lo, hi)
