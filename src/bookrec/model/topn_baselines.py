"""Top-N baselines on binary interactions, all with one interface.

    model = EASE(l2=200).fit(X)               # X: csr (users x items), nonzero = interaction
    items = model.recommend_all(users, n, exclude_csr)   # (len(users), n), -1 where nothing left

``exclude_csr`` holds one row per requested reader (the works not to recommend: usually the
train interactions, possibly more than the model was fitted on). Scores are computed densely
over chunks of readers (bounded memory) and the top n chosen by a compiled kernel (ties: the
lower item index first). ``tune`` picks hyperparameters by validation recall@n.

ALS and BPR wrap the ``implicit`` library; EASE (Steck 2019), item-kNN and popularity are
written here because they are a few lines of linear algebra.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import scipy.sparse as sp

from bookrec.model.kernels.topn import top_n_csr, top_n_rows
from bookrec.model.topn import evaluate_topn

SCORE_BUDGET = 1 << 24  # floats per dense score chunk (64 MB of float32)


def binary_csr(X) -> sp.csr_matrix:
    """float32 csr with every stored entry set to 1 (duplicates summed first, explicit zeros dropped)."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.sum_duplicates()
    X.eliminate_zeros()
    X.data[:] = 1.0
    return X


def interaction_matrix(user_idx, item_idx, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary users x items csr of the (user, item) pairs."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    ones = np.ones(user_idx.shape[0], dtype=np.float32)
    return binary_csr(sp.coo_matrix((ones, (user_idx, np.asarray(item_idx, dtype=np.int64))), shape=(n_users, n_items)))


class TopNModel:
    """Shared recommend loop: subclasses score a chunk of readers over their candidate items."""

    name = "model"

    def fit(self, X) -> "TopNModel":
        raise NotImplementedError

    def _store_train(self, X) -> sp.csr_matrix:
        self.X_ = binary_csr(X)
        self.n_items_ = self.X_.shape[1]
        self.item_counts_ = np.asarray(self.X_.sum(axis=0)).ravel()
        return self.X_

    def _candidates(self) -> np.ndarray | None:
        """Item indices the scores cover (None: the whole catalogue)."""
        return None

    def _score(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 scores (len(users), n_candidates); higher is better."""
        raise NotImplementedError

    def recommend_all(self, users, n: int, exclude_csr=None) -> np.ndarray:
        """Top ``n`` items for each of ``users`` (best first), skipping each reader's row of
        ``exclude_csr`` (default: the fitted interactions); -1 where nothing is left."""
        users = np.asarray(users, dtype=np.int64)
        exclude = self.X_[users] if exclude_csr is None else sp.csr_matrix(exclude_csr)
        if exclude.shape[0] != users.shape[0]:
            raise ValueError("exclude_csr needs one row per requested reader")
        candidates = self._candidates()
        cand_pos = None
        if candidates is not None:
            cand_pos = np.full(max(self.n_items_, exclude.shape[1]), -1, dtype=np.int64)
            cand_pos[candidates] = np.arange(candidates.shape[0])
        n_cand = self.n_items_ if candidates is None else candidates.shape[0]
        out = np.full((users.shape[0], n), -1, dtype=np.int64)
        chunk = max(1, SCORE_BUDGET // max(n_cand, 1))
        for start in range(0, users.shape[0], chunk):
            stop = min(start + chunk, users.shape[0])
            scores = np.ascontiguousarray(self._score(users[start:stop]), dtype=np.float32)
            ex = exclude[start:stop]
            rows = np.repeat(np.arange(stop - start), np.diff(ex.indptr))
            cols = ex.indices.astype(np.int64)
            if cand_pos is not None:
                cols = cand_pos[cols]
                rows, cols = rows[cols >= 0], cols[cols >= 0]
            else:
                rows, cols = rows[cols < n_cand], cols[cols < n_cand]
            scores[rows, cols] = -np.inf
            no_exclusions = np.zeros(stop - start + 1, dtype=np.int64)
            top, top_score = top_n_rows(scores, no_exclusions, no_exclusions[:0], n)
            top[~(top_score > -np.inf)] = -1  # excluded items are -inf: never recommended
            if candidates is not None:
                top = np.where(top >= 0, candidates[np.maximum(top, 0)], -1)
            out[start:stop] = top
        return out


class Popularity(TopNModel):
    """The most interacted works the reader has not touched (train interaction count)."""

    name = "Popularity"

    def fit(self, X) -> "Popularity":
        self._store_train(X)
        self._order = np.argsort(-self.item_counts_, kind="stable")
        return self

    def recommend_all(self, users, n: int, exclude_csr=None) -> np.ndarray:
        # Only the n + (largest exclusion row) most popular works can make a list: scoring
        # those alone is exact and avoids a dense pass over the whole catalogue.
        users = np.asarray(users, dtype=np.int64)
        exclude = self.X_[users] if exclude_csr is None else sp.csr_matrix(exclude_csr)
        width = int(np.diff(exclude.indptr).max(initial=0))
        self._cand = np.sort(self._order[: min(self.n_items_, n + width)])
        try:
            return super().recommend_all(users, n, exclude)
        finally:
            del self._cand

    def _candidates(self):
        return self._cand

    def _score(self, users):
        return np.broadcast_to(self.item_counts_[self._cand].astype(np.float32), (users.shape[0], self._cand.shape[0]))


def _symmetric_inverse_inplace(G: np.ndarray) -> np.ndarray:
    """Inverse of the symmetric positive definite float64 matrix G, computed in G's memory
    (LAPACK potrf + potri: half the work of a general inverse, no second n x n buffer)."""
    from scipy.linalg import lapack

    # G is C-ordered and symmetric, so G.T is the same matrix in Fortran order: LAPACK works in place.
    chol, info = lapack.dpotrf(G.T, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix not positive definite (potrf info {info})")
    inv, info = lapack.dpotri(chol, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed (info {info})")
    P = inv.T  # the C view: LAPACK filled its lower triangle
    if not np.shares_memory(P, G):
        G[...] = P
    # Mirror the lower triangle into the upper one block by block (no n x n temporary).
    n, step = G.shape[0], 1024
    for a in range(0, n, step):
        b = min(a + step, n)
        block = G[a:b, a:b]
        G[a:b, a:b] = np.tril(block) + np.tril(block, -1).T
        G[a:b, b:] = G[b:, a:b].T
    return G


class EASE(TopNModel):
    """Steck's EASE^R: B = -P / diag(P) with P = (X^T X + l2 I)^-1, zero diagonal; score X_u B.

    The dense item-item matrix is limited to the ``max_items`` most interacted works (12,000
    x 12,000 float64 is 1.15 GB); other works are never recommended.
    """

    name = "EASE"

    def __init__(self, l2: float = 200.0, max_items: int = 12_000, block: int = 1024):
        self.l2 = float(l2)
        self.max_items = int(max_items)
        self.block = int(block)

    def fit(self, X) -> "EASE":
        X = self._store_train(X)
        order = np.argsort(-self.item_counts_, kind="stable")
        keep = order[: self.max_items]
        self.items_ = np.sort(keep[self.item_counts_[keep] > 0])
        Xk = X[:, self.items_].tocsc()
        XkT = Xk.T.tocsr()
        m = self.items_.shape[0]
        G = np.empty((m, m), dtype=np.float64)
        for a in range(0, m, self.block):
            b = min(a + self.block, m)
            G[:, a:b] = (XkT @ Xk[:, a:b]).toarray()
        G[np.diag_indices(m)] += self.l2
        P = _symmetric_inverse_inplace(G)
        diag = P.diagonal().copy()
        P /= -diag[None, :]
        P[np.diag_indices(m)] = 0.0
        self.B_ = P.astype(np.float32)
        del G, P
        self._Xk = X[:, self.items_].tocsr()
        return self

    def _candidates(self):
        return self.items_

    def _score(self, users):
        return np.asarray(self._Xk[users] @ self.B_)


def _cap_rows(X: sp.csr_matrix, cap: int, seed: int) -> sp.csr_matrix:
    """At most ``cap`` random entries per row (seeded); shorter rows unchanged."""
    row_n = np.diff(X.indptr)
    if row_n.max(initial=0) <= cap:
        return X
    rows = np.repeat(np.arange(X.shape[0]), row_n)
    key = np.random.default_rng(seed).random(X.nnz)
    order = np.lexsort((key, rows))
    rank = np.empty(X.nnz, dtype=np.int64)
    rank[order] = np.arange(X.nnz) - np.repeat(X.indptr[:-1], row_n)
    keep = rank < cap
    return sp.csr_matrix((X.data[keep], X.indices[keep], np.r_[0, np.cumsum(np.minimum(row_n, cap))]), shape=X.shape)


class ItemKNN(TopNModel):
    """Item-item cosine on the binary matrix, |A & B| / (sqrt(|A| |B|) + shrink), each work
    keeping its ``neighbours`` most similar works; score of j = sum over the reader's works i of
    S[i, j]. Works no neighbour list reaches come after, by popularity.

    Readers with more than ``max_items_per_user`` works are subsampled (seeded) for the
    similarities only: one reader with thousands of books would dominate the co-occurrence
    counts and the cost (quadratic in a reader's length).
    """

    name = "ItemKNN"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0, max_items_per_user: int = 500,
                 seed: int = 0, block: int = 2048):
        self.neighbours = int(neighbours)
        self.shrink = float(shrink)
        self.max_items_per_user = int(max_items_per_user)
        self.seed = int(seed)
        self.block = int(block)

    def fit(self, X) -> "ItemKNN":
        X = self._store_train(X)
        Xc = _cap_rows(X, self.max_items_per_user, self.seed)
        counts = np.asarray(Xc.sum(axis=0)).ravel().astype(np.float64)
        norms = np.sqrt(counts)
        XT = Xc.T.tocsr()
        n = X.shape[1]
        parts = []
        for a in range(0, n, self.block):
            b = min(a + self.block, n)
            C = (XT[a:b] @ Xc).tocsr()
            C.sort_indices()
            rows = np.repeat(np.arange(a, b), np.diff(C.indptr))
            data = C.data.astype(np.float64) / (norms[rows] * norms[C.indices] + self.shrink)
            data[C.indices == rows] = 0.0  # no self-similarity
            C = sp.csr_matrix((data.astype(np.float32), C.indices, C.indptr), shape=C.shape)
            C.eliminate_zeros()
            ptr, idx, val = top_n_csr(C.indptr.astype(np.int64), C.indices.astype(np.int32), C.data, self.neighbours)
            parts.append(sp.csr_matrix((val, idx, ptr), shape=C.shape))
        self.S_ = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((n, n), dtype=np.float32)
        self._fallback = (self.item_counts_ / (self.item_counts_.max(initial=0) + 1.0) - 1.0).astype(np.float32)
        return self

    def _score(self, users):
        s = (self.X_[users] @ self.S_).tocsr()
        out = np.repeat(self._fallback[None, :], users.shape[0], axis=0)
        out[np.repeat(np.arange(users.shape[0]), np.diff(s.indptr)), s.indices] = s.data
        return out


class _ImplicitFactorModel(TopNModel):
    """A model of the ``implicit`` library, scored as user_factors @ item_factors.T."""

    def __init__(self, num_threads: int = 0, seed: int = 0):
        self.num_threads = int(num_threads)
        self.seed = int(seed)

    def _make(self):
        raise NotImplementedError

    def _fit_matrix(self, X):
        return X

    def fit(self, X):
        from threadpoolctl import threadpool_limits

        X = self._store_train(X)
        # implicit runs its own threads and warns (and slows down badly) when BLAS also does.
        with threadpool_limits(1, "blas"):
            model = self._make()
            model.fit(self._fit_matrix(X), show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        return self

    def _score(self, users):
        return self.user_factors_[users] @ self.item_factors_.T


class ALS(_ImplicitFactorModel):
    """implicit's conjugate-gradient ALS (Hu, Koren and Volinsky 2008) with confidence alpha * X."""

    name = "ALS"

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, num_threads: int = 0, seed: int = 0):
        super().__init__(num_threads, seed)
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.iterations = int(iterations)

    def _make(self):
        from implicit.als import AlternatingLeastSquares

        # The library multiplies the matrix by its own alpha; fitting on alpha * X instead keeps
        # the confidence explicit here and independent of that default.
        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=1.0,
                                       iterations=self.iterations, num_threads=self.num_threads,
                                       random_state=self.seed, use_gpu=False)

    def _fit_matrix(self, X):
        return (self.alpha * X).astype(np.float32)


class BPR(_ImplicitFactorModel):
    """implicit's Bayesian personalised ranking (Rendle et al. 2009); item bias included in the factors."""

    name = "BPR"

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, num_threads: int = 0, seed: int = 0):
        super().__init__(num_threads, seed)
        self.factors = int(factors)
        self.learning_rate = float(learning_rate)
        self.regularization = float(regularization)
        self.iterations = int(iterations)

    def _make(self):
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           num_threads=self.num_threads, random_state=self.seed, use_gpu=False)


def default_grids(X) -> dict[str, list[dict]]:
    """The small grid of every baseline (similar budgets: 1-8 fits each).

    EASE's l2 is scaled to the data: 1, 4, 16 and 64 times the mean interaction count of the
    works it keeps (the diagonal of X^T X it is added to), about 20..2000 on the synthetic and
    BookCrossing-sized data, where the validation optimum sits between 4x and 16x or above.
    """
    X = binary_csr(X)
    counts = np.sort(np.asarray(X.sum(axis=0)).ravel())[::-1][:EASE().max_items]
    mean_count = float(counts[counts > 0].mean()) if (counts > 0).any() else 1.0
    return {
        "Popularity": [{}],
        "EASE": [{"l2": float(round(mean_count * f, 1))} for f in (1.0, 4.0, 16.0, 64.0)],
        # Few neighbours and a strong shrink win on this data (5-10 and 30 on `small`, 5 and 300+ on `full`).
        "ItemKNN": [{"neighbours": k, "shrink": s} for k in (5, 10) for s in (10.0, 30.0, 100.0, 300.0)],
        "ALS": [{"factors": f, "regularization": r, "alpha": a} for f in (32, 64) for r in (0.01, 0.1) for a in (1.0, 10.0)],
        "BPR": [{"factors": f, "learning_rate": lr} for f in (32, 64) for lr in (0.01, 0.05)],
    }


BASELINES: dict[str, type[TopNModel]] = {"Popularity": Popularity, "EASE": EASE, "ItemKNN": ItemKNN, "ALS": ALS, "BPR": BPR}


def tune(factory: Callable[..., TopNModel], grid: list[dict], train_X, validation, users, n: int = 10,
         rating_range=(1.0, 10.0)) -> tuple[dict, list[dict]]:
    """Fit ``factory(**params)`` on ``train_X`` for every params of ``grid``, rank for ``users``
    (excluding their train rows) and score against ``validation`` (a (user, item, rating)
    triple). Returns (params with the best validation recall@n of all held-out interactions,
    first on ties; one row per params: recall, NDCG, fit and ranking seconds)."""
    if not grid:
        raise ValueError("empty grid")
    train_X = binary_csr(train_X)
    users = np.asarray(users, dtype=np.int64)
    popularity = np.asarray(train_X.sum(axis=0)).ravel()
    exclude = train_X[users]
    table = []
    for params in grid:
        t0 = time.perf_counter()
        model = factory(**params).fit(train_X)
        t1 = time.perf_counter()
        recs = model.recommend_all(users, n, exclude)
        t2 = time.perf_counter()
        res = evaluate_topn(recs, users, validation, rating_range, popularity, ks=(n,))
        table.append({"params": dict(params), f"recall@{n}": res.metrics[f"recall@{n}"],
                      f"ndcg@{n}": res.metrics[f"ndcg@{n}"], "fit_seconds": t1 - t0, "rank_seconds": t2 - t1})
        del model
    scores = [row[f"recall@{n}"] for row in table]
    best = int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))
    return dict(grid[best]), table
