"""`bookrec bench ranking`: top-N ranking quality of the baselines (and of the project's own
recommender when it is importable), evaluated the way recommender engineers do it.

Protocol: every (reader, work) interaction, rated or not -> 20% of each reader's interactions
held out as test -> 20% of the rest held out as validation -> every model tuned on validation
(the same small grid budget for each, chosen by validation recall@10) -> refitted on the whole
train part -> for the evaluated readers (all test readers, or a seeded sample), every work the
reader did not touch in train is ranked; metrics from `bookrec.model.topn`.

Extra models join through ``register_model``: a provider receives the ``BenchContext`` and
returns ``ModelSpec`` entries (name, factory, grid, variants). A model object needs
``fit(X)`` (X: binary csr readers x works) and ``recommend_all(users, n, exclude_csr, **variant)``;
``BenchContext.lookup`` turns X back into (user, item, rating) triples for models that use
ratings.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

RATING_RANGE = (1.0, 10.0)  # explicit BookCrossing ratings (0 = implicit), docs/ARCHITECTURE.md section 1
N_RECOMMEND = 20
KS = (10, 20)
RANK_BY_MODES = ("for_you", "mean", "lower", "sample")


@dataclass
class ModelSpec:
    """One model of the table. ``factory(**params)`` builds an unfitted model; ``grid`` lists the
    params tried on validation (a single entry: no tuning); ``variants`` maps a row-name suffix to
    keyword arguments of ``recommend_all`` (one fit, several rows)."""

    name: str
    factory: Callable[..., Any]
    grid: list[dict]
    variants: dict[str, dict] = field(default_factory=lambda: {"": {}})
    baseline: bool = True


class RatingLookup:
    """Ratings of (reader, work) pairs, so a binary matrix's pairs can be turned back into
    (user, item, rating) triples (0 = an interaction without a rating)."""

    def __init__(self, user_idx, item_idx, rating, n_items: int):
        keys = np.asarray(user_idx, dtype=np.int64) * n_items + np.asarray(item_idx, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.rating = np.asarray(rating, dtype=np.float32)[order]
        self.n_items = int(n_items)

    def triples(self, X):
        coo = X.tocoo()
        users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
        pos = np.searchsorted(self.keys, users * self.n_items + items)
        pos = np.minimum(pos, self.keys.shape[0] - 1)
        if not np.array_equal(self.keys[pos], users * self.n_items + items):
            raise KeyError("the matrix holds pairs that are not interactions")
        return users, items, self.rating[pos]


@dataclass
class BenchContext:
    n_users: int
    n_items: int
    lookup: RatingLookup
    seed: int
    rating_range: tuple[float, float] = RATING_RANGE


ModelProvider = Callable[[BenchContext], list[ModelSpec]]
EXTRA_MODELS: list[ModelProvider] = []


def register_model(provider: ModelProvider) -> ModelProvider:
    """Add a provider of extra table rows (usable as a decorator)."""
    EXTRA_MODELS.append(provider)
    return provider


def baseline_specs(X, ctx: BenchContext) -> list[ModelSpec]:
    from bookrec.model.topn_baselines import ALS, BPR, EASE, ItemKNN, Popularity, default_grids

    grids = default_grids(X)
    seed = ctx.seed

    return [
        ModelSpec("Popularity", Popularity, grids["Popularity"]),
        ModelSpec("EASE", EASE, grids["EASE"]),
        ModelSpec("ItemKNN", lambda **p: ItemKNN(seed=seed, **p), grids["ItemKNN"]),
        ModelSpec("ALS", lambda **p: ALS(seed=seed, **p), grids["ALS"]),
        ModelSpec("BPR", lambda **p: BPR(seed=seed, **p), grids["BPR"]),
    ]


EVERY_WORK_BY_RATING = "every_work_by_rating"


class RecommenderAdapter:
    """``bookrec.model.Recommender`` behind the harness interface: fit(X) looks the ratings of
    X's pairs up (0 = implicit) and recommend_all keeps the items of its returned tuple."""

    def __init__(self, cls, ctx: BenchContext, params: dict):
        accepted = inspect.signature(cls).parameters
        defaults = {"seed": ctx.seed, "rating_range": ctx.rating_range, "show_progress": False}
        kwargs = {k: v for k, v in defaults.items() if k in accepted}
        kwargs.update(params)
        self.model = cls(**kwargs)
        self.lookup = ctx.lookup

    def fit(self, X) -> "RecommenderAdapter":
        users, items, ratings = self.lookup.triples(X)
        self.model.fit(users, items, ratings, X.shape[0], X.shape[1])
        return self

    def recommend_all(self, users, n, exclude_csr=None, rank_by: str = "for_you"):
        import scipy.sparse as sp

        users = np.asarray(users, dtype=np.int64)
        if exclude_csr is not None:
            # The harness hands one row per requested reader; Recommender indexes its exclusion
            # matrix by reader id, so the rows are moved to their readers' positions.
            n_users = self.model.n_users_
            place = sp.csr_matrix((np.ones(users.shape[0], np.float32), (users, np.arange(users.shape[0]))),
                                  shape=(n_users, users.shape[0]))
            exclude_csr = (place @ sp.csr_matrix(exclude_csr)).tocsr()
        if rank_by == EVERY_WORK_BY_RATING:  # the rating model alone, over every work: for comparison
            out = self.model.rating_model_.recommend_all(users, n, exclude_csr=exclude_csr, rank_by="mean")
        else:
            out = self.model.recommend_all(users, n, exclude_csr=exclude_csr, rank_by=rank_by)
        items = out[0] if isinstance(out, tuple) else out
        return np.asarray(items, dtype=np.int64)


def project_recommender(ctx: BenchContext) -> list[ModelSpec]:
    """The project's own recommender, one row per ranking mode, when it exists."""
    try:
        from bookrec.model import Recommender
    except ImportError:
        return []
    return [ModelSpec("bookrec", lambda **p: RecommenderAdapter(Recommender, ctx, p), [{}],
                      variants={**{f" {mode}": {"rank_by": mode} for mode in RANK_BY_MODES},
                                " BPMF mean, every work": {"rank_by": EVERY_WORK_BY_RATING}}, baseline=False)]


register_model(project_recommender)


def _sample(users: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or users.shape[0] <= limit:
        return users
    return np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))


def run_ranking(dataset, seed: int = 42, max_eval_users: int | None = None, specs: list[ModelSpec] | None = None,
                progress: Callable[[str], None] = lambda _: None) -> dict:
    """The whole protocol on one data set; returns the report (JSON-able) with per-reader
    vectors of every row under ``_per_user`` (removed before printing JSON)."""
    from bookrec.model.topn import evaluate_topn, holdout_split, interactions_from_dataset
    from bookrec.model.topn_baselines import interaction_matrix, tune

    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    u, i, r, users_map, items_map = interactions_from_dataset(dataset)
    n_users, n_items = len(users_map), len(items_map)
    train, test = holdout_split(u, i, r, 0.2, seed)
    fit_part, validation = holdout_split(*train, 0.2, seed + 1)
    X_train = interaction_matrix(train[0], train[1], n_users, n_items)
    X_fit = interaction_matrix(fit_part[0], fit_part[1], n_users, n_items)
    eval_users = _sample(np.unique(test[0]), max_eval_users, seed + 2)
    val_users = _sample(np.unique(validation[0]), max_eval_users, seed + 3)
    popularity = np.asarray(X_train.sum(axis=0)).ravel()
    phases["interactions and splits"] = time.perf_counter() - t0
    ctx = BenchContext(n_users, n_items, RatingLookup(u, i, r, n_items), seed)
    if specs is None:
        specs = baseline_specs(X_fit, ctx)
        for provider in EXTRA_MODELS:
            specs.extend(provider(ctx))
    report: dict = {
        "seed": seed, "rating_range": list(RATING_RANGE), "readers": n_users, "works": n_items,
        "interactions": int(r.shape[0]), "explicit_share": float(np.mean(r > 0)),
        "train": int(train[0].shape[0]), "validation": int(validation[0].shape[0]), "test": int(test[0].shape[0]),
        "eval_users": int(eval_users.shape[0]), "validation_users": int(val_users.shape[0]),
        "phases": phases, "models": {}, "_per_user": {},
    }
    progress(f"{n_users:,} readers x {n_items:,} works, {r.shape[0]:,} interactions "
             f"({report['explicit_share']:.0%} rated); train {report['train']:,} (of which validation "
             f"{report['validation']:,}), test {report['test']:,}; {eval_users.shape[0]:,} evaluated readers")
    exclude = X_train[eval_users]
    for spec in specs:
        entry: dict = {"baseline": spec.baseline}
        try:
            t = time.perf_counter()
            if len(spec.grid) > 1:
                params, table = tune(spec.factory, spec.grid, X_fit, validation, val_users, n=10,
                                     rating_range=RATING_RANGE)
            else:
                params, table = dict(spec.grid[0]), []
            entry["tune_seconds"] = time.perf_counter() - t
            entry["params"], entry["tuning"] = params, table
            progress(f"{spec.name}: tuned in {entry['tune_seconds']:.1f} s -> {params}")
            t = time.perf_counter()
            model = spec.factory(**params).fit(X_train)
            entry["fit_seconds"] = time.perf_counter() - t
            for suffix, kwargs in spec.variants.items():
                row = dict(entry)
                t = time.perf_counter()
                recs = model.recommend_all(eval_users, N_RECOMMEND, exclude, **kwargs)
                row["rank_seconds"] = time.perf_counter() - t
                t = time.perf_counter()
                res = evaluate_topn(recs, eval_users, test, RATING_RANGE, popularity, ks=KS, seed=seed)
                row["eval_seconds"] = time.perf_counter() - t
                row["metrics"] = res.summary()
                report["models"][spec.name + suffix] = row
                report["_per_user"][spec.name + suffix] = res
                progress(f"  {spec.name + suffix}: recall@10 {res.metrics['recall@10']:.4f}, fit "
                         f"{entry['fit_seconds']:.1f} s, rank {row['rank_seconds']:.1f} s")
            del model
        except Exception as exc:  # noqa: BLE001 - one failing model is a row of the table, not the end of the run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            report["models"][spec.name] = entry
            progress(f"{spec.name}: {entry['error']}")
    _compare_to_best_baseline(report)
    from bookrec.bench.model import _peak_mb

    report["peak_mb"] = _peak_mb()
    return report


def _compare_to_best_baseline(report: dict) -> None:
    """Each model's recall@10 against the best baseline's, paired over the evaluated readers."""
    ok = {name: row for name, row in report["models"].items() if "metrics" in row}
    baselines = [name for name, row in ok.items() if row["baseline"]]
    if baselines:
        def recall10(name):
            value = ok[name]["metrics"]["recall@10"]
            return -1.0 if value is None else value

        best = max(baselines, key=recall10)
        report["best_baseline"] = best
        for name, row in ok.items():
            diff, se = report["_per_user"][name].compare(report["_per_user"][best], "recall@10")
            row["recall@10_vs_best"] = {"diff": diff, "se": se}


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


def print_report(report: dict, console) -> None:
    from rich.table import Table

    from bookrec.model.topn import liked_threshold

    console.print("wall time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report["phases"].items()),
                  markup=False)
    phases = Table(title="Wall time per model and phase (seconds)")
    for col in ("model", "tune", "tune: fits", "tune: ranking", "refit", "rank", "evaluate"):
        phases.add_column(col, justify="left" if col == "model" else "right")
    for name, row in report["models"].items():
        tuning = row.get("tuning") or []
        phases.add_row(name, _fmt(row.get("tune_seconds"), ".1f"),
                       f"{sum(t['fit_seconds'] for t in tuning):.1f}" if tuning else "-",
                       f"{sum(t['rank_seconds'] for t in tuning):.1f}" if tuning else "-",
                       _fmt(row.get("fit_seconds"), ".1f"), _fmt(row.get("rank_seconds"), ".1f"),
                       _fmt(row.get("eval_seconds"), ".1f"))
    console.print(phases)
    seen = set()
    for name, row in report["models"].items():
        base = name.split(" ")[0]
        if base in seen or "params" not in row:
            continue
        seen.add(base)
        tried = "; ".join(f"{t['params']} -> {t['recall@10']:.4f}" for t in row["tuning"])
        console.print(f"{base}: chosen {row['params'] or '(defaults, no grid)'}" + (f"  [validation recall@10: {tried}]" if tried else ""),
                      markup=False)
    best = report.get("best_baseline")
    table = Table(title=(f"Top-N: {report['eval_users']:,} evaluated readers ({report['readers']:,} readers x "
                         f"{report['works']:,} works, {report['test']:,} held-out interactions; seed {report['seed']})"),
                  caption=(f"all = every held-out interaction; liked = held-out rating >= "
                           f"{liked_threshold(RATING_RANGE):.1f}; distinct .. novelty (mean popularity rank) at 10; "
                           f"dR@10 = mean per-reader difference in recall@10 (paired standard error)"))
    columns = ("model", "R@10", "N@10", "MRR@10", "R@20", "N@20", "R@10 liked", "N@10 liked", "distinct",
               "top-work share", "coverage", "overlap", "novelty", "fit s", f"dR@10 vs {best} (se)")
    for col in columns:
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, row in report["models"].items():
        if "metrics" not in row:
            table.add_row(name, *(["-"] * (len(columns) - 2)), row.get("error", ""))
            continue
        m = row["metrics"]
        paired = row.get("recall@10_vs_best")
        vs = "-" if name == best or paired is None else f"{paired['diff']:+.4f} ({_fmt(paired['se'], '.4f')})"
        table.add_row(name, _fmt(m["recall@10"], ".4f"), _fmt(m["ndcg@10"], ".4f"), _fmt(m["mrr@10"], ".4f"),
                      _fmt(m["recall@20"], ".4f"), _fmt(m["ndcg@20"], ".4f"), _fmt(m["recall@10_liked"], ".4f"),
                      _fmt(m["ndcg@10_liked"], ".4f"), _fmt(m["distinct@10"], ",.0f"), _fmt(m["top_share@10"], ".3f"),
                      _fmt(m["coverage@10"], ".3f"), _fmt(m["overlap@10"], ".3f"), _fmt(m["novelty@10"], ",.0f"),
                      _fmt(row["fit_seconds"], ".1f"), vs)
    console.print(table)
    first = next((row["metrics"] for row in report["models"].values() if "metrics" in row), None)
    if first is not None:
        console.print(f"readers with a held-out interaction: {first['users_all']:,}; with a held-out liked rating: "
                      f"{first['users_liked']:,}", markup=False)
    console.print(f"peak memory {report['peak_mb']:,.0f} MB", markup=False)


def bench_ranking(data_preset: str = "small", data_dir: Path | None = None, seed: int = 42,
                  max_eval_users: int | None = None, as_json: bool = False) -> dict:
    from rich.console import Console

    console = Console(width=max(Console().width, 200))  # the table is wide; keep it readable in logs
    say = (lambda *_: None) if as_json else (lambda msg: console.print(msg, markup=False))
    t = time.perf_counter()
    if data_dir is not None:
        from bookrec.data.io import load_dataset

        dataset = load_dataset(data_dir, with_truth=False)
        source = str(data_dir)
    else:
        from bookrec.data.synth import generate

        dataset = generate(data_preset, seed=seed).dataset
        source = f"synthetic {data_preset}"
    data_seconds = time.perf_counter() - t
    say(f"data: {source} in {data_seconds:.1f} s")
    if max_eval_users is None and (data_dir is not None or data_preset == "full"):
        max_eval_users = 20_000
    report = run_ranking(dataset, seed=seed, max_eval_users=max_eval_users, progress=say)
    report["phases"] = {"data": data_seconds, **report["phases"]}
    report["data"] = source
    report["total_seconds"] = time.perf_counter() - t
    report.pop("_per_user")
    if as_json:
        print(json.dumps(report, indent=1, default=float))
    else:
        print_report(report, console)
        console.print(f"total wall time {report['total_seconds']:.0f} s", markup=False)
    return report
