"""Tiers 1-3: the relevance model picks each reader's candidates, the rating models score them.

For every reader with an interaction on a relevance candidate, the ``n_candidates`` most
relevant unread works (:class:`~bookrec.model.relevance.ItemRelevance`, fitted on every
interaction) get a rating predictive from the best rating model that knows the reader:

- ``personal``: the BPMF posterior predictive of the model's own readers (kept draws);
- ``folded_in``: the exact per-sample fold-in of the reader's explicit ratings on model works;
- ``similar_reading`` (and works outside the BPMF core for every tier): the book-level shrinkage
  model (:class:`~bookrec.model.shrinkage.RatingModel`) with the reader's shrunk offset.

P(liked) = P(rating >= liked threshold) under that predictive, and the list is sorted by the
``for_you`` score relevance x P(liked)^like_weight. Each item keeps the reader's work with the
strongest weight towards it ("because you read").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtr, ndtri

from bookrec.model.foldin import FoldInMany, rated_arrays
from bookrec.model.interactions import Interactions
from bookrec.model.relevance import ItemRelevance, most_read_unexcluded
from bookrec.model.shrinkage import RatingModel


@dataclass
class ForYouBlock:
    """Top-n per reader: works and every figure the payload shows; -1 / nan where empty."""

    users: np.ndarray  # user indices
    works: np.ndarray  # (n_users, n) int64
    score: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    relevance: np.ndarray
    relevance_sd: np.ndarray
    p_liked: np.ndarray
    because: np.ndarray  # work index of the reason, -1 = none

    FIELDS = ("works", "score", "predicted", "lower", "upper", "relevance", "relevance_sd", "p_liked", "because")

    @classmethod
    def empty(cls, users: np.ndarray, n: int) -> ForYouBlock:
        shape = (len(users), n)
        return cls(users, np.full(shape, -1, np.int64), *(np.full(shape, np.nan) for _ in range(7)),
                   np.full(shape, -1, np.int64))

    @classmethod
    def concat(cls, users: np.ndarray, blocks: list[ForYouBlock], n: int) -> ForYouBlock:
        if not blocks:
            return cls.empty(users, n)
        return cls(users, *(np.concatenate([getattr(b, f) for b in blocks]) for f in cls.FIELDS))


@dataclass(frozen=True)
class KnownReaders:
    """A chunk of the model's own readers, scored from their kept BPMF draws (U, S, k+1)."""

    draws: np.ndarray

    @classmethod
    def of(cls, model, positions: np.ndarray | slice) -> KnownReaders:
        """The readers at ``positions`` among a fitted BPMF ``model``'s users."""
        x = np.concatenate([model.user_factors_[:, positions, :], model.user_bias_[:, positions, None]], axis=2)
        return cls(np.transpose(x, (1, 0, 2)))

    def components(self, folder: FoldInMany, top: np.ndarray):
        return folder.known_components(self.draws, top)

    def __sizeof__(self) -> int:  # what a cluster ships per shard
        return object.__sizeof__(self) + self.draws.nbytes


@dataclass(frozen=True)
class FoldedReaders:
    """A chunk of readers folded in from their explicit ratings on model works (U, core works)."""

    rated: sp.csr_matrix

    def components(self, folder: FoldInMany, top: np.ndarray):
        part = rated_arrays(self.rated)
        return folder.top_components(part, folder.fold_means(part), top)

    def __sizeof__(self) -> int:
        r = self.rated
        return object.__sizeof__(self) + r.data.nbytes + r.indices.nbytes + r.indptr.nbytes


# Where a chunk's BPMF predictives come from; None: the book-level rating model alone.
ReaderPosterior = KnownReaders | FoldedReaders | None


@dataclass
class Candidates:
    """One chunk's relevance candidates (n_candidates per reader) and their rating predictives.
    ``mixture`` = (entries BPMF scores, component means, component sds) or None; the exact
    interval of such an entry is written on demand (``interval_done``)."""

    users: np.ndarray
    works: np.ndarray
    relevance: np.ndarray
    relevance_sd: np.ndarray
    because: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    p_liked: np.ndarray
    mixture: tuple | None
    interval_done: np.ndarray = None

    def __post_init__(self) -> None:
        if self.interval_done is None:
            self.interval_done = np.zeros(self.works.shape, dtype=bool)


class ForYouRanker:
    """Ranks readers of tiers 1-3 in chunks (see the module docstring)."""

    def __init__(
        self,
        relevance: ItemRelevance,
        interactions: Interactions,
        rating_model: RatingModel,
        core_works: np.ndarray,
        folder: FoldInMany | None,
        n: int,
        n_candidates: int,
        like_weight: float,
        liked_threshold: float,
        level: float,
    ) -> None:
        self.relevance = relevance
        self.interactions = interactions
        self.rating_model = rating_model
        self.folder = folder
        self.n = n
        self.n_candidates = max(n_candidates, n)
        self.like_weight = like_weight
        self.liked_threshold = liked_threshold
        self.level = level
        self.z = float(ndtri((1 + level) / 2))
        n_works = interactions.seen.shape[1]
        self.work_to_core = np.full(n_works, -1, dtype=np.int64)
        self.work_to_core[core_works] = np.arange(len(core_works))

    def rank(self, users: np.ndarray, posterior: ReaderPosterior = None, mode: str = "for_you",
             rng: np.random.Generator | None = None) -> ForYouBlock:
        """One chunk of readers. ``posterior``: where BPMF's predictives of these readers come
        from (None: the book-level model alone). ``mode`` orders the same candidates: for_you,
        mean, lower or sample (a draw from each item's predictive normal, seeded by ``rng``)."""
        return self.order(self.candidates(users, posterior), mode, rng)

    def candidates(self, users: np.ndarray, posterior: ReaderPosterior = None) -> Candidates:
        """The chunk's relevance candidates with their rating predictives (intervals still open)."""
        seen = self.interactions.seen[users]
        works, rel, rel_sd, because = self.relevance.recommend(seen, self.n_candidates, seen)
        cold = ~(because >= 0).any(axis=1)  # a reason exists wherever the reader has a candidate in history
        if cold.any():  # no history among the candidates: the most read unread candidates instead
            works[cold], rel[cold], rel_sd[cold], because[cold] = self._popular(seen[np.flatnonzero(cold)])
        pred, lower, upper, p_liked, mixture = self._rating(users, works, posterior)
        return Candidates(users, works, rel, rel_sd, because, pred, lower, upper, p_liked, mixture)

    def order(self, c: Candidates, mode: str = "for_you", rng: np.random.Generator | None = None) -> ForYouBlock:
        """The top n of ``c`` by ``mode``'s score. The mixture quantiles cost most, so for_you and
        mean compute them for the kept items only."""
        if mode in ("lower", "sample"):
            self._fill_intervals(c, np.ones(c.works.shape, dtype=bool))
        if mode == "for_you":
            score = np.maximum(c.relevance, 0.0) * np.nan_to_num(c.p_liked, nan=0.5) ** self.like_weight
        elif mode == "mean":
            score = c.predicted
        elif mode == "lower":
            score = c.lower
        elif mode == "sample":
            rng = rng or np.random.default_rng(0)
            score = c.predicted + (c.upper - c.lower) / (2 * self.z) * rng.standard_normal(c.predicted.shape)
        else:
            raise ValueError("mode must be for_you, mean, lower or sample")
        order = np.argsort(-np.where(c.works >= 0, score, -np.inf), axis=1, kind="stable")[:, : self.n]
        kept = np.zeros(c.works.shape, dtype=bool)
        np.put_along_axis(kept, order, True, axis=1)
        self._fill_intervals(c, kept)
        out = ForYouBlock.empty(c.users, self.n)
        empty = np.take_along_axis(c.works, order, axis=1) < 0
        for name, src in (("works", c.works), ("score", score), ("predicted", c.predicted), ("lower", c.lower),
                          ("upper", c.upper), ("relevance", c.relevance), ("relevance_sd", c.relevance_sd),
                          ("p_liked", c.p_liked), ("because", c.because)):
            dst = getattr(out, name)
            dst[:, : order.shape[1]] = np.where(empty, dst[:, : order.shape[1]], np.take_along_axis(src, order, axis=1))
        return out

    def _popular(self, seen: sp.csr_matrix):
        """Most read unread candidates (relevance = share of readers, no sd, no reason)."""
        r = self.relevance
        works = most_read_unexcluded(r.items_, seen, self.n_candidates)  # items_: most read first
        share = np.where(works >= 0, r.popularity_[np.maximum(works, 0)] / max(r.n_users_, 1), np.nan)
        return works, share, np.full(works.shape, np.nan), np.full(works.shape, -1, dtype=np.int64)

    def _rating(self, users, works, posterior: ReaderPosterior):
        """(predicted, lower, upper, p_liked, mixture) per (reader, candidate). Where BPMF knows both
        the reader and the work, ``mixture`` holds its predictive components and the mask of those
        entries; their lower and upper are filled by :meth:`_mixture_intervals`."""
        shape = works.shape
        safe = np.maximum(works, 0)
        rm = self.rating_model
        offset, offset_var = rm.user_offsets(self.interactions, users)
        mean = rm.post_mean[safe] + offset[:, None]
        sd = np.sqrt(rm.sigma2 + rm.post_var[safe] + offset_var[:, None])
        lo_r, hi_r = rm.rating_min, rm.rating_max
        pred = np.clip(mean, lo_r, hi_r)
        lower = np.clip(mean - self.z * sd, lo_r, hi_r)
        upper = np.clip(mean + self.z * sd, lo_r, hi_r)
        p_liked = ndtr((mean - self.liked_threshold) / sd)
        core = self.work_to_core[safe]
        in_core = (works >= 0) & (core >= 0)
        mixture = None
        if self.folder is not None and posterior is not None and in_core.any():
            comp_m, comp_s = posterior.components(self.folder, np.where(in_core, core, 0))
            model_mean = comp_m.mean(axis=1).reshape(shape)
            model_p = ndtr((comp_m - self.liked_threshold) / comp_s).mean(axis=1).reshape(shape)
            pred = np.where(in_core, np.clip(model_mean, lo_r, hi_r), pred)
            p_liked = np.where(in_core, model_p, p_liked)
            mixture = (in_core, comp_m, comp_s)
        invalid = works < 0
        pred, lower, upper, p_liked = (np.where(invalid, np.nan, a) for a in (pred, lower, upper, p_liked))
        return pred, lower, upper, p_liked, mixture

    def _fill_intervals(self, c: Candidates, wanted: np.ndarray) -> None:
        """Writes the exact mixture interval into ``c.lower``/``c.upper`` where ``wanted``, BPMF
        applies and it is not there yet."""
        if c.mixture is None:
            return
        in_core, comp_m, comp_s = c.mixture
        todo = in_core & wanted & ~c.interval_done
        flat = np.flatnonzero(todo.ravel())
        if not len(flat):
            return
        q = self.folder.intervals(np.ascontiguousarray(comp_m[flat]), np.ascontiguousarray(comp_s[flat]))
        lo_r, hi_r = self.rating_model.rating_min, self.rating_model.rating_max
        rows, cols = np.unravel_index(flat, c.lower.shape)
        c.lower[rows, cols] = np.clip(q[:, 0], lo_r, hi_r)
        c.upper[rows, cols] = np.clip(q[:, 1], lo_r, hi_r)
        c.interval_done |= todo
