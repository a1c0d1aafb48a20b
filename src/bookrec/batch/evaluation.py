"""The batch's top-N evaluation: every untouched work ranked, held-out interactions found again.

Evaluated readers are a seeded sample of the rating model's own readers (every model is defined
for them). Held out: the rating model's test ratings (it never trained on them) plus the same
share (``test_fraction``) of each evaluated reader's unrated interactions. The relevance model is
refitted without the held-out pairs, with the ridge the serving fit chose; the rating model is
the one being published. Rows: our four ranking modes, then baselines (interaction-count
popularity, relevance alone, and the rating model's predicted rating over every work, which is
how the project ranked before). Tuned ALS, BPR, EASE and item-kNN baselines are in
``bookrec bench ranking``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from bookrec.model.foryou import KnownReaders
from bookrec.model.interactions import Interactions

KS = (10, 20)
MODES = (("for_you", "For you (default)"), ("mean", "Highest rated"), ("lower", "Safe bets"), ("sample", "Explore"))


def _held_out(ctx, rng: np.random.Generator):
    """(eval users, held-out user/work/rating arrays) in interaction indices."""
    from bookrec.model.topn import holdout_split

    s = ctx.settings
    tu, ti, tr = ctx.training.test
    users = ctx.core_users[tu]
    works = ctx.core_works[ti]
    candidates = np.unique(users)
    if len(candidates) > s.ranking_eval_readers:
        candidates = np.sort(rng.choice(candidates, s.ranking_eval_readers, replace=False))
    keep = np.isin(users, candidates)
    users, works, ratings = users[keep], works[keep], tr[keep].astype(np.float64)
    # their unrated interactions: a test_fraction share of each reader's
    inter = ctx.interactions
    seen = inter.seen[candidates].tocoo()
    rated = sp.csr_matrix((np.ones(len(inter.explicit_user), np.float32), (inter.explicit_user, inter.explicit_work)),
                          shape=inter.seen.shape)[candidates]
    unrated = np.asarray(rated[seen.row, seen.col]).ravel() == 0
    iu, iw = candidates[seen.row[unrated]], seen.col[unrated].astype(np.int64)
    _, (hu, hw, _) = holdout_split(iu, iw, np.zeros(len(iu)), fraction=s.test_fraction, seed=s.seed)
    return candidates, np.r_[users, hu], np.r_[works, hw], np.r_[ratings, np.zeros(len(hu))]


def _without(inter: Interactions, users, works) -> Interactions:
    """The interactions minus the held-out (user, work) pairs (seen matrix and explicit ratings)."""
    n_works = inter.seen.shape[1]
    held = np.unique(users.astype(np.int64) * n_works + works)
    seen = inter.seen.tocoo()
    keys = seen.row.astype(np.int64) * n_works + seen.col
    keep = ~np.isin(keys, held)
    new_seen = sp.csr_matrix((seen.data[keep], (seen.row[keep], seen.col[keep])), shape=inter.seen.shape)
    ekeys = inter.explicit_user.astype(np.int64) * n_works + inter.explicit_work
    ekeep = ~np.isin(ekeys, held)
    return Interactions(inter.users, new_seen, inter.explicit_user[ekeep], inter.explicit_work[ekeep],
                        inter.explicit_rating[ekeep], inter.n_unjoined)


def evaluate_ranking(ctx) -> dict:
    """The ``meta.ranking`` block (docs/ARCHITECTURE.md)."""
    from bookrec.batch.pipeline import ranker, relevance_estimator, relevance_grid
    from bookrec.model.relevance import most_read_unexcluded
    from bookrec.model.shrinkage import RatingModel
    from bookrec.model.topn import evaluate_topn, paired_se

    s = ctx.settings
    rng = np.random.default_rng(s.seed)
    eval_users, hu, hw, hr = _held_out(ctx, rng)
    if not len(eval_users):
        return {}
    train = _without(ctx.interactions, hu, hw)
    # Refitted as the serving model was, ridge choice included: the serving fit's ridge saw the held-out pairs.
    relevance = relevance_estimator(s).fit(train.seen)
    # The fallback rating model too is refitted without the held-out ratings, so that no tier sees them.
    rating_model = RatingModel.fit(train, len(ctx.catalog), s.rating_min, s.rating_max)
    rank = ranker(ctx, relevance, train, rating_model)
    rank.n = max(KS)
    core_pos = np.searchsorted(ctx.core_users, eval_users)
    parts: dict[str, list] = {mode: [] for mode, _ in MODES}
    mode_rngs = {mode: np.random.default_rng(s.seed) for mode, _ in MODES}
    for a in range(0, len(eval_users), s.batch_chunk_users):
        pos = core_pos[a:a + s.batch_chunk_users]
        candidates = rank.candidates(eval_users[a:a + len(pos)], KnownReaders.of(ctx.model, pos))
        for mode, _ in MODES:  # every mode orders the same candidates
            parts[mode].append(rank.order(candidates, mode, rng=mode_rngs[mode]).works)
    lists: dict[str, np.ndarray] = {mode: np.concatenate(p) for mode, p in parts.items()}
    popularity = np.asarray(train.seen.sum(axis=0)).ravel()
    exclude = train.seen[eval_users]
    lists["popularity"] = most_read_unexcluded(np.lexsort((np.arange(len(popularity)), -popularity)), exclude, max(KS))
    lists["relevance"] = relevance.recommend(exclude, max(KS), exclude)[0]
    lists["rating"] = _rating_lists(ctx, core_pos, exclude, max(KS))
    labels = dict(MODES) | {"popularity": "Popularity (interaction count)", "relevance": "Relevance alone (Bayesian EASE)",
                            "rating": "Predicted rating over every work (BPMF)"}
    rating_range = (s.rating_min, s.rating_max)
    results = {name: evaluate_topn(rec, eval_users, (hu, hw, hr), rating_range, popularity, ks=KS,
                                   n_items=len(ctx.catalog), seed=s.seed) for name, rec in lists.items()}
    first = results["for_you"]
    rows = []
    for name, res in results.items():
        mt = res.metrics
        rows.append({
            "model": name, "label": labels[name], "kind": "ours" if name in dict(MODES) else "baseline",
            **{f"{metric}@{k}": mt[f"{metric}@{k}"] for k in KS for metric in ("recall", "ndcg")},
            "mrr@10": mt["mrr@10"], "liked_recall@10": mt["recall@10_liked"], "liked_ndcg@10": mt["ndcg@10_liked"],
            "coverage": mt["coverage@10"], "distinct_works": int(mt["distinct@10"]), "top_work_share": mt["top_share@10"],
            "overlap": mt["overlap@10"], "novelty": mt["novelty@10"],
            "recall@10_se": None if name == "for_you" else paired_se(first.per_user["recall@10"], res.per_user["recall@10"]),
        })
    recall = first.per_user["recall@10"]
    per_reader = {  # what the next batch's publish gate compares against (bookrec.batch.gate)
        "fingerprint": _fingerprint(ctx),
        "readers": ctx.interactions.users.values[eval_users].tolist(),
        "recall@10": [None if not np.isfinite(v) else round(float(v), 6) for v in recall],
    }
    return {
        "per_reader": per_reader,
        "protocol": (f"{len(eval_users):,} of the rating model's readers; held out: its test ratings and "
                     f"{s.test_fraction:.0%} of each reader's unrated interactions; every untouched work ranked"),
        "k": 10, "n_readers": int(len(eval_users)), "n_held_out": int(len(hu)),
        "n_liked": int((hr >= rank.liked_threshold).sum()), "liked_threshold": float(rank.liked_threshold),
        "relevance_l2": float(relevance.l2_), "relevance_popularity_l2": float(relevance.popularity_l2_),
        "relevance_candidates": int(len(relevance.items_)),
        "relevance_l2_validation": relevance_grid(relevance),
        "rows": rows,
    }


def _fingerprint(ctx) -> str:
    from bookrec.batch.gate import data_fingerprint

    inter = ctx.interactions
    return data_fingerprint(inter.users.values, inter.seen.indptr, inter.seen.indices, inter.explicit_user,
                            inter.explicit_work, inter.explicit_rating, np.array([ctx.settings.seed, ctx.settings.test_fraction]))


def _rating_lists(ctx, core_pos: np.ndarray, exclude: sp.csr_matrix, n: int) -> np.ndarray:
    """The rating model's top n by predictive mean over its works (works as catalogue indices)."""
    from bookrec.model.foldin import FoldInMany

    folder = FoldInMany(ctx.serving, ctx.settings.interval_level)
    work_to_core = np.full(len(ctx.catalog), -1, dtype=np.int64)
    work_to_core[ctx.core_works] = np.arange(len(ctx.core_works))
    coo = exclude.tocoo()
    ok = work_to_core[coo.col] >= 0
    excl = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (coo.row[ok], work_to_core[coo.col[ok]])),
                         shape=(exclude.shape[0], len(ctx.core_works)))
    out = np.full((exclude.shape[0], n), -1, dtype=np.int64)
    chunk = ctx.settings.batch_chunk_users
    for a in range(0, len(core_pos), chunk):
        pos = core_pos[a:a + chunk]
        items = folder.recommend_known(KnownReaders.of(ctx.model, pos).draws, excl[a:a + len(pos)], n)[0]
        out[a:a + len(pos)] = np.where(items >= 0, ctx.core_works[np.maximum(items, 0)], -1)
    return out
