"""The web page's files, served without Starlette's absolute directory redirects."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class PageFiles(StaticFiles):
    """StaticFiles whose directory redirects are relative.

    Starlette redirects a directory URL without its trailing slash to an absolute URL built from
    the Host header, so `/app/.` sent with `Host: evil.example` pointed the browser there. Dot
    segments are refused outright (browsers never send them), and the remaining directory
    redirects name only the last segment, which no Host header can change.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        if any(part in (".", "..") for part in scope["path"].split("/")):
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        if isinstance(response, RedirectResponse):
            last = scope["path"].rstrip("/").rsplit("/", 1)[-1]
            return RedirectResponse(f"{last}/", status_code=response.status_code)
        return response
