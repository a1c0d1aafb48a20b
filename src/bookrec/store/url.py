"""Store URLs: ``redis://``, ``rediss://``, ``unix://`` (Redis protocol) and ``sqlite:///path`` (embedded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bookrec.contracts.urls import redact_url
from bookrec.store.errors import StoreError

REDIS_SCHEMES = ("redis", "rediss", "unix")
SQLITE_SCHEMES = ("sqlite",)


@dataclass(frozen=True)
class StoreURL:
    backend: str          # "redis" | "sqlite"
    url: str              # the URL as given (may contain a password: never print it, use .redacted)
    path: Path | None     # sqlite only

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


def parse_store_url(url: str) -> StoreURL:
    """Validate a store URL and tell which backend serves it.

    ``sqlite:///var/x.sqlite3`` is relative to the working directory, ``sqlite:////abs/x.sqlite3``
    is absolute (the SQLAlchemy convention). In-memory SQLite is refused: readers and the
    publisher need their own connections to the same database.
    """
    if not isinstance(url, str) or not url.strip():
        raise StoreError("empty store URL: set BOOKREC_STORE_URL (or REDIS_URL), e.g. sqlite:///var/bookrec.sqlite3")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise StoreError(
            f"not a store URL: {redact_url(url)!r}; expected redis://host:port/db, rediss://..., or sqlite:///path"
        )
    if scheme in REDIS_SCHEMES:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise StoreError(f"malformed store URL {redact_url(url)!r}: {exc}") from None
        if scheme != "unix" and not parts.hostname:
            raise StoreError(f"store URL {redact_url(url)!r} has no host")
        db = parts.path.lstrip("/")
        if scheme != "unix" and db and not db.isdigit():
            raise StoreError(f"store URL {redact_url(url)!r}: the database must be a number, got {db!r}")
        return StoreURL("redis", url, None)
    if scheme in SQLITE_SCHEMES:
        if not rest.startswith("/"):
            raise StoreError(f"sqlite URL must look like sqlite:///relative/path or sqlite:////absolute/path, got {url!r}")
        path = rest[1:]
        if not path or path == ":memory:" or path.startswith("?"):
            raise StoreError(f"sqlite URL {url!r} needs a file path (in-memory databases cannot be shared)")
        return StoreURL("sqlite", url, Path(path.split("?", 1)[0]))
    raise StoreError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; use redis://, rediss://, unix:// or sqlite:///path"
    )
