"""`GET /recommend/{user_id}` (the stored candidates of a known reader, sorted by the ranking mode)
and `POST /recommend/cold-start` (a new reader's books: candidates from the relevance blob, ratings
from the fold-in of the rated books into the published model, in-process)."""


import asyncio
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError, create_model
from starlette.responses import Response

from bookrec.api.deps import BundleDep
from bookrec.api.middleware import RateLimiter
from bookrec.api.schemas import (
    ColdStartRequest,
    ColdStartResponse,
    RankBy,
    RANK_BY_HELP,
    RatingIn,
    RecommendationsResponse,
    error_responses,
)
from bookrec.api.search import TitleBudget
from bookrec.api.serving import ServingBundle
from bookrec.config import Settings
from bookrec.data.isbn import normalize_isbn_text
from bookrec.model.metrics import central_z
from bookrec.store.base import MAX_USER_ID

# A typed title is accepted as a catalogue book when the match covers most of its words and reads
# almost the same (rapidfuzz WRatio against the book's title alone).
TITLE_MIN_COVERAGE = 0.75
TITLE_MIN_RATIO = 85.0
# CPU a cold start may spend matching typed titles fuzzily (exact titles and ISBNs are not
# counted): a body of hundreds of long made-up titles otherwise costs seconds. Titles left when
# it is spent are reported as not matched, with the reason.
TITLE_MATCH_CPU_SECONDS = 0.15
USER_ID = re.compile(r"[0-9]{1,19}")


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


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


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["recommendations"])
    max_top_k = settings.max_top_k

    ColdStartBody = create_model(  # noqa: N806 - a class
        "ColdStartRequest",
        __base__=ColdStartRequest,
        ratings=(list[RatingIn], Field(max_length=settings.max_cold_start_ratings, json_schema_extra={"minItems": 1},
                                       description="The new reader's ratings (at least one must be recognised)")),
        top_k=(int, Field(10, ge=1, le=max_top_k, description="How many recommendations to return")),
    )

    # The hot path parses its own parameters with one pydantic model: FastAPI's per-parameter
    # machinery cost more CPU than the store read (measured: ~150 us of ~850 us per request).
    # The OpenAPI document still lists them (generated from the same model, so they cannot drift).
    RecommendQuery = create_model(  # noqa: N806 - a class
        "RecommendQuery",
        top_k=(int, Field(10, ge=1, le=max_top_k, description="How many to return")),
        rank_by=(RankBy, Field("for_you", description=RANK_BY_HELP)),
        seed=(int | None, Field(None, ge=0, le=2**32 - 1, description="Seed for rank_by=sample")),
    )
    user_id_schema = {"type": "integer", "minimum": 0, "exclusiveMaximum": MAX_USER_ID}
    parameters = [{"name": "user_id", "in": "path", "required": True, "schema": user_id_schema,
                   "description": "A reader id (see GET /users)"}]
    query_schema = RecommendQuery.model_json_schema()
    for name, prop in query_schema["properties"].items():
        parameters.append({"name": name, "in": "query", "required": False, "schema": prop,
                           "description": prop.get("description", "")})

    cold_start_limit = RateLimiter(
        settings.rate_limit_cold_start_per_minute, settings.rate_limit_cold_start_burst,
        settings.rate_limit_max_clients, "cold-start",
    )
    bad_user_id = (
        f"a reader id is a whole number from 0 to {MAX_USER_ID - 1} (GET /users lists known readers; "
        "POST /recommend/cold-start recommends for a new reader)"
    )

    @router.get(
        # The path segment is parsed here rather than by an :int converter, which took 4,301+ digits
        # to a 500 and any other text to a bare 404.
        "/recommend/{user_id}",
        response_model=RecommendationsResponse,
        summary="Stored recommendations of a known reader",
        description="`GET /recommend/cold-start` answers 405: the cold start takes POST.",
        responses=error_responses(404, 405, 422, 503),
        openapi_extra={"parameters": parameters},
    )
    async def recommend(request: Request) -> Response:
        # One store round trip (the version pointer is cached), orjson in and out.
        raw: str = request.path_params["user_id"]
        if raw == "cold-start":
            # Answered here: the 405 handler would list this route's GET among the allowed methods.
            return _json({"detail": "the cold start takes POST with a JSON body"}, status=405, headers={"Allow": "POST"})
        if not USER_ID.fullmatch(raw) or int(raw) >= MAX_USER_ID:
            raise RequestValidationError([{"type": "value_error", "loc": ("path", "user_id"), "msg": bad_user_id}])
        user_id = int(raw)
        try:
            query = RecommendQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        top_k, rank_by, seed = query.top_k, query.rank_by, query.seed
        state = request.app.state.api
        version = await state.versions.current()
        payload = await state.recommendations.get(user_id, version)
        if payload is None:
            # The pointer may have moved since we cached it: check once before saying 404.
            fresh = await state.versions.current(fresh=True)
            if fresh != version:
                version = fresh
                payload = await state.recommendations.get(user_id, version)
        if payload is None:
            raise HTTPException(
                404,
                f"no recommendations for user {user_id} in model version {version}: the id is not a known reader. "
                "GET /users lists known ids; POST /recommend/cold-start recommends from a few rated books.",
            )
        data = orjson.loads(payload)
        items = data.get("recommendations") or []
        total = len(items)
        if items:
            level = settings.interval_level
            if rank_by == "sample":
                level = (await state.versions.meta())[2].get("interval_level", settings.interval_level)
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
        return _json(body)

    @router.post(
        "/recommend/cold-start",
        response_model=ColdStartResponse,
        summary="Recommendations for a new reader from a few books read (rated or not)",
        description=(
            "Books the reader read, each by isbn or title, with a 1-10 rating or without one (read, not rated). "
            "Read books the relevance model knows choose the candidates (what readers of those books also "
            "read, each with the read book that points to it most: `reason`); rated books of the rating model "
            "are folded into it exactly to predict the ratings, and P(liked) follows from that prediction. "
            "The candidates are then sorted by `rank_by`, as for a known reader."
        ),
        responses=error_responses(400, 413, 422, 429, 503),
        dependencies=[Depends(cold_start_limit)],
    )
    async def cold_start(body: ColdStartBody, bundle: BundleDep) -> Response:  # type: ignore[valid-type]
        bundle.need_catalog()
        bundle.need_model()
        lo, hi = bundle.rating_range
        outside = [i for i, r in enumerate(body.ratings) if r.rating is not None and not lo <= r.rating <= hi]
        if outside:
            raise RequestValidationError([
                {"type": "value_error", "loc": ("body", "ratings", i, "rating"),
                 "msg": f"Input should be between {lo:g} and {hi:g} (the model's rating scale), or null for not rated"}
                for i in outside
            ])
        result = await asyncio.to_thread(_cold_start, bundle, body.ratings, body.top_k, body.rank_by)
        if result["n_recognized"] == 0:
            return _json(
                {
                    "detail": "none of the books was recognised in the model; search titles with "
                    "GET /books/search?q= and add books found there",
                    "unrecognized": result["unrecognized"],
                },
                status=400,
            )
        return _json(result)

    return router


# The candidates of a new reader: re-sorted by every mode, as the stored top-N of a known reader is.
N_CANDIDATES = 50


@dataclass
class _Read:
    """A recognised book of a new reader: its work, and what it can feed."""

    entry: dict[str, Any]  # the `recognized` entry of the response
    work_key: str
    rating: float | None
    item: int | None  # serving-model index when rated and in the rating model (folded in)
    local: int | None  # relevance candidate index (feeds relevance, rated or not)


def _resolve(bundle: ServingBundle, rating: RatingIn, budget: TitleBudget) -> tuple[_Read | None, dict[str, Any]]:
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


def _cold_start(bundle: ServingBundle, ratings: list[RatingIn], top_k: int, rank_by: str) -> dict[str, Any]:
    recognized: list[dict[str, Any]] = []
    unrecognized: list[dict[str, Any]] = []
    rated: dict[int, list[float]] = {}  # serving-model item -> ratings (several editions of a work)
    history: list[int] = []  # relevance candidates read, in the order given
    reasons: dict[int, dict[str, Any]] = {}
    budget = TitleBudget(TITLE_MATCH_CPU_SECONDS)
    for rating in ratings:  # at most settings.max_cold_start_ratings (the body's limit)
        read, entry = _resolve(bundle, rating, budget)
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
