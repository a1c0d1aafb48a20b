"""What the API holds in memory for one published version: the serving model, the catalogue and
its search index. Built once per version from the store's blobs (never per request), in a worker
thread so the event loop keeps serving while a new version loads.

Also the model computations the API does in-process: cold-start fold-in (via
`bookrec.model.foldin`) and similar books from the posterior book factors.
"""

from __future__ import annotations

import io
import zipfile
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bookrec.api.catalog import Catalog, CatalogFormatError
from bookrec.api.search import SearchIndex

log = logging.getLogger(__name__)

_FLOAT_KEYS = ("item_factors", "item_bias", "mu", "alpha", "mu_user", "lambda_user", "tau_user_bias", "rating_range")


class BundleUnavailable(Exception):
    """The published version lacks something a request needs (the message says what)."""


def load_serving_arrays(blob: bytes, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """The `serving_model` npz (never unpickled), float arrays as float64 so fold-in does not convert
    the whole model on every request, thinned to at most `max_samples` kept posterior samples.

    `item_factors` (S, I, k) is a view of an item-major (I, S, k) array, also kept as
    `item_factors_flat` (I, S*k): the mean-ranking of a cold start is then one matrix-vector
    product over contiguous memory, with no second copy of the largest array.
    """
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    n_samples = arrays["item_factors"].shape[0]
    keep: slice | np.ndarray = slice(None)
    if max_samples is not None and n_samples > max_samples:
        # Evenly spaced samples: the chains are thinned further, their mixture is still the posterior.
        keep = np.unique(np.linspace(0, n_samples - 1, max_samples).round().astype(np.int64))
    for name in _FLOAT_KEYS:
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

    @classmethod
    def build(
        cls,
        version: str,
        catalog_blob: bytes | None,
        model_blob: bytes | None,
        meta: dict[str, Any] | None,
        max_samples: int | None = None,
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
                bundle.unit_factors = (v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)).astype(
                    np.float32
                )
                bundle.item_of_work = {key: i for i, key in enumerate(keys)}
                bundle._mean_offset = model["item_bias"].mean(axis=0) + float(model["mu"].mean())
                bundle.model = model
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.error("version %s: unreadable serving model (%s)", version, type(exc).__name__)
                bundle.problems.append("the published serving model is unreadable")
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
        key = self.work_key(item)
        out: dict[str, Any] = {"work_key": key, "isbn": self.work_isbn(item), "title": key.split("|")[0],
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
        model = self.need_model()
        n_samples, n_items, k = model["item_factors"].shape
        u = fold.mean[:, :k]  # (S, k)
        assert self._mean_offset is not None
        scores = self._mean_offset + float(fold.mean[:, k].mean()) + model["item_factors_flat"] @ (u.ravel() / n_samples)
        scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        n = min(n, n_items - len(set(np.asarray(exclude).tolist())))
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, n - 1)[:n]
        return top[np.lexsort((top, -scores[top]))]

    def similar(self, item: int, n: int) -> list[tuple[int, float, float]]:
        """Works most similar to `item`: posterior mean and sd of the cosine of their factor vectors."""
        assert self.unit_factors is not None
        u = self.unit_factors
        cos = np.einsum("sik,sk->si", u, u[:, item, :], dtype=np.float64)  # (S, I)
        mean, sd = cos.mean(axis=0), cos.std(axis=0)
        mean[item] = -np.inf
        n = min(n, max(len(mean) - 1, 0))
        if n == 0:
            return []
        top = np.argpartition(-mean, n - 1)[:n]
        top = top[np.lexsort((top, -mean[top]))]
        return [(int(i), float(mean[i]), float(sd[i])) for i in top]

    def fold_in_recommend(
        self, items: np.ndarray, ratings: np.ndarray, n: int, rank_by: str, seed: int | None = None
    ) -> list[dict[str, Any]]:
        """Exact Bayesian fold-in of a new reader and their top `n` works (rated ones excluded)."""
        from bookrec.model.foldin import fold_in_from_arrays, predict_fold_in, rank_items_for_fold_in

        model = self.need_model()
        fold = fold_in_from_arrays(model, items, ratings, seed=seed)
        if rank_by == "mean":
            # Ranking by the predictive mean needs no variances: score every work with one
            # matrix-vector product, then compute the exact mixture intervals of the top n only
            # (rank_items_for_fold_in would compute S x I variances first: ~20x the work).
            top = self._top_by_mean(fold, items, n)
            mean, lower, upper = predict_fold_in(model, fold, top, level=self.interval_level)
        else:
            top, mean, lower, upper = rank_items_for_fold_in(
                model, fold, n=n, exclude=items, rank_by=rank_by, level=self.interval_level, seed=seed
            )
        out = []
        for rank, (item, m, lo, hi) in enumerate(zip(top.tolist(), mean.tolist(), lower.tolist(), upper.tolist()), 1):
            entry = self.describe_item(item)
            entry.update(
                rank=rank, predicted_rating=round(m, 3), uncertainty=round((hi - lo) / 2, 3),
                confidence_interval=[round(lo, 3), round(hi, 3)], basis="folded_in",
            )
            out.append(entry)
        return out
