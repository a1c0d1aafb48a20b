"""`bookrec bench optimize`: does tuning pay? Default vs tuned configuration, validation and test.

1. Synthetic data (``small`` preset by default), prepared exactly as the batch prepares it.
2. The default configuration (the batch's ``development`` preset with the model's default priors)
   is trained on the train split and scored on validation and test.
3. A study of N trials searches on train + validation only (the test split is not handed to it).
4. The chosen configuration is retrained with the same seed and scored on validation and test.

The test split is looked at only in steps 2 and 4, after the search: it is the honest check that
what the tuner found on validation carries over.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def default_configuration(n_chains: int | None = None) -> dict[str, Any]:
    """What `bookrec batch` trains with when nothing is tuned: the development preset plus the
    model's default priors (``max_kept_samples`` as the preset caps it)."""
    from bookrec.batch.presets import get_preset
    from bookrec.optimize.space import default_bpmf_kwargs

    preset = get_preset("development")
    chains = n_chains or preset.n_chains
    params = default_bpmf_kwargs(
        chains,
        n_factors=preset.n_factors,
        n_samples=preset.n_samples,
        burn_in=preset.burn_in,
        thin=preset.thin,
        warm_start=preset.warm_start,
    )
    params["max_kept_samples"] = preset.max_kept_samples
    return params


def fit_and_score(params: dict[str, Any], training, seed: int, fixed: dict[str, Any]) -> dict[str, Any]:
    """Train on ``training.train``; score on validation and on test (benchmark only)."""
    from bookrec.model import BPMF
    from bookrec.optimize.objective import validation_metrics

    model = BPMF(**params, **fixed, seed=seed, show_progress=False)
    started = time.perf_counter()
    model.fit(*training.train, n_users=training.n_users, n_items=training.n_items)
    seconds = time.perf_counter() - started
    return {
        "validation": validation_metrics(model, training.validation),
        "test": validation_metrics(model, training.test),
        "test_logpdf": _pointwise_logpdf(model, training.test),
        "train_seconds": seconds,
    }


def _pointwise_logpdf(model, triplet) -> np.ndarray:
    """Log predictive density of each held-out rating (for a paired comparison of two models)."""
    from bookrec.model import kernels
    from bookrec.model import metrics as M

    means, sds = M._as_2d(*model.predictive_components(triplet[0], triplet[1]))
    return np.asarray(kernels.mixture_logpdf(np.asarray(triplet[2], dtype=np.float64), means, sds))


def _warm_up(fixed: dict[str, Any]) -> None:
    """Load the compiled kernels once so the first timed fit does not pay for it."""
    from bookrec.model import BPMF

    u = np.arange(60) % 6
    i = np.arange(60) % 5
    BPMF(n_factors=2, n_samples=4, burn_in=1, show_progress=False, **fixed).fit(u, i, np.full(60, 5.0))


def bench_optimize(
    preset: str = "small",
    trials: int = 20,
    seed: int = 42,
    sampler_seed: int = 0,
    storage: str | None = None,
    objective: str = "nll",
    pruner: str = "median",
    data_dir: Path | None = None,
) -> dict[str, Any]:
    from bookrec.config import Settings
    from bookrec.optimize.objective import TuningData, objective_options_from_settings
    from bookrec.optimize.space import from_bpmf_kwargs
    from bookrec.optimize.study import run_optimization, summary_tables

    console = Console() if sys.stdout.isatty() else Console(width=120)
    settings = Settings(seed=seed)
    wall_started = time.perf_counter()
    training = _training_data(preset, seed, data_dir, settings, console)
    options = objective_options_from_settings(settings, objective=objective)

    defaults = default_configuration(options.space.n_chains)
    _warm_up(options.fixed)
    with console.status("training the default configuration"):
        default_scores = fit_and_score(defaults, training, seed, options.fixed)

    tuning_data = TuningData.from_training(training)  # the search never sees training.test
    tmpdir = None
    if storage is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="bookrec-bench-optimize-")
        storage = f"sqlite:///{tmpdir.name}/optuna.db"
    study_name = f"bench-{preset}-{int(time.time())}"
    console.print(f"study {study_name}: {trials} trials, validation {objective}, {pruner} pruner")
    study_started = time.perf_counter()
    result = run_optimization(
        tuning_data,
        n_trials=trials,
        storage_url=storage,
        study_name=study_name,
        options=options,
        pruner=pruner,  # type: ignore[arg-type]
        sampler_seed=sampler_seed,
        config_path=None,
        # the search starts from the default (as `bookrec optimize` does), keeping all its draws
        start_points=[from_bpmf_kwargs(defaults)],
        show_progress=console.is_terminal,
    )
    study_seconds = time.perf_counter() - study_started
    for table in summary_tables(result):
        console.print(table)
    if result.chosen is None:
        console.print("[red]no trial completed[/red]")
        return {}
    tuned = dict(result.chosen.user_attrs["bpmf_params"])
    with console.status("retraining the tuned configuration"):
        tuned_scores = fit_and_score(tuned, training, seed, options.fixed)
    wall = time.perf_counter() - wall_started
    if tmpdir is not None:
        tmpdir.cleanup()

    console.print(_default_vs_tuned(default_scores, tuned_scores, result.chosen.number, preset, trials, objective))
    verdict, test_gain, test_gain_se = _verdict(console, default_scores, tuned_scores, objective)
    console.print(f"study wall time {study_seconds:.1f} s; whole benchmark {wall:.1f} s")
    return {
        "default": default_scores,
        "tuned": tuned_scores,
        "tuned_params": tuned,
        "default_params": defaults,
        "study_seconds": study_seconds,
        "wall_seconds": wall,
        "verdict": verdict,
        "test_nll_gain": test_gain,
        "test_nll_gain_se": test_gain_se,
    }


def _training_data(preset: str, seed: int, data_dir: Path | None, settings, console):
    """The training core and its splits, from ``data_dir`` or freshly generated synthetic data."""
    from bookrec.data.prep import prepare_training

    if data_dir is not None:
        from bookrec.data.io import load_dataset

        dataset = load_dataset(data_dir, with_truth=False)
        source = str(data_dir)
    else:
        from bookrec.data.synth import generate

        with console.status(f"generating synthetic {preset} data"):
            dataset = generate(preset, seed=seed).dataset
        source = f"synthetic {preset} (seed {seed})"
    training = prepare_training(dataset, settings)
    sizes = training.sizes()
    console.print(
        f"{source}: {sizes['core_users']:,} users x {sizes['core_books']:,} works; "
        f"train {sizes['train']:,} / validation {sizes['validation']:,} / test {sizes['test']:,}"
    )
    return training


def _default_vs_tuned(default_scores: dict, tuned_scores: dict, chosen: int, preset: str, trials: int,
                      objective: str) -> Table:
    table = Table(title=f"default vs tuned ({preset}, {trials} trials, objective validation {objective})")
    table.add_column("configuration")
    for split in ("validation", "test"):
        for metric in ("RMSE", "NLL", "cov90"):
            table.add_column(f"{split[:3] if split == 'validation' else split} {metric}", justify="right")
    table.add_column("fit s", justify="right")
    for name, scores in (("default", default_scores), (f"tuned #{chosen}", tuned_scores)):
        row = [name]
        for split in ("validation", "test"):
            m = scores[split]
            row += [f"{m['rmse']:.4f}", f"{m['nll']:.4f}", f"{m['coverage90']:.3f}"]
        row.append(f"{scores['train_seconds']:.1f}")
        table.add_row(*row)
    return table


def _verdict(console, default_scores: dict, tuned_scores: dict, objective: str) -> tuple[dict, float, float]:
    """Whether tuned beats default per split and metric, and the paired test NLL gain with its SE."""
    verdict = {
        split: {m: tuned_scores[split][m] < default_scores[split][m] for m in ("rmse", "nll")}
        for split in ("validation", "test")
    }
    # Paired comparison on the same test ratings: mean difference of NLL and its standard error
    # (sd of the per-rating differences / sqrt(n)); a difference within ~2 SE is not resolved.
    diff = tuned_scores["test_logpdf"] - default_scores["test_logpdf"]  # > 0: tuned is better
    test_gain, test_gain_se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))
    console.print(
        f"test NLL gain of tuned over default: {test_gain:+.4f} nats per rating (paired SE {test_gain_se:.4f})"
    )
    console.print(
        f"tuned beats default on validation {objective}: {verdict['validation'][objective] if objective in ('rmse', 'nll') else '-'}; "
        f"on test NLL: {verdict['test']['nll']}, test RMSE: {verdict['test']['rmse']}"
    )
    return verdict, test_gain, test_gain_se
