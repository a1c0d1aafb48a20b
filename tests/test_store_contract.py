"""The store contract, run against both backends: a real redis-server (started by the suite)
and the embedded SQLite store in tmp_path. Same tests, same expectations."""

from __future__ import annotations

import io
import random
import sqlite3

import numpy as np
import orjson
import pytest
import redis

from bookrec.store import NothingToRollBack, StoreCorrupt, StoreError, VersionGone, open_async_reader, open_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["redis", "sqlite"])
def store_url(request, tmp_path):
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return f"sqlite:///{tmp_path}/store.sqlite3"


@pytest.fixture()
def store(store_url):
    with open_store(store_url, lease_seconds=2.0) as s:
        yield s


def rec_payload(user_id: int, tag: str) -> bytes:
    return orjson.dumps({"user_id": user_id, "basis": "personal", "tag": tag, "recommendations": []})


def publish(store, user_ids, tag: str, n_books: int = 5) -> str:
    user_ids = list(user_ids)
    with store.begin_publish() as pub:
        assert pub.put_recommendations((u, rec_payload(u, tag)) for u in user_ids) == len(user_ids)
        assert pub.put_books(
            (f"isbn-{i}", orjson.dumps({"isbn": f"isbn-{i}", "tag": tag})) for i in range(n_books)) == n_books
        pub.put_blob("meta", orjson.dumps({"version_tag": tag}))
    assert pub.stats["users"] == len(set(user_ids)) and pub.stats["books"] == n_books
    return pub.version


def tag_of(payload: bytes | None) -> str | None:
    return None if payload is None else orjson.loads(payload)["tag"]


def leftovers(url: str, version: str) -> int:
    """Data of ``version`` still physically in the store (KEYS is fine in a test, never on request paths)."""
    if url.startswith("redis"):
        return len(redis.Redis.from_url(url).keys(f"bookrec:v:{version}:*"))
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        orphans = sum(
            con.execute(f"SELECT count(*) FROM {t} WHERE vid NOT IN (SELECT vid FROM versions)").fetchone()[0]
            for t in ("recs", "user_ranks", "books", "blobs")
        )
        rows = con.execute("SELECT count(*) FROM versions WHERE name = ?", (version,)).fetchone()[0]
        return orphans + rows
    finally:
        con.close()


# 3,001 sparse ids: more than one pipeline chunk for Redis, gaps between ids for the cursor.
USERS = sorted(random.Random(7).sample(range(1, 10**7), 3001))


def test_empty_store_answers_nothing(store):
    assert store.current_version() is None and store.previous_version() is None
    assert store.get_recommendations(1) is None
    assert store.get_book("isbn-0") is None and store.get_blob("meta") is None
    assert store.count_users() == 0 and store.count_books() == 0
    assert store.list_users(None, 10) == ([], None)
    assert store.random_users(5) == []
    assert store.versions() == [] and store.ping() is True
    with pytest.raises(NothingToRollBack):
        store.rollback()


def test_publish_then_read_everything(store, store_url):
    version = publish(store, USERS, "v1", n_books=1200)
    assert store.current_version() == version
    for user_id in USERS[:50] + USERS[-50:]:
        assert orjson.loads(store.get_recommendations(user_id)) == {
            "user_id": user_id, "basis": "personal", "tag": "v1", "recommendations": []}
    assert store.get_recommendations(0) is None  # not in the version
    assert orjson.loads(store.get_book("isbn-1199")) == {"isbn": "isbn-1199", "tag": "v1"}
    assert store.get_book("isbn-1200") is None
    assert orjson.loads(store.get_blob("meta")) == {"version_tag": "v1"}
    assert store.get_blob("catalog") is None
    assert store.count_users() == len(USERS) and store.count_books() == 1200
    (info,) = store.versions()
    assert info["version"] == version and info["current"] and not info["previous"]
    assert info["users"] == len(USERS) and info["books"] == 1200 and info["blobs"] == 1
    assert info["raw_bytes"] == info["bytes"] == sum(len(rec_payload(u, "v1")) for u in USERS) + sum(
        len(orjson.dumps({"isbn": f"isbn-{i}", "tag": "v1"})) for i in range(1200)) + len(
        orjson.dumps({"version_tag": "v1"}))
    assert store.memory_info()["used_memory"] > 0
    status = store.status()
    assert status["current"] == version and status["pending"] == [] and status["backend"] in store_url


@pytest.mark.parametrize("limit", [1, 7, 100, 3001, 5000])
def test_pagination_covers_every_user_exactly_once(store, limit):
    publish(store, USERS, "v1")
    seen, after, pages = [], None, 0
    while True:
        page, after = store.list_users(after, limit)
        assert len(page) <= limit
        seen.extend(page)
        pages += 1
        if after is None:
            break
        assert after == page[-1]
    assert seen == USERS  # ascending, complete, no duplicates
    assert pages == -(-len(USERS) // limit)  # no empty trailing page


def test_random_users_are_distinct_members(store):
    publish(store, USERS, "v1")
    members = set(USERS)
    for n in (1, 10, 500):
        picks = store.random_users(n)
        assert len(picks) == n and len(set(picks)) == n and set(picks) <= members
    assert sorted(store.random_users(10_000)) == USERS  # asking for more than exist returns everyone


def test_random_users_are_uniform(store):
    # 10 users, 2,000 single draws: each count ~ Binomial(2000, 0.1), mean 200, sd sqrt(2000*0.1*0.9) = 13.4.
    # A bound of +-6 sd (120..280) fails a correct sampler with probability < 10 * 2e-9; a sampler
    # that favoured one user twice as much (count ~ 364) or never picked the last rank fails it.
    publish(store, range(10), "v1")
    counts = {u: 0 for u in range(10)}
    for _ in range(2000):
        (pick,) = store.random_users(1)
        counts[pick] += 1
    assert all(200 - 6 * 13.4 <= c <= 200 + 6 * 13.4 for c in counts.values()), counts


def test_rollback_swaps_current_and_previous(store):
    v1 = publish(store, range(100), "v1")
    with pytest.raises(NothingToRollBack, match="no previous version"):
        store.rollback()
    v2 = publish(store, range(50, 150), "v2")
    assert (store.current_version(), store.previous_version()) == (v2, v1)
    assert store.rollback() == v1
    assert (store.current_version(), store.previous_version()) == (v1, v2)
    assert tag_of(store.get_recommendations(10)) == "v1" and store.count_users() == 100
    assert orjson.loads(store.get_blob("meta")) == {"version_tag": "v1"}
    assert store.rollback() == v2
    assert tag_of(store.get_recommendations(120)) == "v2" and store.get_recommendations(10) is None
    # after a rollback, the next publish keeps what was serving as previous
    store.rollback()
    v3 = publish(store, range(5), "v3")
    assert (store.current_version(), store.previous_version()) == (v3, v1)
    assert [v["version"] for v in store.versions()] == [v1, v3]


def test_exception_inside_publish_keeps_previous_serving(store, store_url):
    v1 = publish(store, USERS[:1000], "v1")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with store.begin_publish() as pub:
            aborted = pub.version
            pub.put_recommendations((u, rec_payload(u, "broken")) for u in USERS)
            pub.put_blob("meta", b"{}")
            raise Boom
    assert store.current_version() == v1 and store.previous_version() is None
    assert [v["version"] for v in store.versions()] == [v1] and store.pending_versions() == []
    assert all(tag_of(store.get_recommendations(u)) == "v1" for u in USERS[:1000:37])
    assert store.get_recommendations(USERS[2000]) is None and store.count_users() == 1000
    with pytest.raises(VersionGone):  # never a "not found" that would be a wrong 404
        store.get_recommendations(USERS[0], version=aborted)
    assert leftovers(store_url, aborted) == 0


def test_failed_write_raises_and_keeps_previous(store):
    v1 = publish(store, range(10), "v1")
    with pytest.raises(StoreError, match="must be bytes"):
        with store.begin_publish() as pub:
            pub.put_recommendations([(1, b"{}"), (2, "not bytes")])
    with pytest.raises(StoreError, match="integer"):
        with store.begin_publish() as pub:
            pub.put_recommendations([("abc", b"{}")])
    with pytest.raises(StoreError, match="blob name"):
        with store.begin_publish() as pub:
            pub.put_blob("has space", b"")
    assert store.current_version() == v1 and store.pending_versions() == []
    assert [v["version"] for v in store.versions()] == [v1]


def test_stale_users_disappear_after_new_publish(store):
    publish(store, range(0, 100), "v1")
    publish(store, range(50, 150), "v2")
    assert store.get_recommendations(10) is None
    assert tag_of(store.get_recommendations(60)) == "v2" and tag_of(store.get_recommendations(149)) == "v2"
    assert store.count_users() == 100
    users, nxt = store.list_users(None, 1000)
    assert users == list(range(50, 150)) and nxt is None
    assert min(store.random_users(100)) >= 50


def test_only_two_versions_are_kept(store, store_url):
    published = [publish(store, range(i, i + 20), f"v{i}") for i in range(4)]
    assert [v["version"] for v in store.versions()] == published[2:]
    assert store.current_version() == published[3] and store.previous_version() == published[2]
    for old in published[:2]:
        for read in (lambda: store.get_recommendations(5, version=old), lambda: store.get_book("isbn-0", old),
                     lambda: store.get_blob("meta", old), lambda: store.count_users(old),
                     lambda: store.list_users(None, 10, old), lambda: store.random_users(3, old)):
            with pytest.raises(VersionGone):
                read()
        assert leftovers(store_url, old) == 0
    assert tag_of(store.get_recommendations(2, version=published[2])) == "v2"
    assert leftovers(store_url, published[2]) > 0  # the check above can see data when it is there


def test_readers_see_the_old_version_until_the_flip(store, store_url):
    v1 = publish(store, range(100), "v1")
    with open_store(store_url) as reader, store.begin_publish() as pub:
        pub.put_recommendations((u, rec_payload(u, "v2")) for u in range(100, 3000))
        # mid-publish: another connection still reads v1, complete, and is not blocked by the writer
        assert reader.current_version() == v1 and reader.count_users() == 100
        assert tag_of(reader.get_recommendations(5)) == "v1" and reader.get_recommendations(200) is None
        assert reader.list_users(None, 1000) == (list(range(100)), None)
    assert reader_after(store_url, 200) == "v2"


def reader_after(url, user_id):
    with open_store(url) as reader:
        return tag_of(reader.get_recommendations(user_id))


def test_second_publisher_waits_then_gives_up(store_url):
    with open_store(store_url, lease_seconds=2.0, lock_wait=0.3) as first, \
            open_store(store_url, lease_seconds=2.0, lock_wait=0.3) as second:
        with first.begin_publish() as pub:
            pub.put_recommendations([(1, b"{}")])
            with pytest.raises(StoreError, match="another publish"):
                with second.begin_publish():
                    pass
        assert first.current_version() == pub.version == second.current_version()


async def test_async_reader_equals_sync_reader(store, store_url):
    publish(store, USERS[:1000], "v1")
    v2 = publish(store, USERS, "v2", n_books=50)
    reader = open_async_reader(store_url, timeout=5.0, pool_size=4)
    async with reader:
        assert await reader.current_version() == store.current_version() == v2
        assert await reader.previous_version() == store.previous_version()
        for user_id in USERS[::97] + [0, -5]:
            assert await reader.get_recommendations(user_id) == store.get_recommendations(user_id)
        old = store.previous_version()
        assert await reader.get_recommendations(USERS[0], version=old) == store.get_recommendations(USERS[0], old)
        for isbn in ("isbn-0", "isbn-49", "isbn-50"):
            assert await reader.get_book(isbn) == store.get_book(isbn)
        assert await reader.get_blob("meta") == store.get_blob("meta")
        assert await reader.count_users() == store.count_users() == len(USERS)
        assert await reader.count_books() == store.count_books() == 50
        assert await reader.count_users(version=old) == 1000
        after_a = after_s = None
        while True:
            page_a, after_a = await reader.list_users(after_a, 250)
            page_s, after_s = store.list_users(after_s, 250)
            assert page_a == page_s and after_a == after_s
            if after_a is None:
                break
        picks = await reader.random_users(100)
        assert len(set(picks)) == 100 and set(picks) <= set(USERS)
        assert await reader.versions() == store.versions()
        status = await reader.status()
        assert (status["current"], status["previous"], status["versions"]) == (v2, old, store.versions())
        assert await reader.ping() is True
        assert (await reader.memory_info())["used_memory"] > 0


async def test_async_reader_picks_up_new_version(store, store_url):
    publish(store, range(10), "v1")
    async with open_async_reader(store_url) as reader:
        assert tag_of(await reader.get_recommendations(5)) == "v1"
        publish(store, range(100, 110), "v2")
        assert tag_of(await reader.get_recommendations(105)) == "v2"
        assert tag_of(await reader.get_recommendations(5)) is None


def corrupt_entry(url: str, version: str, user_id: int) -> None:
    """Overwrite one stored recommendation payload with bytes no reader can expand."""
    bad = b"\x00Q unknown compression mark"
    if url.startswith("redis"):
        redis.Redis.from_url(url).hset(f"bookrec:v:{version}:recs", str(user_id), bad)
        return
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        with con:
            con.execute("UPDATE recs SET payload = ? WHERE user_id = ? AND vid = (SELECT vid FROM versions WHERE name = ?)",
                        (bad, user_id, version))
    finally:
        con.close()


async def test_many_reads_answer_as_single_reads(store, store_url):
    old = publish(store, USERS[:1000], "v1")
    current = publish(store, USERS, "v2")
    # more ids than one SQLite query takes, ids not in the version, a repeated id
    asked = USERS[::2] + [0, -5, USERS[0], USERS[1]]
    async with open_async_reader(store_url, timeout=5.0) as reader:
        for version in (current, old):
            expected = [store.get_recommendations(u, version) for u in asked]
            assert store.get_recommendations_many(asked, version) == expected
            assert await reader.get_recommendations_many(asked, version) == expected
        assert {tag_of(p) for p in expected if p is not None} == {"v1"} and expected.count(None) > 2
        assert store.get_recommendations_many([], current) == await reader.get_recommendations_many([], current) == []


async def test_many_reads_of_a_version_gone_answer_none(store, store_url):
    gone = publish(store, USERS[:10], "v1")
    publish(store, USERS[:10], "v2")
    publish(store, USERS[:10], "v3")
    with pytest.raises(VersionGone):
        store.get_recommendations(USERS[0], gone)
    # unlike the single read: the batch's callers resolve the pointer afresh on a miss
    async with open_async_reader(store_url, timeout=5.0) as reader:
        for version in (gone, "20000101T000000-0000"):
            assert store.get_recommendations_many(USERS[:3] + [0], version) == [None] * 4
            assert await reader.get_recommendations_many(USERS[:3] + [0], version) == [None] * 4


async def test_many_reads_keep_a_corrupt_entry_to_itself(store, store_url):
    version = publish(store, [1, 2, 3], "v1")
    corrupt_entry(store_url, version, 2)
    async with open_async_reader(store_url, timeout=5.0) as reader:
        for answers in (store.get_recommendations_many([1, 2, 3, 4], version),
                        await reader.get_recommendations_many([1, 2, 3, 4], version)):
            assert tag_of(answers[0]) == tag_of(answers[2]) == "v1" and answers[3] is None
            assert isinstance(answers[1], StoreCorrupt)
        with pytest.raises(StoreCorrupt):
            await reader.get_recommendations(2, version)


def test_publish_fixture_helper_round_trips(store_url):
    """tests/support/publish.py (test data for API/web tests) writes what it says it wrote."""
    from tests.support.publish import isbn10, publish_fixture

    assert isbn10(31666634) == "0316666343"  # a real ISBN-10 (check digit 3)
    fixture = publish_fixture(store_url, n_users=40, n_books=30, top_n=10)
    with open_store(store_url) as store:
        assert store.current_version() == fixture.version and store.count_users() == 40
        assert store.count_books() == len(fixture.isbns) > 30  # some works have two editions
        for user_id in fixture.user_ids:
            assert orjson.loads(store.get_recommendations(user_id)) == fixture.recommendations[user_id]
        assert orjson.loads(store.get_blob("meta"))["version"] == fixture.version
        assert {r["basis"] for r in fixture.recommendations.values()} == {
            "personal", "folded_in", "similar_reading", "popular"}
        npz = np.load(io.BytesIO(store.get_blob("serving_model")), allow_pickle=False)
        assert npz["item_factors"].shape == (8, 30, 4) and list(npz["item_keys"]) == [w["work_key"] for w in fixture.works]


@pytest.mark.parametrize("compress", [True, False])
async def test_large_payloads_round_trip_compressed_or_not(store_url, compress):
    big = {u: orjson.dumps({"user_id": u, "recommendations": [{"rank": r, "title": f"Book {u}-{r}",
           "image_url": f"http://images.example.org/P/{u:05d}{r:05d}.jpg"} for r in range(20)]}) for u in range(300)}
    book = orjson.dumps({"isbn": "0316666343", "editions": [f"{i:010d}" for i in range(100)]})
    with open_store(store_url, compress=compress) as store:
        with store.begin_publish() as pub:
            pub.put_recommendations(big.items())
            pub.put_books([("0316666343", book), ("small", b"{}")])
        raw = sum(map(len, big.values())) + len(book) + 2
        assert pub.stats["raw_bytes"] == raw
        if compress:  # this repetitive JSON shrinks at least 2x with LZ4
            assert pub.stats["bytes"] < raw / 2
        else:
            assert pub.stats["bytes"] == raw
        assert all(store.get_recommendations(u) == payload for u, payload in big.items())
        assert store.get_book("0316666343") == book and store.get_book("small") == b"{}"
        async with open_async_reader(store_url) as reader:
            assert await reader.get_recommendations(123) == big[123]
            assert await reader.get_book("0316666343") == book
        with pytest.raises(StoreError, match="compression mark"):
            with store.begin_publish() as pub:
                pub.put_recommendations([(1, b"\x00zzz")])
    # payloads written zlib-compressed (by an earlier release of this module) still read back
    import zlib

    from bookrec.store.base import ZLIB_MARK, expand_payload

    assert expand_payload(ZLIB_MARK + zlib.compress(big[5])) == big[5]


def test_shards_of_a_pending_version_are_written_by_other_clients_and_only_while_it_is_pending(store, store_url):
    if not store.takes_shards:  # SQLite: the publishing process writes every shard itself
        with store.begin_publish() as pub, pytest.raises(StoreError, match="only through the publishing process"):
            store.write_shard(pub.version, [(1, rec_payload(1, "shard"))])
        assert store.count_users() == 0  # nothing was written
        return
    with store.begin_publish() as pub:
        pub.put_recommendations([(1, rec_payload(1, "driver"))])
        with open_store(store_url) as worker:  # another client, as a cluster worker would be
            written = worker.write_shard(pub.version, [(u, rec_payload(u, "shard")) for u in USERS])
            again = worker.write_shard(pub.version, [(u, rec_payload(u, "shard")) for u in USERS])  # a retried shard
        assert written == again and written["users"] == len(USERS) and written["bytes"] > 0
        pub.add_shard_stats(written)
        assert store.get_recommendations(USERS[0]) is None  # nothing visible before the flip
    assert store.count_users() == len(USERS) + 1
    assert tag_of(store.get_recommendations(USERS[-1])) == "shard" and tag_of(store.get_recommendations(1)) == "driver"
    assert next(v for v in store.versions() if v["current"])["bytes"] >= written["bytes"]
    with pytest.raises(StoreError, match="not being published"):  # finished: a late shard is refused
        store.write_shard(pub.version, [(5, rec_payload(5, "late"))])
    with pytest.raises(RuntimeError), store.begin_publish() as failed:
        raise RuntimeError("the batch failed")
    with pytest.raises(StoreError, match="not being published"):  # discarded: refused too
        store.write_shard(failed.version, [(5, rec_payload(5, "late"))])
    assert leftovers(store_url, failed.version) == 0


def test_a_shard_caught_writing_when_its_version_is_discarded_leaves_no_keys(redis_url):
    with open_store(redis_url) as store, open_store(redis_url) as worker:
        with pytest.raises(StoreError, match="not being published"), store.begin_publish() as pub:

            def shard():
                for n, user in enumerate(USERS):
                    if n == 2000:  # the batch fails while this shard is being written
                        pub._abort()
                    yield user, rec_payload(user, "shard")

            worker.write_shard(pub.version, shard())
        assert leftovers(redis_url, pub.version) == 0
        assert store.current_version() is None
