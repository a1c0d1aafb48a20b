"""The store interface shared by both backends (see docs/ARCHITECTURE.md section 3).

A publish writes everything under a fresh version id and only then flips the ``current``
pointer in one atomic step; readers always resolve the pointer, so they see either the old
version or the new one, complete, never a mix. The version that was current before the flip is
kept as ``previous`` (for ``rollback``); anything older is deleted after the flip.
"""

from __future__ import annotations

import logging
import secrets
import struct
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import orjson

from bookrec.store.errors import StoreCorrupt, StoreError

log = logging.getLogger(__name__)

# Recommendation and book payloads of at least COMPRESS_MIN_BYTES are stored LZ4-compressed
# (pyarrow's codec: on recommendation JSON it saves most of what zlib saves, at a fraction of the
# CPU) behind a two-byte mark and the original length; the readers expand them, so callers always
# get back the bytes they stored. Payloads may not start with NUL (JSON never does), so nothing is ambiguous.
LZ4_MARK = b"\x00L"
ZLIB_MARK = b"\x00z"  # also understood on read
COMPRESS_MIN_BYTES = 512
LZ4_MAX_RATIO = 256  # LZ4 cannot expand data more than ~255-fold
_LENGTH = struct.Struct("<I")
_codec = None


def _lz4():
    global _codec
    if _codec is None:
        import pyarrow

        _codec = pyarrow.Codec("lz4_raw")
    return _codec


def compress_payload(payload: bytes) -> bytes:
    return LZ4_MARK + _LENGTH.pack(len(payload)) + _lz4().compress(payload, asbytes=True)


# Scores of the Redis users zset are doubles: ids beyond 2**53 would lose their exact order.
MAX_USER_ID = 2**53
BLOB_NAME_MAX = 200


def new_version_id(now: float | None = None) -> str:
    """``20261126T083000-3f2a``: sorts by publish time; the random suffix separates runs in the same second."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), tz=timezone.utc)
    return f"{stamp:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def check_user_id(user_id: Any) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        try:
            import numpy as np  # the batch hands numpy integers

            if isinstance(user_id, np.integer):
                user_id = int(user_id)
            else:
                raise TypeError
        except (ImportError, TypeError):
            raise StoreError(f"user id must be an integer, got {type(user_id).__name__}") from None
    if not -MAX_USER_ID < user_id < MAX_USER_ID:
        raise StoreError(f"user id {user_id} is outside +-2**53")
    return user_id


def check_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise StoreError(f"{what} must be bytes (encode JSON with orjson.dumps), got {type(data).__name__}")


def expand_payload(stored: bytes | None) -> bytes | None:
    """The payload as the publisher handed it over; ``StoreCorrupt`` when the stored bytes do not decode."""
    if stored is None:
        return None
    if not isinstance(stored, bytes):
        raise StoreCorrupt(f"stored payload is a {type(stored).__name__}, not bytes")
    if stored[:1] != b"\x00":
        return stored
    mark = stored[:2]
    try:
        if mark == LZ4_MARK:
            (size,) = _LENGTH.unpack_from(stored, 2)
            if size > LZ4_MAX_RATIO * len(stored):  # a corrupt length must not allocate gigabytes
                raise ValueError("declared length beyond what LZ4 can expand to")
            return _lz4().decompress(stored[2 + _LENGTH.size:], decompressed_size=size, asbytes=True)
        if mark == ZLIB_MARK:
            return zlib.decompress(stored[2:])
    except (struct.error, zlib.error, ValueError, OSError, MemoryError) as exc:
        # pyarrow reports corrupt LZ4 data as OSError (ArrowIOError) or ValueError (ArrowInvalid)
        raise StoreCorrupt(f"stored payload does not decompress ({type(exc).__name__})") from None
    raise StoreCorrupt(f"stored payload has an unknown compression mark {mark!r}")


def check_json_payload(payload: bytes | None) -> bytes | None:
    """``payload`` if it is one JSON document, else ``StoreCorrupt``. For payloads that are handed on
    verbatim (book pages): once sent with status 200, nobody downstream could tell them from a book."""
    if payload is not None:
        try:
            orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise StoreCorrupt("stored payload is not JSON") from None
    return payload


def check_isbn(isbn: Any) -> str:
    if not isinstance(isbn, str) or not isbn:
        raise StoreError(f"isbn must be a non-empty string, got {isbn!r}")
    return isbn


def check_blob_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > BLOB_NAME_MAX or any(c.isspace() for c in name):
        raise StoreError(f"blob name must be a short non-empty string without spaces, got {name!r}")
    return name


def check_limit(limit: Any, maximum: int = 10_000) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise StoreError(f"limit must be an integer in 1..{maximum}, got {limit!r}")
    return limit


# One answer per user of ``get_recommendations_many``: the payload; None when the user has none in
# the version, or when the version is no longer published (then every answer is None, as a single
# read's ``VersionGone`` means "not found" to a caller that resolves the pointer afresh); or the
# ``StoreCorrupt`` of that user's entry alone, so one corrupt entry fails only its own reader.
# Errors of the store itself (unreachable, timeout) are raised for the whole call.
RecommendationRead = bytes | None | StoreCorrupt


def expand_payloads(stored: list[bytes | None]) -> list[RecommendationRead]:
    """``expand_payload`` of each, keeping a corrupt entry's error as its answer."""
    out: list[RecommendationRead] = []
    for value in stored:
        try:
            out.append(expand_payload(value))
        except StoreCorrupt as exc:
            out.append(exc)
    return out


class Publisher(ABC):
    """Writes one new version. Obtained from ``Store.begin_publish()``; never flip by hand."""

    version: str

    def __init__(self, version: str, compress: bool = True) -> None:
        self.version = version
        self.compress = compress
        self.started = time.monotonic()
        # bytes: as stored (after compression); raw_bytes: as handed to the publisher
        self.stats: dict[str, Any] = {
            "version": version, "users": 0, "books": 0, "blobs": 0, "bytes": 0, "raw_bytes": 0,
        }
        self._closed = False

    def _encode(self, payload: Any, what: str) -> bytes:
        """Check a recommendation/book payload, compress it when worthwhile, count its bytes."""
        payload = check_bytes(payload, what)
        if payload[:1] == b"\x00":  # cannot happen for JSON; refuse rather than corrupt it on read
            raise StoreError(f"{what} must not start with a NUL byte (the store's compression mark)")
        self.stats["raw_bytes"] += len(payload)
        if self.compress and len(payload) >= COMPRESS_MIN_BYTES:
            packed = compress_payload(payload)
            if len(packed) < len(payload):
                payload = packed
        self.stats["bytes"] += len(payload)
        return payload

    def add_shard_stats(self, stats: dict[str, Any]) -> None:
        """Count the bytes a shard writer of this version wrote (the version's info records them)."""
        for key in ("bytes", "raw_bytes"):
            self.stats[key] += int(stats.get(key, 0))

    def _count_blob(self, data: bytes) -> None:
        self.stats["bytes"] += len(data)
        self.stats["raw_bytes"] += len(data)

    @abstractmethod
    def put_recommendations(self, items: Iterable[tuple[int, bytes]]) -> int:
        """Store each user's recommendation payload; returns how many pairs were written."""

    @abstractmethod
    def put_books(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store each book's payload by ISBN; returns how many pairs were written."""

    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        """Store one named blob ("meta", "catalog", "serving_model", "popular", ...)."""

    @abstractmethod
    def _commit(self) -> None:
        """Make the version current (atomic flip), keep the old current as previous, delete older ones."""

    @abstractmethod
    def _abort(self) -> None:
        """Discard the partial version (best effort) and leave the pointers untouched."""

    def _abort_quietly(self) -> None:
        try:
            self._abort()
        except Exception as cleanup_error:  # the original error matters more; the next publish collects garbage
            log.warning("could not discard partial version %s: %s", self.version, cleanup_error)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"publish of version {self.version} is already finished")


class Store(ABC):
    """Synchronous store: the batch publishes with it, the CLI inspects and rolls back with it."""

    backend: str
    url: str  # redacted

    @contextmanager
    def begin_publish(self) -> Iterator[Publisher]:
        """``with store.begin_publish() as pub: ...`` -- flips on success, discards on any exception."""
        publisher = self._start_publish()
        try:
            yield publisher
        except BaseException:
            publisher._abort_quietly()
            raise
        else:
            publisher._commit()

    @abstractmethod
    def _start_publish(self) -> Publisher: ...

    def write_shard(self, version: str, items: Iterable[tuple[int, bytes]]) -> dict[str, Any]:
        """Write recommendations into ``version`` while another process publishes it; returns the
        counts (users, bytes, raw_bytes) for that publisher's ``add_shard_stats``. Redis only: a
        SQLite publish is one transaction of one process, so shards go through that process."""
        raise StoreError(f"the {self.backend} store takes shards only through the publishing process")

    @property
    def takes_shards(self) -> bool:
        """Whether other processes can write shards of a pending version (``write_shard``)."""
        return type(self).write_shard is not Store.write_shard

    # --- reads ---------------------------------------------------------------------------
    @abstractmethod
    def current_version(self) -> str | None: ...

    @abstractmethod
    def previous_version(self) -> str | None: ...

    @abstractmethod
    def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        """Many users' payloads of one named version in one round trip (see ``RecommendationRead``)."""

    @abstractmethod
    def get_book(self, isbn: str, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    def get_blob(self, name: str, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    def count_users(self, version: str | None = None) -> int: ...

    @abstractmethod
    def count_books(self, version: str | None = None) -> int: ...

    @abstractmethod
    def list_users(
        self, after: int | None = None, limit: int = 100, version: str | None = None
    ) -> tuple[list[int], int | None]:
        """Users in ascending id order with id > ``after``; ``next_after`` is None on the last page."""

    @abstractmethod
    def random_users(self, n: int, version: str | None = None) -> list[int]:
        """Up to ``n`` distinct users drawn uniformly from the version's user index."""

    @abstractmethod
    def ping(self) -> bool: ...

    @abstractmethod
    def memory_info(self) -> dict[str, Any]: ...

    # --- store-level ---------------------------------------------------------------------
    @abstractmethod
    def versions(self) -> list[dict[str, Any]]:
        """Published versions, oldest first: version, created_at, users, books, bytes, current, previous."""

    @abstractmethod
    def pending_versions(self) -> list[str]:
        """Versions started but never flipped (a publish in progress, or left by a killed one)."""

    @abstractmethod
    def rollback(self) -> str:
        """Swap current and previous; returns the new current version."""

    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "url": self.url,
            "current": self.current_version(),
            "previous": self.previous_version(),
            "versions": self.versions(),
            "pending": self.pending_versions(),
            "memory": self.memory_info(),
        }

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStoreReader(ABC):
    """Read side for the API: the same reads as ``Store``, as coroutines, over a connection pool."""

    backend: str
    url: str

    @abstractmethod
    async def current_version(self) -> str | None: ...

    @abstractmethod
    async def previous_version(self) -> str | None: ...

    @abstractmethod
    async def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    async def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        """Many users' payloads of one named version in one round trip (see ``RecommendationRead``)."""

    @abstractmethod
    async def get_book(self, isbn: str, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    async def get_blob(self, name: str, version: str | None = None) -> bytes | None: ...

    @abstractmethod
    async def count_users(self, version: str | None = None) -> int: ...

    @abstractmethod
    async def count_books(self, version: str | None = None) -> int: ...

    @abstractmethod
    async def list_users(
        self, after: int | None = None, limit: int = 100, version: str | None = None
    ) -> tuple[list[int], int | None]: ...

    @abstractmethod
    async def random_users(self, n: int, version: str | None = None) -> list[int]: ...

    @abstractmethod
    async def ping(self) -> bool: ...

    @abstractmethod
    async def memory_info(self) -> dict[str, Any]: ...

    @abstractmethod
    async def versions(self) -> list[dict[str, Any]]: ...

    async def status(self) -> dict[str, Any]:
        """Like ``Store.status()`` minus the pending list: backend, redacted url, pointers, versions, memory."""
        return {
            "backend": self.backend,
            "url": self.url,
            "current": await self.current_version(),
            "previous": await self.previous_version(),
            "versions": await self.versions(),
            "memory": await self.memory_info(),
        }

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> "AsyncStoreReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
