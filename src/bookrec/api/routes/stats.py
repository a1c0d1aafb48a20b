"""`GET /stats` (system statistics) and `GET /model/info` (the published model's metadata)."""


from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from bookrec.api.deps import StateDep
from bookrec.api.schemas import ModelInfo, StatsResponse, error_responses

PUBLIC_STORE_FIELDS = frozenset({"used_memory", "used_memory_human", "maxmemory", "file_bytes", "wal_bytes"})

router = APIRouter(tags=["service"])


@router.get("/stats", response_model=StatsResponse, summary="System statistics", responses=error_responses(503))
async def stats(state: StateDep) -> Response:
    version = await state.versions.current()
    users = await state.reader.count_users(version)
    books = await state.reader.count_books(version)
    memory = await state.reader.memory_info()
    _, _, meta = await state.versions.meta()
    # Sizes only: the store's own report also names its file or host, which is not public.
    store = {"backend": state.reader.backend}
    if isinstance(memory, dict):
        store.update((k, v) for k, v in memory.items() if k in PUBLIC_STORE_FIELDS)
    coverage = meta.get("coverage_by_tier")
    body = {
        "users_with_recommendations": users,
        "books": books,
        "model_version": version,
        "store": store,
        "coverage_by_tier": coverage if isinstance(coverage, dict) else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/model/info", response_model=ModelInfo, summary="Metadata of the published model",
            responses=error_responses(422, 503))
async def model_info(
    request: Request,
    state: StateDep,
    traces: Annotated[bool, Query(description="Include `traces`, every tracked quantity per sweep and chain "
                                              "(most of the document's size)")] = True,
) -> Response:
    gzipped = accepts_gzip(request.headers.get("accept-encoding", ""))
    version, body = await state.versions.meta_body(traces, gzipped)
    # The document changes only with the version: a browser revalidates it and gets a 304.
    headers = {"ETag": f'"{version}-{"full" if traces else "brief"}"', "Cache-Control": "no-cache",
               "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (a q of 0 refuses it)."""
    for coding in accept_encoding.lower().split(","):
        name, _, params = coding.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params and q.replace(".", "").strip("0") == "")
    return False
