"""``bookrec bench store``: publish and read figures of the store backends (a benchmark, not a test).

Publishes a version shaped like the batch's (every user of the ``full`` data set by default, each
with ``top_n`` recommendation items of realistic size), then measures single reads, cursor pages,
random picks and the async reader's throughput under concurrency.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bookrec.contracts.payloads import BOOK_FIELDS, ITEM_TEMPLATE, P_LIKED_DIGITS, READER_TEMPLATE, json_number
from bookrec.store import open_async_reader, open_store

VOCABULARY = (
    "river garden secret shadow letters kingdom house stone winter summer night ocean city road fire light "
    "daughter king queen war peace love death island mountain forest storm glass silver golden dark bright"
).split()
NAMES = "Ann Ben Chloe David Elena Farid Grace Hiro Iris Jonas Smith Garcia Okafor Novak Tanaka Larsen".split()


def _item_pool(n: int, rng: np.random.Generator) -> list[tuple]:
    """n distinct books, as varied as real titles, authors and ISBNs, each with made-up figures: the
    arguments of ``ITEM_TEMPLATE`` after the rank."""
    pool = []
    for _ in range(n):
        title = " ".join(rng.choice(VOCABULARY, size=int(rng.integers(2, 6)))).title()
        author = f"{rng.choice(NAMES)} {rng.choice(NAMES)}son"
        isbn = f"{rng.integers(0, 10**10):010d}"
        book = {"work_key": f"{title.lower()}|{author.lower()}", "isbn": isbn, "title": title, "author": author,
                "year": int(rng.integers(1950, 2005)),
                "image_url": f"http://images.amazon.com/images/P/{isbn}.01.MZZZZZZZ.jpg"}
        predicted = float(rng.uniform(5, 9.5))
        half = float(rng.uniform(0.5, 2))
        relevance, p_liked = float(rng.uniform(0.01, 0.3)), float(rng.uniform(0.2, 0.9))
        pool.append((orjson.dumps({name: book[name] for name in BOOK_FIELDS})[1:-1], predicted, half,
                     predicted - half, predicted + half, b"personal", json_number(relevance * p_liked**0.25),
                     json_number(relevance), json_number(relevance / 3), json_number(p_liked, P_LIKED_DIGITS),
                     b'{"kind":"popular"}'))
    return pool


def payloads(user_ids: list[int], top_n: int, seed: int = 0) -> Iterator[tuple[int, bytes]]:
    """Realistic payloads, cheap to hand over: 5,000 distinct recommendation lists (top_n entries drawn
    from 20,000 distinct books), each user getting one with its own id. Compression then sees what it
    would see in real payloads (repeated keys, not repeated titles), and the timing is the store's."""
    rng = np.random.default_rng(seed)
    pool = _item_pool(20_000, rng)
    bodies = [
        b"[%s]" % b",".join(ITEM_TEMPLATE % (r + 1, *pool[j]) for r, j in enumerate(row))
        for row in rng.integers(0, len(pool), size=(5_000, top_n)).tolist()
    ]
    # built eagerly above (this is not a generator function), so the timed publish only hands them over
    return ((u, READER_TEMPLATE % (u, b"personal", bodies[u % len(bodies)])) for u in user_ids)


@contextmanager
def temporary_redis() -> Iterator[str]:
    """A throwaway local redis-server (no persistence) for the benchmark."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; pass --store redis://... or install it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bookrec-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if open_store(url, timeout=1).ping():
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def _async_throughput(url: str, users: list[int], concurrency: int, total: int) -> dict[str, float]:
    # the API trusts the current pointer for version_refresh_seconds (1 s): one round trip per read
    reader = open_async_reader(url, timeout=5.0, pool_size=concurrency, version_cache_seconds=1.0)
    rng = np.random.default_rng(1)
    picks = rng.choice(users, size=total).tolist()
    latencies: list[float] = []
    misses = 0

    async def worker(chunk: list[int]) -> None:
        nonlocal misses
        for user_id in chunk:
            t = time.perf_counter()
            if await reader.get_recommendations(user_id) is None:
                misses += 1
            latencies.append(time.perf_counter() - t)

    async with reader:
        await reader.ping()
        started = time.perf_counter()
        await asyncio.gather(*(worker(picks[i::concurrency]) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"reads_per_s": total / elapsed, **_percentiles(latencies), "misses": misses}


def run_benchmark(
    url: str, n_users: int, top_n: int, n_books: int, reads: int, concurrency: int, compress: bool = True
) -> dict[str, Any]:
    user_ids = list(range(1, n_users + 1))
    out: dict[str, Any] = {"store": None, "users": n_users, "top_n": top_n}
    with open_store(url, compress=compress) as store:
        out["store"] = store.url
        recommendations = payloads(user_ids, top_n)
        started, cpu_started = time.perf_counter(), time.process_time()
        with store.begin_publish() as pub:
            pub.put_recommendations(recommendations)
            pub.put_books((f"{i:010d}", b'{"isbn":"%010d","title":"A book"}' % i) for i in range(n_books))
            pub.put_blob("meta", b"{}")
            pub.put_blob("serving_model", os.urandom(8 * 1024**2))
        out["publish_seconds"] = time.perf_counter() - started
        # the client's own CPU time: unlike the wall time, it does not grow when other jobs share the machine
        out["publish_cpu_seconds"] = time.process_time() - cpu_started
        out["bytes_written"] = pub.stats["bytes"]          # as stored (compressed)
        out["raw_bytes"] = pub.stats["raw_bytes"]          # as handed over by the caller
        out["bytes_per_user"] = pub.stats["bytes"] / max(n_users, 1)
        out["raw_bytes_per_user"] = pub.stats["raw_bytes"] / max(n_users, 1)
        out["publish_mb_per_s"] = pub.stats["raw_bytes"] / 1024**2 / out["publish_seconds"]
        out["store_memory_bytes"] = store.memory_info()["used_memory"]

        rng = np.random.default_rng(0)
        single = []
        for user_id in rng.choice(user_ids, size=reads).tolist():
            t = time.perf_counter()
            store.get_recommendations(user_id)
            single.append(time.perf_counter() - t)
        out["sync_get"] = _percentiles(single)
        pages = []
        after = None
        for _ in range(200):
            t = time.perf_counter()
            _, after = store.list_users(after, 100)
            pages.append(time.perf_counter() - t)
        out["list_users_100"] = _percentiles(pages)
        randoms = []
        for _ in range(200):
            t = time.perf_counter()
            store.random_users(10)
            randoms.append(time.perf_counter() - t)
        out["random_users_10"] = _percentiles(randoms)
    out["async_get"] = asyncio.run(_async_throughput(url, user_ids, concurrency, reads * 5))
    out["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return out


def bench_store(
    store: str | None, backends: list[str], n_users: int, top_n: int, n_books: int, reads: int, concurrency: int,
    compress: bool = True,
) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.table import Table

    results = []
    if store:
        results.append(run_benchmark(store, n_users, top_n, n_books, reads, concurrency, compress))
    else:
        for backend in backends:
            if backend == "redis":
                with temporary_redis() as url:
                    results.append(run_benchmark(url, n_users, top_n, n_books, reads, concurrency, compress))
            else:
                with tempfile.TemporaryDirectory(prefix="bookrec-bench-sqlite-") as tmp:
                    url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
                    results.append(run_benchmark(url, n_users, top_n, n_books, reads, concurrency, compress))
    load = os.getloadavg()[0]
    table = Table(caption=f"load average at the end: {load:.1f} on {os.cpu_count()} cores", title=f"bookrec bench store: {n_users:,} users x top-{top_n}, compress={compress}")
    table.add_column("figure")
    for r in results:
        table.add_column(r["store"].split("://")[0], justify="right")
    rows = [
        ("publish wall (s)", lambda r: f"{r['publish_seconds']:.1f}"),
        ("publish client CPU (s)", lambda r: f"{r['publish_cpu_seconds']:.1f}"),
        ("publish (payload MB/s)", lambda r: f"{r['publish_mb_per_s']:.0f}"),
        ("bytes per user: payload / stored", lambda r: f"{r['raw_bytes_per_user']:,.0f} / {r['bytes_per_user']:,.0f}"),
        ("total MB: payload / stored", lambda r: f"{r['raw_bytes'] / 1024**2:,.0f} / {r['bytes_written'] / 1024**2:,.0f}"),
        ("store memory / file (MB)", lambda r: f"{r['store_memory_bytes'] / 1024**2:,.0f}"),
        ("sync get p50 / p99 (ms)", lambda r: f"{r['sync_get']['p50_ms']:.2f} / {r['sync_get']['p99_ms']:.2f}"),
        ("list_users(100) p50 / p99 (ms)",
         lambda r: f"{r['list_users_100']['p50_ms']:.2f} / {r['list_users_100']['p99_ms']:.2f}"),
        ("random_users(10) p50 / p99 (ms)",
         lambda r: f"{r['random_users_10']['p50_ms']:.2f} / {r['random_users_10']['p99_ms']:.2f}"),
        ("async get (reads/s)", lambda r: f"{r['async_get']['reads_per_s']:,.0f}"),
        ("async get p50 / p99 (ms)", lambda r: f"{r['async_get']['p50_ms']:.2f} / {r['async_get']['p99_ms']:.2f}"),
        ("bench process peak RSS (MB)", lambda r: f"{r['bench_peak_rss_mb']:,.0f}"),
    ]
    for label, fmt in rows:
        table.add_row(label, *(fmt(r) for r in results))
    Console().print(table)
    return results
