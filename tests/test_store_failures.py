"""The store under failure: a publisher SIGKILLed mid-write (a real process) and a Redis outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from bookrec.store import StoreError, StoreUnavailable, open_async_reader, open_store
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]
LEASE = 1.0  # seconds: how long a killed publisher's lease blocks the next publish


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"sqlite:///{tmp_path}/store.sqlite3"


def publish_v1(store, n_users: int) -> str:
    with store.begin_publish() as pub:
        pub.put_recommendations((u, orjson.dumps({"user_id": u, "tag": "v1"})) for u in range(n_users))
        pub.put_blob("meta", b'{"tag": "v1"}')
    return pub.version


def test_killed_publisher_leaves_previous_version_serving(store_url):
    n_v1 = 2500
    with open_store(store_url, lease_seconds=LEASE) as store:
        v1 = publish_v1(store, n_v1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.slow_publisher", store_url, "200000", str(LEASE)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            killed_version = None
            for line in proc.stdout:
                if line.startswith("VERSION"):
                    killed_version = line.split()[1]
                if line.startswith("WROTE") and int(line.split()[1]) >= 8000:
                    break  # >= 6,000 users already sent to the store (chunks of 2,000 / 5,000)
            else:
                pytest.fail(f"the slow publisher ended early with code {proc.wait()}")
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()

        # the previous version is current, complete and readable, and nothing of the killed one shows
        assert store.current_version() == v1 and store.previous_version() is None
        assert [v["version"] for v in store.versions()] == [v1]
        assert store.count_users() == n_v1
        users, after = store.list_users(None, 10_000)
        assert users == list(range(n_v1)) and after is None
        for u in range(0, n_v1, 50):
            assert orjson.loads(store.get_recommendations(u)) == {"user_id": u, "tag": "v1"}
        assert orjson.loads(store.get_blob("meta")) == {"tag": "v1"}
        assert store.get_recommendations(7000) is None

        if store_url.startswith("redis"):
            # the half-written version really was written (so the kill happened mid-write) ...
            raw = redis.Redis.from_url(store_url)
            assert store.pending_versions() == [killed_version]
            assert raw.hlen(f"bookrec:v:{killed_version}:recs") >= 6000
        else:
            # ... SQLite rolled the uncommitted transaction back by itself
            assert store.pending_versions() == []

        # the next publish (once the dead publisher's lease has expired) removes the leftover
        with store.begin_publish() as pub:
            pub.put_recommendations([(1, b'{"tag": "v3"}')])
        if store_url.startswith("redis"):
            assert killed_version in pub.stats["removed"]
        assert store.pending_versions() == []
        assert [v["version"] for v in store.versions()] == [v1, pub.version]
        assert store.get_recommendations(7000, version=killed_version) is None
        if store_url.startswith("redis"):
            assert raw.keys(f"bookrec:v:{killed_version}:*") == []
            assert raw.get("bookrec:publish_lock") is None  # released after the publish


@pytest.fixture()
def own_redis():
    server = RedisServer().start()
    yield server
    server.stop()


def test_store_down_raises_unavailable_then_recovers(own_redis):
    timeout = 1.0
    store = open_store(own_redis.url, timeout=timeout)
    v1 = publish_v1(store, 10)
    assert store.get_recommendations(3) is not None
    own_redis.stop()
    for call in (store.ping, store.current_version, lambda: store.get_recommendations(3), store.status):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            call()
        assert time.monotonic() - started < 10 * timeout  # a guard against hanging, not a speed target
    with pytest.raises(StoreUnavailable):
        with store.begin_publish() as pub:
            pub.put_recommendations([(1, b"{}")])
    own_redis.start()  # same port; the test server keeps no data across restarts
    assert store.ping() is True and store.current_version() is None
    v2 = publish_v1(store, 10)
    assert v2 != v1 and store.current_version() == v2
    store.close()


async def test_async_reader_down_then_up(own_redis):
    store = open_store(own_redis.url)
    publish_v1(store, 10)
    async with open_async_reader(own_redis.url, timeout=1.0, pool_size=4) as reader:
        assert await reader.get_recommendations(3) == store.get_recommendations(3)
        own_redis.stop()
        for _ in range(3):  # every pooled connection is dead; each call fails cleanly, none hangs
            with pytest.raises(StoreUnavailable):
                await reader.get_recommendations(3)
        with pytest.raises(StoreUnavailable):
            await reader.ping()
        own_redis.start()
        assert await reader.ping() is True
        publish_v1(store, 10)
        assert orjson.loads(await reader.get_recommendations(3)) == {"user_id": 3, "tag": "v1"}
    store.close()


def test_wrong_password_is_unavailable_and_password_db_work():
    server = RedisServer(password="s3cret").start()
    try:
        bad = server.url.replace("s3cret", "wrong")
        with pytest.raises(StoreUnavailable) as info:
            open_store(bad).ping()
        assert "wrong" not in str(info.value)
        url_db3 = server.url.removesuffix("/0") + "/3"
        with open_store(url_db3) as store:
            assert "s3cret" not in store.url and "***" in store.url
            version = publish_v1(store, 5)
            assert store.status()["current"] == version
        raw = redis.Redis.from_url(server.url)  # db 0
        assert raw.get("bookrec:current") is None
        assert redis.Redis.from_url(url_db3).get("bookrec:current").decode() == version
    finally:
        server.stop()


def test_sqlite_unusable_path_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:///{blocker}/store.sqlite3")


def test_heartbeat_keeps_a_slow_publishers_lease(redis_url):
    # the lease is 0.6 s, the publish takes 1.5 s: only the heartbeat (every 0.2 s) keeps it
    with open_store(redis_url, lease_seconds=0.6) as slow, open_store(redis_url, lock_wait=0.1) as other:
        with slow.begin_publish() as pub:
            pub.put_recommendations([(1, b'{"slow": true}')])
            time.sleep(1.5)
            with pytest.raises(StoreError, match="another publish holds the lease"):
                with other.begin_publish():
                    pass
            pub.put_recommendations([(2, b'{"slow": true}')])
        assert slow.current_version() == pub.version and slow.count_users() == 2


def test_publisher_that_lost_its_lease_cannot_flip(redis_url):
    raw = redis.Redis.from_url(redis_url)
    with open_store(redis_url, lease_seconds=5.0) as first, open_store(redis_url) as second:
        with pytest.raises(StoreError, match="lost its lease"):
            with first.begin_publish() as stale:
                stale.put_recommendations([(1, b'{"from": "stale"}')])
                raw.delete("bookrec:publish_lock")  # as if the lease expired while this process was paused
                with second.begin_publish() as fresh:  # takes the lease and collects the "dead" version
                    fresh.put_recommendations([(1, b'{"from": "fresh"}')])
                assert stale.version in fresh.stats["removed"]
        assert first.current_version() == fresh.version
        assert first.get_recommendations(1) == b'{"from": "fresh"}'
        assert raw.keys(f"bookrec:v:{stale.version}:*") == [] and first.pending_versions() == []
