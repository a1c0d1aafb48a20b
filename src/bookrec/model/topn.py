"""Top-N evaluation as recommender engineers do it: hide some of each reader's interactions,
rank every work the reader has not touched, and ask how many hidden ones come back.

Items are works (editions merged); an interaction is any (reader, work) pair, rated or not
(rating 0 = an interaction without a rating, BookCrossing's convention). Two kinds of relevance:
"all" held-out interactions, and "liked" ones (a held-out explicit rating in the top 30% of the
rating scale). Accuracy metrics are averaged over readers with at least one relevant item of
that kind; the per-reader values are kept (aligned with the evaluated readers, NaN where
undefined) so that two models ranked for the same readers can be compared pairwise.

Everything is vectorised: membership of (reader, work) pairs is tested on sorted int64 keys
``row * n_items + item``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from bookrec.data.prep import IndexMap, attach_work_keys

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.data.io import Dataset

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]

LIKED_SHARE = 0.7  # liked = the top 30% of the rating scale


def interactions_from_dataset(dataset: "Dataset") -> tuple[np.ndarray, np.ndarray, np.ndarray, IndexMap, IndexMap]:
    """(user_idx, item_idx, rating, users, items): one row per (reader, work).

    Ratings join to books on ISBN (ratings of ISBNs absent from the books file are dropped: there
    is no title to recommend). The rating of a pair is the mean of its explicit ratings (> 0),
    or 0 when the reader only touched the work without rating it. Rows come sorted by
    (user, work).
    """
    rated = attach_work_keys(dataset.ratings[["user_id", "isbn", "rating"]], dataset.books)
    explicit_only = rated["rating"].astype("float64").where(rated["rating"] > 0)
    frame = rated[["user_id", "work_key"]].assign(rating=explicit_only)
    # The mean skips NaN, so a pair with only implicit rows comes out NaN -> 0.
    per_pair = frame.groupby(["user_id", "work_key"], sort=True, observed=True)["rating"].mean().reset_index()
    users = IndexMap.from_values(per_pair["user_id"].to_numpy())
    items = IndexMap.from_values(per_pair["work_key"].to_numpy())
    return (
        users.encode(per_pair["user_id"].to_numpy()),
        items.encode(per_pair["work_key"].to_numpy()),
        per_pair["rating"].fillna(0.0).to_numpy(dtype=np.float32),
        users,
        items,
    )


def holdout_split(user_idx, item_idx, rating, fraction: float = 0.2, seed: int = 0,
                  min_interactions: int = 2) -> tuple[Triple, Triple]:
    """Per reader with >= ``min_interactions`` interactions, hold out round(fraction * n) of them
    (at least 1, and at least 1 kept in train); readers with fewer stay whole in train.

    Seeded; the result does not depend on the input row order (rows are keyed by (user, item)
    before the shuffle). Returns ``(train, test)``, each a ``(user, item, rating)`` triple of
    arrays in input order.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    rating = np.asarray(rating)
    n_rows = user_idx.shape[0]
    rng = np.random.default_rng(seed)
    canonical = np.lexsort((item_idx, user_idx))
    shuffle_key = np.empty(n_rows)
    shuffle_key[canonical] = rng.random(n_rows)
    order = np.lexsort((shuffle_key, user_idx))
    users_sorted = user_idx[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]]) if n_rows else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, n_rows])
    # Half-up rounding (numpy's round is half-to-even: 2.5 -> 2).
    n_hold = np.clip(np.floor(fraction * counts + 0.5).astype(np.int64), 1, np.maximum(counts - 1, 1))
    n_hold[counts < max(min_interactions, 2)] = 0
    rank_sorted = np.arange(n_rows) - np.repeat(starts, counts)
    held = np.zeros(n_rows, dtype=bool)
    held[order] = rank_sorted < np.repeat(n_hold, counts)
    keep = ~held
    return (user_idx[keep], item_idx[keep], rating[keep]), (user_idx[held], item_idx[held], rating[held])


def liked_threshold(rating_range) -> float:
    """Lowest liked rating: lo + 0.7 (hi - lo), so 1-10 -> 7.3 (ratings 8+), 0.5-5 -> 3.65 (4+)."""
    lo, hi = float(rating_range[0]), float(rating_range[1])
    return lo + LIKED_SHARE * (hi - lo) - 1e-9


def paired_se(a, b) -> float:
    """Standard error of the mean per-reader difference a - b (readers where both are defined)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired_se needs per-reader vectors of the same readers (same shape)")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.shape[0] < 2:
        return float("nan")
    return float(d.std(ddof=1) / math.sqrt(d.shape[0]))


@dataclass
class TopNResult:
    """Metrics of one model's top-N lists for a fixed set of evaluated readers.

    ``metrics``: ``recall@k``, ``ndcg@k``, ``mrr@k`` (all held-out interactions), the same with a
    ``_liked`` suffix, and per k the beyond-accuracy figures ``coverage@k``, ``distinct@k``,
    ``top_share@k``, ``overlap@k``, ``novelty@k``. ``per_user`` holds each accuracy metric per
    evaluated reader (NaN where the reader has no relevant item of that kind).
    """

    ks: tuple[int, ...]
    n_eval_users: int
    users_all: int
    users_liked: int
    liked_threshold: float
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray] = field(repr=False)

    def compare(self, other: "TopNResult", metric: str = "recall@10") -> tuple[float, float]:
        """(mean per-reader difference self - other, its paired standard error)."""
        a, b = self.per_user[metric], other.per_user[metric]
        both = np.isfinite(a) & np.isfinite(b)
        diff = float(np.mean(a[both] - b[both])) if both.any() else float("nan")
        return diff, paired_se(a, b)

    def summary(self) -> dict:
        """JSON-able: plain floats and ints (None for a metric no reader defines)."""
        out: dict = {"eval_users": self.n_eval_users, "users_all": self.users_all,
                     "users_liked": self.users_liked, "liked_threshold": round(self.liked_threshold, 6)}
        for name, value in self.metrics.items():
            out[name] = float(value) if np.isfinite(value) else None
        return out


def _row_positions(eval_users: np.ndarray, users: np.ndarray) -> np.ndarray:
    """Row of each user in ``eval_users`` (-1 when not evaluated)."""
    if eval_users.shape[0] == 0:
        return np.full(users.shape[0], -1, dtype=np.int64)
    order = np.argsort(eval_users, kind="stable")
    sorted_users = eval_users[order]
    pos = np.minimum(np.searchsorted(sorted_users, users), sorted_users.shape[0] - 1)
    return np.where(sorted_users[pos] == users, order[pos], -1)


def _dedupe_rows(rec: np.ndarray) -> np.ndarray:
    """Blank (-1) repeated items within a list, keeping the first occurrence."""
    order = np.argsort(rec, axis=1, kind="stable")
    srt = np.take_along_axis(rec, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return np.where(dup, -1, rec)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if sorted_keys.shape[0] == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.shape[0] - 1)
    return sorted_keys[pos] == keys


def _accuracy(hit: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-row recall, NDCG and MRR at k (binary relevance); NaN where n_rel == 0."""
    h = hit[:, :k]
    kk = h.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal_cum = np.cumsum(discounts)
    defined = n_rel > 0
    n_ideal = np.clip(np.minimum(n_rel, k), 1, k)
    hits = h.sum(axis=1)
    dcg = (h * discounts[:kk]).sum(axis=1)
    any_hit = h.any(axis=1)
    first = np.argmax(h, axis=1) if kk else np.zeros(h.shape[0], np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = hits / n_ideal
        ndcg = dcg / ideal_cum[n_ideal - 1]
    mrr = np.where(any_hit, 1.0 / (first + 1.0), 0.0)
    nan = np.nan
    return {"recall": np.where(defined, recall, nan), "ndcg": np.where(defined, ndcg, nan),
            "mrr": np.where(defined, mrr, nan)}


def _mean_overlap(lists: np.ndarray, n_pairs: int, seed: int) -> float:
    """Mean Jaccard similarity of two readers' top-k sets over a seeded sample of reader pairs
    (every pair when there are no more than ``n_pairs``); pairs of two empty lists are skipped."""
    n = lists.shape[0]
    if n < 2:
        return float("nan")
    if n * (n - 1) // 2 <= n_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, n_pairs)
        j = (i + rng.integers(1, n, n_pairs)) % n
    a, b = lists[i], lists[j]
    inter = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).sum(axis=(1, 2))
    union = (a >= 0).sum(axis=1) + (b >= 0).sum(axis=1) - inter
    ok = union > 0
    return float(np.mean(inter[ok] / union[ok])) if ok.any() else float("nan")


def popularity_rank(item_popularity) -> np.ndarray:
    """Rank of each item by popularity, 1 = most popular; tied items share their mean rank."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(item_popularity, dtype=np.float64), method="average")


def evaluate_topn(recommended, eval_users, test: Triple, rating_range, item_popularity,
                  ks=(10, 20), n_items: int | None = None, overlap_pairs: int = 2000,
                  seed: int = 0) -> TopNResult:
    """Score top-N lists against held-out interactions.

    ``recommended`` (n_eval_users, K) item indices, best first, -1 for empty slots (an item
    repeated within a list counts once); ``eval_users`` the reader of each row (distinct);
    ``test`` the held-out ``(user, item, rating)`` triple (rows of readers not evaluated are
    ignored); ``item_popularity`` the train interaction count per item (its length is the
    catalogue size unless ``n_items`` is given).

    Per k: recall@k = hits / min(k, relevant), NDCG@k (binary gains, ideal = min(k, relevant)
    hits at the top), MRR@k (1 / rank of the first hit, 0 without a hit), for all held-out
    interactions and for liked ones (explicit rating >= ``liked_threshold(rating_range)``);
    catalogue coverage, distinct works, share of lists holding the most recommended work, mean
    pairwise Jaccard overlap of lists, novelty (mean popularity rank of recommended items).
    """
    rec = np.asarray(recommended, dtype=np.int64)
    if rec.ndim != 2:
        raise ValueError("recommended must be a 2-d (readers, slots) array")
    eval_users = np.asarray(eval_users, dtype=np.int64)
    if eval_users.shape[0] != rec.shape[0]:
        raise ValueError("one row of recommended per evaluated reader")
    if np.unique(eval_users).shape[0] != eval_users.shape[0]:
        raise ValueError("eval_users must be distinct")
    popularity = np.asarray(item_popularity, dtype=np.float64)
    n_items = int(popularity.shape[0] if n_items is None else n_items)
    if popularity.shape[0] < n_items:  # works never seen in train: popularity 0
        popularity = np.r_[popularity, np.zeros(n_items - popularity.shape[0])]
    if rec.size and rec.max() >= n_items:
        raise ValueError("recommended holds an item index >= n_items")
    n_eval = rec.shape[0]
    rec = _dedupe_rows(np.where(rec < 0, -1, rec))
    valid = rec >= 0

    tu, ti, tr = (np.asarray(a) for a in test)
    rows = _row_positions(eval_users, np.asarray(tu, dtype=np.int64))
    inside = rows >= 0
    keys_all = rows[inside] * n_items + np.asarray(ti, dtype=np.int64)[inside]
    threshold = liked_threshold(rating_range)
    tr_in = np.asarray(tr, dtype=np.float64)[inside]
    keys_liked = keys_all[(tr_in > 0) & (tr_in >= threshold)]
    keys_all, keys_liked = np.unique(keys_all), np.unique(keys_liked)
    n_rel_all = np.bincount(keys_all // n_items, minlength=n_eval)
    n_rel_liked = np.bincount(keys_liked // n_items, minlength=n_eval)

    rec_keys = np.arange(n_eval, dtype=np.int64)[:, None] * n_items + np.maximum(rec, 0)
    hit_all = _member(keys_all, rec_keys) & valid
    hit_liked = _member(keys_liked, rec_keys) & valid

    metrics: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    ranks = popularity_rank(popularity) if n_items else np.zeros(0)
    for k in ks:
        for suffix, hit, n_rel in (("", hit_all, n_rel_all), ("_liked", hit_liked, n_rel_liked)):
            for name, values in _accuracy(hit, n_rel, k).items():
                key = f"{name}@{k}{suffix}"
                per_user[key] = values
                metrics[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    for k in ks:
        lists = rec[:, :k]
        items = lists[lists >= 0]
        counts = np.bincount(items, minlength=n_items)
        n_lists = int((lists >= 0).any(axis=1).sum())
        distinct = int((counts > 0).sum())
        metrics[f"coverage@{k}"] = distinct / n_items if n_items else float("nan")
        metrics[f"distinct@{k}"] = float(distinct)
        metrics[f"top_share@{k}"] = float(counts.max() / n_lists) if n_lists else float("nan")
        metrics[f"overlap@{k}"] = _mean_overlap(lists, overlap_pairs, seed)
        metrics[f"novelty@{k}"] = float(ranks[items].mean()) if items.size else float("nan")
    return TopNResult(ks=tuple(int(k) for k in ks), n_eval_users=n_eval, users_all=int((n_rel_all > 0).sum()),
                      users_liked=int((n_rel_liked > 0).sum()), liked_threshold=threshold,
                      metrics=metrics, per_user=per_user)
