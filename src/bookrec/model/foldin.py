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

One reader (the API: :func:`fold_in_from_arrays` and the functions after it, single-threaded) or
many at once (the batch: :class:`FoldInMany`, compiled kernels over all readers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm

from bookrec.contracts.serving import ServingModel
from bookrec.model import kernels
from bookrec.model.kernels.arrays import Csr, FoldInModel
from bookrec.model.metrics import central_z

# The one-reader functions run on request paths (possibly several threads at once): only
# single-threaded, GIL-free kernels (numba's workqueue threading layer is not re-entrant across threads).

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
    missing = [k for k in ServingModel.number_fields() if k not in arrays]
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


class FoldInMany:
    """Fold in many readers at once from the serving arrays (the same dict the API uses).

    The per-(reader, sample) solves run in one kernel over all readers (storing W = L^-1 of the
    precision's Cholesky factor, so f^T Cov f = ||W f||^2), the predictive means of every item
    come from one BLAS product per chunk of readers, and the exact mixture quantiles are computed
    only for each reader's top n. The model's own readers go through the same product with their
    kept posterior draws in place of the fold-in."""

    def __init__(self, arrays: dict, level: float) -> None:
        self.item_factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float64)
        self.item_bias = np.ascontiguousarray(arrays["item_bias"], dtype=np.float64)
        self.mu = np.asarray(arrays["mu"], dtype=np.float64)
        self.alpha = np.asarray(arrays["alpha"], dtype=np.float64)
        self.lambda_user = np.ascontiguousarray(arrays["lambda_user"], dtype=np.float64)
        self.tau = np.asarray(arrays["tau_user_bias"], dtype=np.float64)
        self.rating_range = tuple(float(x) for x in arrays["rating_range"])
        self.level = level
        self.probs = np.array([(1 - level) / 2, (1 + level) / 2])
        self.z = norm.ppf(self.probs)
        n_s, n_items, k = self.item_factors.shape
        # (S*(k+1), I): per sample the item factors transposed and a row of ones (for the bias),
        # so that [m_s1, ..., m_sS] @ stacked / S is the predictive mean minus the constant part.
        stacked = np.empty((n_s, k + 1, n_items))
        stacked[:, :k, :] = np.transpose(self.item_factors, (0, 2, 1))
        stacked[:, k, :] = 1.0
        # float32 for the screening product (BLAS sgemm, half the time of dgemm); the shown means
        # and intervals of the chosen items are recomputed in float64 from the components.
        self.stacked = np.ascontiguousarray(stacked.reshape(n_s * (k + 1), n_items), dtype=np.float32)
        self.constant = (self.mu[:, None] + self.item_bias).mean(axis=0)
        self.factors_by_item = np.ascontiguousarray(np.transpose(self.item_factors, (1, 0, 2)))
        self.bias_by_item = np.ascontiguousarray(self.item_bias.T)
        # The prior's linear term Lambda_U mu_U, per sample: all the kernels need of mu_U.
        self.prior_h = np.einsum("sab,sb->sa", self.lambda_user, np.asarray(arrays["mu_user"], dtype=np.float64))
        self.model = FoldInModel(self.item_factors, self.item_bias, self.factors_by_item, self.bias_by_item, self.mu,
                                 self.alpha, self.lambda_user, self.prior_h, self.tau)

    def fold(self, rated: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """rated: (n_readers, n_items) explicit ratings on model items -> (means, chols)."""
        return kernels.fold_readers(rated_arrays(rated), self.model, with_inverse=True)

    def fold_means(self, rated: Csr) -> np.ndarray:
        """Posterior means (U, S, k+1) of the readers of ``rated`` (see :func:`rated_arrays`)."""
        return kernels.fold_readers(rated, self.model, with_inverse=False)[0]

    def top_components(self, rated: Csr, means: np.ndarray, top: np.ndarray):
        """Predictive mixture components (U * n, S) of each folded-in reader's items ``top (U, n)``."""
        return kernels.fold_top_components(rated, means, top, self.model)

    def known_components(self, x: np.ndarray, top: np.ndarray):
        """The same for the model's own readers, given their per-sample draws ``x (U, S, k+1)``."""
        return kernels.known_top_components(np.ascontiguousarray(x, dtype=np.float64), top, self.model)

    def intervals(self, comp_m: np.ndarray, comp_s: np.ndarray) -> np.ndarray:
        """The central ``level`` interval (n, 2) of each row's mixture, unclipped."""
        return kernels.mixture_quantiles(comp_m, comp_s, self.probs, self.z)

    def predict(self, means, chols, local_user, items):
        """(mean, lower, upper) clipped to the rating range, for (reader, item) pairs."""
        comp_m, comp_s = self.components(means, chols, local_user, items)
        q = self.intervals(comp_m, comp_s)
        lo, hi = self.rating_range
        return np.clip(comp_m.mean(axis=1), lo, hi), np.clip(q[:, 0], lo, hi), np.clip(q[:, 1], lo, hi)

    def components(self, means, chols, local_user, items):
        return kernels.pair_components(means, chols, np.asarray(local_user, dtype=np.int64),
                                       np.asarray(items, dtype=np.int64), self.model)

    def recommend(self, rated: sp.csr_matrix, exclude: sp.csr_matrix, n: int, chunk: int = 2048):
        """Fold in readers from their ratings, then top n by predictive mean per reader:
        (items, mean, lower, upper), each (n_readers, n), -1 / NaN where nothing is left."""
        rated = rated.tocsr()
        rated.sort_indices()
        exclude = exclude.tocsr()
        out = empty_result(rated.shape[0], n)
        for a in range(0, rated.shape[0], chunk):
            b = min(a + chunk, rated.shape[0])
            part = rated_arrays(rated[a:b])
            means = self.fold_means(part)

            def components(top, means=means, part=part):
                return self.top_components(part, means, top)

            self._top(means, components, exclude[a:b], n, out, a)
        return out

    def recommend_known(self, x: np.ndarray, exclude: sp.csr_matrix, n: int, out=None, offset: int = 0):
        """Top n for readers given by per-sample draws ``x (U, S, k+1)`` (factors then bias)."""
        out = out if out is not None else empty_result(x.shape[0], n)
        x = np.ascontiguousarray(x, dtype=np.float64)

        def components(top):
            return self.known_components(x, top)

        self._top(x, components, exclude.tocsr(), n, out, offset)
        return out

    def _top(self, means, components, exclude, n, out, a):
        items, mean, lower, upper = out
        n_s = self.mu.shape[0]
        n_rows = means.shape[0]
        n_eff = min(n, self.stacked.shape[1])
        b = a + n_rows
        score = means.reshape(n_rows, -1).astype(np.float32) @ self.stacked
        score /= n_s
        score += self.constant[None, :].astype(np.float32)
        top, top_score = kernels.top_n_rows(score, exclude.indptr.astype(np.int64), exclude.indices.astype(np.int64),
                                            n_eff)
        del score
        valid = top >= 0
        top = np.maximum(top, 0)
        comp_m, comp_s = components(top)
        q = self.intervals(comp_m, comp_s)
        lo_r, hi_r = self.rating_range
        shape = (n_rows, n_eff)
        raw = comp_m.mean(axis=1).reshape(shape)
        lo = np.clip(q[:, 0], lo_r, hi_r).reshape(shape)
        hi = np.clip(q[:, 1], lo_r, hi_r).reshape(shape)
        # float32 screening may order near-ties differently from the exact means: re-sort the
        # chosen n by their exact (unclipped) mean, ties by item index, so the list is monotone.
        order = _order_rows(np.where(valid, raw, -np.inf), top)
        top, raw, lo, hi, valid = (np.take_along_axis(arr, order, axis=1) for arr in (top, raw, lo, hi, valid))
        m = np.clip(raw, lo_r, hi_r)
        items[a:b, :n_eff] = np.where(valid, top, -1)
        mean[a:b, :n_eff] = np.where(valid, m, np.nan)
        lower[a:b, :n_eff] = np.where(valid, lo, np.nan)
        upper[a:b, :n_eff] = np.where(valid, hi, np.nan)


def empty_result(n_readers: int, n: int):
    return (np.full((n_readers, n), -1, dtype=np.int64), np.full((n_readers, n), np.nan),
            np.full((n_readers, n), np.nan), np.full((n_readers, n), np.nan))


def _order_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row: descending values, ties by ascending idx (invalid slots sort last)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    by_idx = np.argsort(idx, axis=1, kind="stable")
    by_val = np.argsort(-np.take_along_axis(v, by_idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_idx, by_val, axis=1)


def rated_arrays(rated: sp.csr_matrix) -> Csr:
    """A readers x model items ratings matrix as the kernels read it (sorted rows, int64, float64)."""
    rated = rated.tocsr()
    rated.sort_indices()
    return Csr(rated.indptr.astype(np.int64), rated.indices.astype(np.int64), rated.data.astype(np.float64))
