"""`GET /stats` (system statistics) and `GET /model/info` (the published model's metadata)."""


import orjson
from fastapi import APIRouter
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
            responses=error_responses(503))
async def model_info(state: StateDep) -> Response:
    _, blob, _ = await state.versions.meta()
    return Response(blob, media_type="application/json")
