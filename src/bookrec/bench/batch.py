"""``bookrec bench batch``: the whole batch on the full-size data, published to a local redis-server.

Prints time (wall and CPU) per stage and per precompute tier, peak memory of the batch process,
bytes stored per reader and in total, and coverage by tier, next to the targets:
precompute for all readers <= 60 s, publish to Redis <= 30 s, whole development batch <= 3 min,
peak memory <= 2 GB. A benchmark, not a test: it asserts nothing.

The data is generated in a child process (so its memory does not count as the batch's); the
redis-server is started here on a free loopback port and stopped at the end.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext, redirect_stdout
from pathlib import Path

TARGETS = {"precompute": 60.0, "publish": 30.0, "total": 180.0, "peak_rss_mb": 2048.0}


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def bench_batch(data_dir: Path | None, synth_preset: str, seed: int, batch_preset: str, store_url: str | None,
                workdir: Path | None, as_json: bool) -> dict:
    from rich.console import Console

    console = Console(stderr=as_json)
    tmp = Path(tempfile.mkdtemp(prefix="bookrec-bench-batch-")) if workdir is None else Path(workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    stack = ExitStack()
    try:
        if data_dir is None:
            data_dir = tmp / f"data-{synth_preset}-{seed}"
            from bookrec.data.io import is_dataset_dir

            if not is_dataset_dir(data_dir):
                console.print(f"generating the {synth_preset} synthetic data set in {data_dir} (child process) ...")
                subprocess.run(
                    [sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", synth_preset,
                     "--seed", str(seed), "--out", str(data_dir)],
                    check=True, stdout=subprocess.DEVNULL,
                )
        if store_url is None:
            from bookrec.store.bench import temporary_redis

            store_url = stack.enter_context(temporary_redis())

        from bookrec.batch.pipeline import run_batch
        from bookrec.config import Settings
        from bookrec.store import open_store

        settings = Settings(tuned_config_path=tmp / "no-tuned-params.json")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu0, t0 = _cpu(), time.perf_counter()
        # With --json, stdout carries the figures alone: the batch's own report goes to stderr.
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            report = run_batch(settings, data_dir=data_dir, store_url=store_url, preset=batch_preset, show_progress=True)
        total = time.perf_counter() - t0
        cpu_total = _cpu() - cpu0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open_store(store_url) as store:
            versions = {v["version"]: v for v in store.versions()}
            stored = versions.get(report.version, {})
            memory = store.memory_info()
        figures = _figures(report, data_dir, memory, stored, rss_before, peak, total, cpu_total)
    finally:
        stack.close()
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    if as_json:
        print(json.dumps(figures, indent=2, default=str))
        return figures
    console.print(_table(figures))
    return figures


def _figures(report, data_dir: Path, memory: dict | None, stored: dict, rss_before: float, peak: float,
             total: float, cpu_total: float) -> dict:
    users = max(report.users_published, 1)
    return {
        "data": str(data_dir),
        "batch_preset": report.preset,
        "parameters": report.parameters,
        "readers": report.n_users,
        "readers_published": report.users_published,
        "coverage_by_tier": report.coverage_by_tier,
        "stage_seconds": report.stage_seconds,
        "precompute_seconds_by_tier": report.tier_seconds,
        "stage_cpu_seconds": report.stage_cpu_seconds,
        "precompute_cpu_seconds_by_tier": report.tier_cpu_seconds,
        "total_seconds": total,
        "cpu_seconds": cpu_total,
        "peak_rss_mb": peak,
        "rss_before_batch_mb": rss_before,
        "payload_bytes_total": report.bytes_recommendations,
        "payload_bytes_per_reader": report.bytes_recommendations / users,
        "stored_bytes_version": stored.get("bytes"),
        "stored_bytes_per_reader": (stored.get("bytes") or 0) / users,
        "store_memory": memory,
        "test_rmse": report.meta.get("test_metrics", {}).get("rmse"),
        "converged": report.meta.get("convergence", {}).get("converged"),
    }


def _table(figures: dict):
    from rich.table import Table

    total, cpu_total, peak = figures["total_seconds"], figures["cpu_seconds"], figures["peak_rss_mb"]
    st = figures["stage_seconds"]
    table = Table(title=f"bookrec bench batch: {figures['readers']:,} readers, preset {figures['batch_preset']}",
                  caption="CPU = process CPU time over all threads (2 cores: a parallel stage can use 2 s per second)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    cpu = figures["stage_cpu_seconds"]
    tier_cpu = figures["precompute_cpu_seconds_by_tier"]
    for name, sec in st.items():
        target = TARGETS.get(name)
        table.add_row(f"stage {name}", f"{sec:.1f} s (CPU {cpu.get(name, float('nan')):.1f} s)",
                      f"<= {target:.0f} s" if target else "")
    for name, sec in figures["precompute_seconds_by_tier"].items():
        table.add_row(f"  precompute {name}", f"{sec:.1f} s (CPU {tier_cpu.get(name, float('nan')):.1f} s)", "")
    table.add_row("whole batch", f"{total:.1f} s (CPU {cpu_total:.0f} s)", f"<= {TARGETS['total']:.0f} s")
    table.add_row("peak memory (batch process)", f"{peak:,.0f} MB", f"<= {TARGETS['peak_rss_mb']:.0f} MB")
    table.add_row("payload JSON per reader / total", f"{figures['payload_bytes_per_reader']:,.0f} B / {figures['payload_bytes_total'] / 1e6:,.0f} MB", "")
    if figures["stored_bytes_version"]:
        table.add_row("stored per reader / version total", f"{figures['stored_bytes_per_reader']:,.0f} B / {figures['stored_bytes_version'] / 1e6:,.0f} MB", "")
    used = (figures["store_memory"] or {}).get("used_memory")
    if used:
        table.add_row("store memory used", f"{used / 1e6:,.0f} MB", "")
    for tier, n in figures["coverage_by_tier"].items():
        table.add_row(f"readers: {tier}", f"{n:,} ({100 * n / max(figures['readers'], 1):.1f}%)", "")
    return table


if __name__ == "__main__":  # pragma: no cover
    bench_batch(None, "full", 0, "development", None, None, False)
