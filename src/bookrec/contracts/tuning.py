"""What the tuner and the batch share about an Optuna study: where the best parameters are
recorded, how a storage URL names its backend, and how that storage is opened (the batch may not
import the tuner). Optuna and SQLAlchemy are imported only when a storage is opened."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bookrec.contracts.urls import redact_url

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

BEST_PARAMS_ATTR = "best_params"  # the study's user attribute holding the tuned-params document
JOURNAL_REDIS_PREFIX = "bookrec-optuna"
SUPPORTED_URLS = "use sqlite:///path, postgresql://user:pass@host/db, redis://host:port/db or journal:///path"


def storage_kind(url: str) -> str:
    """``redis``, ``journal``, ``sqlite``, ``rdb`` (PostgreSQL, MySQL) or ``""`` (unsupported)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"redis", "rediss"}:
        return "redis"
    if scheme == "journal":
        return "journal"
    if scheme.startswith("sqlite"):
        return "sqlite"
    if scheme.startswith(("postgresql", "postgres", "mysql")):
        return "rdb"
    return ""


def journal_path(url: str) -> Path:
    return Path(url[len("journal://") :])


def sqlalchemy_url(url: str) -> str:
    """PostgreSQL through psycopg 3, the driver shipped (`postgres` extra); SQLAlchemy defaults to psycopg2."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"postgres", "postgresql"}:
        return "postgresql+psycopg" + url[len(scheme) :]
    return url


def open_optuna_storage(
    url: str, *, read_only: bool, heartbeat_seconds: int | None = None, error: type[Exception] = ValueError
) -> BaseStorage:
    """An Optuna storage for ``url``: a journal (``redis://``, ``journal:///path``) or an RDB (sqlite,
    postgresql, mysql); any other scheme raises ``error``.

    ``read_only`` is for a reader of a study made elsewhere (the batch): it creates nothing, so a
    missing journal or SQLite file raises ``error`` and no tables are made. A writer (the tuner)
    creates the folders and the tables, and its RDB storage gets a heartbeat when
    ``heartbeat_seconds`` is set: a trial whose worker died is marked failed after
    ``3 * heartbeat_seconds`` and re-queued once, so no trial is silently lost.
    """
    import optuna

    kind = storage_kind(url)
    with warnings.catch_warnings():
        # heartbeats and the Redis journal are marked "experimental" in Optuna; they are what we want.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "redis":
            backend = optuna.storages.journal.JournalRedisBackend(url, prefix=JOURNAL_REDIS_PREFIX)
            return optuna.storages.JournalStorage(backend)
        if kind == "journal":
            return _journal_file_storage(journal_path(url), read_only, error)
        if kind in {"sqlite", "rdb"}:
            return _rdb_storage(url, kind, read_only, heartbeat_seconds, error)
    raise error(f"unsupported Optuna storage URL {redact_url(url)!r}: {SUPPORTED_URLS}")


def _journal_file_storage(path: Path, read_only: bool, error: type[Exception]):
    import optuna

    if read_only:
        if not path.is_file():  # opening it would create an empty journal
            raise error(f"no Optuna journal at {path}")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))


def _sqlite_path(url: str) -> Path:
    """sqlite:///relative/path.db and sqlite:////absolute/path.db (the SQLAlchemy convention)."""
    return Path(url[len("sqlite:///") :]).expanduser()


def _rdb_storage(url: str, kind: str, read_only: bool, heartbeat_seconds: int | None, error: type[Exception]):
    import optuna

    if read_only:
        if kind == "sqlite" and not _sqlite_path(url).is_file():  # opening it would create an empty database
            raise error(f"no Optuna storage at {redact_url(url)}: {_sqlite_path(url)} does not exist")
        # A batch must not wait long on a database that does not answer.
        engine_kwargs: dict[str, Any] = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}
        return optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=engine_kwargs, skip_table_creation=True)
    if kind == "sqlite":
        _ensure_sqlite_dir(url)
        # Several processes write one SQLite file: wait for the lock instead of failing at once;
        # the driver opens no transactions of its own (see _serialise_sqlite_transactions).
        engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    storage = _rdb_storage_with_retry(sqlalchemy_url(url), engine_kwargs, _heartbeat_kwargs(heartbeat_seconds))
    if kind == "sqlite":
        _serialise_sqlite_transactions(storage.engine)
    return storage


def _ensure_sqlite_dir(url: str) -> None:
    # A fresh checkout can run `bookrec optimize` without preparing var/ by hand.
    if url[len("sqlite:///") :] not in {"", ":memory:"}:
        _sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)


def _heartbeat_kwargs(heartbeat_seconds: int | None) -> dict[str, Any]:
    import optuna

    if not heartbeat_seconds:
        return {}
    return {
        "heartbeat_interval": heartbeat_seconds,
        "grace_period": 3 * heartbeat_seconds,
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    }


def _serialise_sqlite_transactions(engine) -> None:
    """Every transaction on a shared SQLite file starts with BEGIN IMMEDIATE (SQLAlchemy's recipe for
    pysqlite). With SQLite's default deferred transactions two workers could both read the enqueued
    default trial as waiting and both claim it: it ran twice and the study was a trial short
    (seen in tests/test_optimize_workers.py, about one run in three). Taking the write lock when a
    transaction starts serialises the claims; the other worker waits (up to the 60 s timeout)."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _rdb_storage_with_retry(url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any], attempts: int = 6):
    """RDBStorage, retried: workers started together on an empty database all try to create
    Optuna's tables (and PostgreSQL enum types) at once, and all but one lose that race with a
    duplicate-object error. A retry finds the tables and goes on (creation is check-first)."""
    import random

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
    raise AssertionError("unreachable")


def storage_error_message(exc: BaseException, storage_url: str) -> str:
    """The driver's own message for a storage error, one line, with the URL's password masked."""
    import re
    from urllib.parse import unquote

    # Optuna wraps SQLAlchemy's error, which wraps the driver's: the innermost says what happened.
    inner: BaseException = exc
    if type(inner).__module__.startswith("optuna") and inner.__cause__ is not None:
        inner = inner.__cause__
    orig = getattr(inner, "orig", None)
    if isinstance(orig, BaseException):
        inner = orig
    text = str(inner) or type(inner).__name__
    # SQLAlchemy appends the statement and a link to its error catalogue: noise on one line.
    text = re.split(r"\[SQL: |\(Background on this error at: ", text)[0]
    text = " ".join(text.split())
    text = text.replace(storage_url, redact_url(storage_url))
    try:
        password = urlsplit(storage_url).password
    except ValueError:  # an unparsable URL (a stray bracket): nothing to mask by name
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text or type(exc).__name__
