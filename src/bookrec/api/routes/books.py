"""The catalogue: search (typo-tolerant, title and author), pages, one book, similar books (read together)."""


import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from starlette.responses import Response

from bookrec.api import services
from bookrec.api.deps import BundleDep, SettingsDep, StateDep, check_bounds, limit_searches
from bookrec.api.schemas import (
    Book,
    BooksPage,
    SearchRequest,
    SearchResponse,
    SimilarResponse,
    error_responses,
)
from bookrec.data.isbn import isbn_lookup_keys

ISBN_PATH = Path(min_length=1, max_length=40, description="ISBN-10 or ISBN-13; dashes and spaces are ignored")

router = APIRouter(tags=["books"])


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/books/search",
    response_model=SearchResponse,
    summary="Search the whole catalogue by title and author (typos tolerated)",
    responses=error_responses(422, 429, 503),
    dependencies=[Depends(limit_searches)],
)
async def search_get(
    bundle: BundleDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words of the title and/or author")],
    limit: Annotated[int, Query(ge=1)] = 10,
) -> Response:
    check_bounds(settings, (("query", "limit"), limit, "max_search_results"))
    # Off the event loop: a long query scores a few hundred candidates (a few ms to ~20 ms).
    return _json(await asyncio.to_thread(services.search_catalog, bundle, q, limit))


@router.post(
    "/books/search",
    response_model=SearchResponse,
    summary="Search the catalogue (JSON body, as in the original API)",
    responses=error_responses(400, 413, 422, 429, 503),
    dependencies=[Depends(limit_searches)],
)
async def search_post(bundle: BundleDep, settings: SettingsDep, body: SearchRequest) -> Response:
    check_bounds(settings, (("body", "limit"), body.limit, "max_search_results"))
    return _json(await asyncio.to_thread(services.search_catalog, bundle, body.query, body.limit))


@router.get(
    "/books",
    response_model=BooksPage,
    summary="The catalogue, one page at a time",
    responses=error_responses(422, 503),
)
async def books(
    bundle: BundleDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    check_bounds(settings, (("query", "limit"), limit, "max_page_size"))
    return _json(services.books_page(bundle, limit, offset))


@router.get(
    "/books/{isbn}",
    response_model=Book,
    summary="One book: details, editions and its rating summary",
    responses=error_responses(404, 422, 503),
)
async def book(state: StateDep, isbn: Annotated[str, ISBN_PATH]) -> Response:
    keys = isbn_lookup_keys(isbn)
    if not keys[0]:
        raise HTTPException(404, f"{isbn!r} is not an ISBN; search by title with GET /books/search?q=")
    version = await state.versions.current()
    # The key as typed first, then its ISBN-10/13 twin: books are stored under the form they
    # were imported with.
    for key in keys:
        payload = await state.reader.get_book(key, version)
        if payload is not None:
            return Response(payload, media_type="application/json")
    raise HTTPException(404, f"no book with ISBN {keys[0]} in the catalogue; search with GET /books/search?q=")


@router.get(
    "/books/{isbn}/similar",
    response_model=SimilarResponse,
    summary="Books read together with this one (with the uncertainty of each association)",
    description=(
        "basis read_together: the relevance model's weights from this book, how much reading it raises "
        "each other book (posterior mean and sd), strongest first. Versions without a relevance model, "
        "or books it does not cover, fall back to the rating model's factors (basis factor_cosine: "
        "posterior mean and sd of the cosine of the two books' factors)."
    ),
    responses=error_responses(404, 422, 503),
)
async def similar(
    bundle: BundleDep,
    settings: SettingsDep,
    isbn: Annotated[str, ISBN_PATH],
    n: Annotated[int, Query(ge=1)] = 10,
) -> Response:
    check_bounds(settings, (("query", "n"), n, "max_top_k"))
    try:
        return _json(await asyncio.to_thread(services.similar_books, bundle, isbn, n))
    except services.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
