"""`bookrec bench faults`: store faults injected into a serving API under load, and what users saw.

For each fault, the real API (`bookrec serve`, one worker) serves a bounded load for `duration`
seconds: `connections` concurrent keep-alive connections (asyncio + httpx, 5 s timeout), each
sending the next request as soon as the previous one is answered; 80% `GET /recommend/{id}` and 20%
`GET /books/{isbn}`, every id and ISBN known to every version published, so any 404 is a wrong one.
A third of the way in, the fault is injected; it lasts a sixth of the run (at most 5 s), then ends:

    redis-kill      SIGKILL redis-server, start it again (its append-only file keeps the data)
    redis-stop      SIGSTOP redis-server (hung: connections accepted, nothing answered), SIGCONT
    redis-restart   SIGTERM redis-server and start it again at once
    sqlite-delete   unlink the store file; a good copy is put back (the end of the fault)
    sqlite-replace  another good store file, with another version, is moved over the store file
                    (`mv`, leaving the old file's -wal and -shm in place)
    sqlite-corrupt  64 random 8 KB blocks overwritten with random bytes; a good copy is put back

A fault ends when the server is back, or when a good store file is in place again. Printed per
fault: responses by status, 500s, wrong 404s, connections closed without a response, timeouts,
whether /health reported the fault, and the seconds from the fault's end until every answer is a
200 from the version that is current by then ("recovery").

The load is generated in Python rather than with wrk: telling a wrong 404 from a right one and
checking which version answered needs each response's body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bookrec.bench.resources import stop_process

FAULTS = ("redis-kill", "redis-stop", "redis-restart", "sqlite-delete", "sqlite-replace", "sqlite-corrupt")
RECOVERY_TARGET_SECONDS = 5.0


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    ended: float
    kind: str         # "recommend" | "book"
    status: int       # 0: no response (see error)
    error: str = ""   # "dropped" | "timeout" | "connect" | ""
    version: str | None = None


class Load:
    """`connections` closed-loop clients against `base`; every answer is kept as an `Outcome`."""

    def __init__(self, base: str, users: list[int], isbns: list[str], connections: int = 64,
                 timeout: float = 5.0, book_share: float = 0.2, seed: int = 0) -> None:
        self.base = base
        self.users = users
        self.isbns = isbns
        self.connections = connections
        self.timeout = timeout
        self.book_share = book_share
        self.rng = random.Random(seed)
        self.outcomes: list[Outcome] = []
        self.health: list[tuple[float, int]] = []
        self._stop = asyncio.Event()

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            book = self.rng.random() < self.book_share
            path = (f"/books/{self.rng.choice(self.isbns)}" if book
                    else f"/recommend/{self.rng.choice(self.users)}?top_k=5")
            started = time.monotonic()
            status, error, version = 0, "", None
            try:
                r = await http.get(path)
                status = r.status_code
                if status == 200 and not book:
                    version = r.json().get("model_version")
            except httpx.TimeoutException:
                error = "timeout"
            except httpx.ConnectError:
                error = "connect"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                error = "dropped"  # the server closed the connection without a response
            self.outcomes.append(Outcome(started, time.monotonic(), "book" if book else "recommend", status, error, version))

    async def _health(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            try:
                status = (await http.get("/health")).status_code
            except httpx.HTTPError:
                status = 0
            self.health.append((time.monotonic(), status))
            await asyncio.sleep(0.25)

    async def run(self, duration: float, during: Callable[[], Awaitable[Any]]) -> Any:
        """Load for `duration` seconds while `during()` runs; returns what it returned."""
        # One client per connection: a single pool of 64 costs httpx more CPU per request than the
        # server spends answering it (measured: 140 req/s at full client CPU, against 550 with 8).
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with contextlib.AsyncExitStack() as clients:
            https = [await clients.enter_async_context(httpx.AsyncClient(base_url=self.base, timeout=self.timeout,
                                                                         limits=limits))
                     for _ in range(self.connections)]
            probe = await clients.enter_async_context(httpx.AsyncClient(base_url=self.base, timeout=self.timeout))
            tasks = [asyncio.create_task(self._client(http)) for http in https]
            tasks.append(asyncio.create_task(self._health(probe)))
            started = time.monotonic()
            try:
                result = await during()
                await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            finally:
                self._stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        return result


@dataclass
class FaultResult:
    fault: str
    requests: int
    by_status: dict[str, int]
    errors_500: int
    wrong_404: int
    dropped: int
    timeouts: int
    connect_errors: int
    fault_seconds: float
    health_reported_fault: bool | None   # None: the fault ended before /health was asked
    recovery_seconds: float | None       # None: not serving the current version by the end of the run
    expected_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.errors_500 == 0 and self.wrong_404 == 0 and self.dropped == 0 and self.recovery_seconds is not None
                and self.recovery_seconds <= RECOVERY_TARGET_SECONDS)


def summarise(fault: str, load: Load, fault_start: float, fault_end: float, expected_version: str | None) -> FaultResult:
    outcomes = load.outcomes
    by_status = Counter(str(o.status) if o.status else o.error for o in outcomes)

    def good(o: Outcome) -> bool:
        return o.status == 200 and (o.kind == "book" or expected_version is None or o.version == expected_version)

    after = sorted((o for o in outcomes if o.started >= fault_end), key=lambda o: o.started)
    bad_after = [o for o in after if not good(o)]
    recovery: float | None = 0.0
    if bad_after:
        last_bad = max(o.ended for o in bad_after)
        recovery = round(last_bad - fault_end, 2) if any(o.started > last_bad for o in after) else None
    during = [s for t, s in load.health if fault_start <= t <= fault_end]
    return FaultResult(
        fault=fault, requests=len(outcomes), by_status=dict(sorted(by_status.items())),
        errors_500=sum(o.status == 500 for o in outcomes), wrong_404=sum(o.status == 404 for o in outcomes),
        dropped=by_status.get("dropped", 0), timeouts=by_status.get("timeout", 0),
        connect_errors=by_status.get("connect", 0), fault_seconds=round(fault_end - fault_start, 2),
        health_reported_fault=(any(s == 503 for s in during) if during else None),
        recovery_seconds=recovery, expected_version=expected_version,
    )


# --- the faults ----------------------------------------------------------------------------------


def corrupt_blocks(path: Path, blocks: int = 64, block_size: int = 8192, seed: int = 0) -> None:
    """Overwrite `blocks` random, block-aligned `block_size` byte blocks of `path` with random bytes."""
    rng = random.Random(seed)
    size = path.stat().st_size
    n = max(1, size // block_size)
    with open(path, "r+b") as f:
        for index in rng.sample(range(n), min(blocks, n)):
            f.seek(index * block_size)
            f.write(rng.randbytes(block_size))
        f.flush()
        os.fsync(f.fileno())


def place_store_file(source: Path, path: Path, keep_sidecars: bool = False) -> None:
    """Put a copy of the store file `source` at `path`, moved in whole so no reader ever sees a
    half-copied file. Unless `keep_sidecars` (the careless way), the predecessor's write-ahead log
    and its index go first: SQLite would replay a log that still holds frames onto the new file."""
    tmp = path.with_name(path.name + ".incoming")
    shutil.copyfile(source, tmp)
    if not keep_sidecars:
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)


def snapshot_store_file(path: Path, to: Path) -> None:
    """A consistent, fully checkpointed copy of a live store file (SQLite's online backup)."""
    to.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(str(to))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


Injector = Callable[[float], Awaitable[tuple[float, float, str | None]]]


def sqlite_injector(fault: str, path: Path, good: Path, other: Path, good_version: str, other_version: str) -> Injector:
    async def inject(fault_seconds: float) -> tuple[float, float, str | None]:
        start = time.monotonic()
        if fault == "sqlite-replace":
            await asyncio.to_thread(place_store_file, other, path, True)
            return start, time.monotonic(), other_version
        if fault == "sqlite-delete":
            path.unlink()
        elif fault == "sqlite-corrupt":
            await asyncio.to_thread(corrupt_blocks, path)
        else:
            raise ValueError(fault)
        await asyncio.sleep(fault_seconds)
        await asyncio.to_thread(place_store_file, good, path)
        return start, time.monotonic(), good_version

    return inject


class RedisProcess:
    """A redis-server of the benchmark with an append-only file, so a killed one comes back with its data."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> "RedisProcess":
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):  # "-LOADING" while the AOF is read
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            stop_process(self.process)
            self.process = None


def redis_injector(fault: str, server: Any, expected_version: str | None) -> Injector:
    """`server`: anything with `process` (a Popen), `start()` and `stop()` (this module's
    RedisProcess, or the tests' RedisServer)."""

    async def inject(fault_seconds: float) -> tuple[float, float, str | None]:
        start = time.monotonic()
        if fault == "redis-stop":
            server.process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(fault_seconds)
            server.process.send_signal(signal.SIGCONT)
        elif fault == "redis-kill":
            server.process.kill()
            await asyncio.to_thread(server.process.wait)
            server.process = None
            await asyncio.sleep(fault_seconds)
            await asyncio.to_thread(server.start)
        elif fault == "redis-restart":
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
        else:
            raise ValueError(fault)
        return start, time.monotonic(), expected_version

    return inject


async def run_fault(fault: str, load: Load, inject: Injector, duration: float) -> FaultResult:
    """The load for `duration` s, the fault injected at a third of it and lasting a sixth (<= 5 s)."""
    fault_seconds = min(5.0, max(1.0, duration / 6))

    async def during() -> tuple[float, float, str | None]:
        await asyncio.sleep(duration / 3)
        return await inject(fault_seconds)

    start, end, expected = await load.run(duration, during)
    return summarise(fault, load, start, end, expected)


# --- the benchmark -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiProcess:
    def __init__(self, store_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "BOOKREC_STORE_URL": store_url, "BOOKREC_API_ACCESS_LOG": "false"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bookrec.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--log-level", "warning"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_serving(self, version: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited with {self.process.returncode}; log: {self.log_path}")
            try:
                r = httpx.get(self.base + "/health", timeout=2)
                if r.status_code == 200 and r.json().get("model_version") == version:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not serve version {version} within {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def _publish(url: str, users: int, books: int, seed: int) -> str:
    from bookrec.bench.api import publish_synthetic

    return publish_synthetic(url, users, books, top_n=20, n_items=min(2000, books), n_samples=20, n_factors=10,
                             seed=seed)["version"]


def _known(url: str, books: int) -> tuple[list[int], list[str]]:
    from bookrec.store import open_store

    with open_store(url) as store:
        users, after = [], None
        while True:
            page, after = store.list_users(after, 10_000)
            users += page
            if after is None:
                break
    # publish_synthetic's ISBNs (the same in every seed)
    isbns = [f"{i:09d}{i % 10}" for i in range(100_000_000, 100_000_000 + books)]
    return users, isbns


def _log_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


def bench_faults(faults: list[str], duration: float = 30.0, connections: int = 64, users: int = 20_000,
                 books: int = 20_000, workdir: Path | None = None, as_json: bool = False) -> list[FaultResult]:
    from rich.console import Console
    from rich.table import Table

    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}")
    console = Console(stderr=as_json)
    results: list[FaultResult] = []
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookrec-bench-faults-")))
        workdir.mkdir(parents=True, exist_ok=True)
        redis_faults = [f for f in faults if f.startswith("redis")]
        sqlite_faults = [f for f in faults if f.startswith("sqlite")]
        if redis_faults:
            (workdir / "redis").mkdir(exist_ok=True)
            server = RedisProcess(workdir / "redis").start()
            stack.callback(server.stop)
            console.print(f"publishing {users:,} readers into redis-server :{server.port} ...")
            version = _publish(server.url, users, books, seed=0)
            known = _known(server.url, books)
            api = ApiProcess(server.url, workdir / "api-redis.log")
            stack.callback(api.stop)
            api.wait_serving(version)
            for fault in redis_faults:
                console.print(f"[bold]{fault}[/bold]: {duration:g} s of load, {connections} connections ...")
                before = _log_lines(api.log_path)
                load = Load(api.base, *known, connections=connections)
                result = asyncio.run(run_fault(fault, load, redis_injector(fault, server, version), duration))
                result.notes.append(f"{_log_lines(api.log_path) - before} lines in the API log")
                results.append(result)
        if sqlite_faults:
            path = workdir / "store.sqlite3"
            good, other = workdir / "good.sqlite3", workdir / "other.sqlite3"
            console.print(f"publishing {users:,} readers into two SQLite files ...")
            good_version = _publish(f"sqlite:///{path}", users, books, seed=0)
            snapshot_store_file(path, good)
            other_version = _publish(f"sqlite:///{workdir / 'other-live.sqlite3'}", users, books, seed=1)
            snapshot_store_file(workdir / "other-live.sqlite3", other)
            known = _known(f"sqlite:///{path}", books)
            api = ApiProcess(f"sqlite:///{path}", workdir / "api-sqlite.log")
            stack.callback(api.stop)
            for fault in sqlite_faults:
                place_store_file(good, path)
                api.wait_serving(good_version)
                console.print(f"[bold]{fault}[/bold]: {duration:g} s of load, {connections} connections ...")
                before = _log_lines(api.log_path)
                load = Load(api.base, *known, connections=connections)
                inject = sqlite_injector(fault, path, good, other, good_version, other_version)
                result = asyncio.run(run_fault(fault, load, inject, duration))
                result.notes.append(f"{_log_lines(api.log_path) - before} lines in the API log")
                results.append(result)
    if as_json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2))
        return results
    table = Table(title=f"store faults under load ({connections} connections, {duration:g} s per fault, 5 s timeout)")
    for col in ("fault", "requests", "by status", "500", "wrong 404", "closed w/o response", "timeouts",
                "fault s", "/health saw it", "recovery s", "log"):
        table.add_column(col, justify="left" if col in ("fault", "by status", "log") else "right")
    for r in results:
        table.add_row(
            r.fault, f"{r.requests:,}", " ".join(f"{k}:{v}" for k, v in r.by_status.items()), str(r.errors_500),
            str(r.wrong_404), str(r.dropped), str(r.timeouts), f"{r.fault_seconds:.1f}",
            {True: "yes", False: "no", None: "-"}[r.health_reported_fault],
            "never" if r.recovery_seconds is None else f"{r.recovery_seconds:.2f}", "; ".join(r.notes),
        )
    console.print(table)
    console.print(f"Targets: 0 x 500, 0 wrong 404s, 0 connections closed without a response, the current version "
                  f"served again within {RECOVERY_TARGET_SECONDS:g} s of the fault's end.")
    for r in results:
        console.print(f"  {'[green]met[/green]' if r.ok else '[red]missed[/red]'}  {r.fault}")
    return results
