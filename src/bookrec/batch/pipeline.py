"""The batch: load -> k-core -> split -> train -> relevance -> evaluate -> precompute -> publish.

Every user of the data set (``users.parquet`` and anyone appearing in ``ratings.parquet``) gets
a list. Readers with an interaction on a relevance candidate get the ``for_you`` ranking
(:mod:`bookrec.model.foryou`): the relevance model, trained on every interaction, picks the
candidates and the best rating model that knows the reader scores them. The payload's ``basis``
says which rating model that is; each tier is one entry of ``TIER_REGISTRY`` (name, who, how):

1. ``personal``: readers in the training core (BPMF's posterior predictive);
2. ``folded_in``: readers with explicit ratings on the model's works but outside the core,
   folded in exactly (per kept sample) from those ratings;
3. ``similar_reading``: every other reader with a usable interaction (the book-level shrinkage
   model with the reader's offset);
4. ``popular``: everyone else, from uncertainty-aware popularity by segment
   (:mod:`bookrec.model.popularity`).

Works the reader interacted with, in any edition, are never recommended. Publication is one
versioned, atomic ``store.begin_publish()``: a failure anywhere leaves the previous version serving.
"""

from __future__ import annotations

import io
import logging
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import scipy.sparse as sp
from scipy.special import ndtr

from bookrec.batch.catalog import WorkCatalog, build_catalog_and_interactions
from bookrec.batch.cluster import (
    SINGLE_PROCESS,
    DaskEngine,
    ShardResult,
    ShardShared,
    peak_rss_bytes,
    trimmed_encoder,
)
from bookrec.batch.evaluation import evaluate_ranking
from bookrec.batch.gate import GateVerdict, PublishRefused, converged_check, nll_check, recall_check
from bookrec.batch.payloads import PayloadEncoder, book_payloads, catalog_parquet, segment_reason
from bookrec.batch.presets import ResolvedParameters, resolve_parameters
from bookrec.config import Settings
from bookrec.contracts.serving import ServingModel
from bookrec.model.bpmf import TRACED
from bookrec.model.foldin import FoldInMany
from bookrec.model.foryou import FoldedReaders, ForYouBlock, ForYouRanker, KnownReaders, ReaderPosterior
from bookrec.model.interactions import Interactions
from bookrec.model.popularity import PopularityResult, popularity_lists, user_segments
from bookrec.model.shrinkage import RatingModel, fallback_predictive

log = logging.getLogger(__name__)

CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class BatchError(RuntimeError):
    """A batch cannot run (no data, nothing to train on); shown without a traceback."""


@dataclass
class Timer:
    """Wall and CPU seconds (all threads of the process) per stage: on a shared machine the
    CPU figure tells the work apart from waiting for a core."""

    seconds: dict[str, float] = field(default_factory=dict)  # finished stages only
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    running: dict[str, tuple[float, float]] = field(default_factory=dict)  # stage -> (wall, CPU) at its start

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        self.running[name] = (time.perf_counter(), time.process_time())

    def stop(self, name: str) -> None:
        wall, cpu = self.running.pop(name)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - wall
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu


@dataclass
class BatchContext:
    """Everything the stages share; tests build it to score held-out data with the same code."""

    settings: Settings
    params: ResolvedParameters
    dataset: Any
    catalog: WorkCatalog
    interactions: Interactions
    training: Any  # bookrec.data.prep.TrainingData
    rating_model: RatingModel
    core_works: np.ndarray  # work index of each model item
    core_users: np.ndarray  # user index (in interactions.users) of each model user
    model: Any = None  # bookrec.model.BPMF
    relevance: Any = None  # bookrec.model.relevance.ItemRelevance, fitted on every interaction
    serving: dict | None = None
    tiers: dict[str, np.ndarray] = field(default_factory=dict)  # tier -> user indices
    engine: dict = field(default_factory=lambda: dict(SINGLE_PROCESS))  # what the meta says ran the batch

    @property
    def in_model(self) -> np.ndarray:
        mask = np.zeros(len(self.catalog), dtype=bool)
        mask[self.core_works] = True
        return mask


@dataclass
class Precomputed:
    readers: dict[str, np.ndarray]  # tier -> reader indices
    lists: dict[str, Any]  # tier -> what its `recommend` made
    seconds: dict[str, float] = field(default_factory=dict)  # per tier
    cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BatchReport:
    version: str | None
    preset: str
    parameters: dict
    coverage_by_tier: dict[str, int]
    n_users: int
    users_published: int
    stage_seconds: dict[str, float]
    meta: dict
    bytes_recommendations: int = 0
    tier_seconds: dict[str, float] = field(default_factory=dict)
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)
    tier_cpu_seconds: dict[str, float] = field(default_factory=dict)
    publish_stats: dict = field(default_factory=dict)
    context: BatchContext | None = None
    precomputed: Precomputed | None = None


# ---------------------------------------------------------------------------------- stages
def prepare(dataset, settings: Settings, params: ResolvedParameters) -> BatchContext:
    """Work-level catalogue, all interactions, the training core and its per-user split."""
    from bookrec.data.prep import prepare_training

    catalog, interactions = build_catalog_and_interactions(dataset.ratings, dataset.books, dataset.users)
    training = prepare_training(dataset, settings)
    if training.n_users == 0 or training.n_items == 0:
        raise BatchError(
            f"the k-core (>= {settings.min_user_ratings} ratings per reader, >= {settings.min_book_ratings} per book) "
            "is empty: lower BOOKREC_MIN_USER_RATINGS / BOOKREC_MIN_BOOK_RATINGS or use more data"
        )
    rating_model = RatingModel.fit(interactions, len(catalog), settings.rating_min, settings.rating_max)
    core_works = catalog.works.encode(training.items.values)
    core_users = interactions.users.encode(training.users.values)
    assert (core_works >= 0).all() and (core_users >= 0).all()
    return BatchContext(settings, params, dataset, catalog, interactions, training, rating_model, core_works, core_users)


def train(ctx: BatchContext, show_progress: bool = True, map_chains=None) -> None:
    from bookrec.model import BPMF

    s = ctx.settings
    tu, ti, tr = ctx.training.train
    vu, vi, vr = ctx.training.validation
    model = BPMF(
        **ctx.params.model_kwargs(), seed=s.seed, rating_range=(s.rating_min, s.rating_max), show_progress=show_progress,
        min_ess=s.min_ess, rhat_threshold=s.rhat_threshold,
    )
    # The validation split only monitors the run (running RMSE / coverage); it never steers it.
    eval_set = (vu, vi, vr) if len(vr) else None
    model.fit(tu, ti, tr, n_users=ctx.training.n_users, n_items=ctx.training.n_items, eval_set=eval_set,
              eval_every=max(10, ctx.params.n_samples // 10), map_chains=map_chains)
    ctx.model = model
    arrays = dict(model.serving_arrays())
    arrays["item_keys"] = np.asarray(ctx.training.items.values, dtype=str)
    arrays["item_isbns"] = np.asarray(ctx.catalog.isbn[ctx.core_works], dtype=str)
    ctx.serving = arrays


def liked_threshold(settings: Settings) -> float:
    return settings.rating_min + settings.liked_quantile * (settings.rating_max - settings.rating_min)


def relevance_estimator(s: Settings):
    """The unfitted relevance model the settings describe (ridge chosen on held-out data unless set)."""
    from bookrec.model.relevance import ItemRelevance

    return ItemRelevance(
        l2=s.relevance_l2 if s.relevance_l2 is not None else "auto", popularity_l2=s.relevance_popularity_l2,
        max_items=s.relevance_max_items,
        min_item_interactions=s.relevance_min_item_interactions, seed=s.seed,
    )


def relevance_grid(rel) -> list[dict]:
    """The fitted relevance model's ridge grid with each cell's held-out recall@10 (empty when set)."""
    return [{"l2": key[0], "popularity_l2": key[1], "recall@10": value} for key, value in rel.l2_validation_.items()]


def fit_relevance(ctx: BatchContext) -> None:
    """The relevance model on every interaction of every reader (explicit and implicit)."""
    ctx.relevance = relevance_estimator(ctx.settings).fit(ctx.interactions.seen)


def ranker(ctx: BatchContext, relevance=None, interactions: Interactions | None = None,
           rating_model: RatingModel | None = None) -> ForYouRanker:
    s = ctx.settings
    folder = FoldInMany(ctx.serving, s.interval_level) if ctx.serving is not None else None
    return ForYouRanker(
        relevance if relevance is not None else ctx.relevance, interactions or ctx.interactions,
        rating_model if rating_model is not None else ctx.rating_model,
        ctx.core_works, folder, ctx.params.top_n, s.n_candidates, s.like_weight, liked_threshold(s), s.interval_level,
    )


def evaluate(ctx: BatchContext) -> dict:
    """Test-split metrics of the model and the two baselines, calibration points."""
    from bookrec.model import metrics

    tu, ti, tr = ctx.training.test
    out: dict[str, Any] = {"n_test": int(len(tr))}
    if not len(tr):
        return {**out, "test_metrics": {}, "baselines": {}, "calibration": []}
    model = ctx.model
    out["test_metrics"] = _jsonable(metrics.evaluate_predictive(model, tu, ti, tr))
    means, sds = model.predictive_components(tu, ti)
    cal = metrics.interval_metrics(tr, means, sds, levels=CALIBRATION_LEVELS, rating_range=model.rating_range)
    out["calibration"] = [
        {"nominal": lv, "observed": cal["coverage"][str(lv)], "width": cal["width"][str(lv)]} for lv in CALIBRATION_LEVELS
    ]
    out["baselines"] = _baselines(ctx, metrics)
    return out


def _baselines(ctx: BatchContext, metrics) -> dict:
    try:
        from bookrec.model import baselines
    except ImportError:  # the model part may not ship them yet; say so instead of failing the batch
        log.warning("bookrec.model.baselines is not available: no baseline metrics in meta")
        return {}
    tu, ti, tr = ctx.training.train
    eu, ei, er = ctx.training.test
    found = {}
    for name in dir(baselines):
        cls = getattr(baselines, name)
        if isinstance(cls, type) and hasattr(cls, "fit") and hasattr(cls, "predictive_components") and cls.__module__ == baselines.__name__:
            try:
                est = cls(rating_range=(ctx.settings.rating_min, ctx.settings.rating_max))
            except TypeError:
                est = cls()
            est.fit(tu, ti, tr, n_users=ctx.training.n_users, n_items=ctx.training.n_items)
            found[getattr(est, "name", name)] = _jsonable(
                metrics.evaluate_predictive(est, eu, ei, er)
            )
    return found


def _work_to_core(ctx: BatchContext) -> np.ndarray:
    """The model item of each work, -1 for works outside the model."""
    work_to_core = np.full(len(ctx.catalog), -1, dtype=np.int64)
    work_to_core[ctx.core_works] = np.arange(len(ctx.core_works))
    return work_to_core


def assign_tiers(ctx: BatchContext) -> dict[str, np.ndarray]:
    """Each reader's tier: the first one in TIER_REGISTRY that serves them."""
    unassigned = np.ones(ctx.interactions.n_users, dtype=bool)
    ctx.tiers = {}
    for tier in TIER_REGISTRY:
        mine = tier.serves(ctx) & unassigned
        ctx.tiers[tier.name] = np.flatnonzero(mine)
        unassigned &= ~mine
    return ctx.tiers


def _core_matrices(ctx: BatchContext, users: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """For readers ``users``: their explicit ratings on model items, and everything they touched
    (any edition, explicit or implicit) restricted to model items (the exclusion set)."""
    inter = ctx.interactions
    n_core = len(ctx.core_works)
    work_to_core = _work_to_core(ctx)
    local = np.full(inter.n_users, -1, dtype=np.int64)
    local[users] = np.arange(len(users))
    eu, ew, er = inter.explicit_user, inter.explicit_work, inter.explicit_rating
    keep = (local[eu] >= 0) & (work_to_core[ew] >= 0)
    rated = sp.csr_matrix((er[keep].astype(np.float64), (local[eu[keep]], work_to_core[ew[keep]])), shape=(len(users), n_core))
    seen = inter.seen[users].tocoo()
    ok = work_to_core[seen.col] >= 0
    exclude = sp.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float32), (seen.row[ok], work_to_core[seen.col[ok]])), shape=(len(users), n_core)
    )
    return rated, exclude


def precompute(ctx: BatchContext, progress=None) -> Precomputed:
    """Top-n for every reader, tier by tier (vectorised; chunks only bound memory)."""
    readers = ctx.tiers or assign_tiers(ctx)
    rank = ranker(ctx)
    clock = Timer()
    lists = {}
    for tier in TIER_REGISTRY:
        users = readers[tier.name]
        with clock.stage(tier.name):
            advance = _progress_task(progress, f"precompute: {tier.name}", len(users))
            lists[tier.name] = tier.recommend(ctx, rank, users, advance)
    return Precomputed(dict(readers), lists, dict(clock.seconds), dict(clock.cpu_seconds))


def _progress_task(progress, description: str, total: int) -> Callable[[int], None]:
    """A progress task; the returned function advances it by a number of readers."""
    if progress is None:
        return lambda done: None
    task = progress.add_task(description, total=max(total, 1))
    return lambda done: progress.update(task, advance=done)


def iter_recommendations(ctx: BatchContext, pre: Precomputed, encoder: PayloadEncoder) -> Iterator[tuple[int, bytes]]:
    """(user_id, payload bytes) for every reader, tier by tier."""
    for tier in TIER_REGISTRY:
        yield from tier.encode(ctx, encoder, pre.readers[tier.name], pre.lists[tier.name])


# ---------------------------------------------------------------------------------- tiers
@dataclass(frozen=True)
class Tier:
    """A tier of readers: who it serves and how their recommendations are made. A reader belongs
    to the first tier in TIER_REGISTRY that serves them; the tier's name is the payload's basis."""

    name: str
    serves: Callable[[BatchContext], np.ndarray]  # a mask over every reader
    recommend: Callable[[BatchContext, ForYouRanker, np.ndarray, Callable[[int], None]], Any]  # (ctx, ranker, readers, advance)
    encode: Callable[[BatchContext, PayloadEncoder, np.ndarray, Any], Iterator[tuple[int, bytes]]]  # -> (user id, payload)
    ranked: bool = True  # ranked chunk by chunk (CHUNK_INPUTS): a cluster runs its chunks as shards


def _serves_core_readers(ctx: BatchContext) -> np.ndarray:
    mask = np.zeros(ctx.interactions.n_users, dtype=bool)
    mask[ctx.core_users] = True
    return mask


def _serves_raters_of_model_works(ctx: BatchContext) -> np.ndarray:
    inter = ctx.interactions
    mask = np.zeros(inter.n_users, dtype=bool)
    mask[inter.explicit_user[_work_to_core(ctx)[inter.explicit_work] >= 0]] = True
    return mask


def _serves_readers_with_usable_history(ctx: BatchContext) -> np.ndarray:
    """Readers with an interaction the relevance model can use (any interaction without it)."""
    inter = ctx.interactions
    has_any = np.diff(inter.seen.indptr) > 0
    if ctx.relevance is None:
        return has_any
    users = np.flatnonzero(has_any)
    usable = np.diff(ctx.relevance.local_history(inter.seen[users]).indptr) > 0
    mask = np.zeros(inter.n_users, dtype=bool)
    mask[users[usable]] = True
    return mask


def _serves_everyone(ctx: BatchContext) -> np.ndarray:
    return np.ones(ctx.interactions.n_users, dtype=bool)


def _personal_draws(ctx: BatchContext, rows: np.ndarray, start: int) -> KnownReaders:
    """BPMF's draws of the chunk's readers. Both index maps are sorted by user id, so the
    personal readers (ascending user index) are exactly the model's users in order."""
    assert np.array_equal(rows, ctx.core_users[start:start + len(rows)])
    return KnownReaders.of(ctx.model, slice(start, start + len(rows)))


def _explicit_ratings(ctx: BatchContext, rows: np.ndarray, start: int) -> FoldedReaders:
    """The chunk's explicit ratings on model works, to fold the readers in from."""
    rated, _ = _core_matrices(ctx, rows)
    return FoldedReaders(rated)


def _relevance_only(ctx: BatchContext, rows: np.ndarray, start: int) -> None:
    return None


def _chunks(ctx: BatchContext, name: str, readers: np.ndarray) -> Iterator[tuple[np.ndarray, ReaderPosterior]]:
    """A ranked tier's readers in chunks of ``batch_chunk_users`` (they bound memory), with where
    each chunk's BPMF predictives come from; a cluster's shards are these same chunks."""
    size = ctx.settings.batch_chunk_users
    for start in range(0, len(readers), size):
        rows = readers[start:start + size]
        yield rows, CHUNK_INPUTS[name](ctx, rows, start)


def _rank_in_chunks(name: str, ctx: BatchContext, rank: ForYouRanker, readers: np.ndarray,
                    advance: Callable[[int], None]) -> ForYouBlock:
    """The for-you ranking of ``readers``, chunk by chunk."""
    parts = []
    for rows, posterior in _chunks(ctx, name, readers):
        parts.append(rank.rank(rows, posterior))
        advance(len(rows))
    return ForYouBlock.concat(readers, parts, ctx.params.top_n)


def _encode_ranked(name: str, ctx: BatchContext, encoder: PayloadEncoder, readers: np.ndarray,
                   block: ForYouBlock) -> Iterator[tuple[int, bytes]]:
    yield from encoder.ranked_block(ctx.interactions.users.values[block.users], name, block)


def _popular_by_segment(ctx: BatchContext, rank: ForYouRanker, readers: np.ndarray,
                        advance: Callable[[int], None]) -> PopularityResult:
    """Uncertainty-aware popularity lists, one per reader segment."""
    s = ctx.settings
    segments = user_segments(ctx.dataset.users, ctx.interactions.users.values)
    popular = popularity_lists(
        ctx.interactions, ctx.rating_model, segments, readers, ctx.params.top_n, s.interval_level,
        s.popularity_min_segment_ratings,
    )
    advance(len(readers))
    return popular


def _encode_popular(ctx: BatchContext, encoder: PayloadEncoder, readers: np.ndarray,
                    pop: PopularityResult) -> Iterator[tuple[int, bytes]]:
    """Each segment's list is encoded once and shared by the segment's readers."""
    thr = liked_threshold(ctx.settings)
    encoded = []
    for lst in pop.lists:
        mean, sd = fallback_predictive(ctx.rating_model, lst.works)
        p_liked = ndtr((mean - thr) / sd)
        encoded.append(encoder.items(lst.works, lst.predicted, lst.lower, lst.upper, [b"popular"] * len(lst.works),
                                     p_liked=p_liked, reason=segment_reason(lst.segment)))
    ids = ctx.interactions.users.values
    for uid, which in zip(ids[readers].tolist(), pop.user_list.tolist()):
        yield uid, encoder.reader(uid, "popular", encoded[which])


# What a chunk of each ranked tier's readers needs besides the ranker.
CHUNK_INPUTS: dict[str, Callable[[BatchContext, np.ndarray, int], ReaderPosterior]] = {
    "personal": _personal_draws, "folded_in": _explicit_ratings, "similar_reading": _relevance_only,
}

# The tiers, best rating model first (the module docstring says who each one serves).
TIER_REGISTRY: tuple[Tier, ...] = (
    *(Tier(name, serves, partial(_rank_in_chunks, name), partial(_encode_ranked, name))
      for name, serves in (("personal", _serves_core_readers), ("folded_in", _serves_raters_of_model_works),
                           ("similar_reading", _serves_readers_with_usable_history))),
    Tier("popular", _serves_everyone, _popular_by_segment, _encode_popular, ranked=False),
)
TIERS = tuple(tier.name for tier in TIER_REGISTRY)


def popular_blob(ctx: BatchContext, encoder: PayloadEncoder) -> bytes:
    """The global popularity list (in the recommendation-item shape) for API fallbacks."""
    n_pop = max(ctx.params.top_n, 50)
    res = popularity_lists(ctx.interactions, ctx.rating_model, None, np.zeros(0, dtype=np.int64), n_pop,
                           ctx.settings.interval_level, ctx.settings.popularity_min_segment_ratings)
    lst = res.lists[0]
    mean, sd = fallback_predictive(ctx.rating_model, lst.works)
    p_liked = ndtr((mean - liked_threshold(ctx.settings)) / sd)
    return orjson.dumps(encoder.item_dicts(lst.works, lst.predicted, lst.lower, lst.upper, "popular", p_liked=p_liked))


def relevance_blob(ctx: BatchContext, neighbours: int = 50) -> bytes:
    """The relevance model's sparse item-item structure for the API (docs/ARCHITECTURE.md)."""
    rel = ctx.relevance
    arrays = rel.neighbour_arrays(neighbours)
    works = arrays.pop("items")
    mean, sd = fallback_predictive(ctx.rating_model, works)
    arrays.update(
        item_keys=np.asarray(ctx.catalog.works.values[works], dtype=str),
        item_isbns=np.asarray(ctx.catalog.isbn[works], dtype=str),
        fallback_mean=mean.astype(np.float32), fallback_sd=sd.astype(np.float32),
        liked_threshold=np.float64(liked_threshold(ctx.settings)), like_weight=np.float64(ctx.settings.like_weight),
        n_users=np.int64(rel.n_users_),
    )
    return npz_bytes(arrays)


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def code_version() -> str:
    import bookrec

    version = getattr(bookrec, "__version__", "0")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def build_meta(ctx: BatchContext, evaluation: dict, coverage: dict, stage_seconds: dict, version: str | None,
               tier_seconds: dict | None = None) -> dict:
    model = ctx.model
    s = ctx.settings
    p = ctx.params
    traces = {name: np.asarray(values).tolist() for name, values in model.traces_.items() if name in TRACED}
    diag = model.diagnostics_
    r = ctx.dataset.ratings["rating"].to_numpy()
    rating_distribution = {str(v): int(c) for v, c in enumerate(np.bincount(np.clip(np.rint(r), 0, 10).astype(int), minlength=11))}
    counts = ctx.dataset.counts()
    dataset = {
        **counts,
        "users_all": int(ctx.interactions.n_users),
        "works": int(len(ctx.catalog)),
        "ratings_unjoined": int(ctx.interactions.n_unjoined),
        **ctx.training.sizes(),
        "source": ctx.dataset.source,
    }
    return _jsonable({
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "environment": s.environment,
        "preset": p.preset,
        "training_time_seconds": float(model.fit_seconds_),
        "parameters": {**p.model_kwargs(), "top_n": p.top_n, "seed": s.seed,
                       "min_user_ratings": s.min_user_ratings, "min_book_ratings": s.min_book_ratings,
                       "rating_range": [s.rating_min, s.rating_max]},
        "parameter_sources": p.sources,
        "tuned": p.tuned,
        "n_samples": p.n_samples,
        "burn_in": p.burn_in,
        "n_chains": p.n_chains,
        "thin": p.thin,
        "n_kept": int(model.n_kept_),
        "n_factors": p.n_factors,
        "convergence": {
            "converged": bool(diag.get("converged")),
            "rhat": diag.get("rhat", {}),
            "ess_bulk": diag.get("ess_bulk", {}),
            "ess_tail": diag.get("ess_tail", {}),
            "max_rhat": diag.get("max_rhat"),
            "min_ess_bulk": diag.get("min_ess_bulk"),
            "failing": diag.get("failing", []),
            **{key: diag.get(key) for key in ("rhat_threshold", "min_ess", "min_ess_tail", "slowest", "worst_rhat", "summary")},
        },
        "traces": traces,
        "test_metrics": evaluation.get("test_metrics", {}),
        "baselines": evaluation.get("baselines", {}),
        "ranking": evaluation.get("ranking", {}),
        "publish_gate": evaluation.get("publish_gate", {}),
        "relevance": _relevance_meta(ctx),
        "calibration": evaluation.get("calibration", []),
        "rating_distribution": rating_distribution,
        "dataset": dataset,
        "coverage_by_tier": coverage,
        "top_n": p.top_n,
        "interval_level": s.interval_level,
        "stage_seconds": stage_seconds,
        "precompute_seconds_by_tier": tier_seconds or {},
        "rating_model": {"global_mean": ctx.rating_model.global_mean, "sigma2": ctx.rating_model.sigma2,
                         "tau2_book": ctx.rating_model.tau2, "tau2_reader": ctx.rating_model.tau2_user},
        "catalog_format": "parquet",
        "engine": ctx.engine,
    })


def _relevance_meta(ctx: BatchContext) -> dict:
    rel = ctx.relevance
    if rel is None:
        return {}
    s = ctx.settings
    return {"model": "Bayesian item-item regression (EASE / EDLAE posterior)", "l2": rel.l2_,
            "popularity_l2": rel.popularity_l2_,
            "validation_recall@10": relevance_grid(rel),
            "candidates": int(len(rel.items_)), "n_candidates": s.n_candidates, "like_weight": s.like_weight,
            "liked_threshold": liked_threshold(s)}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if not np.isfinite(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value


def publish(store, recommendations: Iterable[tuple[int, bytes]], books: Iterable[tuple[str, bytes]], blobs: dict[str, Any],
            locked: Callable[[Any], None] | None = None) -> tuple[str, dict]:
    """One atomic publish. ``blobs`` values are bytes or callables taking the version id and
    returning bytes (``meta`` needs the version). ``locked(store)`` runs first, once the publish
    holds the store's write lock or lease. Any exception discards the partial version."""
    with store.begin_publish() as pub:
        if locked is not None:
            locked(store)
        n_recs = pub.put_recommendations(recommendations)
        pub.put_books(books)
        for name, data in blobs.items():
            pub.put_blob(name, data(pub.version) if callable(data) else data)
        stats = dict(pub.stats)
        stats["users"] = n_recs
        version = pub.version
    return version, stats


# ---------------------------------------------------------------------------------- the run
def check_store(settings: Settings, store_url: str | None) -> dict | None:
    """Fail before minutes of training when the store cannot take the publish; returns the serving
    version's meta (the publish gate compares against it), or None."""
    from bookrec.store import StoreError, open_store_from_settings

    try:
        with open_store_from_settings(settings, store_url) as store:
            if not store.ping():
                raise BatchError("the store does not answer, so nothing was trained")
            blob = store.get_blob("meta") if store.current_version() else None
    except StoreError as exc:
        raise BatchError(f"the store cannot take a publish, so nothing was trained: {exc}") from exc
    try:
        return orjson.loads(blob) if blob else None
    except orjson.JSONDecodeError:
        log.warning("the serving version's meta does not parse: the publish gate skips the comparison")
        return None


def gate(ctx: BatchContext, evaluation: dict, previous_meta: dict | None, force: bool) -> GateVerdict:
    """The publish gate's checks (:mod:`bookrec.batch.gate`); raises PublishRefused unless ``force``."""
    from bookrec.model.baselines import BiasBaseline
    from bookrec.model.metrics import mixture_logpdfs

    s = ctx.settings
    verdict = GateVerdict(forced=force)
    vu, vi, vr = ctx.training.validation
    if len(vr) >= 2:
        tu, ti, tr = ctx.training.train
        y = np.asarray(vr, dtype=np.float64)
        baseline = BiasBaseline(rating_range=(s.rating_min, s.rating_max)).fit(
            tu, ti, tr, n_users=ctx.training.n_users, n_items=ctx.training.n_items)
        logpdf = [mixture_logpdfs(y, *m.predictive_components(vu, vi)) for m in (ctx.model, baseline)]
        verdict.checks["nll"] = nll_check(*logpdf)
    previous = ((previous_meta or {}).get("ranking") or {}).get("per_reader")
    verdict.checks["recall"] = recall_check((evaluation.get("ranking") or {}).get("per_reader"), previous)
    verdict.checks["converged"] = converged_check(ctx.model.diagnostics_, s.require_converged)
    if verdict.reasons and not force:
        raise PublishRefused(verdict.reasons)
    return verdict


def gate_again(store, evaluation: dict, previous_meta: dict | None, force: bool) -> None:
    """The recall check once more, under the publish lock, when the serving version is no longer
    the one the gate compared against: another batch published, or an operator rolled back,
    while this one trained. Raises PublishRefused unless ``force``; the meta records the check."""
    current = store.current_version()
    if current == (previous_meta or {}).get("version"):
        return
    blob = store.get_blob("meta") if current else None
    try:
        meta = orjson.loads(blob) if blob else None
    except orjson.JSONDecodeError:
        meta = None
    check = recall_check((evaluation.get("ranking") or {}).get("per_reader"),
                         (((meta or {}).get("ranking") or {}).get("per_reader")))
    check["against_version"] = current
    verdict = evaluation.setdefault("publish_gate", {"passed": True, "forced": force, "checks": {}})
    verdict["checks"]["recall"] = check
    verdict["passed"] = all(c["passed"] for c in verdict["checks"].values())
    if not check["passed"] and not force:
        raise PublishRefused([check["reason"] + f" (version {current}, published while this batch ran)"])
    if not check["passed"]:
        log.warning("publishing although the gate refused (--force): %s", check["reason"])


def _progress(enabled: bool):
    """A progress bar on a terminal; outside one, a log line per stage every 10 s (even when quiet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from bookrec.logging import progress

    return progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    enabled=enabled, logger="bookrec.batch.progress")


@contextmanager
def _working(show_progress: bool, what: str) -> Iterator[None]:
    """A stage without countable steps: a spinner on a terminal, else a log line every 10 s."""
    with _progress(show_progress) as progress:
        progress.add_task(what, total=None)
        yield


def run_batch(
    settings: Settings,
    data_dir: Path | str | None = None,
    store_url: str | None = None,
    preset: str | None = None,
    *,
    dataset=None,
    show_progress: bool = True,
    keep_context: bool = False,
    force: bool = False,
    scheduler: str | None = None,
) -> BatchReport:
    """Train, evaluate, precompute for every reader and publish one new version. The publish gate
    (:mod:`bookrec.batch.gate`) raises PublishRefused before the precompute unless ``force``.
    ``scheduler`` (else ``settings.dask_scheduler``): a Dask scheduler's address; the chains and
    the precompute then run on its workers (:mod:`bookrec.batch.cluster`), with the same result."""
    from bookrec.data.io import load_dataset
    from bookrec.logging import console as bookrec_console

    timer = Timer()
    previous_meta = check_store(settings, store_url)
    console = bookrec_console(quiet=not show_progress)
    params = resolve_parameters(settings, preset)
    log.info("batch preset %s: %s", params.preset, ", ".join(f"{k}={v}" for k, v in params.model_kwargs().items()))
    with timer.stage("load"):
        if dataset is None:
            dataset = load_dataset(Path(data_dir or settings.data_dir), with_truth=False)  # synthetic truth: tests only
    with _engine(scheduler or settings.dask_scheduler, settings.dask_connect_timeout) as engine:
        ctx = _fit_models(dataset, settings, params, timer, console, show_progress, engine)
        evaluation = _evaluate_and_gate(ctx, previous_meta, force, timer, show_progress)
        locked = partial(gate_again, evaluation=evaluation, previous_meta=previous_meta, force=force)
        coverage = {name: int(len(readers)) for name, readers in assign_tiers(ctx).items()}
        progress = _progress(show_progress)
        with progress:
            if engine is None:
                with timer.stage("precompute"):
                    pre = precompute(ctx, progress)
                _note_memory(ctx, None, "precompute")
                published = _publish_version(ctx, pre, evaluation, coverage, timer, store_url, progress, locked)
                timer.seconds["encode (within publish)"] = published.payloads.seconds
                timer.cpu_seconds["encode (within publish)"] = published.payloads.seconds  # single-threaded
            else:
                pre, published = _publish_on_cluster(ctx, evaluation, coverage, timer, store_url, progress, engine, locked)
    report = BatchReport(
        version=published.version, preset=params.preset, parameters=params.as_dict(), coverage_by_tier=coverage,
        n_users=ctx.interactions.n_users, users_published=int(published.stats.get("users", 0)),
        stage_seconds=dict(timer.seconds), meta=published.meta, bytes_recommendations=published.payloads.n_bytes,
        tier_seconds=dict(pre.seconds), publish_stats=published.stats, stage_cpu_seconds=dict(timer.cpu_seconds),
        tier_cpu_seconds=dict(pre.cpu_seconds),
        context=ctx if keep_context else None, precomputed=pre if keep_context else None,
    )
    if show_progress:
        console.print(summary_table(report))
    return report


def _fit_models(dataset, settings: Settings, params: ResolvedParameters, timer: Timer, console,
                show_progress: bool, engine: DaskEngine | None = None) -> BatchContext:
    """Prepare the data, train the rating model (its chains on the engine's workers) and fit the relevance model."""
    with timer.stage("prepare"):
        ctx = prepare(dataset, settings, params)
    if engine is not None:
        ctx.engine = engine.record.as_meta()
        console.print(f"Dask cluster {engine.record.scheduler}: {engine.record.workers} workers, "
                      f"{engine.record.threads} threads")
    sizes = ctx.training.sizes()
    console.print(
        f"core: {sizes['core_users']:,} readers x {sizes['core_books']:,} works; "
        f"train {sizes['train']:,} / validation {sizes['validation']:,} / test {sizes['test']:,} ratings"
    )
    with timer.stage("train"):
        train(ctx, show_progress=show_progress, map_chains=engine.map_chains if engine is not None else None)
    _note_memory(ctx, engine, "train")
    diag = ctx.model.diagnostics_
    console.print(
        f"trained in {ctx.model.fit_seconds_:.1f} s; max R-hat {diag.get('max_rhat', float('nan')):.3f}, "
        f"min bulk ESS {diag.get('min_ess_bulk', float('nan')):.0f}: "
        + ("converged" if diag.get("converged") else f"NOT converged by the R-hat/ESS rule ({diag.get('summary', '')})"
           + ("; every traced prediction passes, so the intervals can be used" if diag.get("predictions_pass") else ""))
    )
    with timer.stage("relevance"), _working(show_progress, "relevance model"):
        fit_relevance(ctx)
    console.print(
        f"relevance: {len(ctx.relevance.items_):,} candidate works, l2 {ctx.relevance.l2_:.3g}, "
        f"popularity l2 {ctx.relevance.popularity_l2_:.3g}"
    )
    return ctx


def _evaluate_and_gate(ctx: BatchContext, previous_meta: dict | None, force: bool, timer: Timer,
                       show_progress: bool = False) -> dict:
    """Test-split and ranking metrics, and the publish gate's verdict on them."""
    with timer.stage("evaluate"), _working(show_progress, "evaluation"):
        evaluation = evaluate(ctx)
        evaluation["ranking"] = evaluate_ranking(ctx)
    verdict = gate(ctx, evaluation, previous_meta, force)
    evaluation["publish_gate"] = verdict.as_meta()
    if verdict.reasons:
        log.warning("publishing although the gate refused (--force): %s", "; ".join(verdict.reasons))
    return evaluation


@dataclass
class CountedPayloads:
    """The readers' payloads as the publish consumes them, counting bytes and encoding seconds."""

    payloads: Iterator[tuple[int, bytes]]
    progress: Any
    total: int
    seconds: float = 0.0
    n_bytes: int = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        task = self.progress.add_task("publish: recommendations", total=self.total)
        done = 0
        while True:
            t0 = time.perf_counter()
            item = next(self.payloads, None)
            self.seconds += time.perf_counter() - t0
            if item is None:
                break
            self.n_bytes += len(item[1])
            done += 1
            if done % 5000 == 0:
                self.progress.update(task, completed=done)
            yield item
        self.progress.update(task, completed=done)


def _static_blobs(ctx: BatchContext, encoder: PayloadEncoder) -> dict[str, bytes]:
    """Every blob but the meta."""
    return {
        "catalog": catalog_parquet(ctx.catalog, ctx.in_model),
        "serving_model": ServingModel(**ctx.serving).to_npz(),
        "popular": popular_blob(ctx, encoder),
        "relevance": relevance_blob(ctx),
    }


@dataclass
class Published:
    version: str
    stats: dict
    meta: dict
    payloads: CountedPayloads


def _publish_version(ctx: BatchContext, pre: Precomputed, evaluation: dict, coverage: dict, timer: Timer,
                     store_url: str | None, progress, locked: Callable[[Any], None]) -> Published:
    """Publish every payload and blob as one new version. Meta is built once, inside the publish
    (it needs the version id), so its stage times are the stages finished before the publish."""
    from bookrec.store import open_store_from_settings

    encoder = PayloadEncoder(ctx.catalog)
    in_model = ctx.in_model
    payloads = CountedPayloads(iter_recommendations(ctx, pre, encoder), progress, ctx.interactions.n_users)
    meta: dict = {}

    def meta_blob(version: str) -> bytes:
        meta.update(build_meta(ctx, evaluation, coverage, dict(timer.seconds), version, pre.seconds))
        return orjson.dumps(meta)

    blobs = {**_static_blobs(ctx, encoder), "meta": meta_blob}
    with open_store_from_settings(ctx.settings, store_url) as store:
        with timer.stage("publish"):
            version, stats = publish(store, iter(payloads), book_payloads(ctx.catalog, in_model), blobs, locked)
    return Published(version, stats, meta, payloads)


@contextmanager
def _engine(address: str | None, timeout: float) -> Iterator[DaskEngine | None]:
    """The Dask cluster at ``address``, or None (one process: no Dask startup cost)."""
    if not address:
        yield None
        return
    try:
        engine = DaskEngine(address, timeout)
    except (OSError, RuntimeError) as exc:  # distributed raises OSError (a TimeoutError) when none answers
        raise BatchError(f"cannot use the Dask scheduler {address}: {exc}") from exc
    with engine:
        yield engine


def _note_memory(ctx: BatchContext, engine: DaskEngine | None, stage: str) -> None:
    """Peak memory per process so far, after ``stage`` (the meta's engine record keeps it)."""
    if engine is not None:
        engine.note_peak_memory(stage)
    else:
        ctx.engine.setdefault("peak_rss_bytes", {})[stage] = {"driver": peak_rss_bytes()}


def ranked_shards(ctx: BatchContext) -> Iterator[tuple[str, np.ndarray, ReaderPosterior]]:
    """(tier, readers, posterior) of every chunk of every ranked tier, in single-process order."""
    for tier in TIER_REGISTRY:
        if tier.ranked:
            for rows, posterior in _chunks(ctx, tier.name, ctx.tiers[tier.name]):
                yield tier.name, rows, posterior


def _publish_on_cluster(ctx: BatchContext, evaluation: dict, coverage: dict, timer: Timer, store_url: str | None,
                        progress, engine: DaskEngine, locked: Callable[[Any], None]) -> tuple[Precomputed, Published]:
    """The precompute and publish with the ranked tiers' chunks as shard tasks. A store that takes
    shards (Redis) gets them from the workers under the pending version; otherwise (SQLite) they
    come back here into the one transaction. The pointer flips once, after every shard succeeded."""
    from bookrec.store import open_store_from_settings

    encoder = PayloadEncoder(ctx.catalog)
    rank = ranker(ctx)
    shared = ShardShared(rank, trimmed_encoder(encoder), ctx.settings, store_url)
    n_ranked = sum(len(ctx.tiers[t.name]) for t in TIER_REGISTRY if t.ranked)
    advance = _progress_task(progress, "precompute: shards", n_ranked)
    written = {"users": 0}
    with open_store_from_settings(ctx.settings, store_url) as store, store.begin_publish() as pub:
        locked(store)

        def on_done(result: ShardResult) -> None:
            if result.payloads is not None:
                pub.put_recommendations(result.payloads)
            else:
                pub.add_shard_stats(result.written)
            written["users"] += result.users
            advance(result.users)

        with timer.stage("precompute"):
            engine.run_shards(shared, ranked_shards(ctx), pub.version if store.takes_shards else None, on_done)
        _note_memory(ctx, engine, "precompute")
        with timer.stage("publish"):
            popular = ctx.tiers["popular"]
            lists = _popular_by_segment(ctx, rank, popular, lambda done: None)
            written["users"] += pub.put_recommendations(_encode_popular(ctx, encoder, popular, lists))
            pub.put_books(book_payloads(ctx.catalog, ctx.in_model))
            ctx.engine = engine.record.as_meta()
            meta = build_meta(ctx, evaluation, coverage, dict(timer.seconds), pub.version, dict(engine.record.shard_seconds))
            for name, data in {**_static_blobs(ctx, encoder), "meta": orjson.dumps(meta)}.items():
                pub.put_blob(name, data)
    stats = {**pub.stats, "users": written["users"]}
    pre = Precomputed(dict(ctx.tiers), {}, dict(engine.record.shard_seconds), dict(engine.record.shard_seconds))
    return pre, Published(pub.version, stats, meta, CountedPayloads(iter(()), progress, 0))


def summary_table(report: BatchReport):
    from rich.table import Table

    table = Table(title=f"batch {report.version} (preset {report.preset})")
    table.add_column("tier")
    table.add_column("readers", justify="right")
    table.add_column("share / CPU", justify="right")
    total = max(report.n_users, 1)
    for name in TIERS:
        n = report.coverage_by_tier.get(name, 0)
        table.add_row(name, f"{n:,}", f"{100 * n / total:.1f}%")
    table.add_row("[bold]all readers", f"[bold]{report.n_users:,}", f"{100 * report.users_published / total:.1f}% published")
    table.add_section()
    for stage, sec in report.stage_seconds.items():
        table.add_row(f"stage: {stage}", f"{sec:.1f} s", f"{report.stage_cpu_seconds.get(stage, float('nan')):.1f} s")
    return table
