"""Readers with nothing usable (the batch's last tier) get the best-established books of readers like them.

Books are ranked by the *lower* credible bound of their Bayesian-shrunk mean rating, so a book
with three 10s does not beat one with four hundred ratings averaging 8.6: ranking with
uncertainty in mind. When a reader's country and age band are known and that segment has
enough explicit ratings, the book means are shrunk again within the segment (a segment effect
delta_ws ~ N(0, tau2_seg) on top of the global book mean, tau2_seg by moments); otherwise the
list falls back to country only, then age band only, then the global list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bookrec.model.interactions import Interactions
from bookrec.model.metrics import central_z
from bookrec.model.shrinkage import RatingModel

AGE_BAND_EDGES = (0, 18, 25, 35, 45, 55, 65, 200)
AGE_BAND_LABELS = ("<18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+")


@dataclass
class RankedList:
    """Top works of one segment with predicted rating and predictive interval."""

    segment: str
    works: np.ndarray
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class PopularityResult:
    lists: list[RankedList]  # index 0 is the global list
    user_list: np.ndarray  # per requested user: index into `lists`
    tau2_segment: float


def _age_band(age: pd.Series) -> pd.Series:
    cut = pd.cut(age.astype("Float64").astype(float), bins=AGE_BAND_EDGES, right=False, labels=AGE_BAND_LABELS)
    return cut.astype(object).where(cut.notna(), None)


def user_segments(users: pd.DataFrame, all_users: np.ndarray) -> pd.DataFrame:
    """Country (normalised) and age band per user index (None when unknown)."""
    frame = pd.DataFrame({"user_id": all_users})
    if len(users):
        info = users[["user_id"]].copy()
        country = users["country"] if "country" in users else pd.Series([None] * len(users))
        info["country"] = country.astype(object).where(country.notna(), None)
        info["country"] = info["country"].map(lambda c: c.strip().lower() or None if isinstance(c, str) else None)
        info["band"] = _age_band(users["age"]) if "age" in users else None
        frame = frame.merge(info.drop_duplicates("user_id"), on="user_id", how="left")
    else:
        frame["country"] = None
        frame["band"] = None
    frame["country"] = frame["country"].astype(object).where(frame["country"].notna(), None)
    frame["band"] = frame["band"].astype(object).where(frame["band"].notna(), None)
    return frame


def _rank(mean: np.ndarray, var: np.ndarray, z: float, candidates: np.ndarray, n: int) -> np.ndarray:
    """Indices into `candidates` of the n largest lower bounds (ties: smaller work index first)."""
    lb = mean - z * np.sqrt(var)
    order = np.lexsort((candidates, -lb))
    return order[:n]


def _segment_cells(interactions: Interactions, rm: RatingModel, segments: pd.DataFrame) -> dict:
    """Per level (country+age, country, age): each user's segment key, and the residuals of every
    explicit rating against its shrunk book mean with the rater's segment (seg, w, e)."""
    eu, ew = interactions.explicit_user, interactions.explicit_work
    resid = interactions.explicit_rating.astype(np.float64) - rm.post_mean[ew]
    country = segments["country"].to_numpy(dtype=object)
    band = segments["band"].to_numpy(dtype=object)
    levels = {
        "country+age": [f"{c}|{b}" if c is not None and b is not None else None for c, b in zip(country, band)],
        "country": [c if c is not None else None for c in country],
        "age": [b if b is not None else None for b in band],
    }
    cells_all = {}
    for level_name, keys in levels.items():
        key_arr = np.array(keys, dtype=object)
        rated_keys = key_arr[eu]
        has = np.array([k is not None for k in rated_keys], dtype=bool)
        cells = pd.DataFrame({"seg": rated_keys[has], "w": ew[has], "e": resid[has]})
        cells_all[level_name] = (key_arr, cells)
    return cells_all


def _segment_effect_variance(fine: pd.DataFrame, sigma2: float) -> float:
    """One moment estimate of the segment-effect variance, from the finest level's well-filled cells."""
    tau2_seg = 0.01 * sigma2
    if len(fine):
        g = fine.groupby(["seg", "w"])["e"].agg(["mean", "size"])
        g = g[g["size"] >= 5]
        if len(g) >= 2:
            tau2_seg = max(float((g["mean"] ** 2).mean() - (sigma2 / g["size"]).mean()), 0.01 * sigma2)
    return tau2_seg


def popularity_lists(
    interactions: Interactions,
    rating_model: RatingModel,
    segments: pd.DataFrame,
    request_users: np.ndarray,
    n: int,
    level: float,
    min_segment_ratings: int,
) -> PopularityResult:
    """Global and segment lists, and which list each of ``request_users`` (user indices) gets."""
    z = central_z(level)
    rm = rating_model
    candidates = np.flatnonzero(np.bincount(interactions.explicit_work, minlength=len(rm.post_mean)) > 0)
    if len(candidates) == 0:
        candidates = np.arange(len(rm.post_mean))
    lists: list[RankedList] = []

    def make(name: str, mean: np.ndarray, var: np.ndarray, cand: np.ndarray) -> int:
        top = _rank(mean, var, z, cand, n)
        works = cand[top]
        pred, lo, hi = rm.predictive(works, level, mean=mean[top], mean_var=var[top])
        lists.append(RankedList(name, works, pred, lo, hi))
        return len(lists) - 1

    make("global", rm.post_mean[candidates], rm.post_var[candidates], candidates)
    if len(request_users) == 0:
        return PopularityResult(lists=lists, user_list=np.zeros(0, dtype=np.int64), tau2_segment=float("nan"))
    global_order = candidates[_rank(rm.post_mean[candidates], rm.post_var[candidates], z, candidates, len(candidates))]

    cells_all = _segment_cells(interactions, rm, segments)
    tau2_seg = _segment_effect_variance(cells_all["country+age"][1], rm.sigma2)

    user_list = np.zeros(len(request_users), dtype=np.int64)
    assigned = np.zeros(len(request_users), dtype=bool)
    for level_name in ("country+age", "country", "age"):
        key_arr, cells = cells_all[level_name]
        if not len(cells):
            continue
        seg_counts = cells["seg"].value_counts()
        qualified = sorted(seg_counts.index[seg_counts >= min_segment_ratings])
        if not qualified:
            continue
        req_keys = key_arr[request_users]
        wanted = {k for k in req_keys[~assigned] if k is not None} & set(qualified)
        if not wanted:
            continue
        agg = cells[cells["seg"].isin(wanted)].groupby(["seg", "w"], sort=True)["e"].agg(["sum", "size"])
        list_of_seg: dict[str, int] = {}
        for seg in sorted(wanted):
            part = agg.loc[seg]
            w = part.index.to_numpy(dtype=np.int64)
            prec = 1.0 / tau2_seg + part["size"].to_numpy() / rm.sigma2
            delta_mean = part["sum"].to_numpy() / rm.sigma2 / prec
            mean = rm.post_mean.copy()
            var = rm.post_var.copy()
            mean[w] += delta_mean
            var[w] += 1.0 / prec
            # A segment's top n holds at most n unadjusted works, and those are the best
            # unadjusted ones of the global order: the first n + len(w) globally cover them.
            cand = np.union1d(global_order[: n + len(w)], w)
            list_of_seg[seg] = make(f"{level_name}:{seg}", mean[cand], var[cand], cand)
        mapped = pd.Series(req_keys, dtype=object).map(list_of_seg).to_numpy()
        take = ~assigned & pd.notna(mapped)
        user_list[take] = mapped[take].astype(np.int64)
        assigned |= take
    return PopularityResult(lists=lists, user_list=user_list, tau2_segment=tau2_seg)
