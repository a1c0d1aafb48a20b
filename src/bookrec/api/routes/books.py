"""The catalogue: search (typo-tolerant, title and author), pages, one book, similar books (read together)."""


import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import Field, create_model
from starlette.responses import Response

from bookrec.api.deps import BundleDep
from bookrec.api.middleware import RateLimiter
from bookrec.api.schemas import (
    Book,
    BooksPage,
    SearchRequest,
    SearchResponse,
    SimilarResponse,
    error_responses,
)
from bookrec.api.serving import ServingBundle
from bookrec.config import Settings
from bookrec.data.isbn import isbn_lookup_keys, normalize_isbn_text

ISBN_PATH = Path(min_length=1, max_length=40, description="ISBN-10 or ISBN-13; dashes and spaces are ignored")


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _search(bundle: ServingBundle, query: str, limit: int) -> dict[str, Any]:
    catalog, index = bundle.need_catalog()
    exact = []
    if len(normalize_isbn_text(query)) in (10, 13) and (row := catalog.find_isbn(query)) is not None:
        exact.append(row)
    hits = index.search(query, limit=limit, exact_rows=exact)
    return {"query": query, "results": [{**catalog.summary(h.row), "score": h.score} for h in hits]}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["books"])
    max_results = settings.max_search_results
    # One bucket per client for both forms of the search.
    search_limit = Depends(RateLimiter(
        settings.rate_limit_search_per_minute, settings.rate_limit_search_burst,
        settings.rate_limit_max_clients, "search",
    ))

    SearchBody = create_model(  # noqa: N806 - a class
        "SearchRequest",
        __base__=SearchRequest,
        limit=(int, Field(10, ge=1, le=max_results)),
    )

    @router.get(
        "/books/search",
        response_model=SearchResponse,
        summary="Search the whole catalogue by title and author (typos tolerated)",
        responses=error_responses(422, 429, 503),
        dependencies=[search_limit],
    )
    async def search_get(
        bundle: BundleDep,
        q: Annotated[str, Query(min_length=1, max_length=200, description="Words of the title and/or author")],
        limit: Annotated[int, Query(ge=1, le=max_results)] = 10,
    ) -> Response:
        # Off the event loop: a long query scores a few hundred candidates (a few ms to ~20 ms).
        return _json(await asyncio.to_thread(_search, bundle, q, limit))

    @router.post(
        "/books/search",
        response_model=SearchResponse,
        summary="Search the catalogue (JSON body, as in the original API)",
        responses=error_responses(400, 413, 422, 429, 503),
        dependencies=[search_limit],
    )
    async def search_post(bundle: BundleDep, body: SearchBody) -> Response:  # type: ignore[valid-type]
        return _json(await asyncio.to_thread(_search, bundle, body.query, body.limit))

    @router.get(
        "/books",
        response_model=BooksPage,
        summary="The catalogue, one page at a time",
        responses=error_responses(422, 503),
    )
    async def books(
        bundle: BundleDep,
        limit: Annotated[int, Query(ge=1, le=settings.max_page_size)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> Response:
        catalog, _ = bundle.need_catalog()
        rows = range(offset, min(offset + limit, len(catalog)))
        return _json({"books": [catalog.summary(r) for r in rows], "total": len(catalog), "limit": limit, "offset": offset})

    @router.get(
        "/books/{isbn}",
        response_model=Book,
        summary="One book: details, editions and its rating summary",
        responses=error_responses(404, 422, 503),
    )
    async def book(request: Request, isbn: Annotated[str, ISBN_PATH]) -> Response:
        state = request.app.state.api
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
        isbn: Annotated[str, ISBN_PATH],
        n: Annotated[int, Query(ge=1, le=settings.max_top_k)] = 10,
    ) -> Response:
        catalog, _ = bundle.need_catalog()
        key = normalize_isbn_text(isbn)
        row = catalog.find_isbn(isbn) if key else None
        if row is None:
            raise HTTPException(404, f"no book with ISBN {key or isbn!r} in the catalogue; search with GET /books/search?q=")
        key = catalog.isbn[row]  # the stored form, whichever form was asked for
        work = catalog.work_key[row] or ""
        together = await asyncio.to_thread(bundle.read_together, work, n)
        if together is not None:
            return _json({"isbn": key, "work_key": work, "model_version": bundle.version, "basis": "read_together",
                          "similar": together})
        bundle.need_model()
        item = bundle.item_of_work.get(work)
        if item is None:
            raise HTTPException(
                404, f"book {key} has too few ratings to be part of the model, so it has no similar books yet"
            )
        found = await asyncio.to_thread(bundle.similar, item, n)
        out = []
        for other, mean, sd in found:
            d = bundle.describe_item(other)
            out.append({
                "isbn": d["isbn"] or "", "work_key": d["work_key"], "title": d["title"], "author": d["author"],
                "year": d["year"], "image_url": d["image_url"], "similarity": round(mean, 4), "similarity_sd": round(sd, 4),
            })
        return _json({"isbn": key, "work_key": work, "model_version": bundle.version, "basis": "factor_cosine",
                      "similar": out})

    return router
