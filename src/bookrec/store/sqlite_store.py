"""The embedded store: one SQLite file in WAL mode, so readers never block on the batch writer.

Layout: ``versions`` (one row per version, ``state`` pending|published, sizes), ``pointers``
(``current`` and ``previous``), and per-version rows keyed by the version's integer id in
``recs``, ``user_ranks`` (dense rank -> user id, for uniform random picks), ``books`` and ``blobs``.
A publish is ONE write transaction: a killed publisher leaves nothing behind (SQLite rolls the
uncommitted WAL frames back), and the pointer flip commits together with the data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from bookrec.store.base import (
    AsyncStoreReader, Publisher, RecommendationRead, Store, check_blob_name, check_bytes, check_isbn, check_json_payload,
    check_limit, check_user_id, expand_payload, new_version_id,
)
from bookrec.store.errors import NothingToRollBack, StoreCorrupt, StoreError, StoreUnavailable, VersionGone

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, version TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    vid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    created_at REAL NOT NULL, published_at REAL,
    users INTEGER NOT NULL DEFAULT 0, books INTEGER NOT NULL DEFAULT 0,
    blobs INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, raw_bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS recs (vid INTEGER NOT NULL, user_id INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS recs_key ON recs (vid, user_id);
CREATE TABLE IF NOT EXISTS user_ranks (
    vid INTEGER NOT NULL, rank INTEGER NOT NULL, user_id INTEGER NOT NULL, PRIMARY KEY (vid, rank)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS books (vid INTEGER NOT NULL, isbn TEXT NOT NULL, payload BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS books_key ON books (vid, isbn);
CREATE TABLE IF NOT EXISTS blobs (vid INTEGER NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS blobs_key ON blobs (vid, name);
"""
DATA_TABLES = ("recs", "user_ranks", "books", "blobs")

# The version a read refers to: the one named, or the current one; only published versions are visible.
VID = (
    "(SELECT vid FROM versions WHERE state = 'published' AND "
    "name = COALESCE(?, (SELECT version FROM pointers WHERE name = 'current')))"
)
MIN_ID = -(2**63)
IDS_PER_QUERY = 500  # bound parameters per query stay far below SQLite's limit (999 before 3.32)
ROWS_PER_EXECUTEMANY = 5_000
CHECKPOINT_SECONDS = 10.0


# Errors that mean the file's content cannot be trusted (as opposed to "cannot get at it now").
_CORRUPT_CODES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
MISSING_REASON = (
    "the store file does not exist: nothing has been published at the configured path "
    "(check BOOKREC_STORE_URL, or run `bookrec batch`)"
)
FOREIGN_REASON = "the configured store file is not a bookrec store (check BOOKREC_STORE_URL)"
CORRUPT_REASON = "the store file is corrupt: publish again or restore the file"


@contextmanager
def sqlite_errors(action: str, reading: bool = False) -> Iterator[None]:
    """sqlite3 errors as store errors. ``reading``: the arguments were checked before the query (as
    ``StoreError``), so a TypeError or ValueError can only come from the data read: corruption."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(_CORRUPT_CODES):
            raise StoreCorrupt(f"sqlite store corrupt while {action}: {exc}", CORRUPT_REASON) from exc
        if isinstance(exc, sqlite3.OperationalError):
            # "database is locked", "unable to open database file", "disk I/O error": not usable now
            raise StoreUnavailable(f"sqlite store unavailable while {action}: {exc}") from exc
        raise StoreError(f"sqlite store error while {action}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite store error while {action}: {exc}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        if not reading:
            raise
        raise StoreCorrupt(f"sqlite store returned unreadable data while {action}: {exc!r}", CORRUPT_REASON) from exc
    except OSError as exc:  # the directory cannot be created or read
        raise StoreUnavailable(f"sqlite store unavailable while {action}: {exc}") from exc


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """(device, inode, size, mtime) of the store file, None when it does not exist.

    A connection belongs to one identity: a deleted, replaced or rewritten file is then never
    read through a connection (or a page cache) of its predecessor. The size and mtime change
    when a publish checkpoints, which costs one reconnect per publish and nothing else.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"sqlite store file {path} cannot be examined: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreUnavailable(f"sqlite store path {path} is not a file", FOREIGN_REASON)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_creatable(path: Path) -> None:
    """A publish could create ``path``: its nearest existing ancestor is a directory."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreUnavailable(f"sqlite store path {path}: {parent} is not a directory")
            return


def _tune(conn: sqlite3.Connection, timeout: float) -> None:
    conn.execute("PRAGMA busy_timeout = %d" % int(timeout * 1000))


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-write connection for publishing: creates the file, its directory and the schema."""
    if not path.exists():
        # A WAL or wal-index left by a deleted file would be replayed onto the new one.
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    _tune(conn, timeout)
    # 16 kB pages hold several compressed payloads (~2 kB) each instead of one per 4 kB page; this
    # only takes effect on a new, empty file and must come before WAL mode is switched on.
    conn.execute("PRAGMA page_size = 16384")
    # Changing the journal mode takes a lock: only do it when the file is not in WAL mode yet.
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    has_schema = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'").fetchone()
    if not has_schema:
        conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
    elif "raw_bytes" not in {row[1] for row in conn.execute("PRAGMA table_info(versions)")}:
        # a file whose versions table lacks raw_bytes gets the column
        conn.execute("ALTER TABLE versions ADD COLUMN raw_bytes INTEGER NOT NULL DEFAULT 0")
    return conn


def connect_existing(path: Path, timeout: float, mode: str = "ro") -> sqlite3.Connection | None:
    """A connection to an existing store file, never creating anything (``mode``: ro or rw).
    None when the file holds no store schema yet; ``StoreUnavailable`` when it does not exist."""
    uri = f"file:{quote(str(path.absolute()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        if not path.exists():
            raise StoreUnavailable(f"sqlite store file {path} does not exist", MISSING_REASON) from exc
        raise
    try:
        _tune(conn, timeout)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except BaseException:
        conn.close()
        raise
    if "pointers" in tables and "versions" in tables:
        return conn
    conn.close()
    if tables:
        raise StoreUnavailable(f"{path} is a SQLite file but not a bookrec store", FOREIGN_REASON)
    return None


def _blob(value: Any) -> bytes:
    if not isinstance(value, bytes):  # a corrupt page can turn a BLOB cell into anything
        raise StoreCorrupt(f"stored payload is a {type(value).__name__}, not bytes", CORRUPT_REASON)
    return value


def _expand_or_error(value: Any) -> RecommendationRead:
    """A stored recommendation payload expanded, or the ``StoreCorrupt`` of this entry alone."""
    try:
        return None if value is None else expand_payload(_blob(value))
    except StoreCorrupt as exc:
        return exc


def _version_row(conn: sqlite3.Connection, version: str | None) -> tuple[int, int, int] | None:
    row = conn.execute(f"SELECT vid, users, books FROM versions WHERE vid = {VID}", (version,)).fetchone()
    if row is None and version is not None:
        raise VersionGone(f"version {version} is not published (any longer)")
    return row


def _miss(conn: sqlite3.Connection, version: str | None) -> None:
    """A read found nothing: in a named version that is gone, that is not an answer (a wrong 404)."""
    if version is not None and not conn.execute(
        "SELECT 1 FROM versions WHERE name = ? AND state = 'published'", (version,)
    ).fetchone():
        raise VersionGone(f"version {version} is not published (any longer)")


class SqliteReads:
    """The read queries, each taking a connection, shared by the sync store and the async reader.

    Reads naming a version that is no longer published raise ``VersionGone`` instead of answering
    "not found"; the check costs a query on misses only.
    """

    def __init__(self) -> None:
        self._random = random.Random()

    @staticmethod
    def pointer(conn: sqlite3.Connection, name: str) -> str | None:
        row = conn.execute("SELECT version FROM pointers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def ping(conn: sqlite3.Connection) -> bool:
        # Reads the pointer and its version row, so a file whose small tables are unreadable fails here.
        conn.execute(f"SELECT vid FROM versions WHERE vid = {VID}", (None,)).fetchone()
        return True

    @staticmethod
    def get_recommendations(conn: sqlite3.Connection, user_id: int, version: str | None) -> bytes | None:
        user_id = check_user_id(user_id)
        row = conn.execute(f"SELECT payload FROM recs WHERE vid = {VID} AND user_id = ?", (version, user_id)).fetchone()
        if row is None:
            return _miss(conn, version)
        return expand_payload(_blob(row[0]))

    @staticmethod
    def get_recommendations_many(conn: sqlite3.Connection, user_ids: list[int], version: str) -> list[RecommendationRead]:
        user_ids = [check_user_id(u) for u in user_ids]
        found: dict[int, Any] = {}
        for start in range(0, len(user_ids), IDS_PER_QUERY):
            chunk = user_ids[start:start + IDS_PER_QUERY]
            found.update(conn.execute(
                f"SELECT user_id, payload FROM recs WHERE vid = {VID} AND user_id IN ({','.join('?' * len(chunk))})",
                (version, *chunk),
            ).fetchall())
        if len(found) < len(set(user_ids)):
            try:
                _miss(conn, version)
            except VersionGone:
                return [None] * len(user_ids)
        return [_expand_or_error(found.get(u)) for u in user_ids]

    @staticmethod
    def get_book(conn: sqlite3.Connection, isbn: str, version: str | None) -> bytes | None:
        row = conn.execute(f"SELECT payload FROM books WHERE vid = {VID} AND isbn = ?", (version, isbn)).fetchone()
        if row is None:
            return _miss(conn, version)
        return check_json_payload(expand_payload(_blob(row[0])))

    @staticmethod
    def get_blob(conn: sqlite3.Connection, name: str, version: str | None) -> bytes | None:
        row = conn.execute(f"SELECT data FROM blobs WHERE vid = {VID} AND name = ?", (version, name)).fetchone()
        if row is None:
            return _miss(conn, version)
        return _blob(row[0])

    @staticmethod
    def count_users(conn: sqlite3.Connection, version: str | None) -> int:
        row = _version_row(conn, version)
        return int(row[1]) if row else 0

    @staticmethod
    def count_books(conn: sqlite3.Connection, version: str | None) -> int:
        row = _version_row(conn, version)
        return int(row[2]) if row else 0

    @staticmethod
    def list_users(
        conn: sqlite3.Connection, after: int | None, limit: int, version: str | None
    ) -> tuple[list[int], int | None]:
        limit = check_limit(limit)
        lower = MIN_ID if after is None else check_user_id(after)
        rows = conn.execute(
            f"SELECT user_id FROM recs WHERE vid = {VID} AND user_id > ? ORDER BY user_id LIMIT ?",
            (version, lower, limit + 1),
        ).fetchall()
        if not rows:
            _miss(conn, version)
        users = [int(r[0]) for r in rows[:limit]]
        return users, (users[-1] if len(rows) > limit else None)

    def random_users(self, conn: sqlite3.Connection, n: int, version: str | None) -> list[int]:
        n = check_limit(n)
        conn.execute("BEGIN")  # one snapshot: the count and the ranks come from the same version
        try:
            row = _version_row(conn, version)
            if not row or row[1] == 0:
                return []
            ranks = self._random.sample(range(row[1]), min(n, row[1]))
            marks = ",".join("?" * len(ranks))
            found = dict(
                conn.execute(
                    f"SELECT rank, user_id FROM user_ranks WHERE vid = ? AND rank IN ({marks})", (row[0], *ranks)
                ).fetchall()
            )
            return [found[r] for r in ranks if r in found]
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def versions(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        conn.execute("BEGIN")
        try:
            pointers = dict(conn.execute("SELECT name, version FROM pointers").fetchall())
            rows = conn.execute(
                "SELECT name, created_at, published_at, users, books, blobs, bytes, raw_bytes FROM versions "
                "WHERE state = 'published' ORDER BY published_at, vid"
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        return [
            {
                "version": name, "created_at": created, "published_at": published, "users": users,
                "books": books, "blobs": blobs, "bytes": nbytes, "raw_bytes": raw,
                "current": name == pointers.get("current"), "previous": name == pointers.get("previous"),
            }
            for name, created, published, users, books, blobs, nbytes, raw in rows
        ]

    @staticmethod
    def pending_versions(conn: sqlite3.Connection) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM versions WHERE state = 'pending' ORDER BY vid")]

    @staticmethod
    def memory_info(path: Path) -> dict[str, Any]:
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes[suffix or "db"] = os.stat(str(path) + suffix).st_size
            except OSError:
                sizes[suffix or "db"] = 0
        total = sum(sizes.values())
        return {
            "backend": "sqlite", "used_memory": total, "used_memory_human": _human(total),
            "file_bytes": sizes["db"], "wal_bytes": sizes["-wal"], "path": str(path),
        }


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.2f}G"  # pragma: no cover


def _delete_version(conn: sqlite3.Connection, vid: int) -> None:
    for table in DATA_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE vid = ?", (vid,))
    conn.execute("DELETE FROM versions WHERE vid = ?", (vid,))


def _collect_garbage(conn: sqlite3.Connection) -> list[str]:
    """Delete every version that is neither current nor previous (call inside a write transaction)."""
    rows = conn.execute(
        "SELECT vid, name FROM versions WHERE name NOT IN (SELECT version FROM pointers)"
    ).fetchall()
    for vid, _ in rows:
        _delete_version(conn, vid)
    return [name for _, name in rows]


class SqlitePublisher(Publisher):
    def __init__(self, store: "SqliteStore") -> None:
        super().__init__(new_version_id(), compress=store.compress)
        self._store = store
        with sqlite_errors("starting a publish"):
            self._conn = connect(store.path, store.lock_wait)
            self._conn.execute("PRAGMA cache_size = -65536")  # 64 MB page cache for the bulk insert
            try:
                # IMMEDIATE: take the write lock now (waiting up to lock_wait for another publisher)
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                self._conn.close()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreError(
                        f"another publish (or rollback) holds the SQLite write lock on {store.path}; "
                        f"waited {store.lock_wait:g} s"
                    ) from exc
                raise
            except BaseException:
                self._conn.close()
                raise
            try:
                removed = _collect_garbage(self._conn)
                if removed:
                    log.info("removed stale versions: %s", ", ".join(removed))
                self._vid = self._conn.execute(
                    "INSERT INTO versions (name, state, created_at) VALUES (?, 'pending', ?)", (self.version, time.time())
                ).lastrowid
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._conn.close()
                raise

    def _rows(self, items: Iterable[tuple[Any, Any]], key_check: Callable[[Any], Any], what: str) -> Iterator[tuple]:
        for key, payload in items:
            key = key_check(key)
            payload = self._encode(payload, what)
            yield (self._vid, key, payload)

    def put_recommendations(self, items: Iterable[tuple[int, bytes]]) -> int:
        self._check_open()
        return self._insert("recs (vid, user_id, payload)", self._rows(items, check_user_id, "recommendation payload"))

    def put_books(self, items: Iterable[tuple[str, bytes]]) -> int:
        self._check_open()
        return self._insert("books (vid, isbn, payload)", self._rows(items, check_isbn, "book payload"))

    def put_blob(self, name: str, data: bytes) -> None:
        self._check_open()
        name = check_blob_name(name)
        data = check_bytes(data, f"blob {name!r}")
        with sqlite_errors(f"writing blob {name!r}"):
            self._conn.execute("INSERT OR REPLACE INTO blobs (vid, name, data) VALUES (?, ?, ?)", (self._vid, name, data))
        self._count_blob(data)

    def _insert(self, target: str, rows: Iterator[tuple]) -> int:
        written = 0
        sql = f"INSERT OR REPLACE INTO {target} VALUES (?, ?, ?)"
        with sqlite_errors("writing a version"):
            while True:
                chunk = [row for _, row in zip(range(ROWS_PER_EXECUTEMANY), rows)]
                if not chunk:
                    return written
                self._conn.executemany(sql, chunk)
                written += len(chunk)

    def _commit(self) -> None:
        self._check_open()
        conn, vid = self._conn, self._vid
        try:
            with sqlite_errors(f"publishing version {self.version}"):
                conn.execute(
                    "INSERT INTO user_ranks (vid, rank, user_id) "
                    "SELECT vid, row_number() OVER (ORDER BY user_id) - 1, user_id FROM recs WHERE vid = ?",
                    (vid,),
                )
                users = conn.execute("SELECT count(*) FROM recs WHERE vid = ?", (vid,)).fetchone()[0]
                books = conn.execute("SELECT count(*) FROM books WHERE vid = ?", (vid,)).fetchone()[0]
                blobs = conn.execute("SELECT count(*) FROM blobs WHERE vid = ?", (vid,)).fetchone()[0]
                self.stats.update(users=users, books=books, blobs=blobs)
                conn.execute(
                    "UPDATE versions SET state = 'published', published_at = ?, users = ?, books = ?, blobs = ?, "
                    "bytes = ?, raw_bytes = ? WHERE vid = ?",
                    (time.time(), users, books, blobs, self.stats["bytes"], self.stats["raw_bytes"], vid),
                )
                old = SqliteReads.pointer(conn, "current")
                if old is not None:
                    conn.execute("INSERT OR REPLACE INTO pointers VALUES ('previous', ?)", (old,))
                conn.execute("INSERT OR REPLACE INTO pointers VALUES ('current', ?)", (self.version,))
                conn.execute("COMMIT")  # the flip: data and pointer become visible together
        except BaseException:
            self._abort_quietly()
            raise
        self._closed = True
        try:  # older versions go in a second, short transaction; a failure here only leaves garbage for next time
            conn.execute("BEGIN IMMEDIATE")
            self.stats["removed"] = _collect_garbage(conn)
            conn.execute("COMMIT")
            # The WAL grew to the size of the whole version; fold it into the database and empty it.
            # An empty WAL also matters when the file is later deleted or replaced: a WAL with frames
            # left at the path would be replayed onto its successor. Readers on an old snapshot make
            # the checkpoint report busy; they finish within a read, so a few retries suffice.
            deadline = time.monotonic() + CHECKPOINT_SECONDS
            while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
        except sqlite3.Error as exc:
            log.warning("version %s is live, but older versions could not be removed yet: %s", self.version, exc)
        finally:
            conn.close()
        self.stats["seconds"] = round(time.monotonic() - self.started, 3)

    def _abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._conn.close()


class SqliteStore(Store):
    """The batch's and the CLI's handle. Opening it creates nothing: the first publish creates the
    file, its directory and the schema; until then every read answers "nothing published"."""

    backend = "sqlite"

    def __init__(
        self, url: str, path: Path, timeout: float = 10.0, lock_wait: float = 60.0, compress: bool = True
    ) -> None:
        self.url = url
        self.compress = compress
        self.path = path
        self.timeout = timeout
        self.lock_wait = lock_wait
        self._reads = SqliteReads()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int, int, int] | None = None
        with self._lock, sqlite_errors(f"opening {path}"):
            if self._connection() is None and not path.exists():
                check_creatable(path)

    def _connection(self) -> sqlite3.Connection | None:
        """The connection to the file as it is now; None while no store exists at the path."""
        identity = file_identity(self.path)
        if identity != self._identity or self._conn is None:
            self._drop()
            if identity is not None:
                self._conn = connect_existing(self.path, self.timeout, "rw")
                self._identity = identity if self._conn is not None else None
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._identity = None, None

    def _read(self, action: str, fn: Callable[..., T], *args: Any, empty: Any = None, version: str | None = None) -> T:
        with self._lock, sqlite_errors(action, reading=True):
            conn = self._connection()
            if conn is None:
                if version is not None:
                    raise VersionGone(f"version {version} is not published: no store exists at {self.path}")
                return empty
            return fn(conn, *args)

    def _start_publish(self) -> Publisher:
        return SqlitePublisher(self)

    def current_version(self) -> str | None:
        return self._read("reading the current version", SqliteReads.pointer, "current")

    def previous_version(self) -> str | None:
        return self._read("reading the previous version", SqliteReads.pointer, "previous")

    def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None:
        return self._read("reading recommendations", SqliteReads.get_recommendations, user_id, version, version=version)

    def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        return self._read(
            "reading recommendations", SqliteReads.get_recommendations_many, user_ids, version,
            empty=[None] * len(user_ids),
        )

    def get_book(self, isbn: str, version: str | None = None) -> bytes | None:
        return self._read("reading a book", SqliteReads.get_book, isbn, version, version=version)

    def get_blob(self, name: str, version: str | None = None) -> bytes | None:
        return self._read("reading a blob", SqliteReads.get_blob, name, version, version=version)

    def count_users(self, version: str | None = None) -> int:
        return self._read("counting users", SqliteReads.count_users, version, empty=0, version=version)

    def count_books(self, version: str | None = None) -> int:
        return self._read("counting books", SqliteReads.count_books, version, empty=0, version=version)

    def list_users(self, after: int | None = None, limit: int = 100, version: str | None = None):
        return self._read(
            "listing users", SqliteReads.list_users, after, limit, version, empty=([], None), version=version
        )

    def random_users(self, n: int, version: str | None = None) -> list[int]:
        return self._read("sampling users", self._reads.random_users, n, version, empty=[], version=version)

    def ping(self) -> bool:
        """True when the store file answers, or when none exists yet and a publish could create it."""
        with self._lock, sqlite_errors("pinging", reading=True):
            conn = self._connection()
            if conn is None:
                if not self.path.exists():
                    check_creatable(self.path)
                return True
            return SqliteReads.ping(conn)

    def memory_info(self) -> dict[str, Any]:
        return SqliteReads.memory_info(self.path)

    def versions(self) -> list[dict[str, Any]]:
        return self._read("listing versions", SqliteReads.versions, empty=[])

    def pending_versions(self) -> list[str]:
        return self._read("listing pending versions", SqliteReads.pending_versions, empty=[])

    def status(self) -> dict[str, Any]:
        info = super().status()
        if not self.path.exists():
            info["note"] = f"no store file at {self.path} yet: nothing has been published there"
        return info

    def rollback(self) -> str:
        with self._lock, sqlite_errors("rolling back"):
            conn = self._connection()
            if conn is None:
                raise NothingToRollBack("nothing to roll back to: nothing is published yet")
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = SqliteReads.pointer(conn, "current")
                previous = SqliteReads.pointer(conn, "previous")
                if current is None or previous is None:
                    raise NothingToRollBack(
                        "nothing to roll back to: no previous version is kept"
                        + (" (nothing is published yet)" if current is None else f" (current is {current})")
                    )
                if not conn.execute(
                    "SELECT 1 FROM versions WHERE name = ? AND state = 'published'", (previous,)
                ).fetchone():
                    raise NothingToRollBack(f"previous version {previous} no longer exists")
                conn.execute("INSERT OR REPLACE INTO pointers VALUES ('current', ?)", (previous,))
                conn.execute("INSERT OR REPLACE INTO pointers VALUES ('previous', ?)", (current,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return previous

    def close(self) -> None:
        with self._lock:
            self._drop()


class AsyncSqliteReader(AsyncStoreReader):
    """Runs the read queries in a small thread pool, one read-only SQLite connection per thread
    (WAL: never blocked by the publisher).

    Every read first stats the file: a connection only ever serves the file it was opened on, so
    after a delete, a replacement or a rewrite in place, each thread reopens before its next read
    (no thread keeps serving a deleted file, and no page cache outlives its file). A missing file
    is ``StoreUnavailable`` and is never created. A corrupt page makes every connection reopen, and
    ``ping`` reports the file as corrupt until it changes (restored, replaced or republished).
    """

    backend = "sqlite"

    def __init__(self, url: str, path: Path, timeout: float = 2.0, pool_size: int = 4) -> None:
        self.url = url
        self.path = path
        self.timeout = timeout
        self._reads = SqliteReads()
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="bookrec-sqlite")
        self._local = threading.local()
        self._connections: set[sqlite3.Connection] = set()
        self._connections_lock = threading.Lock()
        self._generation = 0
        self._corrupt: tuple[int, int, int, int] | None = None  # identity of the file last seen corrupt

    def _close_local(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._connections_lock:
                self._connections.discard(conn)
            conn.close()

    def _connection(self) -> tuple[sqlite3.Connection, tuple[int, int, int, int]]:
        identity = file_identity(self.path)
        if identity is None:
            self._close_local()
            raise StoreUnavailable(f"sqlite store file {self.path} does not exist", MISSING_REASON)
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.identity != identity or local.generation != self._generation:
            self._close_local()
            generation = self._generation
            conn = connect_existing(self.path, self.timeout, "ro")
            if conn is None:
                raise StoreUnavailable(f"sqlite store file {self.path} holds no store yet", MISSING_REASON)
            local.conn, local.identity, local.generation = conn, identity, generation
            with self._connections_lock:
                self._connections.add(conn)
        return conn, identity

    async def _run(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        def job() -> T:
            identity = None
            try:
                with sqlite_errors(action, reading=True):
                    conn, identity = self._connection()
                    return fn(conn, *args)
            except StoreCorrupt:
                self._generation += 1
                self._corrupt = identity or self._corrupt
                raise

        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, job), self.timeout)
        except TimeoutError as exc:
            raise StoreUnavailable(f"sqlite store did not answer within {self.timeout} s while {action}") from exc

    async def current_version(self) -> str | None:
        return await self._run("reading the current version", SqliteReads.pointer, "current")

    async def previous_version(self) -> str | None:
        return await self._run("reading the previous version", SqliteReads.pointer, "previous")

    async def get_recommendations(self, user_id: int, version: str | None = None) -> bytes | None:
        return await self._run("reading recommendations", SqliteReads.get_recommendations, user_id, version)

    async def get_recommendations_many(self, user_ids: list[int], version: str) -> list[RecommendationRead]:
        return await self._run("reading recommendations", SqliteReads.get_recommendations_many, user_ids, version)

    async def get_book(self, isbn: str, version: str | None = None) -> bytes | None:
        return await self._run("reading a book", SqliteReads.get_book, isbn, version)

    async def get_blob(self, name: str, version: str | None = None) -> bytes | None:
        return await self._run("reading a blob", SqliteReads.get_blob, name, version)

    async def count_users(self, version: str | None = None) -> int:
        return await self._run("counting users", SqliteReads.count_users, version)

    async def count_books(self, version: str | None = None) -> int:
        return await self._run("counting books", SqliteReads.count_books, version)

    async def list_users(self, after: int | None = None, limit: int = 100, version: str | None = None):
        return await self._run("listing users", SqliteReads.list_users, after, limit, version)

    async def random_users(self, n: int, version: str | None = None) -> list[int]:
        return await self._run("sampling users", self._reads.random_users, n, version)

    async def ping(self) -> bool:
        await self._run("pinging", SqliteReads.ping)
        corrupt = self._corrupt
        if corrupt is not None:
            if file_identity(self.path) == corrupt:
                raise StoreCorrupt(f"sqlite store file {self.path} was found corrupt", CORRUPT_REASON)
            self._corrupt = None
        return True

    async def memory_info(self) -> dict[str, Any]:
        return SqliteReads.memory_info(self.path)

    async def versions(self) -> list[dict[str, Any]]:
        return await self._run("listing versions", SqliteReads.versions)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
