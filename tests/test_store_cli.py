"""`bookrec store status` and `bookrec store rollback` against a real store (both backends)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bookrec.store import open_store
from bookrec.store.cli import app

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"sqlite:///{tmp_path}/store.sqlite3"


def publish(url: str, n_users: int) -> str:
    with open_store(url) as store, store.begin_publish() as pub:
        pub.put_recommendations((u, b'{"u": %d}' % u) for u in range(n_users))
        pub.put_books([("isbn-1", b"{}"), ("isbn-2", b"{}")])
        pub.put_blob("meta", b"{}")
    return pub.version


def test_status_json_shows_versions_sizes_and_pointers(store_url):
    empty = runner.invoke(app, ["status", "--store", store_url, "--json"])
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout)["current"] is None
    v1, v2 = publish(store_url, 30), publish(store_url, 40)
    result = runner.invoke(app, ["status", "--store", store_url, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["current"], info["previous"]) == (v2, v1)
    assert [(v["version"], v["users"], v["books"]) for v in info["versions"]] == [(v1, 30, 2), (v2, 40, 2)]
    assert info["versions"][1]["bytes"] == sum(len(b'{"u": %d}' % u) for u in range(40)) + 2 + 2 + 2
    assert info["memory"]["used_memory"] > 0


def test_status_table_and_rollback(store_url):
    v1, v2 = publish(store_url, 3), publish(store_url, 4)
    table = runner.invoke(app, ["status", "--store", store_url])
    assert table.exit_code == 0, table.output
    assert v1 in table.stdout and v2 in table.stdout and "current" in table.stdout
    result = runner.invoke(app, ["rollback", "--store", store_url])
    assert result.exit_code == 0, result.output
    assert f"current is now {v1}" in result.stdout
    with open_store(store_url) as store:
        assert (store.current_version(), store.previous_version()) == (v1, v2)


def test_rollback_without_previous_fails_clearly(store_url):
    publish(store_url, 3)
    result = runner.invoke(app, ["rollback", "--store", store_url])
    assert result.exit_code == 1
    assert "no previous version" in result.stderr


def test_bad_or_unreachable_store_fails_clearly():
    bad = runner.invoke(app, ["status", "--store", "mongodb://x"])
    assert bad.exit_code == 2 and "unknown store URL scheme" in bad.stderr  # bad input
    down = runner.invoke(app, ["status", "--store", "redis://:pw@127.0.0.1:1/0"])
    assert down.exit_code == 1 and "unavailable" in down.stderr and "pw" not in down.stderr
