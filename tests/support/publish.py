"""TEST DATA: publish a small but realistic version into any store, for API and web tests.

    from tests.support.publish import publish_fixture
    fixture = publish_fixture(store_url, n_users=300, n_books=120)
    fixture.version, fixture.user_ids, fixture.isbns, fixture.recommendations[user_id] ...

Everything here is made up (seeded, deterministic) and follows the payload shapes of
docs/ARCHITECTURE.md section 3: per-user recommendation payloads covering all four bases, each item
with `score`, `relevance`, `relevance_sd`, `p_liked` and a `reason` (all three kinds occur), every
list sorted by `score` (the for_you ranking); one book payload per edition (some works have two
editions), and the blobs ``meta`` (with a ``ranking`` block), ``catalog`` (Parquet, like the batch
writes), ``popular``, ``serving_model`` (npz of random but well-formed posterior samples, so
cold-start fold-in runs; its predictions mean nothing) and ``relevance`` (npz of random but valid
neighbours over 80% of the works, most read first: some of them outside the serving model when
``serving_works="in_model"``, and some serving-model works not among them).

``serving_works``: "all" (default) puts every work in the serving model; "in_model" only the works
flagged ``in_model``, as the batch does, so that books outside the rating model exist.
``relevance=False`` publishes no ``relevance`` blob (a version from before it existed).
It is NOT the batch's output: use it until tests can afford a real `bookrec batch` run, and never
assert model quality on it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bookrec.contracts.payloads import recommendation_item
from bookrec.contracts.serving import ServingModel
from bookrec.store import open_store

BASES = ("personal", "folded_in", "similar_reading", "popular")
LIKED_THRESHOLD = 7.3  # the top 30% of the 1-10 scale, as the batch's default
LIKE_WEIGHT = 1.0
INTERVAL_Z = 1.6448536269514722  # central 90%
SEGMENTS = ("readers in usa aged 25-34", "readers in germany aged 35-44", "readers in canada aged 18-24")
# meta.ranking rows: (model, label, kind, recall@10); the other figures follow from the seed.
RANKING_ROWS = (
    ("for_you", "For you (default)", "ours", 0.112),
    ("mean", "Highest rated", "ours", 0.071),
    ("lower", "Safe bets", "ours", 0.064),
    ("sample", "Explore", "ours", 0.083),
    ("popularity", "Popularity", "baseline", 0.052),
    ("ease", "EASE", "baseline", 0.104),
    ("als", "ALS", "baseline", 0.091),
)
WORDS = (
    "silent river night garden winter secret lost house light shadow stone city ocean letters "
    "summer story daughter king road fire"
).split()
SURNAMES = "Smith Garcia Okafor Novak Tanaka Larsen Dubois Rossi Kowalski Haddad".split()
FIRSTNAMES = "Ann Ben Chloe David Elena Farid Grace Hiro Iris Jonas".split()


def isbn10(n: int) -> str:
    """A valid ISBN-10 (with its check digit) built from a number."""
    body = f"{n % 10**9:09d}"
    check = sum((10 - i) * int(d) for i, d in enumerate(body)) % 11
    return body + "0123456789X"[(11 - check) % 11]


@dataclass
class PublishedFixture:
    version: str
    user_ids: list[int]
    isbns: list[str]                               # every edition
    works: list[dict[str, Any]]                    # one dict per work: work_key, isbn, title, author, ...
    recommendations: dict[int, dict[str, Any]]     # user_id -> decoded payload
    books: dict[str, dict[str, Any]]               # isbn -> decoded payload
    meta: dict[str, Any]
    popular: list[dict[str, Any]]
    serving_model: dict[str, np.ndarray] = field(repr=False)
    top_n: int = 20
    relevance: dict[str, np.ndarray] | None = field(default=None, repr=False)  # None: not published

    def in_model_works(self) -> list[dict[str, Any]]:
        """The works the serving model covers, in catalogue order."""
        keys = set(self.serving_model["item_keys"].tolist())
        return [w for w in self.works if w["work_key"] in keys]


def fresh_store_url(backend: str, redis_server, tmp_path_factory, name: str) -> str:
    """An empty store of ``backend`` (redis: the suite's server, flushed; sqlite: a new file)."""
    if backend == "redis":
        redis_server.flush()
        return redis_server.url
    return f"sqlite:///{tmp_path_factory.mktemp(name)}/bookrec.sqlite3"


def _works(rng: np.random.Generator, n_works: int) -> list[dict[str, Any]]:
    works, seen = [], set()
    for w in range(n_works):
        while True:
            title = "The " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3)), replace=False)).title()
            author = f"{rng.choice(FIRSTNAMES)} {rng.choice(SURNAMES)}"
            key = f"{title.lower()}|{author.lower()}"
            if key not in seen:
                seen.add(key)
                break
        isbn = isbn10(1_000_000 + 7919 * w)
        works.append({
            "work_key": key, "isbn": isbn, "title": title, "author": author,
            "year": int(rng.integers(1950, 2005)) if w % 9 else None,
            "publisher": f"{rng.choice(SURNAMES)} Press",
            "image_url": f"http://images.example.org/P/{isbn}.01.MZZZZZZZ.jpg" if w % 7 else None,
            "editions": [isbn] + ([isbn10(5_000_000 + 7919 * w)] if w % 5 == 0 else []),
            "n_ratings": int(rng.integers(1, 200)),
            "in_model": bool(w % 4),
        })
    return works


def _serving_model(rng: np.random.Generator, works: list[dict], n_samples: int, k: int) -> ServingModel:
    n = len(works)
    return ServingModel(
        item_factors=rng.normal(0.0, 0.4, size=(n_samples, n, k)).astype(np.float32),
        item_bias=rng.normal(0.0, 0.5, size=(n_samples, n)).astype(np.float32),
        mu=rng.normal(7.5, 0.05, size=n_samples),
        alpha=rng.gamma(50.0, 1 / 20.0, size=n_samples),            # noise precision ~2.5
        mu_user=rng.normal(0.0, 0.05, size=(n_samples, k)),
        lambda_user=np.stack([np.eye(k) * rng.uniform(1.5, 2.5) for _ in range(n_samples)]),
        tau_user_bias=rng.gamma(20.0, 1 / 10.0, size=n_samples),
        item_keys=np.array([w["work_key"] for w in works]),
        item_isbns=np.array([w["isbn"] for w in works]),
        rating_range=np.array([1.0, 10.0]),
    )


def _p_liked(predicted: float, half: float) -> float:
    """P(rating >= the liked threshold) under a normal with the item's mean and interval-implied sd."""
    sd = max(half, 1e-6) / INTERVAL_Z
    return 0.5 * math.erfc((LIKED_THRESHOLD - predicted) / (sd * math.sqrt(2.0)))


def _item(rank: int, work: dict, predicted: float, half: float, basis: str, relevance: float | None = None,
          relevance_sd: float | None = None, reason: dict | None = None, share: float = 0.0) -> dict[str, Any]:
    lo, hi = max(1.0, predicted - half), min(10.0, predicted + half)
    p_liked = _p_liked(predicted, (hi - lo) / 2)
    # for_you = relevance x P(liked)^like_weight; popularity slots use the share of readers instead.
    score = (relevance if relevance is not None else share) * p_liked**LIKE_WEIGHT
    return recommendation_item(rank, work, predicted, lo, hi, basis, score=score, relevance=relevance,
                               relevance_sd=relevance_sd, p_liked=p_liked, reason=reason or {"kind": "popular"})


def _sorted_by_score(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = sorted(items, key=lambda r: -r["score"])  # stable: ties keep their order
    return [{**r, "rank": i} for i, r in enumerate(order, 1)]


def _because(work: dict) -> dict[str, Any]:
    return {"kind": "because_you_read", "isbn": work["isbn"], "work_key": work["work_key"], "title": work["title"],
            "author": work["author"]}


def _relevance(rng: np.random.Generator, works: list[dict], n_users: int, k: int = 8) -> dict[str, np.ndarray]:
    """Candidates: 80% of the works (never w % 5 == 1), most read first; each with k distinct
    neighbours, weights strongest first (every third candidate's weakest one negative)."""
    cands = [w for w in range(len(works)) if w % 5 != 1]
    cands.sort(key=lambda w: (-works[w]["n_ratings"], w))
    c = len(cands)
    k = min(k, c - 1)
    neighbours = np.zeros((c, k), dtype=np.int32)
    weights = np.zeros((c, k), dtype=np.float32)
    for i in range(c):
        others = np.delete(np.arange(c), i)
        neighbours[i] = rng.choice(others, size=k, replace=False)
        w = np.sort(rng.gamma(2.0, 0.02, size=k))[::-1]
        if i % 3 == 0:
            w[-1] = -0.004
        weights[i] = w
    weight_sd = (np.abs(weights) * rng.uniform(0.2, 0.6, size=(c, k)) + 0.002).astype(np.float32)
    return {
        "item_keys": np.array([works[w]["work_key"] for w in cands]),
        "item_isbns": np.array([works[w]["isbn"] for w in cands]),
        "neighbours": neighbours, "weights": weights, "weight_sd": weight_sd,
        "popularity": np.array([works[w]["n_ratings"] for w in cands], dtype=np.int64),
        "fallback_mean": rng.uniform(5.5, 8.5, size=c), "fallback_sd": rng.uniform(1.0, 2.0, size=c),
        "liked_threshold": np.array(LIKED_THRESHOLD), "like_weight": np.array(LIKE_WEIGHT),
        "n_users": np.array(n_users, dtype=np.int64),
    }


def _ranking(rng: np.random.Generator, n_users: int, n_books: int) -> dict[str, Any]:
    rows = []
    for r, (model, label, kind, recall) in enumerate(RANKING_ROWS):
        popular = model == "popularity"
        rows.append({
            "model": model, "label": label, "kind": kind,
            "recall@10": recall, "ndcg@10": round(recall * 0.62, 4), "mrr@10": round(recall * 0.55, 4),
            "recall@20": round(recall * 1.55, 4), "ndcg@20": round(recall * 0.75, 4),
            "liked_recall@10": round(recall * (1.25 if model in ("for_you", "mean") else 0.9), 4),
            "liked_ndcg@10": round(recall * 0.7, 4),
            "coverage": 0.04 if popular else round(float(rng.uniform(0.2, 0.6)), 4),
            "distinct_works": 12 if popular else int(rng.integers(n_books // 3, n_books)),
            "top_work_share": 0.98 if popular else round(float(rng.uniform(0.05, 0.3)), 4),
            "overlap": 0.9 if popular else round(float(rng.uniform(0.02, 0.2)), 4),
            "novelty": 4.5 if popular else round(float(rng.uniform(n_books / 6, n_books / 2)), 1),
            "recall@10_se": None if r == 0 else round(float(rng.uniform(0.002, 0.01)), 4),
        })
    n_readers = n_users // 2
    return {
        "protocol": "every work the reader did not touch in training ranked; 20% of each evaluated reader's "
                    "interactions (explicit and implicit) held out; liked = a held-out rating >= 7.3",
        "k": 10, "n_readers": n_readers, "n_held_out": n_readers * 4, "n_liked": n_readers, "liked_threshold": LIKED_THRESHOLD,
        "rows": rows,
    }


def _catalog_parquet(works: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**w, "isbn": isbn} for w in works for isbn in w["editions"]]
    table = pa.table({
        "isbn": [r["isbn"] for r in rows], "work_key": [r["work_key"] for r in rows],
        "title": [r["title"] for r in rows], "author": [r["author"] for r in rows],
        "year": pa.array([r["year"] for r in rows], type=pa.int16()),
        "publisher": [r["publisher"] for r in rows], "image_url": pa.array([r["image_url"] for r in rows], pa.string()),
        "n_ratings": pa.array([r["n_ratings"] for r in rows], pa.int32()), "in_model": [r["in_model"] for r in rows],
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def publish_fixture(
    store_url: str,
    n_users: int = 200,
    n_books: int = 80,
    top_n: int = 20,
    seed: int = 0,
    prefix: str = "bookrec",
    n_samples: int = 8,
    n_factors: int = 4,
    serving_works: str = "all",
    relevance: bool = True,
) -> PublishedFixture:
    """Publish one made-up version (see the module docstring) and return what was written, decoded."""
    if n_books < top_n + 5:
        raise ValueError("n_books must exceed top_n by at least 5 (readers' own books are excluded)")
    if serving_works not in ("all", "in_model"):
        raise ValueError("serving_works must be 'all' or 'in_model'")
    rng = np.random.default_rng(seed)
    works = _works(rng, n_books)
    user_ids = sorted(int(u) for u in rng.choice(np.arange(1, 50 * n_users + 1), size=n_users, replace=False))
    popularity = np.array([w["n_ratings"] for w in works], dtype=float)
    share = popularity / max(popularity.sum(), 1.0)
    popular_order = np.argsort(-popularity, kind="stable")
    popular = _sorted_by_score([
        _item(r + 1, works[w], 8.0 - 0.05 * r, 1.2, "popular", share=float(share[w]))
        for r, w in enumerate(popular_order[:top_n])
    ])

    recommendations: dict[int, dict[str, Any]] = {}
    for i, user_id in enumerate(user_ids):
        basis = BASES[i % len(BASES)]
        read = rng.choice(n_books, size=3, replace=False).tolist()  # never recommended back
        candidates = [w for w in (popular_order if basis == "popular" else rng.permutation(n_books)) if w not in read]
        predicted = rng.uniform(5.0, 9.5, size=top_n)
        half = rng.uniform(0.5, 2.0, size=top_n)
        rel = rng.gamma(2.0, 0.02, size=top_n)
        rel_sd = rel * rng.uniform(0.1, 0.5, size=top_n)
        because = rng.integers(0, len(read), size=top_n)
        segment = SEGMENTS[(i // len(BASES)) % len(SEGMENTS)]
        items = []
        for r, w in enumerate(candidates[:top_n]):
            if basis == "popular":
                # Segment popularity for every other popular reader, global popularity for the rest.
                reason = {"kind": "popular_in_segment", "segment": segment} if (i // len(BASES)) % 2 == 0 else None
                items.append(_item(r + 1, works[w], float(predicted[r]), float(half[r]), "popular",
                                   reason=reason, share=float(share[w])))
            elif basis == "similar_reading" and r >= top_n - 3:
                # Too few candidates: the last slots are filled by popularity in the reader's segment.
                items.append(_item(r + 1, works[w], float(predicted[r]), float(half[r]), "popular",
                                   reason={"kind": "popular_in_segment", "segment": segment}, share=float(share[w])))
            else:
                items.append(_item(r + 1, works[w], float(predicted[r]), float(half[r]), basis,
                                   relevance=float(rel[r]), relevance_sd=float(rel_sd[r]),
                                   reason=_because(works[read[int(because[r])]])))
        recommendations[user_id] = {"user_id": user_id, "basis": basis, "recommendations": _sorted_by_score(items)}

    books: dict[str, dict[str, Any]] = {}
    for w in works:
        counts = rng.multinomial(w["n_ratings"], np.full(10, 0.1))
        n_explicit = int(counts.sum())
        for isbn in w["editions"]:
            books[isbn] = {
                "isbn": isbn, "work_key": w["work_key"], "title": w["title"], "author": w["author"],
                "year": w["year"], "publisher": w["publisher"], "image_url": w["image_url"],
                "editions": w["editions"], "n_ratings": w["n_ratings"], "n_explicit": n_explicit,
                "mean_rating": round(float((counts * np.arange(1, 11)).sum() / n_explicit), 3) if n_explicit else None,
                "rating_counts": {str(v + 1): int(c) for v, c in enumerate(counts) if c},
                "in_model": w["in_model"],
            }

    serving = _serving_model(rng, works, n_samples, n_factors)
    if serving_works == "in_model":
        keep = np.array([w["in_model"] for w in works])
        serving = ServingModel(**{
            k: (v[:, keep] if k in ("item_factors", "item_bias") else v[keep] if k in ("item_keys", "item_isbns") else v)
            for k, v in serving.arrays().items()
        })
    relevance_arrays = _relevance(rng, works, n_users)
    tiers = {b: sum(1 for r in recommendations.values() if r["basis"] == b) for b in BASES}
    meta = {
        "version": None,  # filled in below once the store has named the version
        "created_at": "2026-01-01T00:00:00+00:00", "code_version": "test-fixture", "environment": "development",
        "training_time_seconds": 1.5, "parameters": {"n_factors": n_factors, "fixture": True},
        "n_samples": 40, "burn_in": 20, "n_chains": 2, "thin": 5, "n_kept": n_samples,
        "convergence": {"converged": True, "rhat": {"alpha": 1.01, "mu": 1.0},
                        "ess_bulk": {"alpha": 350.0, "mu": 410.0}, "ess_tail": {"alpha": 300.0, "mu": 390.0}},
        "traces": {name: [rng.normal(loc, 0.05, 20).round(4).tolist() for _ in range(2)]
                   for name, loc in (("alpha", 2.5), ("mu", 7.5), ("train_rmse", 1.6))},
        # Rating accuracy and calibration only: the ranking figures live in `ranking`.
        "test_metrics": {"rmse": 1.62, "mae": 1.25, "nll": 1.9, "crps": 0.9,
                         "coverage": {"0.5": 0.49, "0.8": 0.79, "0.9": 0.9, "0.95": 0.94},
                         "widths": {"0.5": 1.4, "0.8": 2.6, "0.9": 3.3, "0.95": 3.9}},
        "baselines": {"global_mean": {"rmse": 1.85}, "bias": {"rmse": 1.7}},
        "calibration": [{"nominal": q, "observed": q - 0.01} for q in (0.5, 0.8, 0.9, 0.95)],
        "rating_distribution": {str(v): int(rng.integers(10, 500)) for v in range(11)},
        "dataset": {"users": n_users, "books": len(books), "ratings": 5000, "explicit": 2000, "implicit": 3000,
                    "train": 1600, "validation": 200, "test": 200, "core_users": n_users // 2, "core_books": n_books // 2},
        "coverage_by_tier": tiers, "top_n": top_n, "interval_level": 0.9,
        "stage_seconds": {"load": 0.1, "train": 1.5, "precompute": 0.2, "publish": 0.1},
        "ranking": _ranking(rng, n_users, n_books),
    }

    relevance_buffer = io.BytesIO()
    np.savez(relevance_buffer, **relevance_arrays)
    with open_store(store_url, prefix) as store:
        with store.begin_publish() as pub:
            meta["version"] = pub.version
            pub.put_recommendations((u, orjson.dumps(p)) for u, p in recommendations.items())
            pub.put_books((isbn, orjson.dumps(b)) for isbn, b in books.items())
            pub.put_blob("meta", orjson.dumps(meta))
            pub.put_blob("catalog", _catalog_parquet(works))
            pub.put_blob("popular", orjson.dumps(popular))
            pub.put_blob("serving_model", serving.to_npz())
            if relevance:
                pub.put_blob("relevance", relevance_buffer.getvalue())
    return PublishedFixture(
        version=pub.version, user_ids=user_ids, isbns=list(books), works=works, recommendations=recommendations,
        books=books, meta=meta, popular=popular, serving_model=serving.arrays(), top_n=top_n,
        relevance=relevance_arrays if relevance else None,
    )
