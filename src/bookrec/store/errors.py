"""Errors of the store. The API answers every `StoreError` with 503 + Retry-After (never 500).

`StoreUnavailable` and its subclasses carry `reason`: a sentence for users (no paths, no URLs, no
exception text) that `/health` can show; the exception message itself is for the server log.
"""

from __future__ import annotations

STORE_DOWN = "the recommendation store is unavailable; retry shortly"


class StoreError(RuntimeError):
    """The store answered, but the operation cannot be done (bad URL, lost lease, nothing to roll back...)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection refused, timeout, loading, auth failure,
    a store file that is missing)."""

    default_reason = STORE_DOWN

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class StoreCorrupt(StoreUnavailable):
    """The store answered with data that cannot be read: a corrupt SQLite page, or an entry that does
    not decode (bad compression mark, corrupt LZ4 or zlib data). Only a new publish or a restored
    store file cures it, so callers count and log it apart from outages."""

    default_reason = "the recommendation store returned unreadable data; it has been logged"


class VersionGone(StoreUnavailable):
    """A read named a version that is no longer published (the store file was replaced, or two
    publishes happened since the caller resolved the pointer). Not a fault: resolve again."""

    default_reason = "the published version changed while answering; retry"


class NothingToRollBack(StoreError):
    """`rollback()` was asked for but no previous version is kept."""
