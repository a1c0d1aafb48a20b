"""`GET /metrics`: Prometheus exposition (requests and latency per route, store errors, model version)."""


from fastapi import APIRouter
from starlette.responses import Response

from bookrec.api import metrics

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
