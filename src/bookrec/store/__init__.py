"""bookrec.store: versioned, atomically published recommendations in Redis/Valkey/Dragonfly or SQLite.

    from bookrec.store import open_store, open_async_reader

    with open_store("sqlite:///var/bookrec.sqlite3") as store:
        with store.begin_publish() as pub:
            pub.put_recommendations((user_id, payload) for ...)
            pub.put_books(...)
            pub.put_blob("meta", orjson.dumps(meta))

    reader = open_async_reader("redis://127.0.0.1:6379/0", timeout=2.0)
    payload = await reader.get_recommendations(8)

See docs/ARCHITECTURE.md section 3 for the contract and the key layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bookrec.store.base import MAX_USER_ID, AsyncStoreReader, Publisher, RecommendationRead, Store
from bookrec.store.errors import STORE_DOWN, NothingToRollBack, StoreCorrupt, StoreError, StoreUnavailable, VersionGone
from bookrec.store.url import StoreURL, parse_store_url, redact_url

if TYPE_CHECKING:
    from bookrec.config import Settings

__all__ = [
    "MAX_USER_ID", "STORE_DOWN", "AsyncStoreReader", "NothingToRollBack", "Publisher", "RecommendationRead", "Store",
    "StoreCorrupt", "StoreError", "StoreURL", "StoreUnavailable", "VersionGone", "open_async_reader", "open_store",
    "open_store_from_settings", "parse_store_url", "redact_url",
]


def open_store(
    url: str,
    prefix: str = "bookrec",
    *,
    timeout: float = 30.0,
    lease_seconds: float = 15.0,
    lock_wait: float | None = None,
    compress: bool = True,
) -> Store:
    """The synchronous store for ``url`` (used by the batch and the CLI).

    ``timeout``: socket / busy timeout in seconds (bulk writes need more than reads).
    ``lease_seconds`` (Redis): the publish lease, renewed by a heartbeat while a publish is open; a
    publisher killed with SIGKILL blocks the next one for at most this long.
    ``lock_wait``: how long ``begin_publish`` waits for another publisher (default: one lease + 5 s
    for Redis, 60 s for SQLite).
    ``compress``: store recommendation and book payloads of 512 bytes or more LZ4-compressed
    (~3x less memory and transfer); reads expand them, so callers always get back what they stored.
    """
    parsed = parse_store_url(url)
    if parsed.backend == "sqlite":
        from bookrec.store.sqlite_store import SqliteStore

        assert parsed.path is not None
        return SqliteStore(
            parsed.url, parsed.path, timeout=timeout, lock_wait=60.0 if lock_wait is None else lock_wait,
            compress=compress,
        )
    from bookrec.store.redis_store import RedisStore

    return RedisStore(
        parsed.url, parsed.redacted, prefix=prefix, timeout=timeout, lease_seconds=lease_seconds, lock_wait=lock_wait,
        compress=compress,
    )


def open_async_reader(
    url: str,
    prefix: str = "bookrec",
    *,
    timeout: float = 2.0,
    pool_size: int = 64,
) -> AsyncStoreReader:
    """The read side for the API, usable from one event loop.

    ``timeout``: per operation (connect, read, waiting for a pooled connection); beyond it the call
    raises ``StoreUnavailable``. ``pool_size``: connections (Redis) or reader threads (SQLite, capped
    at 8). The ``current`` pointer is resolved on every read that names no version (the API caches it
    and names versions). Creating the reader does not connect: the first call does, so the API can start while the store is down.
    """
    parsed = parse_store_url(url)
    if parsed.backend == "sqlite":
        from bookrec.store.sqlite_store import AsyncSqliteReader

        assert parsed.path is not None
        return AsyncSqliteReader(parsed.url, parsed.path, timeout=timeout, pool_size=max(1, min(pool_size, 8)))
    from bookrec.store.redis_store import AsyncRedisReader

    return AsyncRedisReader(parsed.url, parsed.redacted, prefix=prefix, timeout=timeout, pool_size=pool_size)


def open_store_from_settings(settings: "Settings | None" = None, url: str | None = None) -> Store:
    """``open_store`` with the URL, prefix and lease from the settings (``--store URL`` overrides the URL)."""
    from bookrec.config import get_settings

    settings = settings or get_settings()
    return open_store(
        url or settings.store_url, settings.store_prefix, lease_seconds=settings.store_publish_lease_seconds,
        compress=settings.store_compress,
    )
