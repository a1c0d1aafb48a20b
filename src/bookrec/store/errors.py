"""Errors of the store. The API maps `StoreUnavailable` to 503 + Retry-After."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store answered, but the operation cannot be done (bad URL, lost lease, nothing to roll back...)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection refused, timeout, loading, auth failure)."""


class NothingToRollBack(StoreError):
    """`rollback()` was asked for but no previous version is kept."""
