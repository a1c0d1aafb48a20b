"""The Redis-protocol store (Redis, Valkey, Dragonfly) with redis-py + hiredis.

Only plain commands all three servers support are used: GET/SET (NX PX), HSET/HGET/HMGET/HLEN,
ZADD/ZREM/ZCARD/ZRANGE/ZRANGEBYSCORE, SADD/SMEMBERS, UNLINK, PEXPIRE, MULTI/EXEC/WATCH,
INFO, PING. No Lua, no modules, never KEYS or SCAN.

Key layout (prefix ``bookrec``)::

    bookrec:current, bookrec:previous        version ids (strings)
    bookrec:versions                         zset: published versions, score = publish time
    bookrec:pending                          zset: versions being written, score = start time
    bookrec:publish_lock                     the publisher's lease (SET NX PX, renewed by a heartbeat)
    bookrec:v:{version}:recs                 hash user_id -> payload
    bookrec:v:{version}:users                zset user_id (score = user_id)
    bookrec:v:{version}:books                hash isbn -> payload
    bookrec:v:{version}:blob:{name}          string
    bookrec:v:{version}:blobs                set of blob names (so a version can be deleted without SCAN)
    bookrec:v:{version}:info                 hash: users, books, blobs, bytes, created_at, published_at

A publish takes the lease, first deletes what killed publishers left (pending versions: the
lease proves their writer is gone), writes the version with non-transactional pipelines, then
flips ``current``/``previous`` and the ``versions`` zset in one MULTI/EXEC guarded by WATCH, and
only then UNLINKs versions older than ``previous``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from bookrec.store.base import (
    AsyncStoreReader, Publisher, RecommendationRead, Store, check_blob_name, check_bytes, check_isbn, check_json_payload,
    check_limit, check_user_id, expand_payload, expand_payloads, new_version_id,
)
from bookrec.store.errors import NothingToRollBack, StoreCorrupt, StoreError, StoreUnavailable, VersionGone

log = logging.getLogger(__name__)

FIELDS_PER_COMMAND = 500          # fields per HSET / members per ZADD
ITEMS_PER_PIPELINE = 2_000        # -> 8 commands per round trip for recommendations
BYTES_PER_PIPELINE = 8 * 1024**2  # and never more than ~8 MB buffered on the client


class Keys:
    def __init__(self, prefix: str) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise StoreError(f"store prefix must be a non-empty word, got {prefix!r}")
        self.prefix = prefix
        self.current = f"{prefix}:current"
        self.previous = f"{prefix}:previous"
        self.versions = f"{prefix}:versions"
        self.pending = f"{prefix}:pending"
        self.lock = f"{prefix}:publish_lock"

    def v(self, version: str, part: str) -> str:
        return f"{self.prefix}:v:{version}:{part}"

    def recs(self, version: str) -> str:
        return self.v(version, "recs")

    def users(self, version: str) -> str:
        return self.v(version, "users")

    def books(self, version: str) -> str:
        return self.v(version, "books")

    def blobs(self, version: str) -> str:
        return self.v(version, "blobs")

    def info(self, version: str) -> str:
        return self.v(version, "info")

    def blob(self, version: str, name: str) -> str:
        return self.v(version, f"blob:{name}")

    def fixed_keys(self, version: str) -> list[str]:
        return [self.recs(version), self.users(version), self.books(version), self.blobs(version), self.info(version)]


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:  # incl. auth failure and "loading"
        raise StoreUnavailable(f"store unavailable while {action}: {type(exc).__name__}: {exc}") from exc
    except redis.ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):  # a key of the layout overwritten with another type
            raise StoreCorrupt(f"store entry of the wrong type while {action}: {exc}") from exc
        raise StoreError(f"store error while {action}: {type(exc).__name__}: {exc}") from exc
    except redis.RedisError as exc:
        raise StoreError(f"store error while {action}: {type(exc).__name__}: {exc}") from exc


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _retry() -> Retry:
    # One immediate retry on connection errors only: it replaces a pooled connection that died with a
    # restarted server (so the service recovers by itself) without multiplying timeouts.
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def _async_retry() -> AsyncRetry:
    # The same policy; redis.asyncio converts a synchronous Retry itself, with a warning at every start.
    return AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def _gone(version: str) -> VersionGone:
    return VersionGone(f"version {version} is not published (any longer)")


def _info_dict(raw: dict[bytes, bytes]) -> dict[str, Any]:
    info = {k.decode(): v.decode() for k, v in raw.items()}
    out: dict[str, Any] = {}
    for key, value in info.items():
        out[key] = float(value) if key.endswith("_at") else int(value) if value.lstrip("-").isdigit() else value
    return out


def _memory(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": "redis",
        "used_memory": int(info.get("used_memory", 0)),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory": int(info.get("maxmemory", 0) or 0),
    }


def _ints(members: list[bytes]) -> list[int]:
    try:
        return [int(m) for m in members]
    except ValueError:
        raise StoreCorrupt("a user index holds a member that is not a user id") from None


def _page(members: list[bytes], limit: int) -> tuple[list[int], int | None]:
    users = _ints(members[:limit])
    return users, (users[-1] if len(members) > limit else None)


def _describe_versions(
    entries: list[tuple[bytes, float]], infos: list[dict], current: str | None, previous: str | None
) -> list[dict[str, Any]]:
    out = []
    for (member, score), raw in zip(entries, infos):
        name = member.decode()
        info = _info_dict(raw)
        out.append({
            "version": name, "created_at": info.get("created_at"), "published_at": info.get("published_at", score),
            "users": info.get("users", 0), "books": info.get("books", 0), "blobs": info.get("blobs", 0),
            "bytes": info.get("bytes", 0), "raw_bytes": info.get("raw_bytes", 0), "current": name == current, "previous": name == previous,
        })
    return out


def delete_version(client: redis.Redis, keys: Keys, version: str) -> None:
    """UNLINK every key of a version (the blob names come from its ``blobs`` set, never from SCAN)."""
    names = client.smembers(keys.blobs(version))
    blob_keys = [keys.blob(version, n.decode()) for n in names]
    pipe = client.pipeline(transaction=False)
    pipe.unlink(*blob_keys, *keys.fixed_keys(version))
    pipe.zrem(keys.pending, version)
    pipe.zrem(keys.versions, version)
    pipe.execute()


class RedisPublisher(Publisher):
    def __init__(self, store: "RedisStore") -> None:
        super().__init__(new_version_id(), compress=store.compress)
        self._store = store
        self._client = store.client
        self._keys = store.keys
        self._token = f"{self.version}/{uuid.uuid4().hex}"
        self._lease_lost = threading.Event()
        self._stop_heartbeat = threading.Event()
        self._acquire_lease()
        try:
            self.stats["removed"] = self._collect_garbage()
            now = time.time()
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(self._keys.pending, {self.version: now})
            pipe.hset(self._keys.info(self.version), mapping={"created_at": now})
            with redis_errors("starting a publish"):
                pipe.execute()
        except BaseException:
            self._release_lease()
            raise
        self._heartbeat = threading.Thread(target=self._renew_lease, name="bookrec-publish-lease", daemon=True)
        self._heartbeat.start()
        self._empty_buffer()

    def _empty_buffer(self) -> None:
        self._parts: list[bytes] = []   # RESP-encoded commands waiting to be sent
        self._commands = 0
        self._buffered_items = 0
        self._buffered_bytes = 0

    # --- the lease: at most one publisher at a time; a killed one's lease simply expires ------------
    def _acquire_lease(self) -> None:
        lease_ms = int(self._store.lease_seconds * 1000)
        deadline = time.monotonic() + self._store.lock_wait
        with redis_errors("taking the publish lease"):
            while not self._client.set(self._keys.lock, self._token, nx=True, px=lease_ms):
                if time.monotonic() >= deadline:
                    holder = _text(self._client.get(self._keys.lock))
                    ttl = self._client.pttl(self._keys.lock)
                    raise StoreError(
                        f"another publish holds the lease ({holder}); it expires in {max(ttl, 0) / 1000:.1f} s "
                        "unless that publisher is still alive"
                    )
                time.sleep(min(0.2, self._store.lease_seconds / 4))

    def _renew_lease(self) -> None:
        lease_ms = int(self._store.lease_seconds * 1000)
        while not self._stop_heartbeat.wait(self._store.lease_seconds / 3):
            try:
                if _text(self._client.get(self._keys.lock)) != self._token:
                    self._lease_lost.set()
                    return
                self._client.pexpire(self._keys.lock, lease_ms)
            except redis.RedisError as exc:  # the writes will fail loudly too; keep trying until they do
                log.warning("could not renew the publish lease: %s", exc)

    def _check_lease(self) -> None:
        if self._lease_lost.is_set():
            raise StoreError(f"publish of {self.version} lost its lease (another publisher took over); aborted")

    def _release_lease(self) -> None:
        self._stop_heartbeat.set()
        with self._client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self._keys.lock)
                if _text(pipe.get(self._keys.lock)) == self._token:
                    pipe.multi()
                    pipe.delete(self._keys.lock)
                    pipe.execute()
            except redis.WatchError:
                pass

    def _collect_garbage(self) -> list[str]:
        """With the lease held, every pending version belongs to a dead publisher; stray published ones
        (neither current nor previous) were left by a publisher killed between flip and cleanup."""
        with redis_errors("collecting stale versions"):
            pending = [m.decode() for m in self._client.zrange(self._keys.pending, 0, -1)]
            published = [m.decode() for m in self._client.zrange(self._keys.versions, 0, -1)]
            keep = {_text(self._client.get(self._keys.current)), _text(self._client.get(self._keys.previous))}
            stale = pending + [v for v in published if v not in keep]
            for version in stale:
                delete_version(self._client, self._keys, version)
        if stale:
            log.info("removed stale versions: %s", ", ".join(stale))
        return stale

    # --- writes ------------------------------------------------------------------------------------
    # Bulk writes are encoded to RESP here and sent in one buffer per round trip: for multi-megabyte
    # pipelines this is about 2.5x faster than redis-py's per-argument packing. Every reply is read
    # and checked before the next round trip.
    def _queue(self, *args: bytes) -> None:
        parts = self._parts
        parts.append(b"*%d\r\n" % len(args))
        for arg in args:
            parts.append(b"$%d\r\n" % len(arg))
            parts.append(arg)
            parts.append(b"\r\n")
        self._commands += 1

    def _flush(self, force: bool = False) -> None:
        if not force and self._buffered_items < ITEMS_PER_PIPELINE and self._buffered_bytes < BYTES_PER_PIPELINE:
            return
        self._check_lease()
        if self._commands:
            buffer, commands = b"".join(self._parts), self._commands
            self._parts, self._commands = [], 0
            self._send(buffer, commands)
        self._buffered_items = self._buffered_bytes = 0

    def _send(self, buffer: bytes, commands: int) -> None:
        pool = self._client.connection_pool
        with redis_errors(f"writing version {self.version}"):
            conn = pool.get_connection()
            try:
                conn.send_packed_command([buffer])
                errors = []
                for _ in range(commands):
                    try:
                        conn.read_response()
                    except redis.ResponseError as exc:  # keep reading: the connection stays in sync
                        errors.append(exc)
            except BaseException:
                conn.disconnect()  # replies may be left unread: never reuse this connection
                raise
            finally:
                pool.release(conn)
            if errors:  # a failed write is never swallowed
                raise errors[0]

    def put_recommendations(self, items: Iterable[tuple[int, bytes]]) -> int:
        self._check_open()
        recs_key, users_key = self._keys.recs(self.version).encode(), self._keys.users(self.version).encode()
        hset: list[bytes] = [b"HSET", recs_key]
        zadd: list[bytes] = [b"ZADD", users_key]
        written = 0
        for user_id, payload in items:
            field = b"%d" % check_user_id(user_id)
            payload = self._encode(payload, "recommendation payload")
            hset += (field, payload)
            zadd += (field, field)  # score = member = user id
            written += 1
            self._buffered_bytes += len(payload)
            if len(hset) >= 2 + 2 * FIELDS_PER_COMMAND:
                self._queue(*hset)
                self._queue(*zadd)
                self._buffered_items += FIELDS_PER_COMMAND
                hset, zadd = hset[:2], zadd[:2]
                self._flush()
        if len(hset) > 2:
            self._queue(*hset)
            self._queue(*zadd)
            self._buffered_items += (len(hset) - 2) // 2
        self._flush(force=True)
        return written

    def put_books(self, items: Iterable[tuple[str, bytes]]) -> int:
        self._check_open()
        hset: list[bytes] = [b"HSET", self._keys.books(self.version).encode()]
        written = 0
        for isbn, payload in items:
            field = check_isbn(isbn).encode()
            payload = self._encode(payload, "book payload")
            hset += (field, payload)
            written += 1
            self._buffered_bytes += len(payload)
            if len(hset) >= 2 + 2 * FIELDS_PER_COMMAND:
                self._queue(*hset)
                self._buffered_items += FIELDS_PER_COMMAND
                hset = hset[:2]
                self._flush()
        if len(hset) > 2:
            self._queue(*hset)
            self._buffered_items += (len(hset) - 2) // 2
        self._flush(force=True)
        return written

    def put_blob(self, name: str, data: bytes) -> None:
        self._check_open()
        name = check_blob_name(name)
        data = check_bytes(data, f"blob {name!r}")
        # The name goes into the blobs set first, so even a killed publisher leaves no unlisted key.
        self._queue(b"SADD", self._keys.blobs(self.version).encode(), name.encode())
        self._queue(b"SET", self._keys.blob(self.version, name).encode(), data)
        self._count_blob(data)
        self._flush(force=True)

    # --- flip --------------------------------------------------------------------------------------
    def _commit(self) -> None:
        self._check_open()
        keys, version = self._keys, self.version
        try:
            self._flush(force=True)
            with redis_errors(f"publishing version {version}"):
                pipe = self._client.pipeline(transaction=False)
                pipe.zcard(keys.users(version))
                pipe.hlen(keys.books(version))
                pipe.scard(keys.blobs(version))
                users, books, blobs = pipe.execute()
                self.stats.update(users=users, books=books, blobs=blobs)
                published_at = time.time()
                self._client.hset(keys.info(version), mapping={
                    "users": users, "books": books, "blobs": blobs, "bytes": self.stats["bytes"],
                    "raw_bytes": self.stats["raw_bytes"],
                    "published_at": published_at,
                })
                self._flip(published_at)
        except BaseException:
            self._abort_quietly()
            raise
        self._closed = True
        try:
            self.stats["removed"] = self.stats.get("removed", []) + self._remove_old_versions()
        except (redis.RedisError, OSError) as exc:  # the version is live; the next publish collects the rest
            log.warning("version %s is live, but older versions could not be removed yet: %s", version, exc)
        finally:
            self._stop_heartbeat.set()
            try:
                self._release_lease()
            except (redis.RedisError, OSError) as exc:
                log.warning("could not release the publish lease (it expires by itself): %s", exc)
        self.stats["seconds"] = round(time.monotonic() - self.started, 3)

    def _flip(self, published_at: float) -> None:
        keys = self._keys
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.current, keys.lock)
                    if _text(pipe.get(keys.lock)) != self._token:
                        raise StoreError(f"publish of {self.version} lost its lease before the flip; aborted")
                    old = _text(pipe.get(keys.current))
                    pipe.multi()
                    pipe.set(keys.current, self.version)
                    if old is not None:
                        pipe.set(keys.previous, old)
                    pipe.zadd(keys.versions, {self.version: published_at})
                    pipe.zrem(keys.pending, self.version)
                    pipe.execute()
                    return
                except redis.WatchError:  # a rollback (or a lease change) raced us: look again
                    continue

    def _remove_old_versions(self) -> list[str]:
        keep = {_text(self._client.get(self._keys.current)), _text(self._client.get(self._keys.previous))}
        old = [m.decode() for m in self._client.zrange(self._keys.versions, 0, -1) if m.decode() not in keep]
        for version in old:
            delete_version(self._client, self._keys, version)
        return old

    def _abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_heartbeat.set()
        self._parts, self._commands = [], 0
        try:
            delete_version(self._client, self._keys, self.version)
        finally:
            self._release_lease()


class RedisShardWriter(RedisPublisher):
    """Writes one shard of recommendations into a version another process is publishing (a batch
    on a cluster: each worker writes its shard, the driver holds the lease and flips once). It
    writes only while that version is pending, and a rewritten shard writes the same keys."""

    def __init__(self, store: "RedisStore", version: str) -> None:
        Publisher.__init__(self, version, compress=store.compress)
        self._store = store
        self._client = store.client
        self._keys = store.keys
        self._empty_buffer()
        self._check_lease()

    def _check_lease(self) -> None:
        with redis_errors(f"checking that version {self.version} is being published"):
            pending = self._client.zscore(self._keys.pending, self.version) is not None
        if not pending:
            raise StoreError(f"version {self.version} is not being published (finished or discarded); shard not written")

    def put_books(self, items: Iterable[tuple[str, bytes]]) -> int:
        raise StoreError("a shard writer writes recommendations only; the publishing process writes books")

    def put_blob(self, name: str, data: bytes) -> None:
        raise StoreError("a shard writer writes recommendations only; the publishing process writes blobs")

    def _commit(self) -> None:
        self._flush(force=True)
        self._closed = True

    def _abort(self) -> None:  # the publishing process discards the whole version
        self._closed = True
        self._parts, self._commands = [], 0


class _RedisHandle:
    """What the store and the API's reader share; each makes its own client (blocking, or an async pool)."""

    backend = "redis"

    def __init__(self, redacted_url: str, prefix: str, timeout: float) -> None:
        self.url = redacted_url
        self.keys = Keys(prefix)
        self.timeout = timeout
        self._random = random.Random()


class RedisStore(_RedisHandle, Store):
    def __init__(
        self, url: str, redacted_url: str, prefix: str = "bookrec", timeout: float = 30.0, lease_seconds: float = 15.0,
        lock_wait: float | None = None, compress: bool = True,
    ) -> None:
        _RedisHandle.__init__(self, redacted_url, prefix, timeout)
        self.compress = compress
        self.lease_seconds = lease_seconds
        # by default wait a little longer than one lease: a killed publisher's lease has expired by then
        self.lock_wait = lease_seconds + 5 if lock_wait is None else lock_wait
        with redis_errors("connecting"):
            self.client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0), retry=_retry(),
                client_name="bookrec-store",
            )

    def _start_publish(self) -> Publisher:
        return RedisPublisher(self)

    def write_shard(self, version: str, items: Iterable[tuple[int, bytes]]) -> dict[str, Any]:
        writer = RedisShardWriter(self, version)
        try:
            users = writer.put_recommendations(items)
            writer._check_lease()  # discarded meanwhile: the caller must know its shard is gone
        except StoreError:
            self._unlink_orphan_shard(version)
            raise
        return {"users": users, "bytes": writer.stats["bytes"], "raw_bytes": writer.stats["raw_bytes"]}

    def _unlink_orphan_shard(self, version: str) -> None:
        """A shard written while its version was discarded left keys nobody lists: remove them,
        unless the version is pending or published after all."""
        keys = self.keys
        try:
            if self.client.zscore(keys.pending, version) is None and self.client.zscore(keys.versions, version) is None:
                self.client.unlink(keys.recs(version), keys.users(version))
        except redis.RedisError as exc:
            log.warning("could not remove the orphaned shard keys of version %s: %s", version, exc)

    def _resolve(self, version: str | None) -> str | None:
        return version if version is not None else self.current_version()

    def _read_versioned(self, action: str, version: str | None, read):
        """Read from the named version, or from the current one; if the current version was deleted
        between resolving the pointer and reading (two publishes in between), resolve once more."""
        with redis_errors(action):
            resolved = self._resolve(version)
            if resolved is None:
                return None
            value = read(resolved)
            if value is None and version is None:
                again = self.current_version()
                if again is not None and again != resolved:
                    value = read(again)
            elif value is None and self.client.zscore(self.keys.versions, version) is None:
                raise _gone(version)
            return value

    def _check_published(self, version: str | None) -> None:
        """After an empty answer for a named version: was it empty, or is the version gone?"""
        if version is not None and self.client.zscore(self.keys.versions, version) is None:
            raise _gone(version)

    def current_version(self) -> str | None:
        with redis_errors("reading the current version"):
            return _text(self.client.get(self.keys.current))

    def previous_version(self) -> str | None:
        with redis_errors("reading the previous version"):
            return _text(self.client.get(self.keys.previous))

    def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None:
        field = str(check_user_id(user_id))
        return expand_payload(self._read_versioned(
            "reading recommendations", version, lambda v: self.client.hget(self.keys.recs(v), field)
        ))

    def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        fields = [str(check_user_id(u)) for u in user_ids]
        if not fields:
            return []
        with redis_errors("reading recommendations"):
            answers = expand_payloads(self.client.hmget(self.keys.recs(version), fields))
            if None in answers and self.client.zscore(self.keys.versions, version) is None:
                return [None] * len(fields)
        return answers

    def get_book(self, isbn: str, version: str | None = None) -> bytes | None:
        return check_json_payload(expand_payload(
            self._read_versioned("reading a book", version, lambda v: self.client.hget(self.keys.books(v), isbn))
        ))

    def get_blob(self, name: str, version: str | None = None) -> bytes | None:
        return self._read_versioned("reading a blob", version, lambda v: self.client.get(self.keys.blob(v, name)))

    def count_users(self, version: str | None = None) -> int:
        with redis_errors("counting users"):
            resolved = self._resolve(version)
            count = int(self.client.zcard(self.keys.users(resolved))) if resolved else 0
            if not count:
                self._check_published(version)
            return count

    def count_books(self, version: str | None = None) -> int:
        with redis_errors("counting books"):
            resolved = self._resolve(version)
            count = int(self.client.hlen(self.keys.books(resolved))) if resolved else 0
            if not count:
                self._check_published(version)
            return count

    def list_users(self, after: int | None = None, limit: int = 100, version: str | None = None):
        limit = check_limit(limit)
        lower = "-inf" if after is None else f"({check_user_id(after)}"  # "(" = exclusive bound
        with redis_errors("listing users"):
            resolved = self._resolve(version)
            if resolved is None:
                return [], None
            members = self.client.zrangebyscore(self.keys.users(resolved), lower, "+inf", start=0, num=limit + 1)
            if not members:
                self._check_published(version)
        return _page(members, limit)

    def random_users(self, n: int, version: str | None = None) -> list[int]:
        n = check_limit(n)
        with redis_errors("sampling users"):
            resolved = self._resolve(version)
            if resolved is None:
                return []
            key = self.keys.users(resolved)
            total = self.client.zcard(key)
            if not total:
                self._check_published(version)
            ranks = self._random.sample(range(total), min(n, total))
            pipe = self.client.pipeline(transaction=False)
            for rank in ranks:
                pipe.zrange(key, rank, rank)
            return _ints([found[0] for found in pipe.execute() if found])

    def ping(self) -> bool:
        with redis_errors("pinging"):
            return bool(self.client.ping())

    def memory_info(self) -> dict[str, Any]:
        with redis_errors("reading memory info"):
            return _memory(self.client.info("memory"))

    def versions(self) -> list[dict[str, Any]]:
        with redis_errors("listing versions"):
            entries = self.client.zrange(self.keys.versions, 0, -1, withscores=True)
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.current)
            pipe.get(self.keys.previous)
            for member, _ in entries:
                pipe.hgetall(self.keys.info(member.decode()))
            current, previous, *infos = pipe.execute()
        return _describe_versions(entries, infos, _text(current), _text(previous))

    def pending_versions(self) -> list[str]:
        with redis_errors("listing pending versions"):
            return [m.decode() for m in self.client.zrange(self.keys.pending, 0, -1)]

    def rollback(self) -> str:
        keys = self.keys
        with redis_errors("rolling back"), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.current, keys.previous, keys.versions)
                    current, previous = _text(pipe.get(keys.current)), _text(pipe.get(keys.previous))
                    if current is None or previous is None:
                        raise NothingToRollBack(
                            "nothing to roll back to: no previous version is kept"
                            + (" (nothing is published yet)" if current is None else f" (current is {current})")
                        )
                    if pipe.zscore(keys.versions, previous) is None:
                        raise NothingToRollBack(f"previous version {previous} no longer exists")
                    pipe.multi()
                    pipe.set(keys.current, previous)
                    pipe.set(keys.previous, current)
                    pipe.execute()
                    return previous
                except redis.WatchError:
                    continue

    def close(self) -> None:
        self.client.close()


class AsyncRedisReader(_RedisHandle, AsyncStoreReader):
    """redis.asyncio over a blocking connection pool (waits up to ``timeout`` for a free connection)."""

    def __init__(
        self, url: str, redacted_url: str, prefix: str = "bookrec", timeout: float = 2.0, pool_size: int = 64
    ) -> None:
        _RedisHandle.__init__(self, redacted_url, prefix, timeout)
        with redis_errors("connecting"):
            self._pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
                socket_connect_timeout=timeout, retry=_async_retry(), client_name="bookrec-api",
            )
            self.client = aioredis.Redis(connection_pool=self._pool, retry=_async_retry())

    async def _resolve(self, version: str | None) -> str | None:
        # Not cached here: the API keeps the one cached pointer (its VersionTracker) and names versions.
        return version if version is not None else _text(await self.client.get(self.keys.current))

    async def _read_versioned(self, action: str, version: str | None, read):
        with redis_errors(action):
            resolved = await self._resolve(version)
            if resolved is None:
                return None
            value = await read(resolved)
            if value is None and version is None:  # the pointer may have moved on (see RedisStore)
                again = await self._resolve(None)
                if again is not None and again != resolved:
                    value = await read(again)
            elif value is None:
                await self._check_published(version)
            return value

    async def _check_published(self, version: str | None) -> None:
        if version is not None and await self.client.zscore(self.keys.versions, version) is None:
            raise _gone(version)

    async def current_version(self) -> str | None:
        with redis_errors("reading the current version"):
            return await self._resolve(None)

    async def previous_version(self) -> str | None:
        with redis_errors("reading the previous version"):
            return _text(await self.client.get(self.keys.previous))

    async def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None:
        field = str(check_user_id(user_id))
        return expand_payload(await self._read_versioned(
            "reading recommendations", version, lambda v: self.client.hget(self.keys.recs(v), field)
        ))

    async def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        fields = [str(check_user_id(u)) for u in user_ids]
        if not fields:
            return []
        with redis_errors("reading recommendations"):
            answers = expand_payloads(await self.client.hmget(self.keys.recs(version), fields))
            if None in answers and await self.client.zscore(self.keys.versions, version) is None:
                return [None] * len(fields)
        return answers

    async def get_book(self, isbn: str, version: str | None = None) -> bytes | None:
        return check_json_payload(expand_payload(await self._read_versioned(
            "reading a book", version, lambda v: self.client.hget(self.keys.books(v), isbn)
        )))

    async def get_blob(self, name: str, version: str | None = None) -> bytes | None:
        return await self._read_versioned(
            "reading a blob", version, lambda v: self.client.get(self.keys.blob(v, name))
        )

    async def count_users(self, version: str | None = None) -> int:
        with redis_errors("counting users"):
            resolved = await self._resolve(version)
            count = int(await self.client.zcard(self.keys.users(resolved))) if resolved else 0
            if not count:
                await self._check_published(version)
            return count

    async def count_books(self, version: str | None = None) -> int:
        with redis_errors("counting books"):
            resolved = await self._resolve(version)
            count = int(await self.client.hlen(self.keys.books(resolved))) if resolved else 0
            if not count:
                await self._check_published(version)
            return count

    async def list_users(self, after: int | None = None, limit: int = 100, version: str | None = None):
        limit = check_limit(limit)
        lower = "-inf" if after is None else f"({check_user_id(after)}"
        with redis_errors("listing users"):
            resolved = await self._resolve(version)
            if resolved is None:
                return [], None
            members = await self.client.zrangebyscore(
                self.keys.users(resolved), lower, "+inf", start=0, num=limit + 1
            )
            if not members:
                await self._check_published(version)
        return _page(members, limit)

    async def random_users(self, n: int, version: str | None = None) -> list[int]:
        n = check_limit(n)
        with redis_errors("sampling users"):
            resolved = await self._resolve(version)
            if resolved is None:
                return []
            key = self.keys.users(resolved)
            total = await self.client.zcard(key)
            if not total:
                await self._check_published(version)
            ranks = self._random.sample(range(total), min(n, total))
            async with self.client.pipeline(transaction=False) as pipe:
                for rank in ranks:
                    pipe.zrange(key, rank, rank)
                results = await pipe.execute()
            return _ints([found[0] for found in results if found])

    async def ping(self) -> bool:
        with redis_errors("pinging"):
            return bool(await self.client.ping())

    async def memory_info(self) -> dict[str, Any]:
        with redis_errors("reading memory info"):
            return _memory(await self.client.info("memory"))

    async def versions(self) -> list[dict[str, Any]]:
        with redis_errors("listing versions"):
            entries = await self.client.zrange(self.keys.versions, 0, -1, withscores=True)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.current)
                pipe.get(self.keys.previous)
                for member, _ in entries:
                    pipe.hgetall(self.keys.info(member.decode()))
                current, previous, *infos = await pipe.execute()
        return _describe_versions(entries, infos, _text(current), _text(previous))

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()
