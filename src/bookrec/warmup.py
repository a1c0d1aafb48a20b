"""`bookrec warmup`: compile every numba kernel once, so that a service's first fit or request does not.

numba compiles a kernel the first time it is called and caches the machine code on disk (next to
the sources, or in ``NUMBA_CACHE_DIR``). In a new checkout or container that first call costs about
a minute on 2 cores, most of it the sampler's block kernel. The Docker images run this command when
they are built, so their containers start with the cache filled. numba keys the cache by CPU model:
a container on another CPU compiles again on first use, and still works.

The warm-up makes the services' own calls, with the same argument types: the batch (train,
evaluate, precompute, publish) on the ``tiny`` synthetic preset with a few sweeps into a
throw-away SQLite store, then the API's loading of that published version. Loading runs one
fold-in per ranking mode.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

# Enough sweeps to reach every kernel (the kept draws, the diagnostics); the results are thrown away.
WARMUP_MODEL = {"n_factors": 2, "n_samples": 6, "burn_in": 2, "thin": 1, "n_chains": 2, "max_kept_samples": 6}


@dataclass(frozen=True)
class WarmupReport:
    batch_seconds: float
    serving_seconds: float
    serving_problems: list[str]


def warm_up(show_progress: bool = False) -> WarmupReport:
    """Run the batch and the API's model loading once on tiny synthetic data (see the module docstring)."""
    from bookrec.api.serving import ServingBundle
    from bookrec.batch.pipeline import run_batch
    from bookrec.config import Settings
    from bookrec.data.synth import generate
    from bookrec.store import open_store

    dataset = generate("tiny", seed=0).dataset
    with tempfile.TemporaryDirectory(prefix="bookrec-warmup-") as tmp:
        # No tuned-parameters file: the warm-up must not depend on (or read) a deployment's tuning.
        settings = Settings(**WARMUP_MODEL, tuned_config_path=Path(tmp) / "none.json")
        store_url = f"sqlite:///{Path(tmp) / 'warmup.db'}"
        started = time.perf_counter()
        # force: a few sweeps only compile the kernels, so the publish gate would rightly refuse them.
        report = run_batch(settings, store_url=store_url, preset="development", dataset=dataset,
                           show_progress=show_progress, force=True)
        batch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with open_store(store_url, settings.store_prefix) as store:
            meta_blob = store.get_blob("meta", report.version)
            bundle = ServingBundle.build(
                report.version, store.get_blob("catalog", report.version),
                store.get_blob("serving_model", report.version), orjson.loads(meta_blob) if meta_blob else None,
            )
        serving_seconds = time.perf_counter() - started
    return WarmupReport(batch_seconds, serving_seconds, list(bundle.problems))


def warmup(progress: bool = False) -> None:
    """Compile (or load from numba's cache) every kernel the batch and the API use, on tiny synthetic data."""
    import typer
    from rich.console import Console

    console = Console()
    console.print("compiling the kernels (about a minute the first time, seconds once cached) ...")
    report = warm_up(show_progress=progress)
    if report.serving_problems:
        Console(stderr=True).print(f"[red]warm-up failed:[/red] {'; '.join(report.serving_problems)}")
        raise typer.Exit(code=1)
    console.print(f"kernels ready: batch {report.batch_seconds:.1f} s, serving model load "
                  f"{report.serving_seconds:.1f} s")
