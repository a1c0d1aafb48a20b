"""`GET /recommend/{user_id}` (stored top-N of a known reader) and `POST /recommend/cold-start`
(a new reader's ratings folded into the published model in-process)."""


import asyncio
import random
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError, create_model
from starlette.responses import Response

from bookrec.api.deps import BundleDep
from bookrec.api.schemas import (
    ColdStartRequest,
    ColdStartResponse,
    RankBy,
    RatingIn,
    RecommendationsResponse,
    error_responses,
)
from bookrec.api.serving import ServingBundle
from bookrec.config import Settings
from bookrec.data.isbn import normalize_isbn_text
from bookrec.model.metrics import central_z
from bookrec.store.base import MAX_USER_ID

# A typed title is accepted as a catalogue book when the match covers most of its words and reads
# almost the same (rapidfuzz WRatio against the book's title alone).
TITLE_MIN_COVERAGE = 0.75
TITLE_MIN_RATIO = 85.0


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def rerank(items: list[dict[str, Any]], rank_by: str, level: float, seed: int | None) -> list[dict[str, Any]]:
    """Re-rank a stored list. Only the stored top-N is reordered (the batch chose it by mean).

    lower: by the lower end of the credible interval (risk-averse reader).
    sample: by one draw per book from a normal with the stored mean and the sd implied by the
    interval half-width (Thompson-style exploration); an approximation of the posterior
    predictive, which the stored list does not keep in full.
    """
    if rank_by == "lower":
        order = sorted(items, key=lambda r: (-float(r["confidence_interval"][0]), -float(r["predicted_rating"])))
    else:
        rng = random.Random(seed)
        z = central_z(level)
        draws = [rng.gauss(float(r["predicted_rating"]), max(float(r["uncertainty"]), 1e-9) / z) for r in items]
        order = [r for _, r in sorted(zip(draws, items), key=lambda p: -p[0])]
    return [{**r, "rank": i} for i, r in enumerate(order, 1)]


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["recommendations"])
    max_top_k = settings.max_top_k

    ColdStartBody = create_model(  # noqa: N806 - a class
        "ColdStartRequest",
        __base__=ColdStartRequest,
        ratings=(list[RatingIn], Field(max_length=settings.max_cold_start_ratings,
                                       description="The new reader's ratings (at least one must be recognised)")),
        top_k=(int, Field(10, ge=1, le=max_top_k, description="How many recommendations to return")),
    )

    # The hot path parses its own parameters with one pydantic model: FastAPI's per-parameter
    # machinery cost more CPU than the store read (measured: ~150 us of ~850 us per request).
    # The OpenAPI document still lists them (generated from the same model, so they cannot drift).
    RecommendQuery = create_model(  # noqa: N806 - a class
        "RecommendQuery",
        top_k=(int, Field(10, ge=1, le=max_top_k, description="How many to return")),
        rank_by=(RankBy, Field("mean", description="mean | lower | sample: reorders the stored list")),
        seed=(int | None, Field(None, ge=0, le=2**32 - 1, description="Seed for rank_by=sample")),
    )
    user_id_schema = {"type": "integer", "minimum": 0, "exclusiveMaximum": MAX_USER_ID}
    parameters = [{"name": "user_id", "in": "path", "required": True, "schema": user_id_schema,
                   "description": "A reader id (see GET /users)"}]
    query_schema = RecommendQuery.model_json_schema()
    for name, prop in query_schema["properties"].items():
        parameters.append({"name": name, "in": "query", "required": False, "schema": prop,
                           "description": prop.get("description", "")})

    @router.get(
        # :int so that /recommend/cold-start is never taken for a user id (405 lists POST only).
        "/recommend/{user_id:int}",
        response_model=RecommendationsResponse,
        summary="Stored recommendations of a known reader",
        responses=error_responses(404, 422, 503),
        openapi_extra={"parameters": parameters},
    )
    async def recommend(request: Request) -> Response:
        # One store round trip (the version pointer is cached), orjson in and out.
        user_id: int = request.path_params["user_id"]
        try:
            query = RecommendQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None
        if not 0 <= user_id < MAX_USER_ID:
            raise RequestValidationError(
                [{"type": "less_than", "loc": ("path", "user_id"), "msg": f"Input should be less than {MAX_USER_ID}"}]
            )
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
        if rank_by != "mean" and items:
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
        summary="Recommendations for a new reader from a few rated books",
        responses=error_responses(400, 413, 422, 503),
    )
    async def cold_start(body: ColdStartBody, bundle: BundleDep) -> Response:  # type: ignore[valid-type]
        if not body.ratings:
            raise HTTPException(400, "rate at least one book (by isbn or title) to get recommendations")
        bundle.need_catalog()
        bundle.need_model()
        result = await asyncio.to_thread(_cold_start, bundle, body.ratings, body.top_k, body.rank_by)
        if result["n_recognized"] == 0:
            return _json(
                {
                    "detail": "none of the rated books was recognised in the model; search titles with "
                    "GET /books/search?q= and rate books found there",
                    "unrecognized": result["unrecognized"],
                },
                status=400,
            )
        return _json(result)

    return router


def _resolve(bundle: ServingBundle, rating: RatingIn) -> tuple[int | None, dict[str, Any]]:
    """Find the book a rating is about: (model item or None, recognized/unrecognized entry)."""
    catalog, search = bundle.need_catalog()
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
            for hit in search.search(text, limit=5):
                if hit.coverage >= TITLE_MIN_COVERAGE and search.title_ratio(text, hit.row) >= TITLE_MIN_RATIO:
                    rows.append(hit.row)
        if not rows:
            return None, {"input": text, "reason": "no book with a title like this in the catalogue"}
    # Prefer an edition whose work is in the model, then the most read one.
    in_model = [r for r in rows if (catalog.work_key[r] or "") in bundle.item_of_work]
    pick = max(in_model or rows, key=lambda r: catalog.n_ratings[r])
    key = catalog.work_key[pick] or ""
    if not in_model:
        return None, {
            "input": text, "isbn": catalog.isbn[pick], "title": catalog.title[pick],
            "reason": "known book, but it has too few ratings to be part of the model",
        }
    return bundle.item_of_work[key], {
        "input": text, "isbn": catalog.isbn[pick], "title": catalog.title[pick], "author": catalog.author[pick],
        "work_key": key, "rating": rating.rating,
    }


def _cold_start(bundle: ServingBundle, ratings: list[RatingIn], top_k: int, rank_by: str) -> dict[str, Any]:
    recognized: list[dict[str, Any]] = []
    unrecognized: list[dict[str, Any]] = []
    by_item: OrderedDict[int, list[float]] = OrderedDict()
    for rating in ratings:
        item, entry = _resolve(bundle, rating)
        if item is None:
            unrecognized.append(entry)
        else:
            recognized.append(entry)
            by_item.setdefault(item, []).append(float(rating.rating))
    out: dict[str, Any] = {
        "recommendations": [], "recognized": recognized, "unrecognized": unrecognized,
        "n_recognized": len(recognized), "basis": "folded_in", "rank_by": rank_by, "model_version": bundle.version,
    }
    if by_item:
        # Several editions of one work count as one rating of the work (their mean), as in training.
        items = np.fromiter(by_item.keys(), dtype=np.int64)
        values = np.array([np.mean(v) for v in by_item.values()], dtype=np.float64)
        out["recommendations"] = bundle.fold_in_recommend(items, values, top_k, rank_by)
    return out
