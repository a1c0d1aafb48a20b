"""Tier 3: readers the model cannot fold in (only implicit interactions, or explicit ratings
only on books outside the model) are recommended from what they touched.

Score of candidate work j for reader u = sum over works i the reader touched of S[i, j] plus a
small popularity prior, where S mixes three item-to-item similarities, each pruned to the top
``neighbours`` per row so everything stays sparse:

- co-occurrence over ALL interactions (explicit and implicit): cosine of the two works' reader
  sets, shrunk for rare works (|A & B| / (sqrt(|A| |B|) + shrink)); very heavy readers are
  subsampled to ``max_items_per_user`` works (seeded) because one reader with 8,000 books would
  otherwise dominate both the cost and the similarities;
- book-factor similarity: cosine of the posterior-mean factors of the model's works;
- content: same author, shared title words (idf-weighted), same publisher.

The score ranks; the rating shown is the shrunk mean of the work plus the reader's shrunk offset
(from any explicit ratings), with the posterior predictive interval (``RatingModel``). The whole
tier runs as sparse/dense matrix products over chunks of readers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bookrec.batch.catalog import Catalog, Interactions, RatingModel
from bookrec.batch.topn import topk_csr_rows, topn_sparse_with_prior

_STOPWORDS = frozenset(
    "the a an and of in on to for with from by at de la le el los las les der die das und is my your "
    "book books novel vol volume edition series part".split()
)
_TOKEN = re.compile(r"[a-z0-9]{3,}")


@dataclass
class HybridWeights:
    cooccurrence: float = 1.0
    factors: float = 0.1
    content: float = 0.1
    popularity: float = 0.05
    neighbours: int = 50
    shrink: float = 5.0
    max_items_per_user: int = 300
    max_feature_df: int = 1000  # content features shared by more candidates carry no signal
    # "conditional": S[i, j] = |A & B| / (|A| + shrink), the share of work i's readers who also
    # touched j (keeps j's popularity in the score); "cosine": |A & B| / (sqrt(|A| |B|) + shrink).
    normalisation: str = "conditional"


@dataclass
class RecommendationBlock:
    """Top-n per reader for one tier: work indices and shown ratings, -1 / nan where empty."""

    users: np.ndarray  # user indices
    works: np.ndarray  # (n_users, n) int64
    predicted: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    from_similarity: np.ndarray  # (n_users, n) bool: False = filled by the popularity prior


def topk_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row (ties: the smaller column first)."""
    m = matrix.tocsr()
    ptr, idx, val = topk_csr_rows(m.indptr.astype(np.int64), m.indices, m.data, k)
    return sp.csr_matrix((val, idx, ptr), shape=m.shape)


def _cap_rows(x: sp.csr_matrix, cap: int, seed: int) -> sp.csr_matrix:
    """Keep at most ``cap`` random entries per row (seeded; rows at or under the cap unchanged)."""
    row_n = np.diff(x.indptr)
    if row_n.max(initial=0) <= cap:
        return x
    rows = np.repeat(np.arange(x.shape[0]), row_n)
    key = np.random.default_rng(seed).random(x.nnz)
    order = np.lexsort((key, rows))
    rank = np.empty(x.nnz, dtype=np.int64)
    rank[order] = np.arange(x.nnz) - np.repeat(x.indptr[:-1], row_n)
    keep = rank < cap
    return sp.csr_matrix((x.data[keep], (rows[keep], x.indices[keep])), shape=x.shape)


def _row_normalise(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.diags(inv) @ m


def content_features(catalog: Catalog, candidates: np.ndarray, max_df: int) -> sp.csr_matrix:
    """Works x features: author, title words (idf) and publisher blocks, each row-normalised and
    weighted 0.6 / 0.3 / 0.1 (squared weights sum to 1, so a row's norm stays <= 1)."""
    n = len(catalog)
    keys = catalog.works.values
    authors = np.array([k.rsplit("|", 1)[-1] if "|" in k else "" for k in keys], dtype=object)
    titles = [k.rsplit("|", 1)[0] for k in keys]
    publishers = np.array([p.strip().lower() for p in catalog.publisher], dtype=object)

    is_cand = np.zeros(n, dtype=bool)
    is_cand[candidates] = True
    blocks = []
    for weight, rows, cols in (
        (np.sqrt(0.6), *_one_hot(authors)),
        (np.sqrt(0.3), *_tokens(titles)),
        (np.sqrt(0.1), *_one_hot(publishers)),
    ):
        if len(cols) == 0:
            continue
        n_feat = int(cols.max()) + 1
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n_feat))
        m.data[:] = 1.0
        df_cand = np.bincount(cols[is_cand[rows]], minlength=n_feat)
        useful = (df_cand >= 1) & (df_cand <= max_df)
        idf = np.where(useful, np.log1p(len(candidates) / np.maximum(df_cand, 1)), 0.0).astype(np.float32)
        m = _row_normalise((m @ sp.diags(idf)).tocsr())
        blocks.append(m * weight)
    if not blocks:
        return sp.csr_matrix((n, 1), dtype=np.float32)
    return sp.hstack(blocks, format="csr")


def _one_hot(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = np.array([bool(v) for v in values])
    codes, _ = _factorize(values[present])
    return np.flatnonzero(present), codes


def _tokens(titles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows, toks = [], []
    for i, t in enumerate(titles):
        for tok in set(_TOKEN.findall(t)):
            if tok not in _STOPWORDS:
                rows.append(i)
                toks.append(tok)
    if not rows:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    codes, _ = _factorize(np.array(toks, dtype=object))
    return np.array(rows, dtype=np.int64), codes


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), uniques


class ImplicitRecommender:
    """Fitted once per run on all interactions; ``recommend(users)`` scores readers in chunks."""

    def __init__(
        self,
        catalog: Catalog,
        interactions: Interactions,
        rating_model: RatingModel,
        candidate_min_interactions: int = 5,
        item_factors: np.ndarray | None = None,  # (n_core_items, k) posterior mean
        core_works: np.ndarray | None = None,  # work index of each core item
        weights: HybridWeights | None = None,
        seed: int = 0,
    ) -> None:
        self.catalog = catalog
        self.interactions = interactions
        self.rating_model = rating_model
        self.weights = weights or HybridWeights()
        self.seed = seed
        n_works = len(catalog)
        cand = np.flatnonzero(catalog.n_interactions >= candidate_min_interactions)
        if len(cand) == 0:
            cand = np.flatnonzero(catalog.n_interactions > 0)
        if len(cand) == 0:
            cand = np.arange(n_works)
        self.candidates = cand
        self.item_factors = item_factors
        self.core_works = core_works
        pop = np.log1p(catalog.n_interactions[cand].astype(np.float64))
        self.prior = (self.weights.popularity * pop / max(pop.max(), 1e-12)).astype(np.float32)
        self.similarity: sp.csr_matrix | None = None

    def fit(self, source_works: np.ndarray) -> "ImplicitRecommender":
        """Build the (n_works x n_candidates) similarity for the given source works only."""
        w = self.weights
        n_works = len(self.catalog)
        sources = np.unique(np.asarray(source_works, dtype=np.int64))
        n_cand = len(self.candidates)
        parts = []

        # Co-occurrence over all interactions, heavy readers subsampled; in chunks of source
        # works so the unpruned product never exists whole.
        x = _cap_rows(self.interactions.seen, w.max_items_per_user, self.seed).tocsc()
        col_n = np.diff(x.indptr).astype(np.float32)
        xc = x[:, self.candidates].tocsr()
        chunks = []
        step = 4096
        for a in range(0, len(sources), step):
            src = sources[a:a + step]
            co = (x[:, src].T.tocsr() @ xc).tocsr()
            rows = np.repeat(np.arange(len(src)), np.diff(co.indptr))
            if w.normalisation == "cosine":
                denom = np.sqrt(col_n[src][rows] * col_n[self.candidates][co.indices]) + w.shrink
            else:
                denom = col_n[src][rows] + w.shrink
            co.data = (co.data / denom).astype(np.float32)
            chunks.append(topk_per_row(co, w.neighbours))
        parts.append(w.cooccurrence * sp.vstack(chunks, format="csr") if chunks else sp.csr_matrix((0, n_cand), dtype=np.float32))

        # Book-factor similarity among the model's works.
        if self.item_factors is not None and self.core_works is not None and w.factors > 0:
            parts.append(w.factors * self._factor_similarity(sources))

        # Content: author, title words, publisher.
        if w.content > 0:
            feats = content_features(self.catalog, self.candidates, w.max_feature_df)
            fs, fc = feats[sources], feats[self.candidates].T.tocsc()
            chunks = []
            step = 4096
            for a in range(0, len(sources), step):
                chunks.append(topk_per_row((fs[a:a + step] @ fc).tocsr().astype(np.float32), w.neighbours))
            parts.append(w.content * sp.vstack(chunks, format="csr"))

        sim = parts[0]
        for p in parts[1:]:
            sim = sim + p
        sim = sim.tocsr()
        sim.eliminate_zeros()
        # Expand to one row per work (empty rows for works that are not sources).
        row_n = np.zeros(n_works, dtype=np.int64)
        row_n[sources] = np.diff(sim.indptr)
        indptr = np.r_[0, np.cumsum(row_n)]
        self.similarity = sp.csr_matrix((sim.data, sim.indices, indptr), shape=(n_works, n_cand))
        return self

    def _factor_similarity(self, sources: np.ndarray) -> sp.csr_matrix:
        n_works = len(self.catalog)
        v = np.asarray(self.item_factors, dtype=np.float64)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        core_of_work = np.full(n_works, -1, dtype=np.int64)
        core_of_work[self.core_works] = np.arange(len(self.core_works))
        src_core = core_of_work[sources]
        cand_core = core_of_work[self.candidates]
        src_rows = np.flatnonzero(src_core >= 0)
        cand_cols = np.flatnonzero(cand_core >= 0)
        out = sp.csr_matrix((len(sources), len(self.candidates)), dtype=np.float32)
        if len(src_rows) == 0 or len(cand_cols) == 0:
            return out
        vc = v[cand_core[cand_cols]].T
        k = min(self.weights.neighbours, len(cand_cols))
        rows, cols, vals = [], [], []
        step = 2048
        for a in range(0, len(src_rows), step):
            block = v[src_core[src_rows[a:a + step]]] @ vc
            np.maximum(block, 0.0, out=block)
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            val = np.take_along_axis(block, top, axis=1)
            r = np.repeat(src_rows[a:a + step], k)
            rows.append(r)
            cols.append(cand_cols[top.ravel()])
            vals.append(val.ravel())
        m = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=out.shape,
        )
        m.eliminate_zeros()
        return m

    def recommend(self, users: np.ndarray, n: int, level: float, chunk: int = 8192) -> RecommendationBlock:
        if self.similarity is None:
            self.fit(np.unique(self.interactions.seen[users].indices))
        users = np.asarray(users, dtype=np.int64)
        works = np.full((len(users), n), -1, dtype=np.int64)
        from_sim = np.zeros((len(users), n), dtype=bool)
        cand_pos = np.full(len(self.catalog), -1, dtype=np.int64)
        cand_pos[self.candidates] = np.arange(len(self.candidates))
        prior = self.prior.astype(np.float64)
        prior_order = np.argsort(-prior, kind="stable")
        for a in range(0, len(users), chunk):
            u = users[a:a + chunk]
            xu = self.interactions.seen[u]
            sim = (xu @ self.similarity).tocsr()
            # never recommend a work the reader touched, in any edition (columns = candidates)
            pos = cand_pos[xu.indices]
            keep = pos >= 0
            seen_ptr = _row_counts_ptr(xu.indptr, keep)
            idx, fs = topn_sparse_with_prior(
                sim.indptr.astype(np.int64), sim.indices.astype(np.int64), sim.data.astype(np.float64),
                prior, prior_order, seen_ptr, pos[keep], n,
            )
            works[a:a + len(u)] = np.where(idx >= 0, self.candidates[np.maximum(idx, 0)], -1)
            from_sim[a:a + len(u)] = fs & (idx >= 0)
        offset, offset_var = self.rating_model.user_offsets(self.interactions, users)
        safe = np.maximum(works, 0)
        pred, lo, hi = self.rating_model.predictive(safe, level, offset=offset[:, None], offset_var=offset_var[:, None])
        empty = works < 0
        for arr in (pred, lo, hi):
            arr[empty] = np.nan
        return RecommendationBlock(users, works, pred, lo, hi, from_sim)


def _row_counts_ptr(indptr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """indptr of the CSR rows after dropping entries where ``keep`` is False."""
    cum = np.r_[0, np.cumsum(keep, dtype=np.int64)]
    return cum[indptr].astype(np.int64)
