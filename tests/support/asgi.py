"""The API app in-process for tests: a real app (lifespan included) behind httpx's ASGI transport."""

from __future__ import annotations

import contextlib

import httpx

from bookrec.api.main import create_app
from bookrec.config import Settings


@contextlib.asynccontextmanager
async def serving(url: str, **settings):
    app = create_app(Settings(store_url=url, **settings))
    async with app.router.lifespan_context(app):
        # Unexpected errors must come back as the 500 response a client would see, not as a raise.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
