"""Work-level view of a data set, shared by every tier of the batch.

Items everywhere in the batch are *works* (editions merged by ``work_key``). This module builds,
once per run and fully vectorised:

- ``WorkCatalog``: one row per work (representative edition, title, author, ...), the editions of
  each work, and per-work interaction / rating counts;
- :class:`~bookrec.model.interactions.Interactions`: every user of the data (``users.parquet`` and anyone appearing in
  ``ratings.parquet``) indexed 0..n-1, a sparse "seen" matrix users x works over ALL
  interactions (explicit and implicit, any edition), which keeps a read work out of every list, and
  the explicit ratings averaged per (user, work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bookrec.data.prep import IndexMap
from bookrec.model.interactions import Interactions


@dataclass
class WorkCatalog:
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


def build_catalog_and_interactions(ratings: pd.DataFrame, books: pd.DataFrame, users: pd.DataFrame) -> tuple[WorkCatalog, Interactions]:
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

    book_table = _book_table(books, book_work)
    catalog = WorkCatalog(
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


def _book_table(books: pd.DataFrame, book_work: np.ndarray) -> pd.DataFrame:
    """Per ISBN: isbn, work_key, work_idx, title, author, year, publisher, image_url (no missing text)."""
    return pd.DataFrame(
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
