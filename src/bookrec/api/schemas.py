"""Pydantic models of every request and response of the API (the JSON shapes of ARCHITECTURE.md section 4).

Response models document the OpenAPI schema; the hot paths return pre-serialised orjson bytes
that match them (tests and the schemathesis run check that they do). Models of payloads written
by the batch allow extra fields so a newer batch adding a field never breaks the API.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bookrec.contracts.payloads import BASIS_HELP, OpenPayload, RecommendationItem

RankBy = Literal["for_you", "mean", "lower", "sample"]

RANK_BY_HELP = (
    "How to order the candidates, each mode by its own score (returned as `score`): "
    "for_you (default): relevance x P(liked)^like_weight, what the reader is likely to pick up and to like; "
    "mean: the predicted rating; lower: the lower end of the credible interval (safe bets); "
    "sample: one draw from a normal with the predicted mean and the sd implied by the interval (explore)"
)


# --- errors ----------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="A human-readable message; never exception text")


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str


class ValidationErrorResponse(BaseModel):
    detail: str = Field(description="All problems with the request, in one sentence")
    errors: list[ValidationErrorItem] = Field(default_factory=list)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (all share the `{detail}` shape)."""
    text = {
        400: "The request cannot be answered (the message says why), or its body is not readable JSON text",
        404: "Not found (the message says what to try instead)",
        405: "This path takes another method (the `Allow` header lists it)",
        413: "Request body too large",
        422: "Invalid parameters or body",
        429: "Too many requests from this address; retry after `Retry-After` seconds",
        503: "The store is unreachable or no model version is published yet; retry after `Retry-After` seconds",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": text[code], "model": ValidationErrorResponse if code == 422 else ErrorResponse}
        if code in (429, 503):
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
        elif code == 405:
            entry["headers"] = {"Allow": {"description": "The methods this path takes", "schema": {"type": "string"}}}
        out[code] = entry
    return out


# --- root and health -------------------------------------------------------------------------


class RootResponse(BaseModel):
    name: str
    version: str
    description: str
    links: dict[str, str]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    store: Literal["ok"]
    model_version: str


class HealthUnavailable(BaseModel):
    status: Literal["unavailable"]
    reason: str
    store: Literal["ok", "unavailable"]
    model_version: str | None = None


# --- recommendations -------------------------------------------------------------------------


class RecommendationsResponse(BaseModel):
    user_id: int
    basis: str = Field(description=BASIS_HELP)
    recommendations: list[RecommendationItem]
    total_available: int = Field(description="How many recommendations are stored for this user")
    model_version: str
    rank_by: RankBy = Field("for_you", description=RANK_BY_HELP)
    note: str | None = None


class RatingIn(BaseModel):
    # The schema says what the validator checks: an isbn or a title (a string) must be present.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["isbn"], "properties": {"isbn": {"type": "string"}}},
                {"required": ["title"], "properties": {"title": {"type": "string"}}},
            ]
        },
    )

    isbn: str | None = Field(
        None, min_length=1, max_length=40, description="ISBN-10 or ISBN-13, dashes and spaces allowed"
    )
    title: str | None = Field(
        None, min_length=1, max_length=300, description="A title (typos tolerated) when the ISBN is unknown"
    )
    # strict: a rating sent as a string ("7") or a boolean is refused, not converted.
    # allow_inf_nan=False: NaN (which Python's JSON parser accepts) is refused as not a number,
    # rather than by a bound it happens to fail.
    rating: float | None = Field(
        None, ge=1, le=10, strict=True, allow_inf_nan=False,
        description="The reader's rating on the 1-10 scale; absent or null: read, not rated (it feeds relevance only)",
    )

    @model_validator(mode="after")
    def _isbn_or_title(self) -> "RatingIn":
        if self.isbn is None and self.title is None:
            raise ValueError("each rating needs an isbn or a title")
        return self


class ColdStartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # minItems in the schema, checked by the validator below so that the message says what to do.
    ratings: list[RatingIn] = Field(
        description="The new reader's books, rated or not (at least one must be usable)",
        json_schema_extra={"minItems": 1},
    )
    top_k: int = Field(10, ge=1, strict=True, description="How many recommendations to return")
    rank_by: RankBy = Field("for_you", description=RANK_BY_HELP)

    @field_validator("ratings")
    @classmethod
    def _not_empty(cls, ratings: list[RatingIn]) -> list[RatingIn]:
        if not ratings:
            raise ValueError("add at least one book you read (by isbn or title) to get recommendations")
        return ratings


class RecognizedRating(BaseModel):
    input: str = Field(description="The isbn or title as sent")
    isbn: str
    title: str
    author: str | None = None
    work_key: str
    rating: float | None = Field(None, description="null: read, not rated")


class UnrecognizedRating(BaseModel):
    input: str
    reason: str
    isbn: str | None = None
    title: str | None = None


class ColdStartResponse(BaseModel):
    recommendations: list[RecommendationItem]
    recognized: list[RecognizedRating]
    unrecognized: list[UnrecognizedRating]
    n_recognized: int
    basis: Literal["folded_in", "similar_reading"] = Field(
        "folded_in", description="folded_in: at least one rating was folded into the rating model; similar_reading: "
        "read books only feed relevance, ratings come from the book-level shrinkage model"
    )
    rank_by: RankBy = Field("for_you", description=RANK_BY_HELP)
    model_version: str
    note: str | None = None


# --- users -----------------------------------------------------------------------------------


class UsersPage(BaseModel):
    users: list[int]
    next_cursor: int | None = Field(None, description="Pass as `cursor` for the next page; null on the last page")
    total: int


class RandomUsers(BaseModel):
    users: list[int]
    total: int


# --- books -----------------------------------------------------------------------------------


class BookSummary(OpenPayload):
    isbn: str
    work_key: str | None = None
    title: str
    author: str | None = None
    year: int | None = None
    publisher: str | None = None
    image_url: str | None = None
    n_ratings: int | None = None
    in_model: bool | None = None


class SearchResult(BookSummary):
    score: float = Field(description="Match quality, 0-100")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=200)
    limit: int = Field(10, ge=1, strict=True)


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]


class BooksPage(BaseModel):
    books: list[BookSummary]
    total: int
    limit: int
    offset: int


class Book(OpenPayload):
    isbn: str
    work_key: str | None = None
    title: str
    author: str | None = None
    year: int | None = None
    publisher: str | None = None
    image_url: str | None = None
    editions: list[str] | None = None
    n_ratings: int | None = None
    n_explicit: int | None = None
    mean_rating: float | None = None
    rating_counts: dict[str, int] | None = None
    in_model: bool | None = None


class SimilarBook(BaseModel):
    isbn: str
    work_key: str
    title: str
    author: str | None = None
    year: int | None = None
    image_url: str | None = None
    similarity: float = Field(
        description="read_together: the relevance model's weight from the asked book to this one (how much "
        "reading it raises this one; posterior mean); factor_cosine: posterior mean of the cosine of the factors"
    )
    similarity_sd: float = Field(description="Posterior standard deviation of that similarity")


class SimilarResponse(BaseModel):
    isbn: str
    work_key: str
    model_version: str
    basis: Literal["read_together", "factor_cosine"] = Field(
        description="read_together: what readers read together (the relevance model); factor_cosine: the rating "
        "model's book factors (versions without a relevance model, or books it does not cover)"
    )
    similar: list[SimilarBook]


# --- stats and model info --------------------------------------------------------------------


class StatsResponse(BaseModel):
    users_with_recommendations: int
    books: int
    model_version: str
    store: dict[str, Any]
    coverage_by_tier: dict[str, int] | None = None


class ModelInfo(OpenPayload):
    """The published `meta` blob as written by the batch (public by design)."""

    version: str | None = None
    created_at: str | None = None
    training_time_seconds: float | None = None
    n_samples: int | None = None
    burn_in: int | None = None
    convergence: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
