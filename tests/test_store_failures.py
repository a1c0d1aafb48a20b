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

from bookrec.store import StoreError, StoreUnavailable, VersionGone, open_async_reader, open_store
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
        with pytest.raises(VersionGone):
            store.get_recommendations(7000, version=killed_version)
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


# --- the SQLite file deleted, replaced or corrupted under a live reader; corrupt entries ---------


async def test_sqlite_reads_never_create_a_file_a_directory_or_a_schema(tmp_path):
    missing = tmp_path / "no" / "such" / "store.sqlite3"
    async with open_async_reader(f"sqlite:///{missing}", timeout=1.0) as reader:
        for read in (reader.ping, reader.current_version, lambda: reader.get_recommendations(1)):
            with pytest.raises(StoreUnavailable) as info:
                await read()
            assert "does not exist" in info.value.reason and str(tmp_path) not in info.value.reason
    with open_store(f"sqlite:///{missing}") as store:  # the publisher's handle: "nothing published"
        assert store.current_version() is None and store.versions() == [] and store.ping() is True
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    async with open_async_reader(f"sqlite:///{empty}", timeout=1.0) as reader:
        with pytest.raises(StoreUnavailable):
            await reader.current_version()
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite3"]


async def test_sqlite_reader_follows_a_replaced_file_on_every_thread(tmp_path):
    import shutil

    path, other = tmp_path / "store.sqlite3", tmp_path / "other.sqlite3"
    with open_store(f"sqlite:///{path}") as store:
        v1 = publish_v1(store, 50)
    with open_store(f"sqlite:///{other}") as store, store.begin_publish() as pub:
        pub.put_recommendations((u, orjson.dumps({"user_id": u, "tag": "v2"})) for u in range(50))
    v2 = pub.version
    async with open_async_reader(f"sqlite:///{path}", timeout=2.0, pool_size=8) as reader:
        import asyncio

        # every pool thread opens a connection to the first file
        assert set(await asyncio.gather(*(reader.current_version() for _ in range(64)))) == {v1}
        shutil.copyfile(other, tmp_path / "incoming")
        (tmp_path / "incoming").replace(path)
        assert set(await asyncio.gather(*(reader.current_version() for _ in range(64)))) == {v2}
        tags = await asyncio.gather(*(reader.get_recommendations(u % 50) for u in range(200)))
        assert {orjson.loads(t)["tag"] for t in tags} == {"v2"}
        with pytest.raises(VersionGone):  # the old version is gone: not "no such user"
            await reader.get_recommendations(1, v1)


async def test_sqlite_corrupt_file_is_store_corrupt_until_replaced(tmp_path):
    import shutil

    from bookrec.bench.faults import corrupt_blocks, snapshot_store_file
    from bookrec.store import StoreCorrupt

    path = tmp_path / "store.sqlite3"
    with open_store(f"sqlite:///{path}") as store, store.begin_publish() as pub:
        pub.put_recommendations((u, orjson.dumps({"user_id": u, "pad": "x" * 3000})) for u in range(3000))
    snapshot_store_file(path, tmp_path / "good.sqlite3")
    async with open_async_reader(f"sqlite:///{path}", timeout=2.0) as reader:
        assert await reader.ping()
        corrupt_blocks(path, blocks=64)
        failures = []
        for u in range(0, 3000, 7):
            try:
                await reader.get_recommendations(u)
            except StoreError as exc:
                failures.append(exc)
        assert failures and all(isinstance(e, StoreCorrupt) for e in failures)
        with pytest.raises(StoreCorrupt):  # /health's question
            await reader.ping()
        shutil.copyfile(tmp_path / "good.sqlite3", tmp_path / "incoming")
        (tmp_path / "incoming").replace(path)
        assert await reader.ping()
        assert all([await reader.get_recommendations(u) for u in range(0, 3000, 7)])


async def test_corrupt_redis_entries_raise_store_corrupt(redis_url):
    from bookrec.store import StoreCorrupt
    from bookrec.store.base import compress_payload

    with open_store(redis_url) as store, store.begin_publish() as pub:
        pub.put_recommendations([(1, b"{}"), (2, b"{}"), (3, b"{}")])
        pub.put_books([("b", b"{}")])
    raw = redis.Redis.from_url(redis_url)
    recs = f"bookrec:v:{pub.version}:recs"
    raw.hset(recs, "1", b"\x00Q unknown mark")
    packed = compress_payload(b'{"x": "' + b"y" * 2000 + b'"}')
    raw.hset(recs, "2", packed[:6] + b"\xff" * (len(packed) - 6))
    raw.hset(recs, "3", b"\x00L\xff\xff\xff\x7f" + b"z" * 10)  # claims 2 GB: refused before allocating
    raw.hset(f"bookrec:v:{pub.version}:books", "b", b"not json")
    async with open_async_reader(redis_url, timeout=1.0) as reader:
        for read in (lambda: reader.get_recommendations(1), lambda: reader.get_recommendations(2),
                     lambda: reader.get_recommendations(3), lambda: reader.get_book("b")):
            with pytest.raises(StoreCorrupt):
                await read()


def test_async_redis_reader_starts_without_warnings(redis_url):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = open_async_reader(redis_url)
    assert reader is not None
