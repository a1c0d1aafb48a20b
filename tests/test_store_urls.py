"""Store URL parsing: backends chosen by scheme, clear errors, passwords never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookrec.config import Settings
from bookrec.store import StoreError, open_async_reader, open_store, parse_store_url, redact_url


@pytest.mark.parametrize(
    ("url", "backend", "path"),
    [
        ("redis://localhost:6379/0", "redis", None),
        ("redis://:secret@cache.internal:6380/2", "redis", None),
        ("rediss://user:secret@dragonfly.example.com:6379/1", "redis", None),
        ("unix:///run/redis.sock?db=1", "redis", None),
        ("sqlite:///var/bookrec.sqlite3", "sqlite", Path("var/bookrec.sqlite3")),
        ("sqlite:////tmp/abs/bookrec.sqlite3", "sqlite", Path("/tmp/abs/bookrec.sqlite3")),
    ],
)
def test_valid_urls(url, backend, path):
    parsed = parse_store_url(url)
    assert parsed.backend == backend and parsed.path == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty store URL"),
        ("localhost:6379", "unknown store URL scheme|not a store URL"),
        ("/var/bookrec.sqlite3", "not a store URL"),
        ("mongodb://localhost/x", "unknown store URL scheme 'mongodb'"),
        ("redis://localhost:notaport/0", "malformed"),
        ("redis://localhost:6379/abc", "database must be a number"),
        ("redis:///0", "no host"),
        ("sqlite://relative.db", "sqlite:///relative/path"),
        ("sqlite:///:memory:", "needs a file path"),
    ],
)
def test_invalid_urls_say_what_is_wrong(url, message):
    with pytest.raises(StoreError, match=message):
        parse_store_url(url)
    with pytest.raises(StoreError):
        open_store(url)
    with pytest.raises(StoreError):
        open_async_reader(url)


def test_passwords_are_redacted_everywhere():
    assert redact_url("rediss://user:hunter2@h:6379/1") == "rediss://user:***@h:6379/1"
    assert redact_url("redis://:hunter2@h/0") == "redis://:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    with pytest.raises(StoreError) as info:
        parse_store_url("redis://:hunter2@h:6379/abc")
    assert "hunter2" not in str(info.value)
    store = open_store("redis://:hunter2@127.0.0.1:1/0")  # does not connect yet
    assert store.url == "redis://:***@127.0.0.1:1/0"
    store.close()


def test_redis_url_setting_is_accepted(monkeypatch):
    monkeypatch.delenv("BOOKREC_STORE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://dragonfly:6379/0")
    assert parse_store_url(Settings().store_url).backend == "redis"
