"""The non-model tiers earn their place on held-out data.

- tier 3 (similar reading: the relevance model's candidates, rated by the book-level model) must
  beat the popularity list (tier 4) and plain interaction-count popularity on interactions held
  out from readers who only have implicit interactions;
- tier 2 (exact fold-in through the model) must beat tier 3's rating estimate on ratings held out
  from readers the model never saw.

Holding out rows of readers outside the training core never changes the core: the k-core is the
largest sub-graph meeting the degree thresholds; deleting edges of readers not in it leaves it a
valid sub-graph of the reduced data, and the reduced data's core cannot be larger. So the model
trained on the reduced data is the one those readers would really meet.

Significance (both tests): paired comparisons on one seeded data set. For hit rates, McNemar:
with b readers hit only by A and c only by B, under "A and B are equally good" b ~ Bin(b + c, 1/2),
so z = (b - c) / sqrt(b + c) is approximately N(0, 1); z > 2 rejects at one-sided p ~ 0.023.
For squared errors, per-reader mean differences d_u are independent across readers, so
z = mean(d) / (sd(d) / sqrt(n)) is approximately N(0, 1) by the CLT; same threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bookrec.batch import pipeline as P
from bookrec.batch.presets import resolve_parameters
from bookrec.config import Settings
from bookrec.data.io import Dataset
from bookrec.data.prep import attach_work_keys, prepare_training
from bookrec.data.synth import SynthPreset, generate
from bookrec.model.foldin import FoldInMany
from bookrec.model.popularity import popularity_lists, user_segments

N = 10
Z_REQUIRED = 2.0


def settings(tmp_path, **kw) -> Settings:
    return Settings(n_samples=40, burn_in=40, max_kept_samples=40, n_chains=2, top_n=N,
                    tuned_config_path=tmp_path / "absent.json", seed=5, **kw)


def without(dataset: Dataset, pairs: pd.DataFrame) -> Dataset:
    """The data set minus every edition of each held-out (user_id, work_key) pair."""
    joined = attach_work_keys(dataset.ratings, dataset.books)
    gone = joined.merge(pairs[["user_id", "work_key"]], on=["user_id", "work_key"])[["user_id", "isbn"]]
    keep = ~pd.MultiIndex.from_frame(dataset.ratings[["user_id", "isbn"]]).isin(pd.MultiIndex.from_frame(gone))
    return Dataset(dataset.ratings.loc[keep].reset_index(drop=True), dataset.books, dataset.users,
                   dataset.manifest, dataset.truth)


def one_per_user(frame: pd.DataFrame, rng) -> pd.DataFrame:
    pairs = frame.groupby(["user_id", "work_key"], sort=True)["rating"].mean().reset_index()
    pairs["key"] = rng.random(len(pairs))
    return pairs.sort_values(["user_id", "key"]).groupby("user_id").head(1).drop(columns="key")


def mcnemar_z(a_hits: np.ndarray, b_hits: np.ndarray) -> float:
    b = int((a_hits & ~b_hits).sum())
    c = int((~a_hits & b_hits).sum())
    return (b - c) / np.sqrt(max(b + c, 1))


def test_similar_reading_beats_popularity_on_held_out_interactions(tmp_path):
    s = settings(tmp_path)
    dataset = generate("small", seed=3).dataset
    rng = np.random.default_rng(0)
    joined = attach_work_keys(dataset.ratings, dataset.books)
    per_user = joined.groupby("user_id").agg(n_explicit=("rating", lambda r: int((r > 0).sum())),
                                             n_works=("work_key", "nunique"))
    implicit_only = per_user.index[(per_user["n_explicit"] == 0) & (per_user["n_works"] >= 3)]
    held = one_per_user(joined[joined["user_id"].isin(implicit_only)], rng)
    assert len(held) >= 500  # enough readers for the test to have power

    reduced = without(dataset, held)
    ctx = P.prepare(reduced, s, resolve_parameters(s, "development"))
    P.train(ctx, show_progress=False)
    P.fit_relevance(ctx)
    tiers = P.assign_tiers(ctx)
    users = ctx.interactions.users.encode(held["user_id"].to_numpy())
    works = ctx.catalog.works.encode(held["work_key"].to_numpy())
    tier3 = np.isin(users, tiers["similar_reading"])
    assert tier3.mean() > 0.95  # they are what tier 3 is for (the rest read only rare books)
    users, works = users[tier3], works[tier3]

    block = P.ranker(ctx).rank(users)
    hybrid_hit = (block.works == works[:, None]).any(axis=1)

    segments = user_segments(reduced.users, ctx.interactions.users.values)
    pop = popularity_lists(ctx.interactions, ctx.rating_model, segments, users, N, s.interval_level,
                           s.popularity_min_segment_ratings)
    pop_works = np.stack([pop.lists[k].works for k in pop.user_list])
    pop_hit = (pop_works == works[:, None]).any(axis=1)

    # plain interaction-count popularity (minus what each reader touched): a stronger baseline
    # for predicting interactions than tier 4's rating-based list
    counts = ctx.catalog.n_interactions.astype(np.float64)
    seen = ctx.interactions.seen[users].toarray() > 0
    count_top = np.argsort(-np.where(seen, -1.0, counts[None, :]), axis=1, kind="stable")[:, :N]
    count_hit = (count_top == works[:, None]).any(axis=1)

    z = mcnemar_z(hybrid_hit, pop_hit)
    print(f"hit@{N}: similar reading {hybrid_hit.mean():.3f}, popularity {pop_hit.mean():.3f}, "
          f"interaction counts {count_hit.mean():.3f}; McNemar z vs popularity {z:.2f}, "
          f"vs counts {mcnemar_z(hybrid_hit, count_hit):.2f} ({len(users)} readers)")
    assert z > Z_REQUIRED
    assert mcnemar_z(hybrid_hit, count_hit) > Z_REQUIRED


# A denser synthetic world than `small`: there the factor structure is not learnable from the
# ratings at all (BPMF's test RMSE equals the bias baseline's), so no method using factors can
# beat one using biases only. Here BPMF does learn factors, which is what fold-in relies on.
DENSE = SynthPreset(
    "dense", n_users=3000, n_books=800, n_ratings=150_000, n_implicit=60_000, n_authors=300, n_publishers=50,
    active_user_fraction=0.9, activity_sigma=1.0, popularity_sigma=0.8, missing_isbn_share=0.02,
)


def test_fold_in_beats_similar_reading_on_held_out_ratings(tmp_path):
    s = settings(tmp_path)
    dataset = generate(DENSE, seed=1).dataset
    rng = np.random.default_rng(0)
    core = prepare_training(dataset, s).ratings
    n_rated = core.groupby("user_id").size()
    chosen = rng.choice(n_rated.index[n_rated >= 10].to_numpy(), size=300, replace=False)
    rows = core[core["user_id"].isin(chosen)].copy()
    rows["key"] = rng.random(len(rows))
    rows = rows.sort_values(["user_id", "key"])
    rows["rank"] = rows.groupby("user_id").cumcount()
    rows["n"] = rows.groupby("user_id")["work_key"].transform("size")
    held = rows[rows["rank"] < rows["n"] // 2][["user_id", "work_key", "rating"]]

    ctx = P.prepare(without(dataset, held), s, resolve_parameters(s, "development"))
    # The chosen readers become new readers: the model never trains on them (tier 2's situation).
    gone = ctx.training.users.encode(chosen)
    tr = ctx.training
    tr.train, tr.validation, tr.test = (tuple(a[~np.isin(t[0], gone)] for a in t) for t in (tr.train, tr.validation, tr.test))
    P.train(ctx, show_progress=False)

    users = ctx.interactions.users.encode(held["user_id"].to_numpy())
    works = ctx.catalog.works.encode(held["work_key"].to_numpy())
    work_to_core = np.full(len(ctx.catalog), -1)
    work_to_core[ctx.core_works] = np.arange(len(ctx.core_works))
    ok = work_to_core[works] >= 0
    users, works, y = users[ok], works[ok], held["rating"].to_numpy(dtype=np.float64)[ok]
    readers, local = np.unique(users, return_inverse=True)
    rated, _ = P._core_matrices(ctx, readers)  # their remaining (known) ratings
    folder = FoldInMany(ctx.serving, s.interval_level)
    means, chols = folder.fold(rated)
    fold_pred, _, _ = folder.predict(means, chols, local, work_to_core[works])
    offset, offset_var = ctx.rating_model.user_offsets(ctx.interactions, users)
    tier3_pred, _, _ = ctx.rating_model.predictive(works, s.interval_level, offset=offset, offset_var=offset_var)

    diff = pd.Series((y - tier3_pred) ** 2 - (y - fold_pred) ** 2).groupby(local).mean()
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    rmse_fold, rmse_t3 = np.sqrt(np.mean((y - fold_pred) ** 2)), np.sqrt(np.mean((y - tier3_pred) ** 2))
    print(f"held-out RMSE: fold-in {rmse_fold:.3f}, similar-reading estimate {rmse_t3:.3f}; "
          f"paired z {z:.2f} over {len(diff)} readers, {len(y)} ratings")
    assert rmse_fold < rmse_t3
    assert z > Z_REQUIRED
