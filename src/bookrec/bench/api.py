"""`bookrec bench api`: the API under load, with a load generator in a separate process.

1. Start a throwaway redis-server and publish a full-scale version into it: by default the real
   batch on the `full` synthetic data set (278,858 readers, 271k books; the data is generated
   unless `--data` points at a normalised directory), or with `--source synthetic` a synthetic
   publish of the same scale (278,858 readers x 20 recommendations, 271k books, a serving model)
   that takes a minute instead of the batch's training time.
2. Run `bookrec serve --workers W` against it (uvicorn, uvloop, httptools, access log off).
3. Load it with `wrk` (Debian package) for `--duration` seconds per scenario, in this order, on
   the same server: `GET /` (the framework's floor: no store, no model), `GET /recommend/{id}`
   with a uniformly random known reader per request (a Lua script), and
   `POST /recommend/cold-start` with 10 rated books (random in-model ISBNs per request).
4. Print throughput, p50/p95/p99 latency, errors (socket errors + non-2xx) and the ratio of
   /recommend to / throughput, against the targets.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bookrec.contracts.payloads import recommendation_item
from bookrec.contracts.serving import ServingModel

TARGETS = {"recommend_rps": 2000.0, "recommend_p99_ms": 20.0, "ratio": 0.60, "cold_start_p95_ms": 50.0}

# wrk prints its summary through this Lua `done` hook as one JSON line (latencies in microseconds).
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d, "mean": %f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""

RECOMMEND_LUA = r"""
local ids = {}
for line in io.lines("%(users)s") do ids[#ids + 1] = line end
math.randomseed(%(seed)d + (tonumber(tostring({}):sub(8)) or 0))
request = function()
  return wrk.format("GET", "/recommend/" .. ids[math.random(#ids)] .. "?top_k=10")
end
"""

COLD_START_LUA = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
math.randomseed(%(seed)d + (tonumber(tostring({}):sub(8)) or 0))
local headers = {["Content-Type"] = "application/json"}
request = function()
  return wrk.format("POST", "/recommend/cold-start", headers, bodies[math.random(#bodies)])
end
"""


@dataclass
class LoadResult:
    name: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors + non-2xx/3xx responses + timeouts
    non_2xx: int
    load_before: float  # 1-minute load average when the run started (other work on the machine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_wrk(url: str, name: str, duration: int, connections: int, threads: int, script: Path) -> LoadResult:
    load_before = round(os.getloadavg()[0], 2)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    seconds = s["duration_us"] / 1e6
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return LoadResult(
        name=name, requests=s["requests"], seconds=round(seconds, 2), rps=round(s["requests"] / seconds, 1),
        p50_ms=s["p50"] / 1000, p95_ms=s["p95"] / 1000, p99_ms=s["p99"] / 1000, max_ms=s["max"] / 1000,
        errors=errors, non_2xx=s["status"], load_before=load_before,
    )


# --- publishing ----------------------------------------------------------------------------------


def publish_with_batch(store_url: str, data_dir: Path | None, workdir: Path, preset: str) -> dict[str, Any]:
    """The real thing: `bookrec data synth --preset full` (unless given) then the batch."""
    from bookrec.batch.pipeline import run_batch
    from bookrec.config import Settings

    started = time.perf_counter()
    if data_dir is None:
        data_dir = workdir / "data"
        subprocess.run(
            [sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", "full", "--out", str(data_dir)],
            check=True,
        )
    generated = time.perf_counter() - started
    settings = Settings(store_url=store_url, data_dir=data_dir, tuned_config_path=workdir / "no-tuned-params.json")
    report = run_batch(settings, data_dir=data_dir, store_url=store_url, preset=preset, show_progress=True)
    return {"source": f"batch (preset {preset}) on {data_dir}", "version": report.version,
            "data_seconds": round(generated, 1), "batch_seconds": round(time.perf_counter() - started - generated, 1)}


def publish_synthetic(
    store_url: str, n_users: int, n_books: int, top_n: int, n_items: int, n_samples: int, n_factors: int, seed: int = 0
) -> dict[str, Any]:
    """A full-scale version with the batch's payload shapes (made-up values; for load only)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bookrec.store import open_store

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ra", "den", "sto", "ne", "var", "li", "ton", "ber", "sa", "gre", "mo", "ul"]
    vocab = sorted({"".join(rng.choice(syllables, size=int(rng.integers(1, 4)))) for _ in range(40_000)})
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    words = rng.choice(len(vocab), size=n_books * 4, p=zipf)
    lengths = rng.integers(1, 7, size=n_books)
    titles, pos = [], 0
    for n in lengths.tolist():
        titles.append(" ".join(vocab[w] for w in words[pos:pos + n]).title())
        pos += n
    names = [f"{a.title()} {b.title()}" for a, b in zip(rng.choice(vocab, 6000), rng.choice(vocab, 6000))]
    authors = [names[i] for i in rng.integers(0, len(names), size=n_books)]
    isbns = [f"{i:09d}{i % 10}" for i in range(100_000_000, 100_000_000 + n_books)]
    work_keys = [f"{t.lower()}|{a.lower().replace(' ', '')}" for t, a in zip(titles, authors)]
    n_ratings = rng.zipf(1.8, size=n_books).clip(1, 2500)
    in_model = np.zeros(n_books, dtype=bool)
    model_rows = np.argsort(-n_ratings, kind="stable")[:n_items]
    in_model[model_rows] = True

    def item(rank: int, row: int) -> dict[str, Any]:
        mean = float(rng.uniform(6, 9.5))
        half = float(rng.uniform(0.8, 2.2))
        book = {"work_key": work_keys[row], "isbn": isbns[row], "title": titles[row], "author": authors[row],
                "year": int(rng.integers(1950, 2005)),
                "image_url": f"http://images.amazon.com/images/P/{isbns[row]}.01.MZZZZZZZ.jpg"}
        return recommendation_item(rank, book, mean, max(1, mean - half), min(10, mean + half), "personal")

    # 5,000 distinct lists, shared round-robin: realistic sizes without minutes of JSON encoding.
    bodies = [[item(r + 1, int(w)) for r, w in enumerate(rng.choice(model_rows, size=top_n, replace=False))]
              for _ in range(5_000)]
    user_ids = list(range(1, n_users + 1))
    table = pa.table({
        "isbn": isbns, "work_key": work_keys, "title": titles, "author": authors,
        "year": pa.array(rng.integers(1950, 2005, size=n_books), pa.int16()), "publisher": ["Bench Press"] * n_books,
        "image_url": [f"http://images.amazon.com/images/P/{i}.01.MZZZZZZZ.jpg" for i in isbns],
        "n_ratings": pa.array(n_ratings, pa.int32()), "in_model": in_model,
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    k, s, i = n_factors, n_samples, n_items
    serving = ServingModel(
        item_factors=rng.normal(0, 0.4, (s, i, k)).astype(np.float32), item_bias=rng.normal(0, 0.5, (s, i)).astype(np.float32),
        mu=rng.normal(7.6, 0.02, s), alpha=rng.gamma(50, 1 / 20, s), mu_user=rng.normal(0, 0.05, (s, k)),
        lambda_user=np.stack([np.eye(k) * 2.0] * s), tau_user_bias=rng.gamma(20, 0.1, s),
        item_keys=np.asarray([work_keys[r] for r in model_rows], dtype=str),
        item_isbns=np.asarray([isbns[r] for r in model_rows], dtype=str), rating_range=np.array([1.0, 10.0]),
    )
    meta = {"created_at": "synthetic", "environment": "bench", "n_kept": s, "interval_level": 0.9, "top_n": top_n,
            "coverage_by_tier": {"personal": n_users}, "dataset": {"users": n_users, "books": n_books}}
    with open_store(store_url, timeout=120) as store:
        with store.begin_publish() as pub:
            meta["version"] = pub.version
            pub.put_recommendations(
                (u, orjson.dumps({"user_id": u, "basis": "personal", "recommendations": bodies[u % len(bodies)]}))
                for u in user_ids
            )
            pub.put_books(
                (isbns[r], orjson.dumps({"isbn": isbns[r], "work_key": work_keys[r], "title": titles[r],
                                         "author": authors[r], "n_ratings": int(n_ratings[r]), "in_model": bool(in_model[r])}))
                for r in range(n_books)
            )
            pub.put_blob("catalog", sink.getvalue())
            pub.put_blob("serving_model", serving.to_npz())
            pub.put_blob("meta", orjson.dumps(meta))
    return {"source": f"synthetic ({n_users:,} readers x {top_n}, {n_books:,} books, model S={s} I={i} k={k})",
            "version": pub.version, "publish_seconds": round(time.perf_counter() - started, 1)}


# --- the run -------------------------------------------------------------------------------------


def _all_user_ids(store_url: str) -> list[int]:
    from bookrec.store import open_store

    ids: list[int] = []
    with open_store(store_url) as store:
        after = None
        while True:
            page, after = store.list_users(after, 10_000)
            ids += page
            if after is None:
                return ids


def _cold_start_bodies(store_url: str, n: int, per_body: int, seed: int) -> list[bytes]:
    from bookrec.store import open_store

    with open_store(store_url) as store:
        blob = store.get_blob("serving_model")
    if blob is None:
        raise RuntimeError("the published version has no serving model")
    isbns = ServingModel.from_npz(blob).item_isbns.tolist()
    rng = random.Random(seed)
    return [
        orjson.dumps({"ratings": [{"isbn": isbn, "rating": rng.randint(1, 10)} for isbn in rng.sample(isbns, per_body)],
                      "top_k": 10})
        for _ in range(n)
    ]


def wait_until_serving(base: str, proc: subprocess.Popen, cold_body: bytes, attempts: int = 6,
                       request_timeout: float = 30.0, timeout: float = 300.0) -> None:
    """Healthy, and `attempts` cold starts answered, so that every worker has loaded the serving model."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200 and all(
                httpx.post(base + "/recommend/cold-start", content=cold_body, timeout=request_timeout,
                           headers={"content-type": "application/json"}).status_code == 200
                for _ in range(attempts)
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the API server did not become ready")


def bench_api(
    source: str = "batch",
    data_dir: Path | None = None,
    batch_preset: str = "development",
    store_url: str | None = None,
    users: int = 278_858,
    books: int = 271_379,
    top_n: int = 20,
    model_items: int = 6_000,
    model_samples: int = 100,
    model_factors: int = 10,
    workers: int = 1,
    duration: int = 30,
    cold_duration: int = 15,
    connections: int = 16,
    cold_connections: int = 4,
    threads: int = 1,
    seed: int = 0,
    json_out: Path | None = None,
) -> dict[str, Any]:
    from rich.console import Console

    from bookrec.store.bench import temporary_redis

    console = Console()
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (scripts/test.sh installs it)")
    results: dict[str, Any] = {"workers": workers, "connections": connections, "wrk_threads": threads,
                               "duration_seconds": duration, "cpus": os.cpu_count()}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookrec-bench-api-")))
        if store_url is None:
            store_url = stack.enter_context(temporary_redis())
            if source == "batch":
                console.print("[bold]publishing[/bold] with the batch (full synthetic data) ...")
                results["publish"] = publish_with_batch(store_url, data_dir, workdir, batch_preset)
            else:
                console.print("[bold]publishing[/bold] a synthetic full-scale version ...")
                results["publish"] = publish_synthetic(store_url, users, books, top_n, model_items, model_samples,
                                                       model_factors, seed)
        else:
            results["publish"] = {"source": "existing store (not published by the benchmark)"}
        console.print(f"published: {results['publish']}")

        paths, results["users"], first_body = _load_scripts(workdir, store_url, seed)

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        # wrk is one client: the per-client cold-start limit would turn most of its load into 429s.
        env = {**os.environ, "BOOKREC_STORE_URL": store_url, "BOOKREC_API_ACCESS_LOG": "false",
               "BOOKREC_RATE_LIMIT_COLD_START_PER_MINUTE": "0"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(workdir / "server.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bookrec.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        stack.callback(lambda: (proc.terminate(), proc.wait(timeout=20)))
        started = time.perf_counter()
        wait_until_serving(base, proc, first_body)
        results["server_ready_seconds"] = round(time.perf_counter() - started, 1)
        console.print(f"server ready in {results['server_ready_seconds']} s; loading for {duration} s per scenario")

        runs = [
            run_wrk(base, "GET /", duration, connections, threads, paths["root"]),
            run_wrk(base, "GET /recommend/{random}", duration, connections, threads, paths["recommend"]),
            run_wrk(base, "POST /recommend/cold-start (10 books)", cold_duration, cold_connections, threads,
                    paths["cold_start"]),
        ]
    _judge_and_print(console, runs, results, workers, connections)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2))
    return results


def _load_scripts(workdir: Path, store_url: str, seed: int) -> tuple[dict[str, Path], int, bytes]:
    """wrk's Lua scripts (GET /, random readers, cold starts) in ``workdir``; also the number of
    readers and one cold-start body."""
    user_ids = _all_user_ids(store_url)
    users_file = workdir / "users.txt"
    users_file.write_text("\n".join(map(str, user_ids)) + "\n")
    bodies = _cold_start_bodies(store_url, 500, 10, seed)
    bodies_file = workdir / "cold.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    scripts = {
        "root": DONE_LUA,
        "recommend": RECOMMEND_LUA % {"users": users_file, "seed": seed} + DONE_LUA,
        "cold_start": COLD_START_LUA % {"bodies": bodies_file, "seed": seed} + DONE_LUA,
    }
    paths = {}
    for name, text in scripts.items():
        paths[name] = workdir / f"{name}.lua"
        paths[name].write_text(text)
    return paths, len(user_ids), bodies[0]


def _judge_and_print(console, runs: list, results: dict[str, Any], workers: int, connections: int) -> None:
    """Check the runs against TARGETS, add the figures to ``results`` and print them."""
    from rich.table import Table

    root, rec, cold = runs
    ratio = rec.rps / root.rps if root.rps else 0.0
    checks = {
        "recommend_rps": rec.rps >= TARGETS["recommend_rps"],
        "recommend_p99_ms": rec.p99_ms <= TARGETS["recommend_p99_ms"],
        "recommend_zero_errors": rec.errors == 0,
        "ratio": ratio >= TARGETS["ratio"],
        "cold_start_p95_ms": cold.p95_ms <= TARGETS["cold_start_p95_ms"],
        "cold_start_zero_errors": cold.errors == 0,
    }
    results.update(runs=[asdict(r) for r in runs], recommend_to_root_ratio=round(ratio, 3), targets_met=checks)

    table = Table(title=f"bookrec API under wrk ({workers} worker(s), {connections} connections, {os.cpu_count()} CPUs)")
    for col in ("scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "requests", "load"):
        table.add_column(col, justify="right" if col != "scenario" else "left")
    for r in runs:
        table.add_row(r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{r.max_ms:.1f}", str(r.errors), f"{r.requests:,}", f"{r.load_before:.1f}")
    console.print(table)
    console.print("load = the machine's 1-minute load average as the scenario started (2 CPUs: above 2, "
                  "other processes were competing with the server, redis-server and wrk)")
    console.print(
        f"/recommend = {ratio:.0%} of GET / throughput. Targets: /recommend >= {TARGETS['recommend_rps']:,.0f} req/s "
        f"with p99 <= {TARGETS['recommend_p99_ms']} ms and zero errors, >= {TARGETS['ratio']:.0%} of GET /; "
        f"cold-start p95 <= {TARGETS['cold_start_p95_ms']} ms."
    )
    for name, ok in checks.items():
        console.print(f"  {'[green]met[/green]' if ok else '[red]missed[/red]'}  {name}")
