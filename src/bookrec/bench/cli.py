"""CLI commands of bookrec.bench."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks (not tests): speed, memory and quality figures for each part, printed as tables.", no_args_is_help=True)


@app.command("store")
def store(
    store_url: str = typer.Option(None, "--store", help="Benchmark this store URL (default: a temporary redis-server and a temporary SQLite file)"),
    backend: list[str] = typer.Option(["redis", "sqlite"], "--backend", help="Backends to run when --store is not given"),
    users: int = typer.Option(278_858, help="Users to publish (the full BookCrossing count by default)"),
    top_n: int = typer.Option(20, help="Recommendation items per user"),
    books: int = typer.Option(271_379, help="Book payloads to publish"),
    reads: int = typer.Option(5_000, help="Single reads to time (the async run does 5x this)"),
    concurrency: int = typer.Option(32, help="Concurrent async readers"),
    compress: bool = typer.Option(True, help="Store payloads zlib-compressed (the default of BOOKREC_STORE_COMPRESS)"),
) -> None:
    """Publish a full-size version and time reads (store backends; a benchmark, not a test)."""
    from bookrec.store.bench import bench_store

    bench_store(store_url, backend, users, top_n, books, reads, concurrency, compress)


@app.command("batch")
def batch(
    data: Path = typer.Option(None, "--data", help="Normalised data directory (default: generate the synthetic --synth-preset)"),
    synth_preset: str = typer.Option("full", "--synth-preset", help="Synthetic data when --data is not given: tiny, small or full"),
    seed: int = typer.Option(42, "--seed", help="Generator seed"),
    batch_preset: str = typer.Option("development", "--preset", help="Batch preset: development, staging or production"),
    store_url: str = typer.Option(None, "--store", help="Publish here (default: a redis-server started for the run)"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep the generated data here (default: a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """The whole batch on the full data: time per stage, peak memory, bytes per reader, coverage, publish to Redis."""
    from bookrec.bench.batch import bench_batch

    bench_batch(data, synth_preset, seed, batch_preset, store_url, workdir, as_json)


@app.command("scale")
def scale(
    data_preset: list[str] = typer.Option(["full", "xl"], "--data-preset", help="Synthetic data presets to measure (repeat the option)"),
    data_dir: Path = typer.Option(None, "--data-dir", help="Data sets live (or are generated) here as <preset>-<seed> (default: var/bench-scale)"),
    seed: int = typer.Option(42, "--seed", help="Generator seed"),
    workers: list[int] = typer.Option([0, 1, 2], "--workers", min=0, help="Local Dask workers per run; 0 = one process (repeat the option)"),
    batch_preset: str = typer.Option("development", "--preset", help="Batch preset: development, staging or production"),
    store: str = typer.Option("sqlite", "--store", help="sqlite (a fresh file per run) or redis (a fresh redis-server per run)"),
    threads: int = typer.Option(None, "--threads", min=1, help="Threads of a cluster, split evenly over its workers (default: the CPU count)"),
    burn_in: int = typer.Option(None, "--burn-in", min=0, help="Burn-in sweeps instead of the preset's (every run)"),
    samples: int = typer.Option(None, "--samples", min=1, help="Post-burn-in sweeps instead of the preset's (every run)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """The batch on full and xl in one process and on a local Dask cluster of 1 and 2 workers: wall time, peak
    memory per process and bytes moved per stage, and a linear projection to Goodreads-sized data."""
    from bookrec.bench.scale import bench_scale

    if store not in ("sqlite", "redis"):
        raise typer.BadParameter("choose sqlite or redis", param_hint="--store")
    sweeps = {name: value for name, value in (("burn_in", burn_in), ("n_samples", samples)) if value is not None}
    bench_scale(list(data_preset), data_dir, seed, list(workers), batch_preset, store, threads, as_json, sweeps)


@app.command("data")
def data(
    preset: str = typer.Option("full", "--preset", help="Synthetic data preset: tiny, small or full"),
    seed: int = typer.Option(42, "--seed", help="Generator seed"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep the generated/imported files here (default: a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Generation time, bx import time and peak memory of each (full preset by default)."""
    from bookrec.bench.data import bench_data

    bench_data(preset, seed, workdir, as_json)


@app.command("optimize")
def optimize(
    preset: str = typer.Option("small", "--preset", help="Synthetic data preset: tiny, small or full"),
    trials: int = typer.Option(20, "--trials", min=1, help="Trials in the study"),
    seed: int = typer.Option(42, "--seed", help="Data, split and model seed"),
    sampler_seed: int = typer.Option(0, "--sampler-seed", help="Optuna sampler seed"),
    storage: str = typer.Option(None, "--storage", help="Optuna storage URL (default: a temporary SQLite file)"),
    objective: str = typer.Option("nll", "--objective", help="nll or crps"),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none"),
    data: Path = typer.Option(None, "--data", help="Use this normalised data directory instead of synthetic data"),
) -> None:
    """Default vs tuned configuration: validation and test RMSE, NLL, 90% coverage, wall time."""
    from bookrec.bench.optimize import bench_optimize

    bench_optimize(preset, trials, seed, sampler_seed, storage, objective, pruner, data)


@app.command("model")
def model(
    factors: int = typer.Option(10, "--factors", min=1, help="Latent factors k (all models)"),
    burn_in: int = typer.Option(200, "--burn-in", min=0, help="Burn-in sweeps (all models)"),
    samples: int = typer.Option(500, "--samples", min=1, help="Post-burn-in sweeps (all models)"),
    seed: int = typer.Option(42, "--seed", help="Data, split and sampler seed"),
    peers: list[str] = typer.Option(["myfm", "smurff"], "--peer", help="Peers to run (myfm, smurff); repeat the option"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
    data_preset: str = typer.Option("full", "--data-preset", help="Synthetic data preset (tiny, small, full)"),
) -> None:
    """BPMF (with and without its balance and shear moves) vs myfm and smurff on a synthetic preset (explicit ratings
    and 5/10-core): s/iteration, ESS/s, peak memory, RMSE, coverage."""
    from bookrec.bench.model import bench_model

    bench_model(factors, burn_in, samples, seed, tuple(peers), as_json, data_preset)


@app.command("api")
def api(
    source: str = typer.Option("batch", "--source", help="batch (full synthetic data through the real batch) or synthetic (a full-scale made-up publish, fast)"),
    data: Path = typer.Option(None, "--data", help="Normalised data directory for --source batch (default: generate the full preset)"),
    batch_preset: str = typer.Option("development", "--batch-preset", help="Batch preset for --source batch"),
    store_url: str = typer.Option(None, "--store", help="Load an already published store instead of publishing one"),
    workers: int = typer.Option(1, "--workers", min=1, help="API worker processes (1 measured best on 2 cores shared with wrk and redis-server)"),
    duration: int = typer.Option(30, "--duration", min=1, help="Seconds of load for GET / and GET /recommend"),
    cold_duration: int = typer.Option(15, "--cold-duration", min=1, help="Seconds of load for the cold start"),
    connections: int = typer.Option(16, "--connections", min=1, help="wrk connections (GET scenarios; latency = connections / throughput)"),
    cold_connections: int = typer.Option(4, "--cold-connections", min=1, help="wrk connections (cold start)"),
    threads: int = typer.Option(1, "--threads", min=1, help="wrk threads"),
    json_out: Path = typer.Option(None, "--json-out", help="Also write the figures here as JSON"),
) -> None:
    """Throughput and latency of the API under wrk: GET /, GET /recommend/{random}, cold start (a benchmark)."""
    from bookrec.bench.api import bench_api

    bench_api(source=source, data_dir=data, batch_preset=batch_preset, store_url=store_url, workers=workers,
              duration=duration, cold_duration=cold_duration, connections=connections,
              cold_connections=cold_connections, threads=threads, json_out=json_out)


@app.command("resources")
def resources(
    preset: list[str] = typer.Option(
        ["development", "staging", "production"], "--preset", help="Batch presets to measure on the small data (repeat the option; none: skip)"
    ),
    full_preset: str = typer.Option("development", "--full-preset", help="Batch preset to run on the full data, or 'none'"),
    workers: int = typer.Option(2, "--workers", min=1, help="API worker processes (docker-compose.yml runs 2)"),
    duration: int = typer.Option(20, "--duration", min=1, help="Seconds of GET /recommend load (cold start: half)"),
    connections: int = typer.Option(64, "--connections", min=1, help="wrk connections for GET /recommend (cold start: 1/8)"),
    store_top_n: int = typer.Option(30, "--store-top-n", min=0, help="Items per reader in the full-scale store publish (0: skip)"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep generated data and logs here (default: a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Memory on this machine: batch peak RSS per preset, API RSS at rest and under load, store memory (full preset)."""
    from bookrec.bench.resources import bench_resources

    bench_resources(preset, None if full_preset == "none" else full_preset, workers, duration, connections,
                    store_top_n, workdir, as_json)


@app.command("ranking")
def ranking(
    data_preset: str = typer.Option("small", "--data-preset", help="Synthetic data when --data is not given: tiny, small or full"),
    data: Path = typer.Option(None, "--data", help="Normalised data directory instead of synthetic data"),
    seed: int = typer.Option(42, "--seed", help="Generator, split and model seed"),
    max_eval_users: int = typer.Option(None, "--max-eval-users", min=1, help="Evaluate a seeded sample of this many readers (default: all; 20,000 on full or --data)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Top-N ranking of every untouched work: popularity, EASE, item-kNN, ALS, BPR (tuned on validation) and bookrec's Recommender when present."""
    from bookrec.bench.ranking import bench_ranking

    bench_ranking(data_preset, data, seed, max_eval_users, as_json)


@app.command("faults")
def faults(
    fault: list[str] = typer.Option(
        ["redis-kill", "redis-stop", "redis-restart", "sqlite-delete", "sqlite-replace", "sqlite-corrupt"], "--fault",
        help="Faults to inject, one run each (repeat the option)",
    ),
    duration: float = typer.Option(30.0, "--duration", min=6.0, help="Seconds of load per fault (the fault starts at 1/3)"),
    connections: int = typer.Option(64, "--connections", min=1, help="Concurrent keep-alive connections"),
    users: int = typer.Option(20_000, "--users", min=100, help="Readers published (books: the same number)"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep stores and server logs here (default: a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Store faults mid-load (Redis killed, stopped, restarted; SQLite file deleted, replaced, corrupted): 500s, wrong 404s, dropped connections, recovery."""
    from bookrec.bench.faults import bench_faults

    bench_faults(list(fault), duration, connections, users, users, workdir, as_json)


@app.command("slowclients")
def slowclients(
    server: list[str] = typer.Option(["bounded", "plain"], "--server", help="bounded (`bookrec serve`) and/or plain (uvicorn's own httptools protocol); repeat the option"),
    users: int = typer.Option(20_000, "--users", min=100, help="Readers published (books: the same number)"),
    duration: int = typer.Option(15, "--duration", min=1, help="Seconds of wrk GET /recommend load, unloaded and attacked"),
    connections: int = typer.Option(16, "--connections", min=1, help="wrk connections (as `bookrec bench api`)"),
    slow: int = typer.Option(2000, "--slow", min=0, help="Slow connections held (silent, dripped head, dripped body)"),
    big: int = typer.Option(10, "--big", min=0, help="Connections sending an oversized header"),
    big_mb: int = typer.Option(10, "--big-mb", min=1, help="Size of each oversized header (MB)"),
    rounds: int = typer.Option(4, "--rounds", min=1, help="Unloaded wrk runs per server, alternating between the servers"),
    workdir: Path = typer.Option(None, "--workdir", help="Keep server logs here (default: a temporary directory)"),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON"),
) -> None:
    """Slow and oversized clients against the API: RSS against rest, GET /recommend p99 against unloaded, and the connection limits' cost in throughput."""
    from bookrec.bench.slowclients import bench_slowclients

    bench_slowclients(list(server), users, duration, connections, slow, big, big_mb, rounds=rounds, workdir=workdir, as_json=as_json)
