"""What the API holds in memory for one published version: the serving model, the relevance
model's item-item structure, the catalogue and its search index. Built once per version from the
store's blobs (never per request), in a worker thread so the event loop keeps serving while a new
version loads.

Also the model computations the API does in-process: cold-start candidates from the relevance
blob ranked with the fold-in of the rated books (via `bookrec.model.foldin`), and similar books
(read together, from the relevance blob; the posterior book factors' cosine when a version has no
relevance blob or the book is not one of its candidates).
"""

from __future__ import annotations

import zipfile
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bookrec.api.catalog import Catalog, CatalogFormatError
from bookrec.api.relevance import RelevanceFormatError, RelevanceModel
from bookrec.api.search import SearchIndex
from bookrec.contracts.payloads import recommendation_item
from bookrec.contracts.serving import ServingModel

log = logging.getLogger(__name__)


class BundleUnavailable(Exception):
    """The published version lacks something a request needs (the message says what)."""


def load_serving_arrays(blob: bytes, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """The `serving_model` npz (never unpickled), float arrays as float64 so fold-in does not convert
    the whole model on every request, thinned to at most `max_samples` kept posterior samples.

    `item_factors` (S, I, k) is a view of an item-major (I, S, k) array, also kept as
    `item_factors_flat` (I, S*k): the mean-ranking of a cold start is then one matrix-vector
    product over contiguous memory, with no second copy of the largest array.
    """
    arrays = ServingModel.from_npz(blob).arrays()
    n_samples = arrays["item_factors"].shape[0]
    keep: slice | np.ndarray = slice(None)
    if max_samples is not None and n_samples > max_samples:
        # Evenly spaced samples: the chains are thinned further, their mixture is still the posterior.
        keep = np.unique(np.linspace(0, n_samples - 1, max_samples).round().astype(np.int64))
    for name in ServingModel.number_fields():
        if name == "item_factors":
            v = arrays[name][keep]
            item_major = np.ascontiguousarray(np.transpose(v, (1, 0, 2)), dtype=np.float64)
            arrays[name] = np.transpose(item_major, (1, 0, 2))
            arrays["item_factors_flat"] = item_major.reshape(item_major.shape[0], -1)
        elif name in arrays and name != "rating_range":
            arrays[name] = np.ascontiguousarray(arrays[name][keep], dtype=np.float64)
        elif name in arrays:
            arrays[name] = np.asarray(arrays[name], dtype=np.float64)
    return arrays


@dataclass
class ServingBundle:
    version: str
    catalog: Catalog | None = None
    search: SearchIndex | None = None
    model: dict[str, np.ndarray] | None = None
    item_of_work: dict[str, int] = field(default_factory=dict)
    unit_factors: np.ndarray | None = None  # (S, I, k) item factors scaled to unit length, for similarity
    interval_level: float = 0.9
    load_seconds: float = 0.0
    _mean_offset: np.ndarray | None = None  # per-work mean of mu + item bias over samples (computed once)
    problems: list[str] = field(default_factory=list)
    # The relevance blob (None: absent from the version, or unreadable: then
    # cold start and similar books fall back to the serving model alone, and `degraded` says why).
    relevance: RelevanceModel | None = None
    degraded: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        version: str,
        catalog_blob: bytes | None,
        model_blob: bytes | None,
        meta: dict[str, Any] | None,
        max_samples: int | None = None,
        relevance_blob: bytes | None = None,
    ) -> "ServingBundle":
        started = time.perf_counter()
        bundle = cls(version=version)
        if meta and isinstance(meta.get("interval_level"), (int, float)):
            bundle.interval_level = float(meta["interval_level"])
        # A broken part disables the endpoints that need it (503 with the reason), not the others.
        if catalog_blob is None:
            bundle.problems.append("the published version has no catalogue")
        else:
            try:
                bundle.catalog = Catalog.from_blob(catalog_blob)
                c = bundle.catalog
                bundle.search = SearchIndex(c.title, c.author, c.n_ratings, groups=c.work_key)
            except CatalogFormatError as exc:
                log.error("version %s: %s", version, exc)
                bundle.catalog = bundle.search = None
                bundle.problems.append("the published catalogue is unreadable")
        if model_blob is None:
            bundle.problems.append("the published version has no serving model")
        else:
            try:
                model = load_serving_arrays(model_blob, max_samples)
                keys = [str(k) for k in model["item_keys"].tolist()]
                v = model["item_factors"]
                if v.ndim != 3 or len(keys) != v.shape[1]:
                    raise ValueError("item_keys do not match item_factors")
                from bookrec.model.similar import unit_factors

                bundle.unit_factors = unit_factors(v).astype(np.float32)
                bundle.item_of_work = {key: i for i, key in enumerate(keys)}
                bundle._mean_offset = model["item_bias"].mean(axis=0) + float(model["mu"].mean())
                bundle.model = model
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.error("version %s: unreadable serving model (%s)", version, type(exc).__name__)
                bundle.problems.append("the published serving model is unreadable")
        if relevance_blob is not None:
            # Optional: a broken one degrades cold start and similar books to the serving model
            # (logged), it never makes an endpoint fail.
            try:
                bundle.relevance = RelevanceModel.from_blob(relevance_blob)
            except RelevanceFormatError as exc:
                log.error("version %s: relevance blob not used: %s", version, exc)
                bundle.degraded.append("the published relevance model is unreadable")
            except Exception:  # whatever else: still only a degradation
                log.exception("version %s: relevance blob not used", version)
                bundle.degraded.append("the published relevance model is unreadable")
        if bundle.model is not None:
            bundle._warm_up()
        bundle.load_seconds = time.perf_counter() - started
        log.info("loaded serving bundle for version %s in %.2f s", version, bundle.load_seconds)
        return bundle

    def _warm_up(self) -> None:
        """Run one fold-in per ranking mode now, so the numba kernels are compiled (or loaded from
        their cache) while the version loads, not during the first reader's request."""
        assert self.model is not None
        lo, hi = (float(x) for x in self.model["rating_range"])
        for rank_by in ("mean", "lower"):
            try:
                self.fold_in_recommend(np.array([0]), np.array([(lo + hi) / 2]), 1, rank_by, seed=0)
            except Exception:  # a model that cannot fold in is reported by the first real request
                log.exception("fold-in warm-up failed for version %s", self.version)
                return
        if self.relevance is not None and len(self.relevance):
            # The relevance path too (scipy's normal tail, the sparse scoring), without a fold-in
            # and with one.
            try:
                for items, ratings in ((np.zeros(0, np.int64), np.zeros(0)), (np.array([0]), np.array([(lo + hi) / 2]))):
                    self.relevance_recommend([0], {}, items, ratings, n_candidates=5, fill_to=1, basis="folded_in", seed=0)
            except Exception:
                log.exception("relevance warm-up failed for version %s", self.version)

    # --- lookups -----------------------------------------------------------------------------
    def _problem(self, part: str, default: str) -> str:
        return next((p for p in self.problems if part in p), default)

    def need_catalog(self) -> tuple[Catalog, SearchIndex]:
        if self.catalog is None or self.search is None:
            raise BundleUnavailable(self._problem("catalogue", "the published model version has no book catalogue"))
        return self.catalog, self.search

    def need_model(self) -> dict[str, np.ndarray]:
        if self.model is None:
            raise BundleUnavailable(self._problem("serving model", "the published model version has no serving model"))
        return self.model

    def work_isbn(self, item: int) -> str | None:
        isbns = self.model.get("item_isbns") if self.model is not None else None
        return str(isbns[item]) if isbns is not None else None

    def work_key(self, item: int) -> str:
        assert self.model is not None
        return str(self.model["item_keys"][item])

    def describe_item(self, item: int) -> dict[str, Any]:
        """Title, author... of a model item (a work), from its representative edition in the catalogue."""
        return self.describe_work(self.work_key(item), self.work_isbn(item))

    def describe_work(self, key: str, isbn: str | None) -> dict[str, Any]:
        """Title, author... of a work, from its representative edition (`isbn` when in the catalogue)."""
        out: dict[str, Any] = {"work_key": key, "isbn": isbn, "title": key.split("|")[0],
                               "author": None, "year": None, "image_url": None}
        if self.catalog is not None:
            row = self.catalog.representative_row(key, out["isbn"])
            if row is not None:
                c = self.catalog
                out.update(isbn=c.isbn[row], title=c.title[row], author=c.author[row], year=c.year[row],
                           image_url=c.image_url[row])
        return out

    # --- model computations (run in a worker thread; numpy releases the GIL) -----------------
    def _top_by_mean(self, fold: Any, exclude: np.ndarray, n: int) -> np.ndarray:
        """Works with the highest predictive mean for a folded-in reader, rated ones excluded.

        mean_j = 1/S sum_s (mu_s + c_sj + b_s + v_sj . u_s), the mixture mean of
        bookrec.model.foldin.fold_in_components; ties go to the lower index, as there.
        """
        from bookrec.model.kernels.topn import top_n

        model = self.need_model()
        n_samples, n_items, k = model["item_factors"].shape
        u = fold.mean[:, :k]  # (S, k)
        assert self._mean_offset is not None
        scores = self._mean_offset + float(fold.mean[:, k].mean()) + model["item_factors_flat"] @ (u.ravel() / n_samples)
        excluded = np.zeros(n_items, dtype=bool)
        excluded[np.asarray(exclude, dtype=np.int64)] = True
        return top_n(scores, max(n, 0), excluded)

    def similar(self, item: int, n: int) -> list[tuple[int, float, float]]:
        """Works most similar to `item`: posterior mean and sd of the cosine of their factor vectors."""
        from bookrec.model.similar import similar_items

        assert self.unit_factors is not None
        top, mean, sd = similar_items(self.unit_factors, item, max(n, 0))
        return [(int(i), float(m), float(s)) for i, m, s in zip(top, mean, sd)]

    def fold_in_recommend(
        self, items: np.ndarray, ratings: np.ndarray, n: int, rank_by: str, seed: int | None = None,
        with_p_liked: bool = False,
    ) -> list[dict[str, Any]]:
        """Exact Bayesian fold-in of a new reader and their top `n` works (rated ones excluded).
        rank_by: mean | lower | sample (anything else ranks by the mean). `with_p_liked` adds each
        work's P(rating >= liked threshold): the mixture mean of the per-sample normal tails."""
        from bookrec.model.foldin import fold_in_components, fold_in_from_arrays, predict_fold_in, rank_items_for_fold_in

        model = self.need_model()
        fold = fold_in_from_arrays(model, items, ratings, seed=seed)
        if rank_by not in ("lower", "sample"):
            # Ranking by the predictive mean needs no variances: score every work with one
            # matrix-vector product, then compute the exact mixture intervals of the top n only
            # (rank_items_for_fold_in would compute S x I variances first: ~20x the work).
            top = self._top_by_mean(fold, items, n)
            mean, lower, upper = predict_fold_in(model, fold, top, level=self.interval_level)
        else:
            top, mean, lower, upper = rank_items_for_fold_in(
                model, fold, n=n, exclude=items, rank_by=rank_by, level=self.interval_level, seed=seed
            )
        p_liked: list[float | None] = [None] * len(top)
        if with_p_liked and len(top):
            from scipy.special import ndtr

            means, sds = fold_in_components(model, fold, top)
            p_liked = ndtr((means - self.liked_threshold()) / sds).mean(axis=1).tolist()
        return [
            recommendation_item(rank, self.describe_item(item), m, lo, hi, "folded_in", p_liked=p)
            for rank, (item, m, lo, hi, p) in enumerate(
                zip(top.tolist(), mean.tolist(), lower.tolist(), upper.tolist(), p_liked), 1
            )
        ]

    # --- the relevance model: similar books and a new reader's candidates ---------------------
    @property
    def rating_range(self) -> tuple[float, float]:
        if self.model is None or "rating_range" not in self.model:
            return (1.0, 10.0)
        lo, hi = (float(x) for x in self.model["rating_range"])
        return lo, hi

    def liked_threshold(self) -> float:
        """Lowest liked rating: the relevance blob's, else the top 30% of the rating scale."""
        if self.relevance is not None:
            return self.relevance.liked_threshold
        lo, hi = self.rating_range
        return lo + 0.7 * (hi - lo)

    def read_together(self, work_key: str, n: int) -> list[dict[str, Any]] | None:
        """Books reading this one raises most (the relevance model's weights), or None when the
        version has no (readable) relevance blob or the work is not one of its candidates."""
        rel = self.relevance
        local = rel.local_of_work.get(work_key) if rel is not None else None
        if rel is None or local is None:
            return None
        out = []
        for j, weight, sd in rel.neighbours_of(local, n):
            d = self.describe_work(rel.item_keys[j], rel.item_isbns[j] or None)
            out.append({
                "isbn": d["isbn"] or "", "work_key": d["work_key"], "title": d["title"], "author": d["author"],
                "year": d["year"], "image_url": d["image_url"], "similarity": round(weight, 6),
                "similarity_sd": round(sd, 6),
            })
        return out

    def _rating_predictive(self, keys: list[str], local: np.ndarray, fold: Any | None):
        """Mean, lower, upper and P(liked) of each candidate's rating: the folded-in reader's
        posterior predictive (a mixture over kept samples) for works in the serving model when
        ratings were folded in, else the relevance blob's book-level normal (fallback_mean/sd)."""
        from scipy.special import ndtr

        from bookrec.model import kernels
        from bookrec.model.foldin import fold_in_components
        from bookrec.model.metrics import central_z

        rel = self.relevance
        assert rel is not None
        lo, hi = self.rating_range
        threshold = rel.liked_threshold
        level = self.interval_level
        m = rel.fallback_mean[local]
        sd = rel.fallback_sd[local]
        z = central_z(level)
        mean, lower, upper = m.copy(), m - z * sd, m + z * sd
        p_liked = ndtr((m - threshold) / sd)
        folded = np.zeros(len(keys), dtype=bool)
        if fold is not None and self.model is not None:
            idx = np.array([self.item_of_work.get(k, -1) for k in keys], dtype=np.int64)
            folded = idx >= 0
            if folded.any():
                means, sds = fold_in_components(self.model, fold, idx[folded])
                q = kernels.mixture_quantiles_ser(means, sds, np.array([(1 - level) / 2, (1 + level) / 2]))
                mean[folded] = means.mean(axis=1)
                lower[folded], upper[folded] = q[:, 0], q[:, 1]
                p_liked[folded] = ndtr((means - threshold) / sds).mean(axis=1)
        return np.clip(mean, lo, hi), np.clip(lower, lo, hi), np.clip(upper, lo, hi), p_liked, folded

    def relevance_recommend(
        self,
        history: list[int],
        reasons: dict[int, dict[str, Any]],
        fold_items: np.ndarray,
        fold_ratings: np.ndarray,
        n_candidates: int,
        fill_to: int,
        basis: str,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """A new reader's candidates, sorted by for_you (relevance x P(liked)^like_weight).

        `history`: the relevance candidates (local indices) the reader read; `reasons[local]` the
        because_you_read reason naming each. The `n_candidates` most relevant unread candidates
        (positive relevance) are rated by the fold-in of (`fold_items`, `fold_ratings`) on the
        serving model when any, else by the book-level fallback. Fewer than `fill_to`: the most
        read remaining candidates fill the list (basis and reason "popular", relevance null,
        for_you score 0: nothing the reader read points to them).
        """
        from bookrec.model.foldin import fold_in_from_arrays

        rel = self.relevance
        assert rel is not None
        cand, relevance, relevance_sd, because = rel.score(np.asarray(history, dtype=np.int64))
        keep = relevance > 0
        cand, relevance, relevance_sd, because = (a[keep][:n_candidates] for a in (cand, relevance, relevance_sd, because))
        n_fill = max(0, fill_to - len(cand))
        fill = np.zeros(0, dtype=np.int64)
        if n_fill:
            taken = np.zeros(len(rel), dtype=bool)
            taken[cand] = True
            taken[np.asarray(history, dtype=np.int64)] = True
            order = rel.popular_order
            fill = order[~taken[order]][:n_fill]
        local = np.concatenate([cand, fill]).astype(np.int64)
        keys = [rel.item_keys[j] for j in local.tolist()]
        fold = None
        if len(fold_items) and self.model is not None:
            fold = fold_in_from_arrays(self.model, fold_items, fold_ratings, seed=seed)
        mean, lower, upper, p_liked, _ = self._rating_predictive(keys, local, fold)
        score = np.zeros(len(local))
        score[: len(cand)] = np.maximum(relevance, 0.0) * p_liked[: len(cand)] ** rel.like_weight
        # for_you order; ties (and the fill, all 0) keep relevance / popularity order.
        order = sorted(range(len(local)), key=lambda pos: -score[pos])
        out = []
        for rank, pos in enumerate(order, 1):
            is_fill = pos >= len(cand)
            out.append(recommendation_item(
                rank, self.describe_work(keys[pos], rel.item_isbns[int(local[pos])] or None),
                mean[pos], lower[pos], upper[pos], "popular" if is_fill else basis, score=score[pos],
                relevance=None if is_fill else relevance[pos], relevance_sd=None if is_fill else relevance_sd[pos],
                p_liked=p_liked[pos],
                reason={"kind": "popular"} if is_fill else reasons.get(int(because[pos]), {"kind": "popular"}),
            ))
        return out
