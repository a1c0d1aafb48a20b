"""`GET /health`: 200 only when the store answers and a model version is published."""


from fastapi import APIRouter
from starlette.responses import Response

from bookrec.api import metrics
from bookrec.api.deps import ServiceUnavailable, StateDep
from bookrec.api.errors import STORE_DOWN, json_response
from bookrec.api.schemas import HealthResponse, HealthUnavailable
from bookrec.config import Settings
from bookrec.store import StoreUnavailable


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["service"])
    retry = {"Retry-After": str(settings.retry_after_seconds)}

    @router.get(
        "/health",
        response_model=HealthResponse,
        summary="Is the service able to answer?",
        responses={
            503: {
                "model": HealthUnavailable,
                "description": "The store is unreachable or nothing is published (`reason` says which)",
                "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
            }
        },
    )
    async def health(state: StateDep) -> Response:
        try:
            alive = await state.reader.ping()
            if not alive:
                raise StoreUnavailable("ping failed")
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels("/health").inc()
            return json_response(503, {"status": "unavailable", "store": "unavailable", "reason": STORE_DOWN}, retry)
        try:
            version = await state.versions.current(fresh=True)
        except ServiceUnavailable as exc:
            return json_response(503, {"status": "unavailable", "store": "ok", "reason": exc.reason}, retry)
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels("/health").inc()
            return json_response(503, {"status": "unavailable", "store": "unavailable", "reason": STORE_DOWN}, retry)
        return json_response(200, {"status": "ok", "store": "ok", "model_version": version})

    return router
