"""Store faults under load, with real processes only: a real redis-server killed, stopped (SIGSTOP)
and restarted, and a real SQLite file deleted, replaced and corrupted, while the real API
(`bookrec serve` in a subprocess) answers 16 concurrent connections. Each test asserts what users
see: no 500, no wrong 404 (every id and ISBN asked for is published), no connection closed without
a response, /health reporting the fault, and the current version served again within 5 s of the
fault's end without a restart. The load and the fault injection are `bookrec bench faults`'.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson
import pytest
import redis

from bookrec.bench.faults import Load, place_store_file, redis_injector, run_fault, snapshot_store_file, sqlite_injector
from bookrec.store.base import compress_payload
from tests.support.live_server import live_server_factory  # noqa: F401 - fixture
from tests.support.publish import publish_fixture
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)

DURATION = 9.0  # the fault starts at 3 s and lasts 1.5 s
CONNECTIONS = 16
API_SETTINGS = {"store_timeout_seconds": 0.5, "version_refresh_seconds": 0.2, "fault_log_interval_seconds": 2.0}


@pytest.fixture()
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def assert_users_saw_no_breakage(result, fault: str) -> None:
    assert result.errors_500 == 0, (fault, result)
    assert result.wrong_404 == 0, (fault, result)
    assert result.dropped == 0, (fault, result)
    assert result.recovery_seconds is not None and result.recovery_seconds <= 5.0, (fault, result)
    assert set(result.by_status) <= {"200", "503", "timeout"}, (fault, result)
    assert result.by_status.get("timeout", 0) == 0, (fault, result)


@pytest.mark.parametrize("fault", ["redis-kill", "redis-stop", "redis-restart"])
def test_redis_fault_under_load(fault, own_redis, live_server_factory):
    fx = publish_fixture(own_redis.url, n_users=60, n_books=40, seed=1)
    api = live_server_factory(own_redis.url, **API_SETTINGS)
    base_inject = redis_injector(fault, own_redis, fx.version)

    async def inject(fault_seconds: float):
        start, end, version = await base_inject(fault_seconds)
        if fault != "redis-stop":
            # The tests' redis-server keeps nothing on disk: the fault ends with the next publish.
            again = await asyncio.to_thread(publish_fixture, own_redis.url, n_users=60, n_books=40, seed=1)
            end, version = time.monotonic(), again.version
        return start, end, version

    load = Load(api.url, fx.user_ids, fx.isbns, connections=CONNECTIONS)
    result = asyncio.run(run_fault(fault, load, inject, DURATION))
    assert_users_saw_no_breakage(result, fault)
    assert result.by_status.get("503", 0) > 0  # the fault was seen, as 503s
    if result.fault_seconds >= 1.0:  # /health is asked every 0.25 s: a restart can fall between
        assert result.health_reported_fault is True
    assert api.process.poll() is None


@pytest.fixture()
def sqlite_stores(tmp_path):
    """The served path, a good copy of its version and another good store file (a retrain)."""
    path = tmp_path / "store.sqlite3"
    fx = publish_fixture(f"sqlite:///{path}", n_users=60, n_books=40, seed=2)
    good, other = tmp_path / "good.sqlite3", tmp_path / "other.sqlite3"
    snapshot_store_file(path, good)
    other_live = tmp_path / "other-live.sqlite3"
    retrain = publish_fixture(f"sqlite:///{other_live}", n_users=60, n_books=40, seed=2, top_n=15)
    snapshot_store_file(other_live, other)
    return path, good, other, fx, retrain


@pytest.mark.parametrize("fault", ["sqlite-delete", "sqlite-replace", "sqlite-corrupt"])
def test_sqlite_fault_under_load(fault, sqlite_stores, live_server_factory):
    path, good, other, fx, retrain = sqlite_stores
    api = live_server_factory(f"sqlite:///{path}", **API_SETTINGS)
    inject = sqlite_injector(fault, path, good, other, fx.version, retrain.version)
    load = Load(api.url, fx.user_ids, fx.isbns, connections=CONNECTIONS)
    result = asyncio.run(run_fault(fault, load, inject, DURATION))
    assert_users_saw_no_breakage(result, fault)
    if fault != "sqlite-replace":  # a replacement by a good file is no outage
        assert result.by_status.get("503", 0) > 0
        assert result.health_reported_fault is True
    with httpx.Client(base_url=api.url, timeout=5) as http:
        assert http.get("/health").json()["model_version"] == result.expected_version
        # every thread's connection serves the file now in place: the same version, every time
        versions = {http.get(f"/recommend/{fx.user_ids[i % 60]}").json()["model_version"] for i in range(40)}
        assert versions == {result.expected_version}
    assert api.process.poll() is None


def test_deleted_file_is_not_recreated_and_replacement_is_served(sqlite_stores, live_server_factory):
    path, good, other, fx, retrain = sqlite_stores
    api = live_server_factory(f"sqlite:///{path}", **API_SETTINGS)
    with httpx.Client(base_url=api.url, timeout=5) as http:
        assert http.get(f"/recommend/{fx.user_ids[0]}").status_code == 200
        path.unlink()
        for _ in range(20):  # every reader thread notices; none keeps serving the deleted file
            r = http.get(f"/recommend/{fx.user_ids[0]}")
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
        health = http.get("/health")
        assert health.status_code == 503 and "does not exist" in health.json()["reason"]
        assert str(path) not in health.text
        assert not path.exists()  # reads never create the file (nor a schema in it)
        place_store_file(other, path)
        deadline = time.monotonic() + 5
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for user in fx.user_ids:
            body = http.get(f"/recommend/{user}").json()
            assert body["model_version"] == retrain.version
            assert body["recommendations"] == retrain.recommendations[user]["recommendations"][:10]


def test_corrupt_redis_entries_are_503_counted_and_logged_once(own_redis, live_server_factory):
    fx = publish_fixture(own_redis.url, n_users=60, n_books=40, seed=3)
    raw = redis.Redis.from_url(own_redis.url)
    recs, books = f"bookrec:v:{fx.version}:recs", f"bookrec:v:{fx.version}:books"
    not_json, unknown_mark, bad_lz4, fine = fx.user_ids[:4]
    raw.hset(recs, str(not_json), b"{this is not json")
    raw.hset(recs, str(unknown_mark), b"\x00Q" + b"x" * 40)
    packed = compress_payload(orjson.dumps(fx.recommendations[bad_lz4]))
    raw.hset(recs, str(bad_lz4), packed[:6] + bytes(255 - b for b in packed[6:]))
    raw.hset(books, fx.isbns[0], b"<html>not a book</html>")
    api = live_server_factory(own_redis.url, **API_SETTINGS)

    async def many() -> list[httpx.Response]:
        # concurrent, so corrupt and good reads share the coalescer's multi-gets
        async with httpx.AsyncClient(base_url=api.url, timeout=5) as http:
            paths = [f"/recommend/{u}" for u in (not_json, unknown_mark, bad_lz4, fine)] * 25
            return await asyncio.gather(*(http.get(p) for p in paths + [f"/books/{fx.isbns[0]}"]))

    responses = asyncio.run(many())
    for r in responses:
        if r.url.path == f"/recommend/{fine}":
            assert r.status_code == 200
        else:
            assert r.status_code == 503, r.url
            assert r.headers["retry-after"] == "5"
            assert r.json() == {"detail": "the recommendation store returned unreadable data; it has been logged"}
    with httpx.Client(base_url=api.url, timeout=5) as http:
        assert http.get("/health").status_code == 200  # one bad entry is not a store outage
        metrics = http.get("/metrics").text
    counted = sum(float(m) for m in re.findall(r'^bookrec_store_corrupt_total\{route="[^"]+"\} (\S+)', metrics, re.M))
    assert counted == 76
    time.sleep(API_SETTINGS["fault_log_interval_seconds"] + 0.5)
    messages = [orjson.loads(ln)["message"] for ln in api.log().splitlines() if ln.startswith('{"time"')]
    lines = [m for m in messages if m.startswith("store corrupt")]  # the server logs JSON lines to a file
    assert len(lines) == 2, lines  # the first at once, then one with the count of the other 75
    assert "75 more" in lines[1]
    assert "Traceback" not in api.log()
