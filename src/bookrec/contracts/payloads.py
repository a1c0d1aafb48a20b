"""The JSON payloads the batch stores and the API serves: the recommendation item (one definition,
as a Pydantic model, a dict builder and the batch's byte template), the reader and book payloads'
fields, the meta keys the API reads, and how numbers are rounded.

Rounding: ratings (mean, half-width, interval ends) to 2 decimals, as the batch has always stored them;
score, relevance and its sd to 4 significant digits, P(liked) to 3.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RATING_DECIMALS = 2
SCORE_DIGITS = 4
P_LIKED_DIGITS = 3

#: The book part of an item, in payload order (the batch encodes it once per book).
BOOK_FIELDS = ("work_key", "isbn", "title", "author", "year", "image_url")
#: A reader's payload: ``READER_TEMPLATE % (user_id, basis, JSON array of items)``.
READER_TEMPLATE = b'{"user_id":%d,"basis":"%s","recommendations":%s}'
#: One edition's payload (the store's ``books``), in payload order.
BOOK_PAYLOAD_FIELDS = (
    "isbn", "work_key", "title", "author", "year", "publisher", "image_url", "editions", "n_ratings", "n_explicit",
    "mean_rating", "rating_counts", "in_model",
)
#: Keys of the published ``meta`` blob that the API reads (the batch writes more; tests/test_batch_pipeline.py
#: checks these are among them).
META_KEYS = ("version", "interval_level", "coverage_by_tier", "top_n")

BASIS_HELP = (
    "personal: a reader of the rating model's training core (relevance + the rating model's posterior predictive); "
    "folded_in: explicit ratings of model books folded into the rating model exactly, without retraining; "
    "similar_reading: interactions with books the relevance model knows, but none folded in (relevance from "
    "the reading history, the rating from the book-level shrinkage model); "
    "popular: nothing usable is known about the reader (popularity). "
    "An item's basis equals the reader's, except slots filled by popularity, which say popular"
)


class OpenPayload(BaseModel):
    """A payload written by the batch: the documented fields, plus whatever a newer batch adds."""

    model_config = ConfigDict(extra="allow")


class Reason(OpenPayload):
    """Why a book is recommended."""

    kind: Literal["because_you_read", "popular_in_segment", "popular"] = Field(
        description="because_you_read: the reader's book with the strongest item-item association to it; "
        "popular_in_segment: popular with readers like this one (`segment` says which); popular: popular overall"
    )
    isbn: str | None = Field(None, description="because_you_read: the book the reader read")
    work_key: str | None = None
    title: str | None = None
    author: str | None = None
    segment: str | None = Field(None, description="popular_in_segment: e.g. 'readers in usa aged 25-34'")


class RecommendationItem(OpenPayload):
    """One recommended book: the stored item and the API's cold-start item alike."""

    rank: int = Field(ge=1)
    work_key: str | None = None
    isbn: str | None = None
    title: str
    author: str | None = None
    year: int | None = None
    image_url: str | None = None
    predicted_rating: float = Field(description="Posterior predictive mean on the 1-10 scale")
    uncertainty: float = Field(description="Half-width of the credible interval")
    confidence_interval: list[float] = Field(
        min_length=2, max_length=2, description="Bayesian credible interval [lower, upper] at the published level"
    )
    basis: str | None = Field(None, description=BASIS_HELP)
    score: float | None = Field(
        None, description="The ranking mode's sort key: for_you: relevance x P(liked)^like_weight; mean: the "
        "predicted rating; lower: the interval's lower end; sample: the draw. Null under for_you for slots "
        "filled by popularity (basis popular), which keep the popularity order after the scored ones; "
        "absent in older versions"
    )
    relevance: float | None = Field(
        None, description="The relevance model's posterior mean (how likely the reader picks the book up); "
        "null for slots filled by popularity"
    )
    relevance_sd: float | None = Field(None, description="Posterior standard deviation of `relevance`")
    p_liked: float | None = Field(
        None, ge=0, le=1, description="P(rating >= the liked threshold) under the rating's posterior predictive"
    )
    reason: Reason | None = None


def _rating_format() -> bytes:
    return b"%%.%df" % RATING_DECIMALS


#: The batch's encoding of one item (fast: ~8 million items a run), in RecommendationItem's field order:
#: ``ITEM_TEMPLATE % (rank, book fields, predicted, half-width, lower, upper, basis, score, relevance,
#: relevance_sd, p_liked, reason)``, the book fields and the numbers already JSON (see json_number).
ITEM_TEMPLATE = (
    b'{"rank":%d,%s,"predicted_rating":' + _rating_format() + b',"uncertainty":' + _rating_format()
    + b',"confidence_interval":[' + _rating_format() + b"," + _rating_format() + b'],'
    b'"basis":"%s","score":%s,"relevance":%s,"relevance_sd":%s,"p_liked":%s,"reason":%s}'
)


def json_number(value: float, digits: int = SCORE_DIGITS) -> bytes:
    """A JSON number with ``digits`` significant digits, or null."""
    if value != value or value in (float("inf"), float("-inf")):
        return b"null"
    return b"%.*g" % (digits, value)


def significant(value: float | None, digits: int = SCORE_DIGITS) -> float | None:
    """``value`` as :func:`json_number` writes it (None when missing or not finite)."""
    if value is None or not math.isfinite(value):
        return None
    return float(b"%.*g" % (digits, value))


def rating(value: float) -> float:
    return round(float(value), RATING_DECIMALS)


def recommendation_item(
    rank: int,
    book: dict[str, Any],
    predicted: float,
    lower: float,
    upper: float,
    basis: str,
    score: float | None = None,
    relevance: float | None = None,
    relevance_sd: float | None = None,
    p_liked: float | None = None,
    reason: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One item as a dict, with the same fields, order and rounding as the batch's ITEM_TEMPLATE.
    ``book`` holds BOOK_FIELDS (more keys are ignored)."""
    return {
        "rank": rank,
        **{name: book.get(name) for name in BOOK_FIELDS},
        "predicted_rating": rating(predicted),
        "uncertainty": rating((upper - lower) / 2.0),
        "confidence_interval": [rating(lower), rating(upper)],
        "basis": basis,
        "score": significant(score),
        "relevance": significant(relevance),
        "relevance_sd": significant(relevance_sd),
        "p_liked": significant(p_liked, P_LIKED_DIGITS),
        "reason": reason,
    }
