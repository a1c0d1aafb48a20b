"""`GET /`: what this service is, with links to everything else."""


from fastapi import APIRouter

from bookrec import __version__
from bookrec.api.schemas import RootResponse
from bookrec.config import Settings

DESCRIPTION = (
    "Book recommendations with honest uncertainty: Bayesian matrix factorisation trained by Gibbs "
    "sampling; every predicted rating comes with a credible interval."
)


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["service"])
    links = {
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
    if settings.serve_static:
        links["app"] = "/app/"
    root = RootResponse(name="bookrec", version=__version__, description=DESCRIPTION, links=links)

    @router.get("/", response_model=RootResponse, summary="Describe the service")
    async def describe() -> RootResponse:
        return root

    return router
