"""`GET /recommend/{user_id}` (the stored candidates of a known reader, sorted by the ranking mode)
and `POST /recommend/cold-start` (a new reader's books: candidates from the relevance blob, ratings
from the fold-in of the rated books into the published model, in-process)."""


import asyncio
import re
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from bookrec.api import services
from bookrec.api.deps import BundleDep, SettingsDep, StateDep, check_bounds, limit_cold_starts
from bookrec.api.schemas import (
    ColdStartRequest,
    ColdStartResponse,
    RankBy,
    RANK_BY_HELP,
    RecommendationsResponse,
    error_responses,
)
from bookrec.store import MAX_USER_ID

USER_ID = re.compile(r"[0-9]{1,19}")
BAD_USER_ID = (
    f"a reader id is a whole number from 0 to {MAX_USER_ID - 1} (GET /users lists known readers; "
    "POST /recommend/cold-start recommends for a new reader)"
)

router = APIRouter(tags=["recommendations"])


class RecommendQuery(BaseModel):
    """The query of `GET /recommend/{user_id}` (top_k's upper bound is the `max_top_k` setting)."""

    top_k: int = Field(10, ge=1, description="How many to return")
    rank_by: RankBy = Field("for_you", description=RANK_BY_HELP)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seed for rank_by=sample")


# The hot path parses its own parameters with one pydantic model: FastAPI's per-parameter
# machinery cost more CPU than the store read. The OpenAPI document still lists them (generated
# from the same model, so they cannot drift).
RECOMMEND_PARAMETERS = [
    {"name": "user_id", "in": "path", "required": True, "description": "A reader id (see GET /users)",
     "schema": {"type": "integer", "minimum": 0, "exclusiveMaximum": MAX_USER_ID}},
    *({"name": name, "in": "query", "required": False, "schema": prop, "description": prop.get("description", "")}
      for name, prop in RecommendQuery.model_json_schema()["properties"].items()),
]


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


@router.get(
    # The path segment is parsed here rather than by an :int converter, which took 4,301+ digits
    # to a 500 and any other text to a bare 404.
    "/recommend/{user_id}",
    response_model=RecommendationsResponse,
    summary="Stored recommendations of a known reader",
    description="`GET /recommend/cold-start` answers 405: the cold start takes POST.",
    responses=error_responses(404, 405, 422, 503),
    openapi_extra={"parameters": RECOMMEND_PARAMETERS},
)
async def recommend(request: Request, state: StateDep) -> Response:
    # One store round trip (the version pointer is cached), orjson in and out.
    raw: str = request.path_params["user_id"]
    if raw == "cold-start":
        # Answered here: the 405 handler would list this route's GET among the allowed methods.
        return _json({"detail": "the cold start takes POST with a JSON body"}, status=405, headers={"Allow": "POST"})
    if not USER_ID.fullmatch(raw) or int(raw) >= MAX_USER_ID:
        raise RequestValidationError([{"type": "value_error", "loc": ("path", "user_id"), "msg": BAD_USER_ID}])
    try:
        query = RecommendQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    check_bounds(state.settings, (("query", "top_k"), query.top_k, "max_top_k"))
    try:
        body = await services.stored_recommendations(state, int(raw), query.top_k, query.rank_by, query.seed)
    except services.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
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
        "The candidates are then sorted by `rank_by`, as for a known reader. Several entries for one work "
        "(editions, or the same book twice) count as one rating of the work, their mean."
    ),
    responses=error_responses(400, 413, 422, 429, 503),
    dependencies=[Depends(limit_cold_starts)],
)
async def cold_start(body: ColdStartRequest, bundle: BundleDep, settings: SettingsDep) -> Response:
    check_bounds(
        settings,
        (("body", "ratings"), body.ratings, "max_cold_start_ratings"),
        (("body", "top_k"), body.top_k, "max_top_k"),
    )
    bundle.need_catalog()
    bundle.need_model()
    outside = services.ratings_outside_scale(bundle, body.ratings)
    if outside:
        raise RequestValidationError(outside)
    result = await asyncio.to_thread(services.cold_start, bundle, body.ratings, body.top_k, body.rank_by)
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
