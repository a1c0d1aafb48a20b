"""``bookrec bench scale``: the batch on bigger data, in one process and on a local Dask cluster.

Runs ``bookrec batch`` on each data preset (``full`` and ``xl`` by default) in one process and on
a local cluster of 1 and 2 workers, each run a child process publishing into a fresh store (a new
SQLite file, or a new redis-server). Per run it reports the wall time per stage, the peak memory
of the driver and of the largest worker after each stage, and the bytes sent to and from the
workers, next to the targets: on xl, a cluster of 2 workers at most 1.3x the
one-process wall time per rating, and under 4 GB peak memory per worker.

From the largest data set measured it extrapolates, linearly, to a Goodreads-sized data set:
wall time per stage for 1, 2, 4 and 8 workers, the workers needed for a 6-hour schedule, memory
per worker and store size. The assumptions are data (``STAGE_SCALING``) and are printed with the
figures. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TARGETS = {"wall_per_rating_vs_one_process": 1.3, "worker_peak_bytes": 4e9}  # measured on xl
TARGET_PRESET = "xl"
GOODREADS = {"ratings": 229_000_000, "readers": 876_000, "books": 2_360_000}  # UCSD Goodreads interactions
SCHEDULE_SECONDS = 6 * 3600.0
PROJECTED_WORKERS = (1, 2, 4, 8)
MAX_WORKERS = 1024  # the search for "workers needed" stops here
POLL_SECONDS = 0.2

# How each stage's wall time grows with the data ("size") and shrinks with workers ("parallel"):
# driver = not at all (it runs on the driver); chains = one chain per worker, so it stops
# shrinking once every chain has its worker; workers = evenly over the workers.
STAGE_SCALING = {
    "load": {"size": "ratings", "parallel": "driver"},
    "prepare": {"size": "ratings", "parallel": "driver"},
    "train": {"size": "train ratings x sweeps", "parallel": "chains"},
    "relevance": {"size": "ratings", "parallel": "driver"},
    "evaluate": {"size": "ratings", "parallel": "driver"},
    "precompute": {"size": "readers", "parallel": "workers"},
    "publish": {"size": "readers + books", "parallel": "driver"},
}
OTHER_STAGE = {"size": "ratings", "parallel": "driver"}  # a stage not listed above
ASSUMPTIONS = [
    "linear extrapolations of the measured stage times; nothing here was measured at this size",
    "the training core holds the same share of the interactions as in the measured data set",
    "the batch preset's sweeps and chains (a measured run may train shorter: train time is per sweep)",
    "a worker is like the measured run's (same threads); one process counts as one worker",
    "memory per process scales with the interactions (the interpreter's fixed part too: pessimistic)",
    "store size = stored bytes per reader x readers (book payloads scale with the readers)",
]


def bench_scale(data_presets: list[str], data_dir: Path | None, seed: int, workers: list[int], batch_preset: str,
                store: str, threads: int | None, as_json: bool, sweeps: dict[str, int] | None = None) -> dict:
    """``sweeps``: "burn_in" and / or "n_samples" instead of the preset's (shorter chains keep a run
    on xl to minutes; every run of one invocation uses the same)."""
    from rich.console import Console

    console = Console(stderr=as_json)
    threads = threads or os.cpu_count() or 1
    data_dir = Path(data_dir or "var/bench-scale")
    rundir = Path(tempfile.mkdtemp(prefix="bookrec-bench-scale-"))
    try:
        _fill_kernel_cache(console)
        runs = []
        for preset in data_presets:
            data = ensure_dataset(data_dir, preset, seed, console)
            for n in workers:
                runs.append(_measure(data, preset, n, threads, batch_preset, store, rundir, console, sweeps or {}))
        add_ratios(runs)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    basis = projection_basis(runs)
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": threads, "memory_bytes": _machine_memory()},
        "batch_preset": batch_preset, "sweeps": sweeps or {}, "store": store, "seed": seed, "targets": TARGETS,
        "runs": runs, "projection": project(basis, sweeps=_preset_sweeps(batch_preset)) if basis else None,
    }
    if as_json:
        print(json.dumps(result, indent=2))
        return result
    for preset in data_presets:
        console.print(preset_table(preset, [r for r in runs if r["data_preset"] == preset]))
    if result["projection"]:
        console.print(projection_table(result["projection"]))
    return result


def _preset_sweeps(batch_preset: str) -> int:
    """The preset's sweeps per chain: a projection trains as the preset does, however short the measured runs."""
    from bookrec.batch.presets import PRESETS

    preset = PRESETS[batch_preset]
    return preset.burn_in + preset.n_samples


def ensure_dataset(data_dir: Path, preset: str, seed: int, console) -> Path:
    """DIR/<preset>-<seed>, generated in a child process when missing (its memory is not the batch's)."""
    from bookrec.data.io import is_dataset_dir

    path = data_dir / f"{preset}-{seed}"
    if not is_dataset_dir(path):
        console.print(f"generating the {preset} synthetic data set in {path} (child process) ...")
        subprocess.run([sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", preset, "--seed", str(seed),
                        "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path


def _fill_kernel_cache(console) -> None:
    """Compile numba's kernels once, in a child process, so that no measured run pays the compilation
    (it is cached on disk; the first run would otherwise carry a minute that the others do not)."""
    console.print("filling numba's kernel cache (bookrec warmup, child process) ...")
    done = subprocess.run([sys.executable, "-m", "bookrec.cli", "warmup"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bookrec warmup failed (exit {done.returncode}): {done.stderr[-2000:]}")


def _measure(data: Path, preset: str, n_workers: int, threads: int, batch_preset: str, store: str, rundir: Path,
             console, sweeps: dict[str, int]) -> dict:
    """One batch run: a fresh store and (n_workers > 0) a fresh local cluster, closed afterwards."""
    per_worker = max(1, threads // n_workers) if n_workers else threads
    label = {"data_preset": preset, "workers": n_workers, "threads_per_worker": per_worker}
    name = f"{preset}-{n_workers}w"
    console.print(f"{preset}, {_engine_label(n_workers, per_worker)}: running ...")
    with _fresh_store(store, rundir, name) as (url, sqlite_path), _cluster(n_workers, per_worker) as (address, pids):
        cmd = [sys.executable, "-m", "bookrec.cli", "batch", "--preset", batch_preset, "--data", str(data),
               "--store", url, "--json", "--quiet"]
        if address:
            cmd += ["--scheduler", address]
        code, wall, polled = run_child(cmd, _child_env(rundir, sweeps), rundir / f"{name}.json", rundir / f"{name}.log", pids)
        if code != 0:
            tail = (rundir / f"{name}.log").read_text(errors="replace")[-2000:]
            console.print(f"[red]{preset}, {_engine_label(n_workers, per_worker)}: failed (exit {code})[/red]\n{tail}")
            return {**label, "error": f"exit {code}: {tail}"}
        summary = json.loads((rundir / f"{name}.json").read_text())
        meta, stored = read_store(url, summary["version"], sqlite_path)
    run = {**label, **run_figures(summary, meta, stored, wall, polled)}
    console.print(f"{preset}, {_engine_label(n_workers, per_worker)}: {wall:,.1f} s, "
                  f"{run['wall_per_rating_us']:.2f} us per rating, version {run['version']}")
    return run


def _engine_label(n_workers: int, threads_per_worker: int) -> str:
    if n_workers == 0:
        return "one process"
    return f"{n_workers} worker{'s' if n_workers > 1 else ''} x {threads_per_worker} thread{'s' if threads_per_worker > 1 else ''}"


def _child_env(rundir: Path, sweeps: dict[str, int]) -> dict[str, str]:
    """The environment of a batch run: no tuned parameters (a path that does not exist), and no
    cluster or tuning study inherited from the shell, so every run uses the preset alone (with
    ``sweeps`` instead of its burn-in and samples when given)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("BOOKREC_DASK_SCHEDULER", "BOOKREC_TUNED_FROM", "BOOKREC_TUNED_STUDY")}
    env["BOOKREC_TUNED_CONFIG_PATH"] = str(rundir / "no-tuned-params.json")
    env.update({f"BOOKREC_{name.upper()}": str(value) for name, value in sweeps.items()})
    return env


@contextmanager
def _fresh_store(kind: str, rundir: Path, name: str) -> Iterator[tuple[str, Path | None]]:
    """A store nobody has published to: a new SQLite file (deleted afterwards) or a new redis-server."""
    if kind == "redis":
        from bookrec.store.bench import temporary_redis

        with temporary_redis() as url:
            yield url, None
        return
    path = rundir / f"{name}.sqlite3"
    try:
        yield f"sqlite:///{path.resolve()}", path
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextmanager
def _cluster(n_workers: int, threads_per_worker: int) -> Iterator[tuple[str | None, list[int]]]:
    """A local Dask cluster for one run (its scheduler address and worker pids), or none for 0 workers."""
    if n_workers == 0:
        yield None, []
        return
    from distributed import Client, LocalCluster

    # The cluster's own INFO lines (workers joining and leaving) would bury the progress lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        with Client(cluster, set_as_default=False) as client:
            pids = sorted(client.run(os.getpid).values())
        yield cluster.scheduler_address, pids


def run_child(cmd: list[str], env: dict[str, str], out: Path, log: Path, worker_pids: list[int]) -> tuple[int, float, dict]:
    """Run ``cmd`` (stdout to ``out``, stderr to ``log``); its exit code, wall time and the peak
    RSS seen by polling the child and the workers every POLL_SECONDS (a cross-check of the meta's)."""
    import psutil

    peaks = {"driver": 0, "worker_max": 0}
    workers = [p for p in (_process(pid) for pid in worker_pids) if p is not None]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
        driver = _process(proc.pid)
        while True:
            peaks["driver"] = max(peaks["driver"], _rss(driver))
            peaks["worker_max"] = max([peaks["worker_max"], *(_rss(w) for w in workers)])
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
        wall = time.perf_counter() - started
    return proc.returncode, wall, peaks


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _rss(process) -> int:
    import psutil

    try:
        return int(process.memory_info().rss) if process is not None else 0
    except psutil.Error:  # it ended between two polls
        return 0


def read_store(url: str, version: str, sqlite_path: Path | None) -> tuple[dict, dict]:
    """The version's meta and its versions() entry (with the SQLite file size when there is one)."""
    from bookrec.store import open_store

    with open_store(url) as store:
        blob = store.get_blob("meta", version)
        stored = next((v for v in store.versions() if v["version"] == version), {})
    if sqlite_path is not None:
        stored = {**stored, "file_bytes": sum(Path(f"{sqlite_path}{s}").stat().st_size
                                              for s in ("", "-wal") if Path(f"{sqlite_path}{s}").exists())}
    return (json.loads(blob) if blob else {}), stored


def _machine_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


# ---------------------------------------------------------------------------------- figures


def run_figures(summary: dict, meta: dict, stored: dict, wall: float, polled: dict) -> dict:
    """The figures of one run from the batch's JSON summary, the published meta, the store's entry
    for the version, the wall time around the child and the polled peak RSS."""
    dataset = meta.get("dataset", {})
    engine = meta.get("engine", {})
    ratings = int(dataset.get("ratings", 0))
    readers = int(summary.get("readers", 0))
    users_stored = int(stored.get("users") or summary.get("readers_with_recommendations") or 0)
    return {
        "version": summary.get("version"),
        "engine": engine.get("name"),
        "ratings": ratings, "readers": readers, "books": int(dataset.get("books", 0)),
        "train_ratings": int(dataset.get("train", 0)),
        "core_users": int(dataset.get("core_users", 0)), "core_books": int(dataset.get("core_books", 0)),
        "sweeps": int(meta.get("burn_in", 0)) + int(meta.get("n_samples", 0)),
        "n_chains": int(meta.get("n_chains", 1)),
        "stage_seconds": dict(summary.get("stage_seconds", {})),
        "wall_seconds": wall,
        "wall_per_rating_us": 1e6 * wall / ratings if ratings else None,
        "wall_per_reader_ms": 1e3 * wall / readers if readers else None,
        "peak_rss_bytes": _peaks_by_stage(engine.get("peak_rss_bytes", {})),
        "peak_rss_polled_bytes": dict(polled),
        "tasks": dict(engine.get("tasks", {})),
        "bytes_to_workers": dict(engine.get("bytes_to_workers", {})),
        "bytes_from_workers": dict(engine.get("bytes_from_workers", {})),
        "stored_bytes": stored.get("bytes"),
        "stored_file_bytes": stored.get("file_bytes"),
        "stored_bytes_per_reader": (stored.get("bytes") or 0) / users_stored if users_stored else None,
    }


def _peaks_by_stage(peaks: dict) -> dict:
    """{stage: {process: bytes}} -> {stage: {"driver": bytes, "worker_max": bytes or None}}."""
    out = {}
    for stage, processes in peaks.items():
        workers = [int(b) for name, b in processes.items() if name.startswith("worker")]
        out[stage] = {"driver": processes.get("driver"), "worker_max": max(workers) if workers else None}
    return out


def add_ratios(runs: list[dict]) -> None:
    """Each run's wall time per rating over the one-process run's on the same data preset."""
    single = {r["data_preset"]: r["wall_per_rating_us"] for r in runs if r["workers"] == 0 and "error" not in r}
    for run in runs:
        base = single.get(run["data_preset"])
        ok = "error" not in run and base and run["wall_per_rating_us"]
        run["wall_per_rating_vs_one_process"] = run["wall_per_rating_us"] / base if ok else None


def worker_peak(run: dict) -> int | None:
    """The largest worker's peak over the stages (the meta's figure, else the polled one)."""
    peaks = [p["worker_max"] for p in run.get("peak_rss_bytes", {}).values() if p.get("worker_max")]
    return max(peaks) if peaks else (run.get("peak_rss_polled_bytes", {}).get("worker_max") or None)


def driver_peak(run: dict) -> int | None:
    peaks = [p["driver"] for p in run.get("peak_rss_bytes", {}).values() if p.get("driver")]
    return max(peaks) if peaks else (run.get("peak_rss_polled_bytes", {}).get("driver") or None)


# ------------------------------------------------------------------------------ projection


def projection_basis(runs: list[dict]) -> dict | None:
    """The run to extrapolate from: on xl if measured, else on the largest data set; the one with
    the most workers (the shape of a deployment)."""
    ok = [r for r in runs if "error" not in r and r.get("ratings")]
    if not ok:
        return None
    chosen = [r for r in ok if r["data_preset"] == TARGET_PRESET] or ok
    largest = max(r["ratings"] for r in chosen)
    return max((r for r in chosen if r["ratings"] == largest), key=lambda r: r["workers"])


def _sizes(ratings: float, train_ratings: float, sweeps: float, readers: float, books: float) -> dict[str, float]:
    return {"ratings": ratings, "train ratings x sweeps": train_ratings * sweeps,
            "readers": readers, "readers + books": readers + books}


def _share(parallel: str, workers: int, chains: int) -> float:
    """The stage's wall time on ``workers`` as a fraction of its time on one worker."""
    if parallel == "workers":
        return 1.0 / workers
    if parallel == "chains":
        return math.ceil(chains / workers) / chains
    return 1.0


def project(basis: dict, target: dict | None = None, schedule_seconds: float = SCHEDULE_SECONDS,
            sweeps: int | None = None) -> dict:
    """Extrapolate ``basis`` (a run's figures) to ``target`` (ratings, readers, books; default
    Goodreads-sized) trained with ``sweeps`` per chain (default: the measured run's): wall per
    stage for PROJECTED_WORKERS, workers needed within the schedule, memory per process and store
    size. Linear in every size; see STAGE_SCALING and ASSUMPTIONS."""
    target = dict(target or GOODREADS)
    sweeps = sweeps or basis["sweeps"]
    chains = max(1, basis["n_chains"])
    basis_workers = max(1, basis["workers"])  # one process: one worker
    train_share = basis["train_ratings"] / basis["ratings"]
    have = _sizes(basis["ratings"], basis["train_ratings"], basis["sweeps"], basis["readers"], basis["books"])
    want = _sizes(target["ratings"], target["ratings"] * train_share, sweeps, target["readers"], target["books"])
    # Seconds per unit of size on one worker, for each stage.
    unit = {}
    for stage, seconds in basis["stage_seconds"].items():
        if "(within" in stage:  # a part of another stage, already counted there
            continue
        rule = STAGE_SCALING.get(stage, OTHER_STAGE)
        unit[stage] = (seconds / _share(rule["parallel"], basis_workers, chains) / have[rule["size"]], rule)

    def stages_on(workers: int) -> dict[str, float]:
        return {s: u * want[r["size"]] * _share(r["parallel"], workers, chains) for s, (u, r) in unit.items()}

    by_workers = {}
    for w in PROJECTED_WORKERS:
        stages = stages_on(w)
        by_workers[str(w)] = {"stage_seconds": stages, "total_seconds": sum(stages.values()),
                              "fits": sum(stages.values()) <= schedule_seconds}
    needed = next((w for w in range(1, MAX_WORKERS + 1) if sum(stages_on(w).values()) <= schedule_seconds), None)
    at = stages_on(needed or MAX_WORKERS)
    scale = target["ratings"] / basis["ratings"]
    peak_w, peak_d = worker_peak(basis), driver_peak(basis)
    return {
        "basis": {k: basis[k] for k in ("data_preset", "workers", "threads_per_worker", "ratings", "readers", "books",
                                        "train_ratings", "sweeps", "n_chains")},
        "target": {**target, "train_ratings": round(target["ratings"] * train_share), "sweeps": sweeps},
        "schedule_seconds": schedule_seconds,
        "stage_scaling": {s: r for s, (_, r) in unit.items()},
        "assumptions": ASSUMPTIONS,
        "by_workers": by_workers,
        "workers_needed": needed,
        "limit_stage": max(at, key=at.get) if at else None,
        # One process has no workers: its own peak is what a worker would need.
        "worker_peak_bytes": (peak_w or peak_d) * scale if (peak_w or peak_d) else None,
        "driver_peak_bytes": peak_d * scale if peak_d else None,
        "store_bytes": basis["stored_bytes_per_reader"] * target["readers"] if basis.get("stored_bytes_per_reader") else None,
    }


# ---------------------------------------------------------------------------------- tables


def _mb(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value / 1e9:,.1f} GB" if value >= 10e9 else f"{value / 1e6:,.0f} MB"


def preset_table(preset: str, runs: list[dict]):
    from rich.table import Table

    ok = [r for r in runs if "error" not in r]
    first = ok[0] if ok else {}
    table = Table(title=f"bookrec bench scale: {preset} data",
                  caption=f"{first.get('ratings', 0):,} ratings, {first.get('readers', 0):,} readers, "
                          f"{first.get('books', 0):,} books, {first.get('train_ratings', 0):,} training ratings; "
                          f"targets apply to {TARGET_PRESET}")
    table.add_column("figure")
    for run in runs:
        table.add_column(_engine_label(run["workers"], run["threads_per_worker"]) + (" (failed)" if "error" in run else ""), justify="right")
    table.add_column("target", justify="right")

    def row(name: str, cell, target: str = "") -> None:
        table.add_row(name, *[("-" if "error" in r else cell(r)) for r in runs], target)

    stages = list(dict.fromkeys(s for r in ok for s in r["stage_seconds"]))
    for stage in stages:
        row(f"stage {stage}", lambda r, s=stage: f"{r['stage_seconds'][s]:,.1f} s" if s in r["stage_seconds"] else "-")
    row("whole run (child process)", lambda r: f"{r['wall_seconds']:,.1f} s")
    row("wall per rating", lambda r: f"{r['wall_per_rating_us']:.2f} us")
    row("wall per reader", lambda r: f"{r['wall_per_reader_ms']:.3f} ms")
    row("per rating vs one process", lambda r: _ratio(r["wall_per_rating_vs_one_process"]),
        f"<= {TARGETS['wall_per_rating_vs_one_process']}x (2 workers)")
    _memory_rows(row, ok)
    _transfer_rows(row, ok)
    row("stored per reader / version", lambda r: f"{r['stored_bytes_per_reader'] or 0:,.0f} B / {_mb(r['stored_bytes'])}")
    return table


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def _memory_rows(row, ok: list[dict]) -> None:
    stages = list(dict.fromkeys(s for r in ok for s in r["peak_rss_bytes"]))
    for stage in stages:
        row(f"peak memory after {stage}: driver", lambda r, s=stage: _mb(r["peak_rss_bytes"].get(s, {}).get("driver")))
        row(f"peak memory after {stage}: largest worker",
            lambda r, s=stage: _mb(r["peak_rss_bytes"].get(s, {}).get("worker_max")),
            f"< {TARGETS['worker_peak_bytes'] / 1e9:.0f} GB")
    row("peak memory polled: driver / largest worker",
        lambda r: f"{_mb(r['peak_rss_polled_bytes']['driver'])} / {_mb(r['peak_rss_polled_bytes']['worker_max'])}")


def _transfer_rows(row, ok: list[dict]) -> None:
    for direction in ("bytes_to_workers", "bytes_from_workers"):
        for what in dict.fromkeys(w for r in ok for w in r[direction]):
            label = "to workers" if direction == "bytes_to_workers" else "from workers"
            row(f"{label}: {what}", lambda r, d=direction, w=what: _mb(r[d].get(w)))
    row("tasks", lambda r: ", ".join(f"{n} {k}" for k, n in r["tasks"].items()) or "-")


def projection_table(projection: dict):
    from rich.table import Table

    basis, target = projection["basis"], projection["target"]
    table = Table(
        title=f"Projection to {target['ratings'] / 1e6:,.0f}M interactions, {target['readers']:,} readers, "
              f"{target['books']:,} books (from {basis['data_preset']}, {_engine_label(basis['workers'], basis['threads_per_worker'])})",
        caption="Linear extrapolations: " + "; ".join(projection["assumptions"][1:]),
    )
    table.add_column("stage (scales with; shrinks with)")
    for w in projection["by_workers"]:
        table.add_column(f"{w} worker{'s' if w != '1' else ''}", justify="right")
    for stage, rule in projection["stage_scaling"].items():
        table.add_row(f"{stage} ({rule['size']}; {rule['parallel']})",
                      *[_hours(p["stage_seconds"][stage]) for p in projection["by_workers"].values()])
    hours = projection["schedule_seconds"] / 3600
    table.add_row("total", *[_hours(p["total_seconds"]) for p in projection["by_workers"].values()])
    table.add_row(f"fits {hours:.0f} h", *["yes" if p["fits"] else "no" for p in projection["by_workers"].values()])
    needed = projection["workers_needed"]
    pad = [""] * (len(projection["by_workers"]) - 1)
    table.add_row(f"workers needed for {hours:.0f} h",
                  *_padded([f"{needed}" if needed else f"does not fit (even {MAX_WORKERS})"], pad))
    table.add_row("limit (largest stage there)", *_padded([str(projection["limit_stage"])], pad))
    table.add_row("memory per worker", *_padded([_mb(projection["worker_peak_bytes"])], pad))
    table.add_row("memory of the driver", *_padded([_mb(projection["driver_peak_bytes"])], pad))
    table.add_row("store size (one version)", *_padded([_mb(projection["store_bytes"])], pad))
    return table


def _padded(cells: list[str], pad: list[str]) -> list[str]:
    """``cells`` then blanks, to the table's width (the first cell is in the 1-worker column)."""
    return (cells + pad)[:len(pad) + 1]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h" if seconds >= 360 else f"{seconds:,.0f} s"
