"""Statistics of a normalised data set (``bookrec data stats``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bookrec.data.io import Dataset
from bookrec.data.normalize import isin
from bookrec.data.prep import attach_work_keys, average_per_work, explicit, kcore

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def _quantiles(counts: pd.Series) -> dict[str, float]:
    if len(counts) == 0:
        return {}
    q = counts.quantile(list(QUANTILES))
    return {f"p{int(k * 100)}" if k < 1 else "max": float(v) for k, v in q.items()} | {"mean": float(counts.mean())}


def compute_stats(dataset: Dataset, min_user: int = 5, min_book: int = 10) -> dict:
    """Counts, rating distribution, activity/popularity quantiles, sparsity and a k-core preview.

    The k-core preview works as training does: explicit ratings joined to books, editions
    merged into works, iterated k-core with ``min_user`` ratings per user and ``min_book`` per work.
    """
    r = dataset.ratings
    rating = r["rating"].to_numpy()
    is_explicit = rating > 0
    integer = bool(np.all(rating == np.round(rating)))
    binned = np.clip(np.round(rating), 0, 10).astype(int)
    dist = np.bincount(binned, minlength=11)
    ex_total = int(is_explicit.sum())
    in_books = isin(r["isbn"], dataset.books["isbn"])

    per_user = r.groupby("user_id").size()
    per_book = r.groupby("isbn").size()
    ex = explicit(r)
    joined = attach_work_keys(ex, dataset.books)
    works = average_per_work(joined)
    core = kcore(works, min_user, min_book)
    n_u, n_w = works["user_id"].nunique(), works["work_key"].nunique()
    core_u, core_w = core["user_id"].nunique(), core["work_key"].nunique()
    ages = dataset.users["age"]

    return {
        "source": dataset.source,
        "counts": dataset.counts()
        | {
            "users_with_ratings": int(per_user.size),
            "rated_isbns": int(per_book.size),
            "works": int(dataset.books["work_key"].nunique()),
            "ratings_isbn_not_in_books": int((~in_books).sum()),
        },
        "share_isbn_not_in_books": float((~in_books).mean()) if len(r) else 0.0,
        "ratings_integer": integer,
        "rating_distribution": {str(v): int(dist[v]) for v in range(11)},
        "explicit_share_by_value": {str(v): float(dist[v] / ex_total) if ex_total else 0.0 for v in range(1, 11)},
        "explicit_mean": float(rating[is_explicit].mean()) if ex_total else None,
        "activity_per_user": _quantiles(per_user),
        "users_with_20_or_more_share": float((per_user >= 20).sum() / max(len(dataset.users), 1)),
        "popularity_per_isbn": _quantiles(per_book),
        "isbns_rated_once_share": float((per_book == 1).mean()) if len(per_book) else 0.0,
        "ages_missing_share": float(ages.isna().mean()) if len(ages) else 0.0,
        "books_year_missing_share": float(dataset.books["year"].isna().mean()) if len(dataset.books) else 0.0,
        "explicit_joined": {
            "ratings": len(joined),
            "users": int(joined["user_id"].nunique()),
            "isbns": int(joined["isbn"].nunique()),
            "user_work_pairs": len(works),
            "works": int(n_w),
            "sparsity": 1.0 - len(works) / (n_u * n_w) if n_u and n_w else 1.0,
        },
        "kcore": {
            "min_user": min_user,
            "min_book": min_book,
            "users": int(core_u),
            "works": int(core_w),
            "ratings": len(core),
            "sparsity": 1.0 - len(core) / (core_u * core_w) if core_u and core_w else 1.0,
        },
    }


def stats_tables(stats: dict):
    """Rich tables for the terminal: overview and rating distribution."""
    from rich.table import Table

    overview = Table(title=f"Data set ({stats['source']})", show_header=True)
    overview.add_column("measure")
    overview.add_column("value", justify="right")
    c = stats["counts"]
    rows = [
        ("users", f"{c['users']:,}"),
        ("users with ratings", f"{c['users_with_ratings']:,}"),
        ("books (ISBNs)", f"{c['books']:,}"),
        ("works (editions merged)", f"{c['works']:,}"),
        ("ratings", f"{c['ratings']:,}"),
        ("explicit (1-10)", f"{c['explicit']:,}"),
        ("implicit (0)", f"{c['implicit']:,}"),
        ("ratings on ISBNs not in books", f"{c['ratings_isbn_not_in_books']:,} ({stats['share_isbn_not_in_books']:.1%})"),
        ("explicit mean", f"{stats['explicit_mean']:.2f}" if stats["explicit_mean"] is not None else "-"),
        ("ratings per user p50 / p90 / p99 / max", _q(stats["activity_per_user"])),
        ("users with >= 20 interactions", f"{stats['users_with_20_or_more_share']:.1%}"),
        ("ratings per ISBN p50 / p90 / p99 / max", _q(stats["popularity_per_isbn"])),
        ("ISBNs rated once", f"{stats['isbns_rated_once_share']:.1%}"),
        ("ages missing or junk", f"{stats['ages_missing_share']:.1%}"),
        ("sparsity (explicit, user x work)", f"{stats['explicit_joined']['sparsity']:.5%}"),
    ]
    k = stats["kcore"]
    rows.append(
        (
            f"k-core (user >= {k['min_user']}, work >= {k['min_book']})",
            f"{k['users']:,} users x {k['works']:,} works, {k['ratings']:,} ratings ({k['sparsity']:.2%} empty)",
        )
    )
    for name, value in rows:
        overview.add_row(name, value)

    dist = Table(title="Rating distribution" + ("" if stats["ratings_integer"] else " (continuous, rounded)"))
    dist.add_column("rating", justify="right")
    dist.add_column("count", justify="right")
    dist.add_column("share of explicit", justify="right")
    for v in range(11):
        share = "" if v == 0 else f"{stats['explicit_share_by_value'][str(v)]:.2%}"
        dist.add_row(str(v), f"{stats['rating_distribution'][str(v)]:,}", share)
    return overview, dist


def _q(q: dict) -> str:
    if not q:
        return "-"
    return " / ".join(f"{q[k]:,.0f}" for k in ("p50", "p90", "p99", "max"))
