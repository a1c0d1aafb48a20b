"""`GET /`: what this service is, with links to everything else."""


from fastapi import APIRouter

from bookrec import __version__
from bookrec.api.deps import SettingsDep
from bookrec.api.schemas import RootResponse

DESCRIPTION = (
    "Book recommendations with honest uncertainty: Bayesian matrix factorisation trained by Gibbs "
    "sampling; every predicted rating comes with a credible interval."
)
LINKS = {
    "docs": "/docs",
    "openapi": "/openapi.json",
    "health": "/health",
    "recommend": "/recommend/{user_id}?top_k=10",
    "cold_start": "/recommend/cold-start",
    "users": "/users",
    "books": "/books",
    "search": "/books/search?q=",
    "stats": "/stats",
    "model_info": "/model/info",
    "metrics": "/metrics",
}

router = APIRouter(tags=["service"])


@router.get("/", response_model=RootResponse, summary="Describe the service")
async def describe(settings: SettingsDep) -> RootResponse:
    links = {**LINKS, "app": "/app/"} if settings.serve_static else LINKS
    return RootResponse(name="bookrec", version=__version__, description=DESCRIPTION, links=links)
