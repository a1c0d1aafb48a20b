"""The published `relevance` blob (docs/ARCHITECTURE.md section 3) held in memory by the API: the
relevance model's sparse item-item structure, used for a new reader's candidates ("because you
read ...") and for similar books ("read together").

Candidates C (most read first): each candidate i keeps its K strongest weights b_ij (how much
reading i raises j) as local indices `neighbours (C, K)`, posterior means `weights (C, K)` and
sds `weight_sd (C, K)`. A reader who read the candidates H gets, for every candidate j,

    relevance_j = sum_{i in H} b_ij          (only the stored top-K weights count: sparse)
    sd_j        = sqrt(sum_{i in H} sd_ij^2) (the weights' marginal sds, treated as independent)

and the reason of j is the read i with the largest b_ij. Loaded once per version (never unpickled),
validated on load: a blob that does not match the documented shapes raises `RelevanceFormatError`.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import numpy as np

REQUIRED = ("item_keys", "item_isbns", "neighbours", "weights", "weight_sd", "popularity",
            "fallback_mean", "fallback_sd", "liked_threshold", "like_weight", "n_users")
MIN_SD = 1e-6  # a fallback sd of 0 would make P(liked) a step


class RelevanceFormatError(ValueError):
    """The `relevance` blob is unreadable or does not have the documented shapes."""


def _scalar(arrays: dict[str, np.ndarray], name: str) -> float:
    value = np.asarray(arrays[name])
    if value.size != 1 or value.dtype.kind not in "biuf":
        raise RelevanceFormatError(f"{name} is not a number")
    out = float(value.reshape(()))
    if not np.isfinite(out):
        raise RelevanceFormatError(f"{name} is not finite")
    return out


@dataclass
class RelevanceModel:
    item_keys: list[str]
    item_isbns: list[str]
    neighbours: np.ndarray  # (C, K) int64, local indices
    weights: np.ndarray  # (C, K) float64
    weight_sd: np.ndarray  # (C, K) float64
    popularity: np.ndarray  # (C,) float64, readers per candidate
    fallback_mean: np.ndarray  # (C,) the book-level rating model's predictive mean
    fallback_sd: np.ndarray  # (C,) and sd
    liked_threshold: float
    like_weight: float
    n_users: int
    local_of_work: dict[str, int] = field(default_factory=dict)
    popular_order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def from_blob(cls, blob: bytes) -> "RelevanceModel":
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise RelevanceFormatError(f"unreadable relevance blob ({type(exc).__name__})") from exc
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise RelevanceFormatError(f"relevance blob lacks {missing}")
        keys, isbns = arrays["item_keys"], arrays["item_isbns"]
        nb, w, wsd = arrays["neighbours"], arrays["weights"], arrays["weight_sd"]
        if keys.ndim != 1 or keys.dtype.kind not in "US":
            raise RelevanceFormatError("item_keys is not a 1-d string array")
        c = len(keys)
        if isbns.shape != (c,) or isbns.dtype.kind not in "US":
            raise RelevanceFormatError("item_isbns does not match item_keys")
        if nb.ndim != 2 or nb.shape[0] != c or nb.dtype.kind not in "iu":
            raise RelevanceFormatError("neighbours is not an integer (C, K) array")
        if w.shape != nb.shape or wsd.shape != nb.shape or w.dtype.kind != "f" or wsd.dtype.kind != "f":
            raise RelevanceFormatError("weights / weight_sd do not match neighbours")
        if nb.size and (nb.min() < 0 or nb.max() >= c):
            raise RelevanceFormatError("a neighbour index is out of range")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(wsd)) and np.all(wsd >= 0)):
            raise RelevanceFormatError("weights or weight_sd are not finite (or negative sds)")
        per_item = {}
        for name in ("popularity", "fallback_mean", "fallback_sd"):
            v = arrays[name]
            if v.shape != (c,) or v.dtype.kind not in "biuf" or not np.all(np.isfinite(v)):
                raise RelevanceFormatError(f"{name} is not a finite (C,) array")
            per_item[name] = np.asarray(v, dtype=np.float64)
        if np.any(per_item["fallback_sd"] < 0) or np.any(per_item["popularity"] < 0):
            raise RelevanceFormatError("negative fallback_sd or popularity")
        like_weight = _scalar(arrays, "like_weight")
        if like_weight < 0:
            raise RelevanceFormatError("like_weight is negative")
        item_keys = [str(k) for k in keys.tolist()]
        model = cls(
            item_keys=item_keys, item_isbns=[str(i) for i in isbns.tolist()],
            neighbours=np.asarray(nb, dtype=np.int64), weights=np.asarray(w, dtype=np.float64),
            weight_sd=np.asarray(wsd, dtype=np.float64), popularity=per_item["popularity"],
            fallback_mean=per_item["fallback_mean"], fallback_sd=np.maximum(per_item["fallback_sd"], MIN_SD),
            liked_threshold=_scalar(arrays, "liked_threshold"), like_weight=like_weight,
            n_users=max(int(_scalar(arrays, "n_users")), 0),
        )
        local: dict[str, int] = {}
        for i, key in enumerate(item_keys):
            local.setdefault(key, i)
        model.local_of_work = local
        model.popular_order = np.lexsort((np.arange(c), -model.popularity))
        return model

    def __len__(self) -> int:
        return len(self.item_keys)

    def neighbours_of(self, local: int, n: int) -> list[tuple[int, float, float]]:
        """The candidates reading `local` raises most: (local index, weight, sd), positive weights
        only, strongest first (ties: the more read candidate first), never the book itself."""
        nb, w, sd = self.neighbours[local], self.weights[local], self.weight_sd[local]
        keep = (nb != local) & (w > 0)
        nb, w, sd = nb[keep], w[keep], sd[keep]
        # One entry per neighbour (a malformed row could repeat one): keep its largest weight.
        order = np.lexsort((nb, -w))
        seen: set[int] = set()
        out = []
        for k in order.tolist():
            j = int(nb[k])
            if j in seen:
                continue
            seen.add(j)
            out.append((j, float(w[k]), float(sd[k])))
            if len(out) == n:
                break
        return out

    def score(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Relevance of every candidate some read item points to, read items excluded:
        (candidates, relevance, relevance sd, because) with `because` the read candidate (local
        index) with the largest weight towards each. Sorted by relevance, strongest first (ties:
        most read first). Work: |history| x K."""
        history = np.unique(np.asarray(history, dtype=np.int64))
        c = len(self.item_keys)
        empty = np.zeros(0, dtype=np.int64)
        if not history.size or not self.neighbours.shape[1]:
            return empty, np.zeros(0), np.zeros(0), empty
        nb = self.neighbours[history].ravel()
        w = self.weights[history].ravel()
        var = self.weight_sd[history].ravel() ** 2
        src = np.repeat(history, self.neighbours.shape[1])
        rel = np.bincount(nb, weights=w, minlength=c)
        rel_var = np.bincount(nb, weights=var, minlength=c)
        touched = np.bincount(nb, minlength=c) > 0
        touched[history] = False
        because = np.full(c, -1, dtype=np.int64)
        order = np.lexsort((-w, nb))  # by neighbour, then largest weight first
        first = np.r_[True, nb[order][1:] != nb[order][:-1]]
        because[nb[order][first]] = src[order][first]
        cand = np.flatnonzero(touched)
        cand = cand[np.lexsort((cand, -rel[cand]))]
        return cand, rel[cand], np.sqrt(rel_var[cand]), because[cand]
