"""What the tuner and the batch share about an Optuna study: where the best parameters are
recorded, and how a storage URL names its backend (the batch may not import the tuner)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

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
