"""The batch on a real Dask cluster (a `dask scheduler` and two `dask worker` processes on loopback
ports, started here): the published version is byte-identical to the one-process batch with the
same seed (recommendations, books, catalogue, serving model, relevance and popular blobs; the meta
differs only in the engine and the timings), with the SQLite store (shards through the driver) and
with Redis (shards written by the workers); and a worker killed with SIGKILL mid-precompute costs
nothing but time: the survivor runs its shards again and the version is complete and identical.
"""

from __future__ import annotations

import math
import threading
import time

import orjson
import pytest

from bookrec.batch.pipeline import BatchError, run_batch
from bookrec.config import Settings
from bookrec.data.io import write_dataset
from bookrec.data.synth import generate
from bookrec.store import open_store
from tests.support.dask_cluster import DaskCluster
from tests.support.redis_server import free_port

# Meta fields that record the run rather than its result: the clock, and the engine.
RUN_FIELDS = {"version", "created_at", "training_time_seconds", "stage_seconds", "precompute_seconds_by_tier", "engine"}
BLOBS = ("catalog", "serving_model", "popular", "relevance", "meta")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-data")
    write_dataset(generate("small", seed=5).dataset, out)
    return out


def settings(tmp_path, chunk: int = 2048) -> Settings:
    # Enough sweeps for the model to pass the publish gate's NLL check against the bias baseline.
    return Settings(n_samples=100, burn_in=100, max_kept_samples=20, n_chains=2, top_n=10, seed=7,
                    batch_chunk_users=chunk, tuned_config_path=tmp_path / "absent.json")


def published(url: str, isbns: list[str]) -> dict:
    """Everything a version serves, read back through the store."""
    with open_store(url) as store:
        version = store.current_version()
        users, after = [], None
        while True:
            page, after = store.list_users(after=after, limit=5000, version=version)
            users += page
            if after is None:
                break
        recs = {}
        for start in range(0, len(users), 1000):
            chunk = users[start:start + 1000]
            recs.update(zip(chunk, store.get_recommendations_many(chunk, version)))
        books = {isbn: store.get_book(isbn, version) for isbn in isbns}
        blobs = {name: store.get_blob(name, version) for name in BLOBS}
    meta = orjson.loads(blobs.pop("meta"))
    return {"recommendations": recs, "books": books, "blobs": blobs, "meta": meta}


def assert_same_version(one: dict, other: dict) -> None:
    assert other["recommendations"].keys() == one["recommendations"].keys()
    differing = [u for u, payload in one["recommendations"].items() if other["recommendations"][u] != payload]
    assert not differing, f"{len(differing)} readers' payloads differ, e.g. {differing[:3]}"
    assert other["books"] == one["books"]
    for name, data in one["blobs"].items():
        assert other["blobs"][name] == data, name
    meta_one = {k: v for k, v in one["meta"].items() if k not in RUN_FIELDS}
    meta_other = {k: v for k, v in other["meta"].items() if k not in RUN_FIELDS}
    assert meta_other == meta_one


def isbns_of(small_dir) -> list[str]:
    import pandas as pd

    return pd.read_parquet(small_dir / "books.parquet", columns=["isbn"])["isbn"].astype(str).tolist()


def expected_shards(coverage: dict, chunk: int) -> int:
    return sum(math.ceil(coverage[tier] / chunk) for tier in ("personal", "folded_in", "similar_reading"))


@pytest.fixture(scope="module")
def one_process(small_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one-process")
    url = f"sqlite:///{tmp}/store.sqlite3"
    report = run_batch(settings(tmp), small_dir, url, "development", show_progress=False)
    return report, published(url, isbns_of(small_dir))


@pytest.fixture(scope="module")
def cluster():
    cluster = DaskCluster(n_workers=2).start()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_cluster_publishes_what_one_process_publishes(backend, cluster, one_process, small_dir, tmp_path, request):
    url = f"sqlite:///{tmp_path}/store.sqlite3" if backend == "sqlite" else request.getfixturevalue("redis_url")
    report = run_batch(settings(tmp_path), small_dir, url, "development", show_progress=False,
                       scheduler=cluster.address)
    single_report, single = one_process
    version = published(url, isbns_of(small_dir))
    assert_same_version(single, version)
    assert single["meta"]["engine"]["name"] == "single process"
    engine = version["meta"]["engine"]
    assert engine["name"] == "dask" and engine["scheduler"] == cluster.address
    assert engine["workers"] == 2 and engine["threads"] == 2
    assert engine["tasks"] == {"chains": 2, "shards": expected_shards(report.coverage_by_tier, 2048)}
    # Redis takes the shards from the workers; SQLite gets them through the driver.
    assert (engine["bytes_from_workers"]["shards"] > 0) == (backend == "sqlite")
    assert engine["bytes_to_workers"]["shards"] > 0 and engine["bytes_from_workers"]["chains"] > 0
    assert set(engine["peak_rss_bytes"]["precompute"]) >= {"driver"} and len(engine["peak_rss_bytes"]["precompute"]) == 3
    assert report.users_published == single_report.users_published == report.n_users


def one_process_version(small_dir, tmp_path, chunk: int) -> dict:
    """What the one-process batch publishes with these settings (the reference)."""
    base = tmp_path / "one"
    base.mkdir()
    run_batch(settings(base, chunk), small_dir, f"sqlite:///{base}/store.sqlite3", "development", show_progress=False)
    return published(f"sqlite:///{base}/store.sqlite3", isbns_of(small_dir))


def batch_in_background(small_dir, tmp_path, chunk: int, store_url: str, scheduler: str, outcome: dict) -> threading.Thread:
    """The batch on the cluster in a thread: its report, or the exception it raised, lands in ``outcome``."""
    def batch() -> None:
        try:
            outcome["report"] = run_batch(settings(tmp_path, chunk), small_dir, store_url, "development",
                                          show_progress=False, scheduler=scheduler)
        except BaseException as exc:  # the test's assertion shows it
            outcome["error"] = exc

    driver = threading.Thread(target=batch)
    driver.start()
    return driver


def worker_running(observer, driver: threading.Thread, prefix: str, timeout: float = 300) -> str | None:
    """The name of a worker seen running a task whose key starts with ``prefix`` while the batch
    runs, or None when the batch ended (or the time ran out) first."""
    deadline = time.monotonic() + timeout
    while driver.is_alive() and time.monotonic() < deadline:
        names = {addr: info["name"] for addr, info in observer.scheduler_info()["workers"].items()}
        for addr, keys in observer.processing().items():
            if any(str(key).startswith(prefix) for key in keys) and addr in names:
                return names[addr]
        time.sleep(0.02)
    return None


def test_a_worker_killed_mid_precompute_costs_nothing_but_time(small_dir, tmp_path, redis_url):
    from distributed import Client

    chunk = 64  # many small shards, so that the kill lands while some are still to run
    single = one_process_version(small_dir, tmp_path, chunk)

    cluster = DaskCluster(n_workers=2).start()
    outcome: dict = {}
    try:
        driver = batch_in_background(small_dir, tmp_path, chunk, redis_url, cluster.address, outcome)
        with Client(cluster.address, set_as_default=False) as observer:
            killed = worker_running(observer, driver, "bookrec-shard-")
            assert killed is not None, "no shard was seen running"
            cluster.kill_worker(killed)
        driver.join(timeout=300)
        assert not driver.is_alive()
        assert "error" not in outcome, f"{outcome.get('error')!r}\n{cluster.logs()}"
    finally:
        cluster.stop()
    version = published(redis_url, isbns_of(small_dir))
    assert_same_version(single, version)
    engine = version["meta"]["engine"]
    assert engine["tasks"]["shards"] == expected_shards(outcome["report"].coverage_by_tier, chunk)
    # After the precompute only the survivor answers for its memory.
    assert len(engine["peak_rss_bytes"]["precompute"]) == 2


@pytest.mark.parametrize("stage", ["chain", "shard"])
def test_a_worker_that_dies_with_the_only_copy_of_the_shared_inputs_costs_nothing_but_time(stage, small_dir, tmp_path,
                                                                                           redis_url):
    """The chains' plan or the shards' shared inputs are scattered while one worker runs; a second
    joins, and the first is killed while a task of that stage runs: the only copy is gone, so the
    batch scatters it again to the survivor and reruns the cancelled tasks, and publishes what one
    process publishes."""
    from distributed import Client

    chunk = 64
    single = one_process_version(small_dir, tmp_path, chunk)

    cluster = DaskCluster(n_workers=1).start()
    outcome: dict = {}
    try:
        driver = batch_in_background(small_dir, tmp_path, chunk, redis_url, cluster.address, outcome)
        with Client(cluster.address, set_as_default=False) as observer:
            assert worker_running(observer, driver, f"bookrec-{stage}-") == "worker-0", \
                f"the batch ended before a {stage} was seen running"
            cluster.add_worker("worker-1")
            cluster.kill_worker("worker-0")
        driver.join(timeout=300)
        assert not driver.is_alive()
        assert "error" not in outcome, f"{outcome.get('error')!r}\n{cluster.logs()}"
        logs = cluster.logs()
    finally:
        cluster.stop()
    assert "lose scattered data" in logs  # the case under test happened
    version = published(redis_url, isbns_of(small_dir))
    assert_same_version(single, version)
    engine = version["meta"]["engine"]
    assert engine["tasks"]["shards"] == expected_shards(outcome["report"].coverage_by_tier, chunk)


def test_a_scheduler_that_does_not_answer_fails_the_batch_clearly(small_dir, tmp_path):
    quick = settings(tmp_path).model_copy(update={"dask_connect_timeout": 2.0})
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(BatchError, match="cannot use the Dask scheduler"):
        run_batch(quick, small_dir, f"sqlite:///{tmp_path}/store.sqlite3", "development", show_progress=False,
                  scheduler=address)
    with open_store(f"sqlite:///{tmp_path}/store.sqlite3") as store:
        assert store.current_version() is None


def test_shards_that_keep_failing_leave_the_previous_version_serving(cluster, small_dir, tmp_path, redis_server):
    import redis as redis_py

    from bookrec.store import StoreError

    redis_server.flush()
    url = redis_server.url
    quick = settings(tmp_path)
    first = run_batch(quick, small_dir, url, "development", show_progress=False, scheduler=cluster.address)
    client = redis_py.Redis.from_url(url)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + 2_000_000))  # room for the driver's start, not for the shards
    try:
        with pytest.raises((StoreError, BatchError, redis_py.RedisError)) as failed:
            run_batch(quick, small_dir, url, "development", show_progress=False, scheduler=cluster.address)
    finally:
        client.config_set("maxmemory", "0")
    assert "OOM" in str(failed.value) or "maxmemory" in str(failed.value), failed.value  # a shard's write failed
    with open_store(url) as store:
        assert store.current_version() == first.version
        assert store.pending_versions() == []
        assert store.count_users() == first.users_published
    assert not [k for k in client.keys("*") if first.version.encode() not in k and b":v:" in k]  # no other version left
