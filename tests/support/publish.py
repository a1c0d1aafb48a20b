"""TEST DATA: publish a small but realistic version into any store, for API and web tests.

    from tests.support.publish import publish_fixture
    fixture = publish_fixture(store_url, n_users=300, n_books=120)
    fixture.version, fixture.user_ids, fixture.isbns, fixture.recommendations[user_id] ...

Everything here is made up (seeded, deterministic) and follows the payload shapes of
docs/ARCHITECTURE.md section 3: per-user recommendation payloads covering all four bases, one
book payload per edition (some works have two editions), and the blobs ``meta``, ``catalog``
(Parquet, like the batch writes), ``popular`` and ``serving_model`` (npz of random but
well-formed posterior samples, so cold-start fold-in runs; its predictions mean nothing).
It is NOT the batch's output: use it until tests can afford a real `bookrec batch` run, and never
assert model quality on it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bookrec.store import open_store

BASES = ("personal", "folded_in", "similar_reading", "popular")
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


def _serving_model(rng: np.random.Generator, works: list[dict], n_samples: int, k: int) -> dict[str, np.ndarray]:
    n = len(works)
    return {
        "item_factors": rng.normal(0.0, 0.4, size=(n_samples, n, k)).astype(np.float32),
        "item_bias": rng.normal(0.0, 0.5, size=(n_samples, n)).astype(np.float32),
        "mu": rng.normal(7.5, 0.05, size=n_samples),
        "alpha": rng.gamma(50.0, 1 / 20.0, size=n_samples),            # noise precision ~2.5
        "mu_user": rng.normal(0.0, 0.05, size=(n_samples, k)),
        "lambda_user": np.stack([np.eye(k) * rng.uniform(1.5, 2.5) for _ in range(n_samples)]),
        "tau_user_bias": rng.gamma(20.0, 1 / 10.0, size=n_samples),
        "item_keys": np.array([w["work_key"] for w in works]),
        "item_isbns": np.array([w["isbn"] for w in works]),
        "rating_range": np.array([1.0, 10.0]),
    }


def _item(rank: int, work: dict, predicted: float, half: float, basis: str) -> dict[str, Any]:
    lo, hi = max(1.0, predicted - half), min(10.0, predicted + half)
    return {
        "rank": rank, "work_key": work["work_key"], "isbn": work["isbn"], "title": work["title"],
        "author": work["author"], "year": work["year"], "image_url": work["image_url"],
        "predicted_rating": round(predicted, 2), "uncertainty": round((hi - lo) / 2, 2),
        "confidence_interval": [round(lo, 2), round(hi, 2)], "basis": basis,
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
) -> PublishedFixture:
    """Publish one made-up version (see the module docstring) and return what was written, decoded."""
    if n_books < top_n + 5:
        raise ValueError("n_books must exceed top_n by at least 5 (readers' own books are excluded)")
    rng = np.random.default_rng(seed)
    works = _works(rng, n_books)
    user_ids = sorted(int(u) for u in rng.choice(np.arange(1, 50 * n_users + 1), size=n_users, replace=False))
    popularity = np.array([w["n_ratings"] for w in works], dtype=float)
    popular_order = np.argsort(-popularity, kind="stable")
    popular = [_item(r + 1, works[w], 8.0 - 0.05 * r, 1.2, "popular") for r, w in enumerate(popular_order[:top_n])]

    recommendations: dict[int, dict[str, Any]] = {}
    for i, user_id in enumerate(user_ids):
        basis = BASES[i % len(BASES)]
        read = set(rng.choice(n_books, size=3, replace=False).tolist())  # never recommended back
        candidates = [w for w in (popular_order if basis == "popular" else rng.permutation(n_books)) if w not in read]
        predicted = np.sort(rng.uniform(5.0, 9.5, size=top_n))[::-1]
        half = rng.uniform(0.5, 2.0, size=top_n)
        recommendations[user_id] = {
            "user_id": user_id, "basis": basis,
            "recommendations": [
                _item(r + 1, works[w], float(predicted[r]), float(half[r]), basis)
                for r, w in enumerate(candidates[:top_n])
            ],
        }

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
        "test_metrics": {"rmse": 1.62, "mae": 1.25, "nll": 1.9, "crps": 0.9,
                         "coverage": {"0.5": 0.49, "0.8": 0.79, "0.9": 0.9, "0.95": 0.94},
                         "widths": {"0.5": 1.4, "0.8": 2.6, "0.9": 3.3, "0.95": 3.9},
                         "ndcg@10": 0.05, "precision@10": 0.02, "recall@10": 0.04},
        "baselines": {"global_mean": {"rmse": 1.85}, "bias": {"rmse": 1.7}},
        "calibration": [{"nominal": q, "observed": q - 0.01} for q in (0.5, 0.8, 0.9, 0.95)],
        "rating_distribution": {str(v): int(rng.integers(10, 500)) for v in range(11)},
        "dataset": {"users": n_users, "books": len(books), "ratings": 5000, "explicit": 2000, "implicit": 3000,
                    "train": 1600, "validation": 200, "test": 200, "core_users": n_users // 2, "core_books": n_books // 2},
        "coverage_by_tier": tiers, "top_n": top_n, "interval_level": 0.9,
        "stage_seconds": {"load": 0.1, "train": 1.5, "precompute": 0.2, "publish": 0.1},
    }

    buffer = io.BytesIO()
    np.savez(buffer, **serving)
    with open_store(store_url, prefix) as store:
        with store.begin_publish() as pub:
            meta["version"] = pub.version
            pub.put_recommendations((u, orjson.dumps(p)) for u, p in recommendations.items())
            pub.put_books((isbn, orjson.dumps(b)) for isbn, b in books.items())
            pub.put_blob("meta", orjson.dumps(meta))
            pub.put_blob("catalog", _catalog_parquet(works))
            pub.put_blob("popular", orjson.dumps(popular))
            pub.put_blob("serving_model", buffer.getvalue())
    return PublishedFixture(
        version=pub.version, user_ids=user_ids, isbns=list(books), works=works, recommendations=recommendations,
        books=books, meta=meta, popular=popular, serving_model=serving, top_n=top_n,
    )
