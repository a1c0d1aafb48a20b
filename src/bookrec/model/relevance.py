"""Relevance: will this reader pick this book up? A Bayesian item-item regression (EASE's posterior).

Every interaction counts, rated or not. With X the binary readers x items matrix of the candidate
items, each item's column is regressed on the other columns,

    x_.j = X_.,-j b_j + e,   e ~ N(0, sigma_j^2 I),   b_ij ~ N(0, sigma_j^2 / lambda_i),
    lambda_i = l2 + popularity_l2 * n_i       (n_i = readers of item i),

whose posterior is Gaussian and exact, with no sampling. The prior shrinks the weights of a much
read item harder (its co-occurrences are mostly popularity, not taste; with popularity_l2 = 0 this
is EASE, with p / (1 - p) it is Steck's dropout-regularised EDLAE, NeurIPS 2020). With
G = X^T X + diag(lambda) and P = G^-1:

    E[b_j]   = -P_-j,j / P_jj                              (EASE's weights; Steck 2019)
    Cov[b_j] = sigma_j^2 (P_-j,-j - P_-j,j P_j,-j / P_jj)  (the inverse of G_-j,-j, by blocks)

A reader with history x (x_j = 0 for an unread j) has relevance s_j = x . b_j, so with v = x P
and q = x^T P x (one product serves every item):

    E[s_j] = -v_j / P_jj,    Var[s_j] = sigma_j^2 (q - v_j^2 / P_jj).

sigma_j^2 is the regression's residual scale, RSS_j + sum_i lambda_i b_ij^2 = 1 / P_jj - lambda_j
(a Schur complement), divided by the number of readers.

The dense matrix limits the candidates to the ``max_items`` most read items; the rest are never
recommended by relevance (on BookCrossing they are read once or twice). ``l2="auto"`` picks the
ridge and ``popularity_l2`` together by recall on a held-out share of each reader's items, on a
grid whose ridge is a multiple of the mean item count (so the default transfers across data sets
of different sizes).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from bookrec.model.kernels.relevance import add_cooccurrences, strongest_history_item
from bookrec.model.kernels.topn import top_n_rows
from bookrec.model.params import NotFittedError, ParamsMixin

L2_GRID = (1.0, 3.0, 10.0)  # multiples of the mean interaction count of the candidates
POPULARITY_L2_GRID = (0.0, 1.0, 3.0)


def binary_matrix(user_idx, item_idx, n_users: int, n_items: int) -> sp.csr_matrix:
    """Readers x items, 1 where the reader touched the item (duplicates merged)."""
    x = sp.csr_matrix(
        (np.ones(len(user_idx), dtype=np.float32), (np.asarray(user_idx), np.asarray(item_idx))),
        shape=(n_users, n_items),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def holdout_rows(x: sp.csr_matrix, fraction: float, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each row's entries: round(fraction * n) held out for rows with >= 2 (>= 1 kept)."""
    x = x.tocsr()
    counts = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), counts)
    key = np.random.default_rng(seed).random(x.nnz)
    order = np.lexsort((key, rows))
    rank = np.empty(x.nnz, dtype=np.int64)
    rank[order] = np.arange(x.nnz) - np.repeat(x.indptr[:-1], counts)
    n_out = np.where(counts >= 2, np.clip(np.rint(fraction * counts), 1, counts - 1), 0).astype(np.int64)
    out = rank < n_out[rows]
    cols = x.indices
    held = sp.csr_matrix((np.ones(int(out.sum()), np.float32), (rows[out], cols[out])), shape=x.shape)
    kept = sp.csr_matrix((np.ones(int((~out).sum()), np.float32), (rows[~out], cols[~out])), shape=x.shape)
    return kept, held


def most_read_unexcluded(order: np.ndarray, exclude: sp.csr_matrix, n: int) -> np.ndarray:
    """Per row of ``exclude``: the first n items of ``order`` (most read first) it does not hold,
    -1 padded."""
    out = np.full((exclude.shape[0], n), -1, dtype=np.int64)
    for row in range(exclude.shape[0]):
        banned = exclude.indices[exclude.indptr[row]:exclude.indptr[row + 1]]
        head = order[: n + len(banned)]
        pick = head[~np.isin(head, banned)][:n]
        out[row, : len(pick)] = pick
    return out


def top_per_row(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of each row's n largest scores, best first (ties: lower index; -inf entries come last)."""
    n = max(min(n, scores.shape[1]), 0)
    no_exclusions = np.zeros(scores.shape[0] + 1, dtype=np.int64)
    return top_n_rows(np.ascontiguousarray(scores), no_exclusions, no_exclusions[:0], n)[0]


def _inverse(gram: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of a symmetric positive definite matrix as a C-ordered ``dtype`` array, and its
    diagonal in float64. ``gram`` is overwritten (Cholesky in place, no full-size temporaries)."""
    # A symmetric C array is its own Fortran transpose: LAPACK works on it without a copy.
    chol, info = sla.lapack.dpotrf(gram.T, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError("the Gram matrix is not positive definite")
    inv, info = sla.lapack.dpotri(chol, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError("could not invert the Gram matrix")
    diag = np.diag(inv).copy()
    upper = inv.T  # C-ordered view whose upper triangle is valid
    n = upper.shape[0]
    out = np.empty((n, n), dtype=dtype)
    for a in range(0, n, 512):
        b = min(a + 512, n)
        out[a:b, a:] = upper[a:b, a:]
        out[a:b, :a] = upper[:a, a:b].T
        block = out[a:b, a:b]
        i, j = np.tril_indices(b - a, -1)
        block[i, j] = block[j, i]
    return out, diag


def _gram(x: sp.csr_matrix, l2: float, popularity_l2: float) -> tuple[np.ndarray, np.ndarray]:
    """X^T X + diag(lambda) and lambda."""
    x = sp.csr_matrix(x)
    gram = np.zeros((x.shape[1], x.shape[1]))
    add_cooccurrences(x.indptr.astype(np.int64), x.indices.astype(np.int64), gram)
    prior = l2 + popularity_l2 * np.diag(gram)
    gram[np.diag_indices_from(gram)] += prior
    return gram, prior


def _recall_at(scores: np.ndarray, seen: sp.csr_matrix, held: sp.csr_matrix, k: int) -> float:
    scores[seen.nonzero()] = -np.inf
    top = top_per_row(scores, k)
    n_cols = scores.shape[1]
    held_rows, held_cols = held.nonzero()
    held_keys = np.sort(held_rows.astype(np.int64) * n_cols + held_cols)
    top_keys = np.arange(top.shape[0])[:, None].astype(np.int64) * n_cols + top
    hits = np.isin(top_keys, held_keys, assume_unique=False).sum(axis=1)
    n_held = np.diff(held.indptr)
    ok = n_held > 0
    return float(np.mean(hits[ok] / np.minimum(k, n_held[ok]))) if ok.any() else 0.0


class ItemRelevance(ParamsMixin):
    """Bayesian EASE: relevance scores with exact posterior standard deviations.

    Hyperparameters: ``l2`` (ridge, or "auto": chosen with ``popularity_l2`` on held-out
    recall), ``popularity_l2`` (extra prior precision per reader of an item), ``max_items`` (dense candidate set),
    ``min_item_interactions`` (an item needs this many readers to be a candidate).
    Fitted: ``items_`` (candidate item indices, most read first), ``precision_`` (P, float32),
    ``diag_`` (P_jj), ``noise_var_`` (sigma_j^2), ``l2_``, ``popularity_l2_``, ``prior_`` (lambda),
    ``popularity_`` (readers per item), ``l2_validation_`` (recall@10 per (l2, popularity_l2) when
    chosen automatically).
    """

    def __init__(self, l2: float | str = "auto", popularity_l2: float = 0.0, max_items: int = 8000,
                 min_item_interactions: int = 2, selection_items: int = 3000, selection_users: int = 5000,
                 seed: int = 0):
        self.l2 = l2
        self.popularity_l2 = popularity_l2
        self.max_items = max_items
        self.min_item_interactions = min_item_interactions
        self.selection_items = selection_items
        self.selection_users = selection_users
        self.seed = seed

    PARAM_NAMES = ("l2", "popularity_l2", "max_items", "min_item_interactions", "selection_items", "selection_users", "seed")

    # ------------------------------------------------------------------------------ fit
    def fit(self, x: sp.csr_matrix) -> ItemRelevance:
        """``x``: readers x items, nonzero where the reader touched the item."""
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        x.sum_duplicates()
        x.data[:] = 1.0
        self.n_users_, self.n_items_ = x.shape
        self.popularity_ = np.asarray(x.sum(axis=0)).ravel().astype(np.int64)
        eligible = np.flatnonzero(self.popularity_ >= max(1, self.min_item_interactions))
        order = np.lexsort((eligible, -self.popularity_[eligible]))
        self.items_ = eligible[order][: self.max_items]
        self.local_ = np.full(self.n_items_, -1, dtype=np.int64)
        self.local_[self.items_] = np.arange(len(self.items_))
        xc = x[:, self.items_]
        scale = float(self.popularity_[self.items_].mean()) if len(self.items_) else 1.0
        if self.l2 == "auto" and not len(self.items_):
            # Nothing to validate (every reader takes the popularity fallback); a valid ridge keeps
            # l2_ usable for a refit with the same settings.
            self.l2_, self.popularity_l2_, self.l2_validation_ = L2_GRID[0] * scale, POPULARITY_L2_GRID[0], {}
        elif self.l2 == "auto":
            (self.l2_, self.popularity_l2_), self.l2_validation_ = self._select_l2(xc, scale)
        else:
            self.l2_, self.popularity_l2_, self.l2_validation_ = float(self.l2), float(self.popularity_l2), {}
        if self.l2_ <= 0 or self.popularity_l2_ < 0:
            raise ValueError("l2 must be positive and popularity_l2 non-negative")
        if len(self.items_):
            gram, self.prior_ = _gram(xc, self.l2_, self.popularity_l2_)
            # C order: every sparse-dense product with a Fortran array would copy it first.
            self.precision_, self.diag_ = _inverse(gram, np.float32)
        else:
            self.precision_, self.diag_, self.prior_ = np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0)
        self.noise_var_ = np.maximum(1.0 / self.diag_ - self.prior_, 1e-12) / max(self.n_users_, 1)
        return self

    def _select_l2(self, xc: sp.csr_matrix, scale: float) -> tuple[float, dict]:
        """The grid point with the best recall@10 on held-out items (of the most read candidates and a
        sample of readers, so that the choice costs a few small inverses)."""
        sub = xc[:, : self.selection_items]
        active = np.flatnonzero(np.diff(sub.indptr) >= 2)
        if len(active) > self.selection_users:
            active = np.sort(np.random.default_rng(self.seed).choice(active, self.selection_users, replace=False))
        sub = sub[active]
        kept, held = holdout_rows(sub, 0.2, self.seed)
        results = {}
        for mult in L2_GRID:
            for pop_l2 in POPULARITY_L2_GRID:
                gram, _ = _gram(kept, mult * scale, pop_l2)
                p, diag = _inverse(gram)
                scores = np.asarray(kept @ p) / -diag
                results[(float(mult * scale), pop_l2)] = _recall_at(scores, kept, held, 10)
        best = max(results, key=lambda v: (results[v], -v[0], -v[1]))
        return best, results

    # ------------------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "precision_"):
            raise NotFittedError("this ItemRelevance is not fitted yet: call fit first")

    def local_history(self, x_rows: sp.csr_matrix) -> sp.csr_matrix:
        """Rows over all items -> rows over the candidate items (other items dropped)."""
        x_rows = sp.csr_matrix(x_rows, dtype=np.float32)
        coo = x_rows.tocoo()
        local = self.local_[coo.col]
        ok = local >= 0
        out = sp.csr_matrix(
            (np.ones(int(ok.sum()), np.float32), (coo.row[ok], local[ok])), shape=(x_rows.shape[0], len(self.items_))
        )
        out.sum_duplicates()
        out.data[:] = 1.0
        return out

    def score(self, x_rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of every candidate's relevance, (n, n_candidates) each."""
        self._check_fitted()
        return self._score_local(self.local_history(x_rows))

    def _score_local(self, h: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(h @ self.precision_, dtype=np.float64)
        q = np.asarray(h.multiply(v).sum(axis=1)).ravel()  # x^T P x
        mean = -v / self.diag_
        var = self.noise_var_ * np.maximum(q[:, None] - v * v / self.diag_, 0.0)
        return mean, np.sqrt(var)

    def recommend(self, x_rows: sp.csr_matrix, n: int, exclude_rows: sp.csr_matrix | None = None,
                  block: int = 512):
        """Top-n candidates per row: (items, mean, sd, because), item indices over all items.

        ``because`` is the reader's item with the largest weight towards the recommended one
        (-1 when the reader has no candidate item); empty slots are -1 / nan. Rows are scored
        ``block`` at a time: a block holds a few dense (block, candidates) arrays.
        """
        self._check_fitted()
        if not x_rows.shape[0] or not len(self.items_):
            # No candidate to score (the dense arrays have no columns): every slot is empty.
            shape = (x_rows.shape[0], n)
            none = np.full(shape, -1, np.int64)
            return none, np.full(shape, np.nan), np.full(shape, np.nan), none.copy()
        history = self.local_history(x_rows)
        excluded = history if exclude_rows is None else self.local_history(exclude_rows)
        parts = [self._recommend_block(history[a:a + block], n, excluded[a:a + block])
                 for a in range(0, x_rows.shape[0], block)]
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))

    def _recommend_block(self, history: sp.csr_matrix, n: int, excluded: sp.csr_matrix):
        """``history`` and ``excluded`` are rows over the candidates (local indices). The sd is
        computed for the top n only: over every candidate it costs more than the ranking."""
        v = np.asarray(history @ self.precision_, dtype=np.float64)
        excluded = excluded.tocsr()
        top, top_mean = top_n_rows(v / -self.diag_, excluded.indptr.astype(np.int64),
                                   excluded.indices.astype(np.int64), n)
        empty = top < 0
        top = np.maximum(top, 0)
        q = np.asarray(history.multiply(v).sum(axis=1)).ravel()  # x^T P x
        v_top = np.take_along_axis(v, top, axis=1)
        top_sd = np.sqrt(self.noise_var_[top] * np.maximum(q[:, None] - v_top * v_top / self.diag_[top], 0.0))
        because = self._because_local(history, np.where(empty, -1, top))
        items = np.where(empty, -1, self.items_[top])
        return items, np.where(empty, np.nan, top_mean), np.where(empty, np.nan, top_sd), because

    def because(self, x_rows: sp.csr_matrix, local_items: np.ndarray) -> np.ndarray:
        """For each row and candidate (local index, -1 = none): the history item (global index)
        with the largest weight b_ij = -P_ij / P_jj towards it, or -1."""
        return self._because_local(self.local_history(x_rows), local_items)

    def _because_local(self, h: sp.csr_matrix, local_items: np.ndarray) -> np.ndarray:
        h = h.tocsr()
        pos = strongest_history_item(h.indptr.astype(np.int64), h.indices.astype(np.int64), self.precision_,
                                     np.ascontiguousarray(local_items, dtype=np.int64))
        return np.where(pos >= 0, self.items_[h.indices[np.maximum(pos, 0)]] if h.nnz else -1, -1)

    def weights_from(self, item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """b_item,j for every candidate j (how much reading ``item`` raises j) with its posterior sd:
        (local candidates, mean, sd). Empty when ``item`` is not a candidate."""
        self._check_fitted()
        i = int(self.local_[int(item)]) if 0 <= int(item) < self.n_items_ else -1
        if i < 0:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        p_row = self.precision_[i].astype(np.float64)
        mean = -p_row / self.diag_
        var = self.noise_var_ * np.maximum(self.diag_[i] - p_row * p_row / self.diag_, 0.0)
        mean[i] = -np.inf
        return np.arange(len(self.items_)), mean, np.sqrt(var)

    def similar_items(self, item: int, n: int = 10):
        """Items readers of ``item`` also read: (items, weight, sd), strongest first; empty when
        ``item`` is not a candidate."""
        self._check_fitted()
        n = int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        if not float(item).is_integer():  # also nan and inf, which int() would not turn into a ValueError
            raise ValueError("item must be an integer index")
        if not 0 <= int(item) < self.n_items_:
            raise IndexError("item index out of range")
        local, mean, sd = self.weights_from(item)
        if not len(local):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        top = top_per_row(mean[None, :], n)[0]
        top = top[np.isfinite(mean[top])]
        return self.items_[top], mean[top], sd[top]

    def neighbour_arrays(self, k: int = 50) -> dict[str, np.ndarray]:
        """Each candidate's k strongest weights b_ij (i -> j) with sds, as plain arrays for serving:
        ``items`` (C,), ``neighbours`` (C, k) local indices, ``weights`` and ``weight_sd`` (C, k)."""
        self._check_fitted()
        c = len(self.items_)
        k = min(k, max(c - 1, 0))
        nb = np.zeros((c, k), dtype=np.int32)
        w = np.zeros((c, k), dtype=np.float32)
        wsd = np.zeros((c, k), dtype=np.float32)
        for a in range(0, c, 1024):
            b = min(a + 1024, c)
            p = self.precision_[a:b].astype(np.float64)
            mean = -p / self.diag_
            mean[np.arange(b - a), np.arange(a, b)] = -np.inf
            top = top_per_row(mean, k)
            pt = np.take_along_axis(p, top, axis=1)
            var = self.noise_var_[top] * np.maximum(self.diag_[a:b, None] - pt * pt / self.diag_[top], 0.0)
            nb[a:b], w[a:b], wsd[a:b] = top, np.take_along_axis(mean, top, axis=1), np.sqrt(var)
        return {"items": self.items_.astype(np.int64), "neighbours": nb, "weights": w, "weight_sd": wsd,
                "popularity": self.popularity_[self.items_].astype(np.int64)}
