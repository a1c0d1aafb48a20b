"""`GET /health`: 200 only when the store answers, its data is readable and a model version is published."""


from fastapi import APIRouter
from starlette.responses import Response

from bookrec.api import metrics
from bookrec.api.deps import ApiState, ServiceUnavailable, StateDep
from bookrec.api.errors import STORE_FAILED, json_response
from bookrec.api.schemas import HealthResponse, HealthUnavailable
from bookrec.store import StoreCorrupt, StoreError, StoreUnavailable

router = APIRouter(tags=["service"])


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Is the service able to answer?",
    responses={
        503: {
            "model": HealthUnavailable,
            "description": "The store is unreachable, missing or corrupt, or nothing is published (`reason` says which)",
            "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
        }
    },
)
async def health(state: StateDep) -> Response:
    retry = {"Retry-After": str(state.settings.retry_after_seconds)}
    try:
        if not await state.reader.ping():
            raise StoreUnavailable("ping failed")
        version = await state.versions.current(fresh=True)
    except ServiceUnavailable as exc:
        return json_response(503, {"status": "unavailable", "store": "ok", "reason": exc.reason}, retry)
    except StoreError as exc:
        reason = _store_down(state, exc)
        return json_response(503, {"status": "unavailable", "store": "unavailable", "reason": reason}, retry)
    return json_response(200, {"status": "ok", "store": "ok", "model_version": version})


def _store_down(state: ApiState, exc: StoreError) -> str:
    """Count and log a store fault seen by /health; the reason to show (written for users: unreachable,
    missing file, corrupt file... never a path)."""
    metrics.STORE_ERRORS.labels("/health").inc()
    kind = ("store corrupt" if isinstance(exc, StoreCorrupt)
            else "store unavailable" if isinstance(exc, StoreUnavailable) else "store error")
    state.faults.warning(kind, f"GET /health: {exc}")
    return exc.reason if isinstance(exc, StoreUnavailable) else STORE_FAILED
