"""Work-level view of a data set, shared by every tier of the batch.

Items everywhere in the batch are *works* (editions merged by ``work_key``). This module builds,
once per run and fully vectorised:

- ``Catalog``: one row per work (representative edition, title, author, ...), the editions of
  each work, and per-work interaction / rating counts;
- ``Interactions``: every user of the data (``users.parquet`` and anyone appearing in
  ``ratings.parquet``) indexed 0..n-1, a sparse "seen" matrix users x works over ALL
  interactions (explicit and implicit, any edition) used to never recommend a read work, and
  the explicit ratings averaged per (user, work);
- ``RatingModel``: Bayesian-shrunk book means (normal-normal, variances by moments) that give
  tiers 3 and 4 a predicted rating with an honest predictive interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bookrec.data.prep import IndexMap
from bookrec.model.metrics import central_z


@dataclass
class Catalog:
    works: IndexMap  # sorted work keys
    isbn: np.ndarray  # representative ISBN per work (the edition with most interactions)
    title: np.ndarray
    author: np.ndarray
    year: np.ndarray  # int, -1 when unknown
    publisher: np.ndarray
    image_url: np.ndarray  # object, None when unknown
    n_interactions: np.ndarray  # per work, all interactions on known editions
    n_explicit: np.ndarray  # per work, (user, work) pairs with an explicit rating
    rating_counts: np.ndarray  # (n_works, 11): counts of raw rating values 0..10 (rounded)
    books: pd.DataFrame  # per ISBN: isbn, work_key, work_idx, title, author, year, publisher, image_url

    def __len__(self) -> int:
        return len(self.works)


@dataclass
class Interactions:
    users: IndexMap  # every user id of the data set
    seen: sp.csr_matrix  # (n_users, n_works) bool-ish float32, 1 where the user touched the work
    explicit_user: np.ndarray  # explicit ratings averaged per (user, work): user index
    explicit_work: np.ndarray  # work index
    explicit_rating: np.ndarray  # float32
    n_unjoined: int  # ratings whose ISBN is not a known book (kept as interactions, unusable)

    @property
    def n_users(self) -> int:
        return len(self.users)


def build_catalog_and_interactions(ratings: pd.DataFrame, books: pd.DataFrame, users: pd.DataFrame) -> tuple[Catalog, Interactions]:
    books = books.drop_duplicates("isbn").reset_index(drop=True)
    works = IndexMap.from_values(books["work_key"].to_numpy())
    book_work = works.encode(books["work_key"].to_numpy())
    n_works = len(works)

    isbn_index = pd.Index(books["isbn"].to_numpy())
    rating_book = isbn_index.get_indexer(ratings["isbn"].to_numpy())
    joined = rating_book >= 0
    all_users = IndexMap.from_values(
        np.concatenate([users["user_id"].to_numpy(dtype=np.int64), ratings["user_id"].to_numpy(dtype=np.int64)])
    )
    r_user = all_users.encode(ratings["user_id"].to_numpy(dtype=np.int64)[joined])
    r_book = rating_book[joined]
    r_work = book_work[r_book]
    r_value = ratings["rating"].to_numpy(dtype=np.float32)[joined]

    # Representative edition: most interactions, ties broken by the smaller ISBN (deterministic).
    per_book = np.bincount(r_book, minlength=len(books))
    order = np.lexsort((books["isbn"].to_numpy(), -per_book, book_work))
    first = np.ones(len(order), dtype=bool)
    first[1:] = book_work[order][1:] != book_work[order][:-1]
    rep = order[first]  # one book row per work, in work order
    assert len(rep) == n_works

    def per_work_first_non_null(column: str) -> np.ndarray:
        ordered = books[column].iloc[order]
        values = ordered.groupby(book_work[order], sort=True).first()
        return values.reindex(np.arange(n_works)).to_numpy(dtype=object)

    year = books["year"].iloc[rep].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)
    image = per_work_first_non_null("image_url")
    image = np.array([v if isinstance(v, str) and v else None for v in image], dtype=object)

    n_inter = np.bincount(r_work, minlength=n_works).astype(np.int64)
    value_bin = np.clip(np.rint(r_value), 0, 10).astype(np.int64)
    rating_counts = np.bincount(r_work * 11 + value_bin, minlength=n_works * 11).reshape(n_works, 11)

    seen = sp.csr_matrix(
        (np.ones(len(r_user), dtype=np.float32), (r_user, r_work)), shape=(len(all_users), n_works)
    )
    seen.sum_duplicates()
    seen.data[:] = 1.0

    exp = r_value > 0
    pair = pd.DataFrame({"u": r_user[exp], "w": r_work[exp], "r": r_value[exp]})
    averaged = pair.groupby(["u", "w"], sort=True)["r"].mean()
    eu = averaged.index.get_level_values(0).to_numpy(dtype=np.int64)
    ew = averaged.index.get_level_values(1).to_numpy(dtype=np.int64)
    er = averaged.to_numpy(dtype=np.float32)
    n_explicit = np.bincount(ew, minlength=n_works).astype(np.int64)

    book_table = pd.DataFrame(
        {
            "isbn": books["isbn"].astype(str).to_numpy(),
            "work_key": books["work_key"].astype(str).to_numpy(),
            "work_idx": book_work,
            "title": books["title"].fillna("").astype(str).to_numpy(),
            "author": books["author"].fillna("").astype(str).to_numpy(),
            "year": books["year"].astype("Int64").fillna(-1).to_numpy(dtype=np.int64),
            "publisher": books["publisher"].fillna("").astype(str).to_numpy(),
            "image_url": books["image_url"].to_numpy(dtype=object),
        }
    )
    catalog = Catalog(
        works=works,
        isbn=books["isbn"].astype(str).to_numpy()[rep],
        title=book_table["title"].to_numpy()[rep],
        author=book_table["author"].to_numpy()[rep],
        year=year,
        publisher=book_table["publisher"].to_numpy()[rep],
        image_url=image,
        n_interactions=n_inter,
        n_explicit=n_explicit,
        rating_counts=rating_counts,
        books=book_table,
    )
    interactions = Interactions(
        users=all_users,
        seen=seen,
        explicit_user=eu,
        explicit_work=ew,
        explicit_rating=er,
        n_unjoined=int((~joined).sum()),
    )
    return catalog, interactions


@dataclass
class RatingModel:
    """Normal-normal shrinkage of book means, with variances estimated by the method of moments.

    rating = theta_w + b_u + noise; theta_w ~ N(m, tau2), b_u ~ N(0, tau2_user), noise ~ N(0, sigma2).
    Posterior of theta_w given its n_w explicit ratings: precision 1/tau2 + n_w/sigma2. It is the
    rating "prior" of the non-model tiers: a predicted rating is a shrunk book mean (plus a shrunk
    reader offset when the reader has explicit ratings) and its interval is the posterior
    predictive one, sqrt(sigma2 + var(theta_w) + var(b_u)) wide per z.
    """

    global_mean: float
    sigma2: float  # within-book (residual) variance
    tau2: float  # between-book variance of true means
    tau2_user: float  # between-reader variance of offsets
    post_mean: np.ndarray  # per work
    post_var: np.ndarray  # per work
    rating_min: float
    rating_max: float

    @classmethod
    def fit(cls, interactions: Interactions, n_works: int, rating_min: float, rating_max: float) -> "RatingModel":
        w, r, u = interactions.explicit_work, interactions.explicit_rating.astype(np.float64), interactions.explicit_user
        if len(r) == 0:
            mid = (rating_min + rating_max) / 2
            var = ((rating_max - rating_min) / 4) ** 2
            return cls(mid, var, var, 0.0, np.full(n_works, mid), np.full(n_works, var), rating_min, rating_max)
        m = float(r.mean())
        n = np.bincount(w, minlength=n_works).astype(np.float64)
        s = np.bincount(w, weights=r, minlength=n_works)
        mean_w = np.divide(s, n, out=np.full(n_works, m), where=n > 0)
        resid = r - mean_w[w]
        dof = float(len(r) - np.count_nonzero(n))
        sigma2 = float((resid**2).sum() / dof) if dof > 0 else float(r.var())
        sigma2 = max(sigma2, 1e-3)
        # Between-book variance: var of book means among well-rated books minus their noise share.
        well = n >= 5
        if well.sum() >= 2:
            tau2 = float(np.var(mean_w[well]) - np.mean(sigma2 / n[well]))
        else:
            tau2 = float(np.var(mean_w[n > 0])) if (n > 0).sum() >= 2 else sigma2
        tau2 = max(tau2, 0.01 * sigma2)
        prec = 1.0 / tau2 + n / sigma2
        post_var = 1.0 / prec
        post_mean = post_var * (m / tau2 + s / sigma2)
        # Reader offsets around the shrunk book means, same moment estimator.
        res_u = r - post_mean[w]
        n_users = int(u.max()) + 1
        nu = np.bincount(u, minlength=n_users).astype(np.float64)
        su = np.bincount(u, weights=res_u, minlength=n_users)
        well_u = nu >= 5
        if well_u.sum() >= 2:
            tau2_user = float(np.var(su[well_u] / nu[well_u]) - np.mean(sigma2 / nu[well_u]))
        else:
            tau2_user = 0.0
        tau2_user = max(tau2_user, 0.01 * sigma2)
        # The within-book spread holds the readers' offsets too; predictions add the offset
        # variance separately, so take it out of the noise (else it is counted twice).
        sigma2 = max(sigma2 - tau2_user, 0.25 * sigma2)
        return cls(m, sigma2, tau2, tau2_user, post_mean, post_var, rating_min, rating_max)

    def user_offsets(self, interactions: Interactions, user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of each reader's offset from their explicit ratings (0 if none)."""
        n_users = interactions.n_users
        res = interactions.explicit_rating - self.post_mean[interactions.explicit_work]
        nu = np.bincount(interactions.explicit_user, minlength=n_users).astype(np.float64)
        su = np.bincount(interactions.explicit_user, weights=res, minlength=n_users)
        prec = 1.0 / self.tau2_user + nu[user_idx] / self.sigma2
        var = 1.0 / prec
        return var * su[user_idx] / self.sigma2, var

    def predictive(
        self, works: np.ndarray, level: float, offset: np.ndarray | float = 0.0, offset_var: np.ndarray | float = 0.0,
        mean: np.ndarray | None = None, mean_var: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted, lower, upper) for works (any shape); optional per-work mean override (segments)."""
        mu = self.post_mean[works] if mean is None else mean
        var = self.post_var[works] if mean_var is None else mean_var
        pred = mu + offset
        sd = np.sqrt(self.sigma2 + var + offset_var)
        z = central_z(level)
        lo = np.clip(pred - z * sd, self.rating_min, self.rating_max)
        hi = np.clip(pred + z * sd, self.rating_min, self.rating_max)
        return np.clip(pred, self.rating_min, self.rating_max), lo, hi
