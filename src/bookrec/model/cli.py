"""CLI commands of bookrec.model: train and evaluate.

Heavy imports (numba, pandas, arviz) happen inside the commands so ``bookrec --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def _fail(message: str, code: int | None = None) -> None:
    """Bad input (a missing or unreadable data folder or artifact) unless `code` says otherwise."""
    from bookrec.exitcodes import USAGE, fail

    fail(message, code=USAGE if code is None else code)


def _load_training(data: Path):
    from bookrec.config import get_settings
    from bookrec.data.io import load_dataset
    from bookrec.data.prep import prepare_training

    settings = get_settings()
    try:
        dataset = load_dataset(data)
    except Exception as exc:  # noqa: BLE001 - reported as a clean CLI error
        _fail(f"cannot load data set {data}: {exc}")
    training = prepare_training(dataset, settings)
    if len(training.train[2]) == 0:
        _fail("no explicit ratings survive the k-core filter; lower BOOKREC_MIN_USER_RATINGS / MIN_BOOK_RATINGS")
    return settings, training


def _split_fingerprint(settings, training) -> dict:
    return {
        "seed": settings.seed, "min_user_ratings": settings.min_user_ratings,
        "min_book_ratings": settings.min_book_ratings, "validation_fraction": settings.validation_fraction,
        "test_fraction": settings.test_fraction, **training.sizes(),
    }


def train(
    data: Path = typer.Option(..., "--data", help="Normalised data directory (bookrec data import / synth)"),
    out: Path = typer.Option(..., "--out", help="Artifact path: writes OUT (.npz) and its .json manifest"),
    factors: Optional[int] = typer.Option(None, "--factors", min=1, help="Latent factors k (default: settings, else 10)"),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Post-burn-in sweeps per chain"),
    burn_in: Optional[int] = typer.Option(None, "--burn-in", min=0, help="Burn-in sweeps per chain"),
    chains: Optional[int] = typer.Option(None, "--chains", min=1, help="Number of chains"),
    thin: Optional[int] = typer.Option(None, "--thin", min=1, help="Keep every THIN-th draw"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: settings.seed)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
    as_json: bool = typer.Option(False, "--json", help="Print the result (artifact, convergence, validation) as JSON"),
) -> None:
    """Train the Bayesian matrix factorisation (Gibbs sampling) on the training split and save it."""
    from bookrec.contracts.params import default
    from bookrec.logging import console as make_console
    from bookrec.exitcodes import stops_cleanly
    from bookrec.model.bpmf import BPMF

    console = make_console(quiet=as_json)
    settings, training = _load_training(data)
    params = dict(
        n_factors=_first_set(factors, settings.n_factors, default("n_factors")),
        n_samples=_first_set(samples, settings.n_samples, default("n_samples")),
        burn_in=_first_set(burn_in, settings.burn_in, default("burn_in")),
        n_chains=_first_set(chains, settings.n_chains, default("n_chains")),
        thin=_first_set(thin, settings.thin, default("thin")),
        max_kept_samples=_first_set(settings.max_kept_samples, default("max_kept_samples")),
        seed=_first_set(seed, settings.seed),
        rating_range=(settings.rating_min, settings.rating_max),
        warm_start=_first_set(settings.warm_start, default("warm_start")),
        show_progress=progress and not as_json,
    )
    sizes = training.sizes()
    console.print(f"training on {sizes['train']:,} ratings: {sizes['core_users']:,} readers x "
                  f"{sizes['core_books']:,} works (validation {sizes['validation']:,}, test held back)")
    model = BPMF(**params)
    u, i, r = training.train
    # The validation split is only reported (running metrics); nothing during training reads the test split.
    with stops_cleanly(f"interrupted: nothing was written to {out}", prefix="training"):
        model.fit(u, i, r, training.n_users, training.n_items,
                  eval_set=training.validation if len(training.validation[2]) else None, eval_every=25)
    try:
        npz, manifest = model.save(out, metadata={"split": _split_fingerprint(settings, training), "data": str(data)})
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror or exc}", code=1)
    diag = model.diagnostics_
    console.print(f"fitted in {model.fit_seconds_:.1f} s ({model.n_kept_} kept samples, chains: {model.chain_mode_})")
    console.print(f"convergence: {'[green]converged' if diag['converged'] else '[yellow]NOT converged'}[/] "
                  f"(max R-hat {diag['max_rhat']:.3f} < {diag['rhat_threshold']}, min bulk ESS "
                  f"{diag['min_ess_bulk']:.0f}, min tail ESS {diag['min_ess_tail']:.0f}, needed {diag['min_ess']:.0f})")
    if "summary" in diag:
        console.print(f"  {diag['summary']}")
    if diag["failing"]:
        console.print(f"  not yet converged: {', '.join(diag['failing'][:10])}")
    if model.eval_history_:
        last = model.eval_history_[-1]
        console.print(f"validation: rmse {last['rmse']:.3f}, nll {last['nll']:.3f}, 90% coverage {last['coverage90']:.3f}")
    console.print(f"saved {npz} and {manifest}")
    if as_json:
        typer.echo(json.dumps({
            "artifact": str(npz), "manifest": str(manifest), "parameters": {k: v for k, v in params.items() if k != "show_progress"},
            "fit_seconds": model.fit_seconds_, "kept_samples": model.n_kept_, "chain_mode": model.chain_mode_,
            "convergence": {key: diag.get(key) for key in (
                "converged", "max_rhat", "min_ess_bulk", "min_ess_tail", "rhat_threshold", "min_ess", "summary", "failing")},
            "validation": model.eval_history_[-1] if model.eval_history_ else None,
        }, indent=1, default=_jsonable))


def _jsonable(value):
    """numpy scalars and arrays in the JSON output."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def evaluation_report(model, training, k: int = 10) -> dict:
    """Rating metrics of the model and of the two baselines on the test split (all fitted on the
    same training split), and the catalogue coverage of the model's top-k by predicted rating.
    Top-N ranking quality is measured over every untouched work by the batch (``meta.ranking``)
    and by ``bookrec bench ranking``."""
    import numpy as np
    import scipy.sparse as sp

    from bookrec.model.baselines import BiasBaseline, GlobalMean
    from bookrec.model.metrics import catalogue_coverage, evaluate_predictive

    u, i, r = training.train
    rr = model.rating_range
    rows = {"bpmf": model,
            "bias": BiasBaseline(rating_range=rr).fit(u, i, r, training.n_users, training.n_items),
            "global_mean": GlobalMean(rating_range=rr).fit(u, i, r)}
    report = {name: evaluate_predictive(m, *training.test) for name, m in rows.items()}
    seen = sp.csr_matrix((np.ones_like(r), (u, i)), shape=(training.n_users, training.n_items))
    users = np.unique(training.test[0])
    items, *_ = model.recommend_all(users, n=k, exclude_csr=seen)
    report["bpmf"]["catalogue_coverage"] = catalogue_coverage(items, training.n_items)
    return report


def evaluate(
    data: Path = typer.Option(..., "--data", help="The data directory the model was trained on"),
    model_path: Path = typer.Option(..., "--model", help="Artifact written by `bookrec train`"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
    k: int = typer.Option(10, "--k", min=1, help="List length of the catalogue-coverage figure"),
) -> None:
    """Rating accuracy and calibration of a trained model on the test split, beside the global-mean
    and bias baselines (top-N ranking: `bookrec bench ranking` and the batch's meta.ranking)."""
    from rich.table import Table

    from bookrec.logging import console as make_console
    from bookrec.model.artifact import ArtifactError, load_model

    try:
        model = load_model(model_path)
    except ArtifactError as exc:
        _fail(str(exc))
    settings, training = _load_training(data)
    expected = (model.metadata_ or {}).get("split", {})
    actual = _split_fingerprint(settings, training)
    mismatch = {key: (expected[key], actual[key]) for key in expected if key in actual and expected[key] != actual[key]}
    if mismatch or model.n_users_ != training.n_users or model.n_items_ != training.n_items:
        _fail(f"the model was trained on another split or data set (differences: {mismatch or 'matrix size'})")
    report = evaluation_report(model, training, k=k)
    report["convergence"] = {key: model.diagnostics_[key] for key in ("converged", "max_rhat", "min_ess_bulk", "min_ess_tail")}
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=_jsonable))
        return
    table = Table(title=f"test split ({report['bpmf']['n']:,} ratings)")
    table.add_column("metric")
    for name in ("bpmf", "bias", "global_mean"):
        table.add_column(name, justify="right")
    scalar = ["rmse", "mae", "nll", "crps"]
    for key in scalar:
        table.add_row(key, *(f"{report[n][key]:.4f}" for n in ("bpmf", "bias", "global_mean")))
    for lv in report["bpmf"]["coverage"]:
        table.add_row(f"coverage {lv}", *(f"{report[n]['coverage'][lv]:.3f}" for n in ("bpmf", "bias", "global_mean")))
        table.add_row(f"width {lv}", *(f"{report[n]['width'][lv]:.2f}" for n in ("bpmf", "bias", "global_mean")))
    table.add_row(f"catalogue coverage (top {k} by rating)", f"{report['bpmf']['catalogue_coverage']:.3f}", "", "")
    console = make_console()
    console.print(table)
    c = report["convergence"]
    console.print(f"convergence: {'converged' if c['converged'] else 'NOT converged'} (max R-hat {c['max_rhat']:.3f})")


def _first_set(*values):
    """The first value that is not None: the command line, then the settings, then the model's default."""
    return next(value for value in values if value is not None)
