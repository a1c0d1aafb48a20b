"""Preparation utilities used by the model, the batch and the optimizer.

Items in the model are *works* (editions merged by ``work_key``); a reader's several ratings
of one work are averaged. See docs/ARCHITECTURE.md, section 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.config import Settings
    from bookrec.data.io import Dataset


def explicit(ratings: pd.DataFrame) -> pd.DataFrame:
    """Explicit ratings (1-10): rows with ``rating > 0``."""
    return ratings.loc[ratings["rating"] > 0]


def implicit(ratings: pd.DataFrame) -> pd.DataFrame:
    """Implicit interactions: rows with ``rating == 0``."""
    return ratings.loc[ratings["rating"] == 0]


def attach_work_keys(ratings: pd.DataFrame, books: pd.DataFrame) -> pd.DataFrame:
    """Inner-join ratings to books on ``isbn``, adding a ``work_key`` column.

    Ratings of ISBNs absent from ``books`` are dropped (they have no title to recommend).
    """
    keys = books[["isbn", "work_key"]]
    return ratings.merge(keys, on="isbn", how="inner", validate="many_to_one")


def average_per_work(df: pd.DataFrame, user_col: str = "user_id", item_col: str = "work_key") -> pd.DataFrame:
    """One row per (user, work): the mean of that user's ratings of the work's editions."""
    out = df.groupby([user_col, item_col], sort=True, observed=True)["rating"].mean().reset_index()
    out["rating"] = out["rating"].astype("float32")
    return out


def kcore(
    df: pd.DataFrame, min_user: int, min_item: int, user_col: str = "user_id", item_col: str = "work_key"
) -> pd.DataFrame:
    """Keep rows whose user has >= ``min_user`` rows and whose item has >= ``min_item`` rows.

    Iterated until nothing changes (removing a book can push a user below the threshold and
    vice versa), so the result is a fixed point: applying it again changes nothing.
    """
    current = df
    while True:
        user_n = current.groupby(user_col, observed=True)[user_col].transform("size")
        item_n = current.groupby(item_col, observed=True)[item_col].transform("size")
        keep = (user_n >= min_user) & (item_n >= min_item)
        if bool(keep.all()):
            return current
        current = current.loc[keep]


@dataclass(frozen=True)
class IndexMap:
    """A contiguous 0..n-1 index over sorted unique values (user ids or work keys)."""

    values: np.ndarray

    @classmethod
    def from_values(cls, values) -> "IndexMap":
        """Build from any iterable/array of values; duplicates are merged, order is sorted.

        Strings are kept as a fixed-width numpy unicode array (saveable in npz without pickle),
        which cannot hold trailing NUL characters, so such strings are refused.
        """
        arr = values if isinstance(values, np.ndarray) else np.asarray(pd.Series(list(values), dtype=object))
        if arr.dtype.kind in "iufb":
            return cls(np.unique(arr))
        if arr.dtype == object and len(arr) and pd.api.types.infer_dtype(arr, skipna=False) in ("integer", "floating", "boolean"):
            return cls(np.unique(arr.astype(np.asarray(arr.tolist()).dtype)))
        strings = [str(v) for v in pd.unique(arr.astype(object))]
        if any(s.endswith("\x00") for s in strings):
            raise ValueError("IndexMap keys may not end with a NUL character")
        return cls(np.sort(np.array(strings, dtype=str)))

    def __len__(self) -> int:
        return len(self.values)

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.values, dtype=object if self.values.dtype.kind == "U" else None)

    def encode(self, values) -> np.ndarray:
        """Indices of ``values`` (int64); -1 for values not in the map."""
        kind = self.values.dtype.kind
        query = pd.Index(np.asarray(values, dtype=object), dtype=object) if kind == "U" else np.asarray(values)
        if len(query) == 0:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self._index.get_indexer(query), dtype=np.int64)

    def decode(self, idx) -> np.ndarray:
        """Values at indices ``idx``."""
        return self.values[np.asarray(idx, dtype=np.int64)]


@dataclass
class Split:
    """Train / validation / test parts of a ratings frame."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split_per_user(
    df: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int, user_col: str = "user_id"
) -> Split:
    """Seeded per-user split: each user's rows are shuffled and divided by the fractions.

    A user with n rows gets ``floor(n * f + U)`` held-out rows per part (U uniform per user:
    stochastic rounding, so the expected fraction is exact even for users with few rows), capped
    so that at least one row stays in train. The result does not depend on the input row order.
    """
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError("fractions must be >= 0 and sum to < 1")
    item_cols = [c for c in df.columns if c not in (user_col, "rating")]
    ordered = df.sort_values([user_col, *item_cols], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    users = ordered[user_col].to_numpy()
    n_rows = len(ordered)
    # rank of each row within its user after a seeded shuffle
    shuffle_key = rng.random(n_rows)
    order = np.lexsort((shuffle_key, users))
    starts = np.r_[0, np.flatnonzero(users[order][1:] != users[order][:-1]) + 1] if n_rows else np.array([], int)
    counts = np.diff(np.r_[starts, n_rows])
    rank_sorted = np.arange(n_rows) - np.repeat(starts, counts)
    rank = np.empty(n_rows, dtype=np.int64)
    rank[order] = rank_sorted
    n_users = len(counts)
    n_test = np.floor(counts * test_fraction + rng.random(n_users)).astype(np.int64)
    n_val = np.floor(counts * validation_fraction + rng.random(n_users)).astype(np.int64)
    n_test = np.minimum(n_test, counts - 1)
    n_val = np.minimum(n_val, counts - 1 - n_test)
    per_row_test = np.repeat(n_test, counts)
    per_row_val = np.repeat(n_val, counts)
    # rows are grouped by user in `ordered` (sorted by user), so repeat() lines up with them
    is_test = rank < per_row_test
    is_val = ~is_test & (rank < per_row_test + per_row_val)
    is_train = ~(is_test | is_val)
    return Split(
        train=ordered.loc[is_train].reset_index(drop=True),
        validation=ordered.loc[is_val].reset_index(drop=True),
        test=ordered.loc[is_test].reset_index(drop=True),
    )


Triplet = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class TrainingData:
    """What the model needs: index maps and (user_idx, item_idx, rating) arrays per part.

    ``ratings`` is the k-core frame (user_id, work_key, rating) the parts were cut from.
    """

    users: IndexMap
    items: IndexMap
    train: Triplet
    validation: Triplet
    test: Triplet
    ratings: pd.DataFrame

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def sizes(self) -> dict[str, int]:
        return {
            "core_users": self.n_users,
            "core_books": self.n_items,
            "train": len(self.train[2]),
            "validation": len(self.validation[2]),
            "test": len(self.test[2]),
        }


def _triplet(df: pd.DataFrame, users: IndexMap, items: IndexMap) -> Triplet:
    return (
        users.encode(df["user_id"].to_numpy()),
        items.encode(df["work_key"].to_numpy()),
        df["rating"].to_numpy(dtype=np.float32),
    )


def prepare_training(dataset: "Dataset", settings: "Settings") -> TrainingData:
    """Explicit ratings -> works (editions averaged) -> k-core -> index maps -> per-user split.

    Uses ``settings.min_user_ratings``, ``min_book_ratings``, ``validation_fraction``,
    ``test_fraction`` and ``seed``.
    """
    rated = attach_work_keys(explicit(dataset.ratings), dataset.books)
    per_work = average_per_work(rated)
    core = kcore(per_work, settings.min_user_ratings, settings.min_book_ratings).reset_index(drop=True)
    users = IndexMap.from_values(core["user_id"].to_numpy())
    items = IndexMap.from_values(core["work_key"].to_numpy())
    split = split_per_user(core, settings.validation_fraction, settings.test_fraction, settings.seed)
    return TrainingData(
        users=users,
        items=items,
        train=_triplet(split.train, users, items),
        validation=_triplet(split.validation, users, items),
        test=_triplet(split.test, users, items),
        ratings=core,
    )
