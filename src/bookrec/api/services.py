"""What the API computes for a request, apart from HTTP: a known reader's stored candidates
re-sorted by a ranking mode, a new reader's cold start (the books recognised, candidates from the
relevance model, ratings from the fold-in), catalogue search and similar books. The route handlers
parse the request, call one of these and write the answer."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bookrec.api.deps import ApiState
from bookrec.api.schemas import RatingIn
from bookrec.api.search import TitleBudget
from bookrec.api.serving import ServingBundle
from bookrec.data.isbn import normalize_isbn_text
from bookrec.model.metrics import central_z

# A typed title is accepted as a catalogue book when the match covers most of its words and reads
# almost the same (rapidfuzz WRatio against the book's title alone).
TITLE_MIN_COVERAGE = 0.75
TITLE_MIN_RATIO = 85.0
# CPU a cold start may spend matching typed titles fuzzily (exact titles and ISBNs are not
# counted): a body of hundreds of long made-up titles otherwise costs seconds. Titles left when
# it is spent are reported as not matched, with the reason.
TITLE_MATCH_CPU_SECONDS = 0.15
# The candidates of a new reader: re-sorted by every mode, as the stored top-N of a known reader is.
N_CANDIDATES = 50


class NotFound(Exception):
    """Nothing to answer with (the message says what to try instead): the route answers 404."""


# --- a known reader ------------------------------------------------------------------------------


async def stored_recommendations(
    state: ApiState, user_id: int, top_k: int, rank_by: str, seed: int | None
) -> dict[str, Any]:
    """The reader's stored candidates of the current version, sorted by `rank_by`, the first `top_k`."""
    version = await state.versions.current()
    payload = await state.recommendations.get(user_id, version)
    if payload is None:
        # The pointer may have moved since we cached it: check once before saying 404.
        fresh = await state.versions.current(fresh=True)
        if fresh != version:
            version = fresh
            payload = await state.recommendations.get(user_id, version)
    if payload is None:
        raise NotFound(
            f"no recommendations for user {user_id} in model version {version}: the id is not a known reader. "
            "GET /users lists known ids; POST /recommend/cold-start recommends from a few rated books."
        )
    data = orjson.loads(payload)
    items = data.get("recommendations") or []
    total = len(items)
    if items:
        level = state.settings.interval_level
        if rank_by == "sample":
            level = (await state.versions.meta())[2].get("interval_level", state.settings.interval_level)
        items = rerank(items, rank_by, float(level), seed)
    body: dict[str, Any] = {
        "user_id": user_id,
        "basis": data.get("basis", "personal"),
        "recommendations": items[:top_k],
        "total_available": total,
        "model_version": version,
        "rank_by": rank_by,
    }
    if top_k > total:
        body["note"] = (
            f"asked for {top_k} recommendations but {total} are stored for this user; "
            "all stored ones are returned"
        )
    return body


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def rerank(items: list[dict[str, Any]], rank_by: str, level: float, seed: int | None) -> list[dict[str, Any]]:
    """Re-sort the stored candidates by the mode's own key; every mode orders the same items.

    for_you: by the stored `score` (relevance x P(liked)^like_weight), which the stored list is
    already sorted by (then returned as is); a list without scores (an older version) keeps its
    stored order. mean: by `predicted_rating`. lower: by the lower end of the credible interval
    (risk-averse reader). sample: by one draw per book from a normal with the stored mean and the
    sd implied by the interval half-width (Thompson-style exploration; an approximation of the
    posterior predictive, which the stored list does not keep in full). Ties keep the stored
    order. Apart from for_you, each returned item's `score` is the mode's key.
    """
    if rank_by == "for_you":
        scores = [_num(r.get("score")) for r in items]
        if all(x is None for x in scores):
            return items
        keyed = [(x is None, -(x or 0.0), i) for i, x in enumerate(scores)]
        if all(a <= b for a, b in zip(keyed, keyed[1:])):
            return items  # already in order (the hot path: no copy)
        order = [items[i] for *_, i in sorted(keyed)]
        return [{**r, "rank": i} for i, r in enumerate(order, 1)]
    if rank_by == "mean":
        keys = [float(r["predicted_rating"]) for r in items]
        ties = [0.0] * len(items)
    elif rank_by == "lower":
        keys = [float(r["confidence_interval"][0]) for r in items]
        ties = [float(r["predicted_rating"]) for r in items]
    else:
        rng = random.Random(seed)
        z = central_z(level)
        keys = [
            round(rng.gauss(float(r["predicted_rating"]), max(float(r["uncertainty"]), 1e-9) / z), 4) for r in items
        ]
        ties = [0.0] * len(items)
    order = sorted(range(len(items)), key=lambda i: (-keys[i], -ties[i], i))
    return [{**items[i], "rank": rank, "score": keys[i]} for rank, i in enumerate(order, 1)]


# --- a new reader --------------------------------------------------------------------------------


def ratings_outside_scale(bundle: ServingBundle, ratings: list[RatingIn]) -> list[dict[str, Any]]:
    """A validation error for each rating outside the model's rating scale (null: read, not rated)."""
    lo, hi = bundle.rating_range
    return [
        {"type": "value_error", "loc": ("body", "ratings", i, "rating"),
         "msg": f"Input should be between {lo:g} and {hi:g} (the model's rating scale), or null for not rated"}
        for i, r in enumerate(ratings) if r.rating is not None and not lo <= r.rating <= hi
    ]


@dataclass
class _Read:
    """A recognised book of a new reader: its work, and what it can feed."""

    entry: dict[str, Any]  # the `recognized` entry of the response
    work_key: str
    rating: float | None
    item: int | None  # serving-model index when rated and in the rating model (folded in)
    local: int | None  # relevance candidate index (feeds relevance, rated or not)


def resolve_book(bundle: ServingBundle, rating: RatingIn, budget: TitleBudget) -> tuple[_Read | None, dict[str, Any]]:
    """Find the book a rating is about: (what it can feed or None, recognized/unrecognized entry)."""
    catalog, search = bundle.need_catalog()
    rel = bundle.relevance
    rows: list[int] = []
    if rating.isbn is not None:
        text = rating.isbn
        row = catalog.find_isbn(text)
        if row is None:
            return None, {"input": text, "reason": f"no book with ISBN {normalize_isbn_text(text) or text!r} in the catalogue"}
        rows = [row]
    else:
        text = rating.title or ""
        rows = search.exact_title_rows(text)
        if not rows:
            if text in budget.memo:
                rows = budget.memo[text]
            elif budget.exhausted:
                return None, {"input": text, "reason": "not matched: this request has too many titles to match "
                              "(typed titles that are not exact); send ISBNs, exact titles or fewer books"}
            else:
                with budget.charge():
                    rows = budget.memo[text] = search.match_title(text, TITLE_MIN_COVERAGE, TITLE_MIN_RATIO)
        if not rows:
            return None, {"input": text, "reason": "no book with a title like this in the catalogue"}

    def usable(row: int) -> bool:
        key = catalog.work_key[row] or ""
        return (rating.rating is not None and key in bundle.item_of_work) or (rel is not None and key in rel.local_of_work)

    # Prefer an edition whose work the models can use, then the most read one.
    ok = [r for r in rows if usable(r)]
    pick = max(ok or rows, key=lambda r: catalog.n_ratings[r])
    key = catalog.work_key[pick] or ""
    if not ok:
        if rating.rating is None and key in bundle.item_of_work:
            reason = ("read, not rated: without a rating this book tells the model nothing "
                      + ("(too few readers to relate it to other books); " if rel is not None else "")
                      + "add your rating to use it")
        else:
            reason = "known book, but it has too few ratings to be part of the model"
        return None, {"input": text, "isbn": catalog.isbn[pick], "title": catalog.title[pick], "reason": reason}
    entry = {
        "input": text, "isbn": catalog.isbn[pick], "title": catalog.title[pick], "author": catalog.author[pick],
        "work_key": key, "rating": rating.rating,
    }
    item = bundle.item_of_work.get(key) if rating.rating is not None else None
    local = rel.local_of_work.get(key) if rel is not None else None
    return _Read(entry, key, rating.rating, item, local), entry


def cold_start(bundle: ServingBundle, ratings: list[RatingIn], top_k: int, rank_by: str) -> dict[str, Any]:
    """A new reader's recommendations from the books they read (`n_recognized` 0: none was usable)."""
    recognized: list[dict[str, Any]] = []
    unrecognized: list[dict[str, Any]] = []
    rated: dict[int, list[float]] = {}  # serving-model item -> ratings (several editions of a work)
    history: list[int] = []  # relevance candidates read, in the order given
    reasons: dict[int, dict[str, Any]] = {}
    budget = TitleBudget(TITLE_MATCH_CPU_SECONDS)
    for rating in ratings:  # at most settings.max_cold_start_ratings (the body's limit)
        read, entry = resolve_book(bundle, rating, budget)
        if read is None:
            unrecognized.append(entry)
            continue
        recognized.append(entry)
        if read.item is not None and read.rating is not None:
            rated.setdefault(read.item, []).append(float(read.rating))
        if read.local is not None and read.local not in reasons:
            history.append(read.local)
            reasons[read.local] = {"kind": "because_you_read", "isbn": entry["isbn"], "work_key": read.work_key,
                                   "title": entry["title"], "author": entry["author"]}
    out: dict[str, Any] = {
        "recommendations": [], "recognized": recognized, "unrecognized": unrecognized,
        "n_recognized": len(recognized), "basis": "folded_in" if rated else "similar_reading",
        "rank_by": rank_by, "model_version": bundle.version,
    }
    # Several editions of one work count as one rating of the work (their mean), as in training.
    items = np.fromiter(rated.keys(), dtype=np.int64, count=len(rated))
    values = np.array([np.mean(v) for v in rated.values()], dtype=np.float64)
    if bundle.relevance is not None and history:
        candidates = bundle.relevance_recommend(
            history, reasons, items, values, n_candidates=max(N_CANDIDATES, top_k), fill_to=top_k, basis=out["basis"],
        )
        out["recommendations"] = rerank(candidates, rank_by, bundle.interval_level, None)[:top_k]
    elif rated:
        # Nothing read is related to other books by the relevance model (or this version has no
        # relevance model): the rated books alone, folded in, rank every book of the rating model.
        mode = rank_by if rank_by in ("lower", "sample") else "mean"
        out["recommendations"] = bundle.fold_in_recommend(
            items, values, top_k, mode, with_p_liked=bundle.relevance is not None
        )
        if rank_by == "for_you":
            out["note"] = (
                "ranked by predicted rating: "
                + ("none of these books is related to others by the relevance model yet"
                   if bundle.relevance is not None else "this model version has no relevance model")
            )
    return out


# --- the catalogue -------------------------------------------------------------------------------


def search_catalog(bundle: ServingBundle, query: str, limit: int) -> dict[str, Any]:
    """Books matching `query` (title and author words, typos tolerated); an ISBN finds its book first."""
    catalog, index = bundle.need_catalog()
    exact = []
    if len(normalize_isbn_text(query)) in (10, 13) and (row := catalog.find_isbn(query)) is not None:
        exact.append(row)
    hits = index.search(query, limit=limit, exact_rows=exact)
    return {"query": query, "results": [{**catalog.summary(h.row), "score": h.score} for h in hits]}


def books_page(bundle: ServingBundle, limit: int, offset: int) -> dict[str, Any]:
    catalog, _ = bundle.need_catalog()
    rows = range(offset, min(offset + limit, len(catalog)))
    return {"books": [catalog.summary(r) for r in rows], "total": len(catalog), "limit": limit, "offset": offset}


def similar_books(bundle: ServingBundle, isbn: str, n: int) -> dict[str, Any]:
    """Books read together with this one (the relevance model), else the nearest by the rating
    model's factors (a version without a relevance model, or a book it does not cover)."""
    catalog, _ = bundle.need_catalog()
    key = normalize_isbn_text(isbn)
    row = catalog.find_isbn(isbn) if key else None
    if row is None:
        raise NotFound(f"no book with ISBN {key or isbn!r} in the catalogue; search with GET /books/search?q=")
    key = catalog.isbn[row]  # the stored form, whichever form was asked for
    work = catalog.work_key[row] or ""
    together = bundle.read_together(work, n)
    if together is not None:
        return {"isbn": key, "work_key": work, "model_version": bundle.version, "basis": "read_together",
                "similar": together}
    bundle.need_model()
    item = bundle.item_of_work.get(work)
    if item is None:
        raise NotFound(f"book {key} has too few ratings to be part of the model, so it has no similar books yet")
    out = []
    for other, mean, sd in bundle.similar(item, n):
        d = bundle.describe_item(other)
        out.append({
            "isbn": d["isbn"] or "", "work_key": d["work_key"], "title": d["title"], "author": d["author"],
            "year": d["year"], "image_url": d["image_url"], "similarity": round(mean, 4), "similarity_sd": round(sd, 4),
        })
    return {"isbn": key, "work_key": work, "model_version": bundle.version, "basis": "factor_cosine", "similar": out}
