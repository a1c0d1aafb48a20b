"""`bookrec bench slowclients`: hostile connections against the serving API, and what they cost it.

1. A throwaway redis-server with a synthetic version (`--users` readers, the payload shapes of the
   batch; `bookrec.bench.api.publish_synthetic`).
2. Two servers on the same store: `bounded` is `bookrec serve` as shipped (the connection limits
   of `bookrec.api.server`, default settings); `plain` is the same uvicorn configuration with
   uvicorn's own httptools protocol (what `bookrec serve` ran before the limits).
3. Unloaded: wrk `GET /recommend/{random}` for `--duration` seconds (the script and connections of
   `bookrec bench api`), `--rounds` times per server, the servers taking turns: throughput (median)
   and p99. Then, per server, its RSS at rest, followed by:
4. Attacked: a separate process holds `--slow` connections (a third each: silent; a request head
   dripped one byte a second; a POST head with its body dripped one byte a second), reconnecting
   whenever the server closes one, plus `--big` connections each sending a `--big-mb` MB header (and
   starting again when refused). Once they are all open, the same wrk run measures again while the
   server's RSS is sampled every 0.2 s.
5. Printed: throughput and p99 unloaded and attacked, RSS at rest and its peak under attack, and
   what the attackers saw (connections held, how long each was held, how the big headers ended).
   Targets: RSS within 50 MB of rest, p99 within 2x of unloaded, and the bounded server's unloaded
   throughput at least 90% of the plain one's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

TARGETS = {"rss_growth_mb": 50.0, "p99_ratio": 2.0, "throughput_ratio": 0.90}


# --- the attackers (a child process) --------------------------------------------------------------


async def _slow_client(kind: str, port: int, stop_at: float, stats: dict[str, Any]) -> None:
    while time.monotonic() < stop_at:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["open"] += 1
        stats["opened"] += 1

        async def drip() -> None:
            if kind == "head":
                writer.write(b"GET /recommend/1 HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            elif kind == "body":
                writer.write(b"POST /recommend/cold-start HTTP/1.1\r\nHost: bench\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            else:
                return
            while True:
                await asyncio.sleep(1.0)
                writer.write(b"a")
                await writer.drain()

        dripper = asyncio.create_task(drip())
        first = b""
        try:
            first = await asyncio.wait_for(reader.read(64), timeout=max(0.1, stop_at - time.monotonic()))
            while await asyncio.wait_for(reader.read(65536), timeout=max(0.1, stop_at - time.monotonic())):
                pass
            stats["closed_by_server"] += 1
            stats["held_seconds"].append(round(time.monotonic() - opened, 2))
        except asyncio.TimeoutError:
            stats["held_to_the_end"] += 1
        except OSError:
            stats["closed_by_server"] += 1
            stats["held_seconds"].append(round(time.monotonic() - opened, 2))
        finally:
            dripper.cancel()
            stats["open"] -= 1
            writer.close()
        stats["answers"][first.split(b"\r\n", 1)[0].decode("latin-1") or "(closed without an answer)"] += 1


async def _big_header_client(port: int, megabytes: int, stop_at: float, stats: dict[str, Any]) -> None:
    chunk = b"a" * 65536
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        stats["big_attempts"] += 1
        sent = 0

        async def send() -> None:
            nonlocal sent
            writer.write(b"GET /recommend/1 HTTP/1.1\r\nHost: bench\r\nX-Big: ")
            for _ in range(megabytes * 16):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

        sender = asyncio.create_task(send())
        first = b""
        try:
            first = await asyncio.wait_for(reader.read(64), timeout=max(0.1, stop_at - time.monotonic()))
        except (asyncio.TimeoutError, OSError):
            pass
        sender.cancel()
        try:
            await sender
        except (asyncio.CancelledError, OSError):
            pass
        writer.close()
        stats["big_sent_mb_max"] = max(stats["big_sent_mb_max"], round(sent / 2**20, 2))
        stats["big_answers"][first.split(b"\r\n", 1)[0].decode("latin-1") or "(no answer before the end)"] += 1
        await asyncio.sleep(0.5)


async def _attack(port: int, slow: int, big: int, big_mb: int, seconds: float, out: str) -> None:
    stats: dict[str, Any] = {"open": 0, "opened": 0, "connect_errors": 0, "closed_by_server": 0, "held_to_the_end": 0,
                             "held_seconds": [], "answers": Counter(), "big_attempts": 0, "big_sent_mb_max": 0.0,
                             "big_answers": Counter(), "open_samples": []}
    stop_at = time.monotonic() + seconds
    kinds = ("idle", "head", "body")
    tasks = []
    for i in range(slow):
        tasks.append(asyncio.create_task(_slow_client(kinds[i % 3], port, stop_at, stats)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # the listen backlog takes bursts, not 2,000 at once
    tasks += [asyncio.create_task(_big_header_client(port, big_mb, stop_at, stats)) for _ in range(big)]
    while time.monotonic() < stop_at:
        stats["open_samples"].append(stats["open"])
        Path(out).write_text(json.dumps({"open": stats["open"]}))
        await asyncio.sleep(0.25)
    await asyncio.gather(*tasks, return_exceptions=True)
    held = sorted(stats.pop("held_seconds"))
    stats["held_seconds_median"] = held[len(held) // 2] if held else None
    stats["held_seconds_max"] = held[-1] if held else None
    Path(out).write_text(json.dumps(stats))


def _attack_process(port: int, slow: int, big: int, big_mb: int, seconds: float, out: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_attack(port, slow, big, big_mb, seconds, out))


# --- the server -------------------------------------------------------------------------------------


def _start_server(mode: str, store_url: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "BOOKREC_STORE_URL": store_url, "BOOKREC_API_ACCESS_LOG": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if mode == "bounded":
        cmd = [sys.executable, "-m", "bookrec.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-c",
               "from bookrec.config import get_settings; from bookrec.api.server import run; "
               f"run(get_settings(), '127.0.0.1', {port}, 1, 'warning', False, bounded=False)"]
    return subprocess.Popen(cmd, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the API server did not become healthy")


def _rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def _attack_server(mode: str, proc: subprocess.Popen, base: str, workdir: Path, script: Path, duration: int,
                   connections: int, slow: int, big: int, big_mb: int, settle: float) -> dict[str, Any]:
    from bookrec.bench.api import run_wrk

    port = int(base.rsplit(":", 1)[1])
    time.sleep(1.0)
    rest = _rss_mb(proc.pid)
    out = workdir / f"attack-{mode}.json"
    attack_seconds = settle + duration + 2
    attacker = multiprocessing.get_context("spawn").Process(
        target=_attack_process, args=(port, slow, big, big_mb, attack_seconds, str(out)))
    attacker.start()
    peak = rest
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.is_set():
            try:
                peak = max(peak, _rss_mb(proc.pid))
            except Exception:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(settle)
    attacked = run_wrk(base, "GET /recommend/{random} (attacked)", duration, connections, 1, script)
    attacker.join(timeout=attack_seconds + 60)
    sampling.set()
    sampler.join()
    attack = json.loads(out.read_text())
    samples = attack.pop("open_samples")
    during = samples[int(len(samples) * settle / attack_seconds):] or [0]
    return {"rss_rest_mb": round(rest, 1), "rss_peak_mb": round(peak, 1), "rss_growth_mb": round(peak - rest, 1),
            "attacked": attacked.__dict__, "held_while_measuring": [min(during), max(during)], "attackers": attack}


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_slowclients(modes: list[str], users: int = 20_000, duration: int = 15, connections: int = 16,
                      slow: int = 2000, big: int = 10, big_mb: int = 10, settle: float = 4.0, rounds: int = 4,
                      workdir: Path | None = None, as_json: bool = False) -> dict[str, Any]:
    from rich.console import Console

    from bookrec.bench.api import DONE_LUA, RECOMMEND_LUA, _all_user_ids, publish_synthetic
    from bookrec.store.bench import temporary_redis

    console = Console(stderr=as_json)
    results: dict[str, Any] = {"slow": slow, "big": big, "big_mb": big_mb, "duration_seconds": duration,
                               "connections": connections, "cpus": os.cpu_count(), "servers": []}
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bookrec-bench-slow-")))
        workdir.mkdir(parents=True, exist_ok=True)
        store_url = stack.enter_context(temporary_redis())
        console.print(f"[bold]publishing[/bold] a synthetic version ({users:,} readers) ...")
        results["publish"] = publish_synthetic(store_url, users, users, 20, 2000, 20, 10)
        users_file = workdir / "users.txt"
        users_file.write_text("\n".join(map(str, _all_user_ids(store_url))) + "\n")
        script = workdir / "recommend.lua"
        script.write_text(RECOMMEND_LUA % {"users": users_file, "seed": 0} + DONE_LUA)
        from bookrec.bench.api import _free_port, run_wrk

        servers: dict[str, tuple[str, subprocess.Popen]] = {}
        for mode in modes:
            port = _free_port()
            proc = _start_server(mode, store_url, port, workdir / f"server-{mode}.log")
            stack.callback(_stop, proc)
            servers[mode] = (f"http://127.0.0.1:{port}", proc)
        for mode, (base, proc) in servers.items():
            _wait_healthy(base, proc)
            run_wrk(base, "warm-up", 3, connections, 1, script)
        # Both servers stay up and take turns, so that drift on a shared machine hits both alike.
        unloaded: dict[str, list[Any]] = {mode: [] for mode in modes}
        console.print(f"unloaded: {rounds} alternating rounds of {duration} s per server")
        for r in range(rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                unloaded[mode].append(run_wrk(servers[mode][0], "GET /recommend/{random}", duration, connections, 1, script))
        for mode, (base, proc) in servers.items():
            console.print(f"[bold]{mode}[/bold] server: {slow:,} slow connections and {big} x {big_mb} MB headers")
            runs = unloaded[mode]
            best = sorted(runs, key=lambda run: run.p99_ms)[len(runs) // 2]
            entry = {"mode": mode, "unloaded_rps": [run.rps for run in runs],
                     "unloaded_rps_median": sorted(run.rps for run in runs)[len(runs) // 2], "unloaded": best.__dict__}
            entry.update(_attack_server(mode, proc, base, workdir, script, duration, connections, slow, big, big_mb, settle))
            entry["p99_ratio"] = round(entry["attacked"]["p99_ms"] / best.p99_ms, 2) if best.p99_ms else None
            results["servers"].append(entry)

    _judge_targets(results)
    if as_json:
        print(json.dumps(results, indent=2))
        return results

    _print_results(console, results, slow, big, big_mb, connections, duration)
    return results


def _judge_targets(results: dict[str, Any]) -> None:
    """The bounded server against the plain one and the targets."""
    by_mode = {s["mode"]: s for s in results["servers"]}
    if "bounded" in by_mode and "plain" in by_mode:
        results["throughput_ratio"] = round(by_mode["bounded"]["unloaded_rps_median"] / by_mode["plain"]["unloaded_rps_median"], 3)
    if "bounded" in by_mode:
        b = by_mode["bounded"]
        results["targets_met"] = {
            "rss_growth_mb": b["rss_growth_mb"] <= TARGETS["rss_growth_mb"],
            "p99_ratio": b["p99_ratio"] is not None and b["p99_ratio"] <= TARGETS["p99_ratio"],
            **({"throughput_ratio": results["throughput_ratio"] >= TARGETS["throughput_ratio"]}
               if "throughput_ratio" in results else {}),
        }


def _print_results(console, results: dict[str, Any], slow: int, big: int, big_mb: int, connections: int,
                   duration: int) -> None:
    from rich.table import Table

    table = Table(title=f"GET /recommend, unloaded and under {slow:,} slow connections + {big} x {big_mb} MB headers "
                        f"(wrk {connections} connections, {duration} s, {os.cpu_count()} CPUs)")
    for col in ("server", "load", "req/s", "p99 ms", "RSS MB", "errors"):
        table.add_column(col, justify="left" if col in ("server", "load") else "right")
    for s in results["servers"]:
        u, a = s["unloaded"], s["attacked"]
        table.add_row(s["mode"], f"unloaded (median of {len(s['unloaded_rps'])})", f"{s['unloaded_rps_median']:,.0f}",
                      f"{u['p99_ms']:.2f}", f"{s['rss_rest_mb']:.0f} (rest)", str(u["errors"]))
        table.add_row("", f"attacked ({s['held_while_measuring'][0]:,}-{s['held_while_measuring'][1]:,} held)",
                      f"{a['rps']:,.0f}", f"{a['p99_ms']:.2f} ({s['p99_ratio']}x)",
                      f"{s['rss_peak_mb']:.0f} (peak, {s['rss_growth_mb']:+.0f})", str(a["errors"]))
    console.print(table)
    for s in results["servers"]:
        at = s["attackers"]
        console.print(
            f"{s['mode']}: slow connections opened {at['opened']:,}, closed by the server {at['closed_by_server']:,} "
            f"(held median {at['held_seconds_median']} s, max {at['held_seconds_max']} s), still open at the end "
            f"{at['held_to_the_end']:,}; answers {dict(at['answers'])}; big headers: {at['big_attempts']} attempts, "
            f"at most {at['big_sent_mb_max']} MB written by the client (kernel buffers included) before the answer, answers {dict(at['big_answers'])}"
        )
    if "throughput_ratio" in results:
        console.print(f"bounded / plain unloaded throughput: {results['throughput_ratio']:.1%} "
                      f"(target >= {TARGETS['throughput_ratio']:.0%})")
    for name, ok in results.get("targets_met", {}).items():
        console.print(f"  {'[green]met[/green]' if ok else '[red]missed[/red]'}  {name}")
