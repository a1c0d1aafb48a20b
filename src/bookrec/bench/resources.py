"""`bookrec bench resources`: memory the deployment needs, measured on this machine (a benchmark).

What it measures (every figure comes from the kernel or the store, nothing is estimated):

1. **Batch peak memory per preset** on the `small` synthetic data: `bookrec batch --preset X` runs in
   a subprocess; its peak resident set is the kernel's `ru_maxrss` for that child (`os.wait4`),
   cross-checked by polling the process tree with psutil.
2. **Batch on the `full` data** (`--full-preset development`, skipped with `--full-preset none`):
   the same measurement on the full synthetic data set (278,858 readers), publishing into a
   throwaway `redis-server`; then the store's `INFO memory` `used_memory` for that real version.
3. **API resident memory** (`bookrec serve --workers W` against that store, or against a
   full-scale synthetic publish when the full batch is skipped): the whole process tree's RSS
   (uvicorn's supervisor plus workers) at rest, once every worker has answered, then its peak
   and final value while `wrk` (or, without wrk, a Python client in another process) loads
   `GET /recommend/{random reader}` and `POST /recommend/cold-start`.
4. **Store memory for the full preset at the production top-N**: `bookrec bench store`'s
   full-scale payloads (278,858 readers x `--store-top-n` items, 271,379 books) published into a
   fresh `redis-server`, then `used_memory`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

FULL_USERS = 278_858
FULL_BOOKS = 271_379
MB = 1024 * 1024


@dataclass
class Measured:
    """One figure of the table."""

    what: str
    peak_rss_mb: float | None = None
    rss_mb: float | None = None
    store_mb: float | None = None
    seconds: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s; returns once the process is gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tree_rss(proc: psutil.Process, proportional: bool = False) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone).

    Plain RSS counts shared pages (libraries, copy-on-write memory of forked workers) once per
    process, so the sum over uvicorn's processes overstates what they use together; with
    ``proportional`` it sums PSS instead (each shared page split between its users), which is
    what they add to the machine. Reading PSS walks /proc/PID/smaps, too slow to poll often.
    """
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss if proportional else p.memory_info().rss
        except psutil.Error:
            pass
    return total


class TreePeak:
    """Polls a process tree's total RSS in a thread and remembers the largest value."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.proc))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def run_measured(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[int, float, int, int]:
    """Run `cmd`; return (exit code, seconds, kernel peak RSS bytes, polled peak RSS bytes of the tree)."""
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreePeak(proc.pid) as poller:
            # wait4 gives this child's own rusage (ru_maxrss in KB on Linux), not a running maximum
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss * 1024, poller.peak


def _check(code: int, what: str, log_path: Path) -> None:
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed with exit code {code}:\n{tail}")


def synth(preset: str, out: Path, workdir: Path) -> None:
    log = workdir / f"synth-{preset}.log"
    code, *_ = run_measured(
        [sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", preset, "--out", str(out)], _env(), log
    )
    _check(code, f"bookrec data synth --preset {preset}", log)


def measure_batch(preset: str, data_dir: Path, store_url: str, workdir: Path, data_name: str) -> Measured:
    log = workdir / f"batch-{preset}-{data_name}.log"
    env = _env(
        BOOKREC_TUNED_CONFIG_PATH=str(workdir / "no-tuned-params.json"),  # the preset as shipped, not a tuned file
    )
    cmd = [sys.executable, "-m", "bookrec.cli", "batch", "--preset", preset, "--data", str(data_dir),
           "--store", store_url, "--quiet"]
    code, seconds, kernel_peak, polled_peak = run_measured(cmd, env, log)
    _check(code, f"bookrec batch --preset {preset}", log)
    # The kernel's figure is the one reported: the polled sum also counts, twice, the pages a
    # forked child (the batch runs `git rev-parse` once) shares with the batch for a moment.
    return Measured(
        what=f"batch --preset {preset} on {data_name}", peak_rss_mb=kernel_peak / MB, seconds=seconds,
        extra={"polled_tree_peak_rss": polled_peak},
    )


def redis_used_memory(store_url: str) -> tuple[int, int]:
    """(used_memory, redis-server process RSS) in bytes, from INFO memory."""
    import redis

    client = redis.Redis.from_url(store_url)
    try:
        info = client.info("memory")
    finally:
        client.close()
    return int(info["used_memory"]), int(info.get("used_memory_rss", 0))


def measure_store_synthetic(top_n: int) -> Measured:
    """`bookrec bench store`'s full-scale payloads published into a fresh redis-server."""
    from bookrec.store import open_store
    from bookrec.store.bench import payloads, temporary_redis

    with temporary_redis() as url:
        base_used, _ = redis_used_memory(url)
        started = time.perf_counter()
        with open_store(url, timeout=120) as store:
            with store.begin_publish() as pub:
                pub.put_recommendations(payloads(list(range(1, FULL_USERS + 1)), top_n))
                pub.put_books((f"{i:010d}", b'{"isbn":"%010d","title":"A book"}' % i) for i in range(FULL_BOOKS))
                pub.put_blob("meta", b"{}")
                pub.put_blob("serving_model", os.urandom(8 * MB))
        seconds = time.perf_counter() - started
        used, used_rss = redis_used_memory(url)
    return Measured(
        what=f"store (Redis), full preset: {FULL_USERS:,} readers x {top_n} (bench store payloads)",
        store_mb=(used - base_used) / MB, seconds=seconds,
        note=f"redis-server RSS {used_rss / MB:,.0f} MB; {pub.stats['bytes'] / MB:,.0f} MB of values stored",
        extra={"used_memory": used, "empty_used_memory": base_used, "stats": pub.stats},
    )


# --- the API -------------------------------------------------------------------------------------


PY_LOAD = r"""
import json, random, sys, time, httpx
base, users_file, bodies_file, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ids = open(users_file).read().split()
bodies = open(bodies_file, "rb").read().splitlines()
rng = random.Random(0)
n = 0
with httpx.Client(base_url=base, timeout=30) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.get(f"/recommend/{rng.choice(ids)}?top_k=10")
        n += 1
    end = time.monotonic() + seconds / 2
    while time.monotonic() < end:
        client.post("/recommend/cold-start", content=rng.choice(bodies), headers={"content-type": "application/json"})
        n += 1
print(json.dumps({"requests": n}))
"""


def measure_api(store_url: str, workers: int, duration: int, connections: int, workdir: Path) -> list[Measured]:
    """RSS of `bookrec serve` (whole tree) at rest, and its peak and final value under load."""
    from bookrec.bench import api as api_bench
    from bookrec.bench.api import _free_port, wait_until_serving

    user_ids = api_bench._all_user_ids(store_url)
    users_file = workdir / "users.txt"
    users_file.write_text("\n".join(map(str, user_ids)) + "\n")
    bodies = api_bench._cold_start_bodies(store_url, 200, 10, 0)
    bodies_file = workdir / "cold.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(workdir / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bookrec.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
        # One client sends every cold start of the load: the per-client limit would turn most into 429s.
        env=_env(BOOKREC_STORE_URL=store_url, BOOKREC_RATE_LIMIT_COLD_START_PER_MINUTE="0"),
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        started = time.perf_counter()
        wait_until_serving(base, proc, bodies[0], attempts=4 * workers, request_timeout=60.0)
        ready_seconds = time.perf_counter() - started
        time.sleep(2.0)  # let allocations settle
        tree = psutil.Process(proc.pid)
        at_rest, at_rest_pss = tree_rss(tree), tree_rss(tree, proportional=True)
        children = tree.children(recursive=True)
        n_procs = 1 + len(children)
        largest = max((c.memory_info().rss for c in children), default=tree.memory_info().rss)

        load_note = ""
        with TreePeak(proc.pid) as poller:
            if shutil.which("wrk"):
                scripts = {
                    "recommend": api_bench.RECOMMEND_LUA % {"users": users_file, "seed": 0} + api_bench.DONE_LUA,
                    "cold_start": api_bench.COLD_START_LUA % {"bodies": bodies_file, "seed": 0} + api_bench.DONE_LUA,
                }
                runs = []
                for name, text in scripts.items():
                    script = workdir / f"{name}.lua"
                    script.write_text(text)
                    conns = connections if name == "recommend" else max(1, connections // 8)
                    seconds = duration if name == "recommend" else max(1, duration // 2)
                    runs.append(api_bench.run_wrk(base, name, seconds, conns, 1, script))
                load_note = "; ".join(f"wrk {r.name}: {r.requests:,} requests, {r.rps:,.0f} req/s, {r.errors} errors"
                                      for r in runs)
            else:
                out = subprocess.run(
                    [sys.executable, "-c", PY_LOAD, base, str(users_file), str(bodies_file), str(duration)],
                    capture_output=True, text=True, check=True,
                ).stdout
                load_note = f"python client: {json.loads(out)['requests']:,} requests (wrk not installed)"
        after, after_pss = tree_rss(tree), tree_rss(tree, proportional=True)
    finally:
        stop_process(proc)
        log.close()
    label = f"API, {workers} worker(s) ({n_procs} processes)"
    return [
        Measured(what=f"{label} at rest", rss_mb=at_rest / MB, seconds=ready_seconds,
                 note=f"PSS {at_rest_pss / MB:,.0f} MB; largest process RSS {largest / MB:,.0f} MB; "
                      f"{len(user_ids):,} readers published; seconds = until every worker answered",
                 extra={"pss": at_rest_pss, "largest_rss": largest}),
        Measured(what=f"{label} under load", peak_rss_mb=max(poller.peak, after) / MB, rss_mb=after / MB,
                 note=f"PSS after {after_pss / MB:,.0f} MB; {load_note}", extra={"pss": after_pss}),
    ]


# --- the command ---------------------------------------------------------------------------------


def bench_resources(
    presets: list[str],
    full_preset: str | None,
    workers: int,
    duration: int,
    connections: int,
    store_top_n: int,
    workdir: Path | None,
    as_json: bool,
) -> list[Measured]:
    from rich.console import Console

    from bookrec.bench.api import publish_synthetic
    from bookrec.store.bench import temporary_redis

    console = Console(stderr=as_json)
    results: list[Measured] = []
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookrec-bench-resources-")))
        workdir.mkdir(parents=True, exist_ok=True)

        def attempt(what: str, step) -> bool:
            """Run one measurement; a failure is reported in the table and the others still run."""
            try:
                step()
                return True
            except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                results.append(Measured(what=what, note=f"FAILED: {first} (keep the logs with --workdir)"))
                console.print(f"[red]{what} failed:[/red] {exc}")
                return False

        _batches_on_small([p for p in presets if p and p != "none"], workdir, console, attempt, results)

        redis_url = stack.enter_context(temporary_redis())
        published = False
        if full_preset:
            full = workdir / "full"
            if not (full / "manifest.json").is_file():
                console.print("generating the [bold]full[/bold] synthetic data ...")
                synth("full", full, workdir)
            console.print(f"batch [bold]{full_preset}[/bold] on full, publishing to redis ...")
            empty, _ = redis_used_memory(redis_url)
            published = attempt(f"batch --preset {full_preset} on full",
                                lambda: results.append(measure_batch(full_preset, full, redis_url, workdir, "full")))
            if published:
                used, used_rss = redis_used_memory(redis_url)
                results.append(Measured(
                    what=f"store (Redis) after batch --preset {full_preset} on full",
                    store_mb=(used - empty) / MB, note=f"redis-server RSS {used_rss / MB:,.0f} MB",
                ))
                console.print(f"  {results[-2]}\n  {results[-1]}")
        if not published:
            console.print("publishing a full-scale synthetic version for the API ...")
            publish_synthetic(redis_url, FULL_USERS, FULL_BOOKS, 20, 6_000, 100, 10)

        console.print(f"API with {workers} worker(s) ...")
        if attempt(f"API, {workers} worker(s)",
                   lambda: results.extend(measure_api(redis_url, workers, duration, connections, workdir))):
            console.print(f"  {results[-2]}\n  {results[-1]}")

        if store_top_n:
            console.print(f"store: full-scale publish with top-N {store_top_n} ...")
            attempt("store, full-scale publish", lambda: results.append(measure_store_synthetic(store_top_n)))

    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    _print_results(console, results)
    return results


def _batches_on_small(presets: list[str], workdir: Path, console, attempt, results: list[Measured]) -> None:
    """One batch per preset on the small synthetic data, each into its own SQLite store."""
    if presets:
        small = workdir / "small"
        if not (small / "manifest.json").is_file():
            console.print("generating the [bold]small[/bold] synthetic data ...")
            synth("small", small, workdir)
        for preset in presets:
            console.print(f"batch [bold]{preset}[/bold] on small ...")
            store = f"sqlite:///{(workdir / f'batch-{preset}.sqlite3').resolve()}"
            if attempt(f"batch --preset {preset} on small",
                       lambda: results.append(measure_batch(preset, small, store, workdir, "small"))):
                console.print(f"  {results[-1]}")


def _print_results(console, results: list[Measured]) -> None:
    from rich.table import Table

    table = Table(title=f"bookrec resources on this machine ({os.cpu_count()} CPUs, "
                        f"{psutil.virtual_memory().total / 1024**3:.1f} GB RAM, load {os.getloadavg()[0]:.1f})")
    for column in ("what", "peak RSS MB", "RSS MB", "store MB", "seconds", "note"):
        table.add_column(column, justify="left" if column in ("what", "note") else "right")

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:,.0f}"

    for r in results:
        table.add_row(r.what, fmt(r.peak_rss_mb), fmt(r.rss_mb), fmt(r.store_mb),
                      "" if r.seconds is None else f"{r.seconds:,.1f}", r.note)
    console.print(table)
    console.print("peak RSS = the kernel's ru_maxrss of the batch process (wait4), or the polled peak of the API's "
                  "process tree under load (RSS summed over processes counts shared pages in each; PSS does not); "
                  "store MB = growth of Redis INFO used_memory.")
