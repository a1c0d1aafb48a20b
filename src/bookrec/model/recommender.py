"""``Recommender``: what a reader is likely to pick up and to like, with honest uncertainty.

Two models, each answering one question:

- relevance (:class:`~bookrec.model.relevance.ItemRelevance`, trained on every interaction, rated
  or not): will the reader pick this book up? It chooses the candidates;
- rating (:class:`~bookrec.model.bpmf.BPMF`, trained on the explicit ratings): how much will the
  reader like it? Its posterior predictive gives the rating's mean, interval and P(liked).

Every ranking mode orders the same ``n_candidates`` most relevant unread items, each by its own
score: ``for_you`` = relevance x P(liked)^like_weight (likely to be picked and liked), ``mean``
(predicted rating), ``lower`` (the interval's lower end, "safe bets") and ``sample`` (one draw
from the rating's posterior predictive, Thompson sampling, "explore"). A reader with no
interactions gets the most read items as candidates.

A rating of 0 means an interaction without a rating (BookCrossing's convention); "liked" means a
rating in the top ``1 - liked_quantile`` of ``rating_range`` (>= 7.3 on 1-10, >= 3.65 on 0.5-5).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr

from bookrec.contracts.params import default
from bookrec.model import metrics
from bookrec.model.bpmf import BPMF, _as_index
from bookrec.model.params import NotFittedError, ParamsMixin
from bookrec.model.relevance import ItemRelevance, binary_matrix, most_read_unexcluded

RANK_BY = ("for_you", "mean", "lower", "sample")


def _as_exclusion(exclude_csr, n_rows: int, n_items: int) -> sp.csr_matrix:
    if hasattr(exclude_csr, "indptr") and hasattr(exclude_csr, "shape"):
        return sp.csr_matrix(exclude_csr)
    indptr, indices = exclude_csr
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(len(indptr) - 1, n_items))


def _differs(a, b) -> bool:
    """``a != b`` for parameter values, arrays included (whose ``!=`` has no single truth value)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return not np.array_equal(a, b)
    return a != b


class Recommender(ParamsMixin):
    """Top-N recommendations from a relevance model and a Bayesian rating model (scikit-learn style).

    ``fit(user_idx, item_idx, ratings)`` takes every interaction; ``recommend_all(users, n)`` returns
    ``(items, score, mean, lower, upper)`` arrays of shape (len(users), n), -1 / nan where empty.
    """

    PARAM_NAMES = (
        "rating_range", "seed", "n_factors", "n_samples", "burn_in", "n_chains", "max_kept_samples",
        "relevance_l2", "relevance_popularity_l2", "relevance_max_items", "min_item_interactions", "n_candidates", "like_weight",
        "liked_quantile", "level", "show_progress",
    )

    def __init__(
        self,
        rating_range: tuple[float, float] = default("rating_range"),
        seed: int = default("seed"),
        n_factors: int = default("n_factors"),
        n_samples: int = default("n_samples"),
        burn_in: int = default("burn_in"),
        n_chains: int = default("n_chains"),
        max_kept_samples: int = default("max_kept_samples"),
        relevance_l2: float | str = "auto",
        relevance_popularity_l2: float = 0.0,
        relevance_max_items: int = 8000,
        min_item_interactions: int = 2,
        n_candidates: int = 50,
        like_weight: float = 0.25,
        liked_quantile: float = 0.7,
        level: float = 0.9,
        show_progress: bool = False,
    ):
        self.rating_range = rating_range
        self.seed = seed
        self.n_factors = n_factors
        self.n_samples = n_samples
        self.burn_in = burn_in
        self.n_chains = n_chains
        self.max_kept_samples = max_kept_samples
        self.relevance_l2 = relevance_l2
        self.relevance_popularity_l2 = relevance_popularity_l2
        self.relevance_max_items = relevance_max_items
        self.min_item_interactions = min_item_interactions
        self.n_candidates = n_candidates
        self.like_weight = like_weight
        self.liked_quantile = liked_quantile
        self.level = level
        self.show_progress = show_progress

    def __repr__(self) -> str:
        defaults = Recommender().get_params()
        changed = {k: v for k, v in self.get_params().items() if _differs(v, defaults[k])}
        return f"Recommender({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    @property
    def liked_threshold(self) -> float:
        lo, hi = self._rating_bounds()
        return lo + self.liked_quantile * (hi - lo)

    def _rating_bounds(self) -> tuple[float, float]:
        """``rating_range`` as two floats: the parameter is kept as given (a tuple, a list or an
        array), so that ``clone`` finds the very object it passed in."""
        bounds = np.asarray(self.rating_range, dtype=np.float64).ravel()
        if bounds.shape != (2,) or not np.all(np.isfinite(bounds)) or not bounds[0] < bounds[1]:
            raise ValueError("rating_range must be a finite (lowest, highest) pair with lowest < highest, "
                             f"not {self.rating_range!r}")
        return float(bounds[0]), float(bounds[1])

    def _checked_ratings(self, ratings) -> np.ndarray:
        """Ratings as floats, 0 meaning read but not rated; any other value must lie in rating_range."""
        r = np.asarray(ratings, dtype=np.float64).ravel()
        if r.size and (not np.all(np.isfinite(r)) or r.min() < 0):
            raise ValueError("ratings must be finite, 0 (no rating) or positive")
        lo, hi = self._rating_bounds()
        explicit = r[r > 0]
        if explicit.size and (explicit.min() < lo or explicit.max() > hi):
            raise ValueError(f"explicit ratings must lie in rating_range ({lo:g}, {hi:g})")
        return r

    # ------------------------------------------------------------------------------ fit
    def fit(self, user_idx, item_idx, ratings, n_users=None, n_items=None) -> Recommender:
        u = _as_index("user_idx", np.ravel(user_idx))
        i = _as_index("item_idx", np.ravel(item_idx))
        r = self._checked_ratings(ratings)
        if not (u.shape == i.shape == r.shape):
            raise ValueError("user_idx, item_idx and ratings must have the same length")
        if u.size == 0:
            raise ValueError("no interactions to fit")
        lo, hi = self._rating_bounds()
        explicit = r > 0
        if self.like_weight < 0 or not 0 < self.liked_quantile < 1 or not 0 < self.level < 1:
            raise ValueError("need like_weight >= 0, 0 < liked_quantile < 1 and 0 < level < 1")
        self.n_users_ = int(n_users if n_users is not None else u.max() + 1)
        self.n_items_ = int(n_items if n_items is not None else i.max() + 1)
        if u.max() >= self.n_users_ or i.max() >= self.n_items_:
            raise ValueError("an index is out of range of n_users / n_items")
        self.seen_ = binary_matrix(u, i, self.n_users_, self.n_items_)
        self.relevance_ = ItemRelevance(
            l2=self.relevance_l2, popularity_l2=self.relevance_popularity_l2, max_items=self.relevance_max_items,
            min_item_interactions=self.min_item_interactions, seed=self.seed,
        ).fit(self.seen_)
        self.popularity_ = self.relevance_.popularity_
        self.rating_model_ = None
        if explicit.sum() >= 2:
            self.rating_model_ = BPMF(
                n_factors=self.n_factors, n_samples=self.n_samples, burn_in=self.burn_in, n_chains=self.n_chains,
                max_kept_samples=self.max_kept_samples, seed=self.seed, rating_range=(lo, hi),
                show_progress=self.show_progress,
            ).fit(u[explicit], i[explicit], r[explicit], n_users=self.n_users_, n_items=self.n_items_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "relevance_"):
            raise NotFittedError("this Recommender is not fitted yet: call fit first")

    # ------------------------------------------------------------------------------ candidates
    def _candidates(self, history: sp.csr_matrix, exclude: sp.csr_matrix, m: int):
        """(items, relevance, relevance sd, because) for each row: the m most relevant unread items;
        rows without a usable history take the most read unexcluded items (relevance nan)."""
        items, rel, rel_sd, because = self.relevance_.recommend(history, m, exclude)
        cold = ~(because >= 0).any(axis=1)  # no candidate in the history: nothing to relate to
        if cold.any():
            pop = self.popularity_
            order = np.lexsort((np.arange(len(pop)), -pop))
            items[cold] = most_read_unexcluded(order[pop[order] > 0], exclude[np.flatnonzero(cold)],
                                               items.shape[1])
        return items, rel, rel_sd, because, cold

    def _rating_predictive(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator):
        """Mean, lower, upper, P(liked) and one Thompson draw of the rating for each (user, item)."""
        shape = items.shape
        flat_u = np.repeat(users, shape[1])
        flat_i = items.ravel()
        ok = flat_i >= 0
        out = [np.full(flat_i.shape, np.nan) for _ in range(5)]
        if self.rating_model_ is None or not ok.any():
            return [o.reshape(shape) for o in out]
        means, sds = self.rating_model_.predictive_components(flat_u[ok], flat_i[ok])
        sds2 = np.broadcast_to(sds, means.shape)
        mean, lower, upper = metrics.mixture_interval(means, sds, self.level, self._rating_bounds())
        p_liked = ndtr((means - self.liked_threshold) / sds2).mean(axis=1)
        # Thompson sampling: one kept posterior sample per reader, its expected rating per item
        pick = np.repeat(rng.integers(0, means.shape[1], size=len(users)), shape[1])[ok]
        draw = means[np.arange(means.shape[0]), pick]
        for dst, src in zip(out, (mean, lower, upper, p_liked, draw)):
            dst[ok] = src
        return [o.reshape(shape) for o in out]

    # ------------------------------------------------------------------------------ recommend
    def recommend_all(self, users, n: int = 10, exclude_csr=None, rank_by: str = "for_you",
                      seed: int | None = None, chunk: int = 2048, return_reasons: bool = False):
        """Top-n for each user: (items, score, mean, lower, upper), arrays (len(users), n).

        ``exclude_csr`` (users x items, indexed by user id, or an (indptr, indices) pair) defaults
        to each reader's fitted interactions. ``score`` is the mode's own sort key. With
        ``return_reasons`` a sixth array holds, per slot, the reader's item most associated with
        the recommendation ("because you read ..."), -1 when none.
        """
        self._check_fitted()
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}")
        users = _as_index("users", np.atleast_1d(users))
        if users.size and users.max() >= self.n_users_:
            raise IndexError("user index out of range")
        n = int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        exclusion = self.seen_ if exclude_csr is None else _as_exclusion(exclude_csr, self.n_users_, self.n_items_)
        if exclusion.shape[0] < self.n_users_:
            exclusion = sp.vstack([exclusion, sp.csr_matrix((self.n_users_ - exclusion.shape[0], self.n_items_))]).tocsr()
        rng = np.random.default_rng(self.seed if seed is None else seed)
        m = max(int(self.n_candidates), n)
        results = [np.full((len(users), n), -1, dtype=np.int64)] + [np.full((len(users), n), np.nan) for _ in range(4)]
        reasons = np.full((len(users), n), -1, dtype=np.int64)
        for a in range(0, len(users), chunk):
            rows = users[a:a + chunk]
            history = self.seen_[rows]
            exclude = exclusion[rows]
            cand, rel, _rel_sd, because, cold = self._candidates(history, exclude, m)
            mean, lower, upper, p_liked, draw = self._rating_predictive(rows, cand, rng)
            score = self._mode_score(rank_by, cand, rel, cold, mean, lower, p_liked, draw)
            order = np.argsort(-np.where(cand >= 0, score, -np.inf), axis=1, kind="stable")[:, :n]
            picked = np.take_along_axis(cand, order, axis=1)
            empty = picked < 0
            for dst, src in zip(results, (cand, score, mean, lower, upper)):
                taken = np.take_along_axis(src, order, axis=1)
                dst[a:a + len(rows), : order.shape[1]] = np.where(empty, -1 if src is cand else np.nan, taken)
            reasons[a:a + len(rows), : order.shape[1]] = np.where(empty, -1, np.take_along_axis(because, order, axis=1))
        return (*results, reasons) if return_reasons else tuple(results)

    def _mode_score(self, rank_by, cand, rel, cold, mean, lower, p_liked, draw) -> np.ndarray:
        if rank_by == "for_you":
            pick = np.where(cold[:, None], self._cold_relevance(cand), np.maximum(rel, 0.0))
            liked = np.nan_to_num(p_liked, nan=0.5)
            return pick * liked ** self.like_weight
        fallback = -np.arange(cand.shape[1], dtype=np.float64)[None, :] * 1e-9  # keep relevance order
        source = {"mean": mean, "lower": lower, "sample": draw}[rank_by]
        return np.where(np.isnan(source), fallback, source)

    def _cold_relevance(self, cand: np.ndarray) -> np.ndarray:
        """Share of readers who read each candidate: a reader with no history picks what most do."""
        pop = self.popularity_[np.maximum(cand, 0)].astype(np.float64)
        return np.where(cand >= 0, pop / max(self.n_users_, 1), 0.0)

    def recommend(self, user: int, n: int = 10, exclude=None, rank_by: str = "for_you", seed: int | None = None):
        """Top-n for one user: (items, score, mean, lower, upper), empty slots dropped.
        ``exclude``: item indices to skip (default: the user's fitted interactions)."""
        exclude_csr = None
        if exclude is not None:
            excl = _as_index("exclude", np.ravel(exclude))
            indptr = np.zeros(self.n_users_ + 1, dtype=np.int64)
            indptr[int(user) + 1:] = excl.size
            exclude_csr = (indptr, excl)
        out = self.recommend_all(np.array([user]), n, exclude_csr, rank_by, seed)
        keep = out[0][0] >= 0
        return tuple(x[0][keep] for x in out)

    def similar_items(self, item: int, n: int = 10):
        """Items read together with ``item`` (the relevance model's weights): (items, weight, sd),
        empty when too few readers read ``item`` for it to be a relevance candidate."""
        self._check_fitted()
        return self.relevance_.similar_items(item, n)

    def fold_in(self, item_idx, ratings=None, n: int = 10, rank_by: str = "for_you", seed: int | None = None):
        """Recommendations for a new reader from the items they read (ratings: 0 or None = read,
        not rated): (items, score, mean, lower, upper), the relevance model's candidates ranked
        with the rating model's exact per-sample fold-in from the rated ones."""
        from bookrec.model.foldin import fold_in_components, fold_in_from_arrays

        self._check_fitted()
        if rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}")
        n = int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        items = _as_index("item_idx", np.ravel(item_idx))
        r = np.zeros(len(items)) if ratings is None else self._checked_ratings(ratings)
        if r.shape != items.shape:
            raise ValueError("item_idx and ratings must have the same length")
        if items.size and items.max() >= self.n_items_:
            raise IndexError("item index out of range")
        history = binary_matrix(np.zeros(len(items), dtype=np.int64), items, 1, self.n_items_)
        cand, rel, _sd, because, cold = self._candidates(history, history, max(int(self.n_candidates), n))
        mean = lower = upper = p_liked = draw = np.full(cand.shape, np.nan)
        ok = cand[0] >= 0
        if self.rating_model_ is not None and ok.any():
            arrays = self.rating_model_.serving_arrays()
            rated = r > 0
            fold = fold_in_from_arrays(arrays, items[rated], r[rated], seed=seed)
            means, sds = fold_in_components(arrays, fold, cand[0][ok])
            m_, lo_, hi_ = metrics.mixture_interval(means, sds, self.level, self._rating_bounds())
            pl = ndtr((means - self.liked_threshold) / sds).mean(axis=1)
            rng = np.random.default_rng(self.seed if seed is None else seed)
            dr = means[:, int(rng.integers(means.shape[1]))]
            mean, lower, upper, p_liked, draw = (np.full(cand.shape, np.nan) for _ in range(5))
            for dst, src in zip((mean, lower, upper, p_liked, draw), (m_, lo_, hi_, pl, dr)):
                dst[0, ok] = src
        score = self._mode_score(rank_by, cand, rel, cold, mean, lower, p_liked, draw)
        order = np.argsort(-np.where(cand >= 0, score, -np.inf), axis=1, kind="stable")[0, :n]
        keep = cand[0, order] >= 0
        order = order[keep]
        return cand[0, order], score[0, order], mean[0, order], lower[0, order], upper[0, order]
