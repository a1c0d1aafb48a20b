"""Preparation utilities: k-core fixed point, per-user splits, index maps, prepare_training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bookrec.config import Settings
from bookrec.data.prep import (
    IndexMap,
    attach_work_keys,
    average_per_work,
    explicit,
    implicit,
    kcore,
    prepare_training,
    split_per_user,
)
from bookrec.data.synth import generate

pairs = st.lists(st.tuples(st.integers(0, 15), st.integers(0, 12)), min_size=0, max_size=150, unique=True)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "work_key"]).assign(rating=1.0)


def _reference_kcore(rows, min_user, min_item):
    """Textbook definition: repeatedly delete any row whose user or item is below threshold."""
    rows = set(rows)
    changed = True
    while changed:
        changed = False
        users = pd.Series([u for u, _ in rows]).value_counts().to_dict() if rows else {}
        items = pd.Series([i for _, i in rows]).value_counts().to_dict() if rows else {}
        for u, i in list(rows):
            if users[u] < min_user or items[i] < min_item:
                rows.discard((u, i))
                changed = True
    return rows


@settings(max_examples=60, deadline=None)
@given(rows=pairs, min_user=st.integers(1, 4), min_item=st.integers(1, 4))
def test_kcore_is_a_fixed_point_and_the_maximal_core(rows, min_user, min_item):
    df = _frame(rows)
    core = kcore(df, min_user, min_item)
    # every kept user/item meets its threshold ...
    if len(core):
        assert core.groupby("user_id").size().min() >= min_user
        assert core.groupby("work_key").size().min() >= min_item
    # ... applying it again changes nothing ...
    again = kcore(core, min_user, min_item)
    assert len(again) == len(core)
    # ... and it equals the textbook k-core (unique maximal subgraph), not just any valid subset
    assert set(map(tuple, core[["user_id", "work_key"]].to_numpy().tolist())) == _reference_kcore(rows, min_user, min_item)


def test_kcore_needs_iteration():
    # user 1 has 2 ratings, one on a book only it read: dropping that book drops user 1 below 2,
    # which in turn drops book "b" below 2. A single pass would keep rows a second pass removes.
    df = _frame([(1, "a"), (1, "b"), (2, "b"), (2, "c"), (3, "c"), (2, "d"), (3, "d")])
    core = kcore(df, 2, 2)
    assert sorted(core["work_key"].unique()) == ["c", "d"]
    assert sorted(core["user_id"].unique()) == [2, 3]


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.one_of(st.integers(-10**6, 10**6)), min_size=0, max_size=50))
def test_index_map_round_trip_ints(values):
    m = IndexMap.from_values(values)
    assert len(m) == len(set(values))
    idx = m.encode(values)
    assert idx.dtype == np.int64
    assert (idx >= 0).all() and (idx < max(len(m), 1)).all() if values else len(idx) == 0
    assert list(m.decode(idx)) == list(values)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=8), min_size=1, max_size=40))
def test_index_map_round_trip_strings_and_unknown(values):
    m = IndexMap.from_values(values)
    assert list(m.decode(m.encode(values))) == list(values)
    assert sorted(set(m.encode(values))) == list(range(len(m)))  # contiguous 0..n-1
    unknown = "\x00never-a-key"
    assert m.encode([unknown])[0] == -1


def test_index_map_refuses_keys_numpy_cannot_store():
    # fixed-width numpy strings drop trailing NULs; silently merging "a" and "a\x00" would be wrong
    with pytest.raises(ValueError):
        IndexMap.from_values(["a", "a\x00"])


def _ratings(n_users=300, seed=0):
    rng = np.random.default_rng(seed)
    n_per = rng.integers(1, 40, n_users)
    users = np.repeat(np.arange(n_users), n_per)
    items = np.concatenate([rng.choice(500, n, replace=False) for n in n_per])
    return pd.DataFrame({"user_id": users, "work_key": items.astype(str), "rating": rng.integers(1, 11, len(users)).astype("float32")})


def test_split_is_per_user_complete_and_disjoint():
    df = _ratings()
    s = split_per_user(df, 0.1, 0.2, seed=7)
    parts = pd.concat([s.train.assign(p="train"), s.validation.assign(p="val"), s.test.assign(p="test")])
    assert len(parts) == len(df)
    assert not parts.duplicated(["user_id", "work_key"]).any()
    # every user keeps at least one rating in train
    assert set(s.train["user_id"]) == set(df["user_id"])
    # each user's held-out count is floor or ceil of n * fraction (stochastic rounding), capped at n - 1
    n = df.groupby("user_id").size()
    n_test = s.test.groupby("user_id").size().reindex(n.index, fill_value=0)
    n_val = s.validation.groupby("user_id").size().reindex(n.index, fill_value=0)
    assert ((n_test >= np.minimum(np.floor(n * 0.2), n - 1) - 1e-9) & (n_test <= np.ceil(n * 0.2))).all()
    assert ((n_val <= np.ceil(n * 0.1)) & (n_test + n_val <= n - 1)).all()
    # overall counts against their exact expectation: floor(x + U) is floor(x) + 1 with
    # probability frac(x); enumerate the four (test, validation) roundings per user. Each user's
    # count varies by at most 1, so the total's sd is at most sqrt(300) / 2 = 8.7: 5 sd = 44.
    exp_test = exp_val = 0.0
    for size in n.to_numpy():
        xt, xv = size * 0.2, size * 0.1
        for t_up, pt in ((0, 1 - xt % 1), (1, xt % 1)):
            for v_up, pv in ((0, 1 - xv % 1), (1, xv % 1)):
                t = min(int(xt) + t_up, size - 1)
                v = min(int(xv) + v_up, size - 1 - t)
                exp_test += pt * pv * t
                exp_val += pt * pv * v
    assert abs(len(s.test) - exp_test) < 44
    assert abs(len(s.validation) - exp_val) < 44


def test_split_is_reproducible_and_order_independent():
    df = _ratings(seed=1)
    a = split_per_user(df, 0.1, 0.1, seed=3)
    b = split_per_user(df.sample(frac=1.0, random_state=5), 0.1, 0.1, seed=3)
    c = split_per_user(df, 0.1, 0.1, seed=4)
    for part in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(a, part), getattr(b, part))
    assert not a.test.equals(c.test)


def test_split_single_rating_user_stays_in_train():
    df = pd.DataFrame({"user_id": [1, 2, 2], "work_key": ["a", "a", "b"], "rating": [5.0, 6.0, 7.0]})
    s = split_per_user(df, 0.4, 0.4, seed=0)
    assert 1 in set(s.train["user_id"]) and 2 in set(s.train["user_id"])


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        split_per_user(_ratings(), 0.6, 0.5, seed=0)


def test_explicit_implicit_and_work_keys():
    ratings = pd.DataFrame({"user_id": [1, 1, 1, 2], "isbn": ["A", "B", "Z", "A"], "rating": [0.0, 8.0, 9.0, 4.0]})
    books = pd.DataFrame({"isbn": ["A", "B"], "work_key": ["w", "w"]})
    assert list(implicit(ratings)["isbn"]) == ["A"]
    assert list(explicit(ratings)["rating"]) == [8.0, 9.0, 4.0]
    joined = attach_work_keys(explicit(ratings), books)
    assert "Z" not in set(joined["isbn"])  # ISBN missing from books: dropped by the inner join
    merged = average_per_work(joined)
    # user 1 rated two editions of work w (only B explicitly) -> one row; user 2 rated edition A
    assert merged.to_dict("records") == [
        {"user_id": 1, "work_key": "w", "rating": 8.0},
        {"user_id": 2, "work_key": "w", "rating": 4.0},
    ]


def test_editions_are_averaged():
    ratings = pd.DataFrame({"user_id": [1, 1], "isbn": ["A", "B"], "rating": [6.0, 9.0]})
    books = pd.DataFrame({"isbn": ["A", "B"], "work_key": ["w", "w"]})
    merged = average_per_work(attach_work_keys(ratings, books))
    assert merged["rating"].tolist() == [7.5]


def test_prepare_training_on_tiny():
    dataset = generate("tiny", seed=2).dataset
    s = Settings(min_user_ratings=3, min_book_ratings=3, validation_fraction=0.1, test_fraction=0.1, seed=1)
    td = prepare_training(dataset, s)
    n = sum(len(part[2]) for part in (td.train, td.validation, td.test))
    assert n == len(td.ratings) > 0
    for u, i, r in (td.train, td.validation, td.test):
        assert u.dtype == np.int64 and i.dtype == np.int64 and r.dtype == np.float32
        assert (u >= 0).all() and (u < td.n_users).all() and (i >= 0).all() and (i < td.n_items).all()
        assert ((r >= 1) & (r <= 10)).all()
    # every k-core user is in train; items decode back to work keys of the books table
    assert set(td.train[0]) == set(range(td.n_users))
    assert set(td.items.decode(np.arange(td.n_items))) <= set(dataset.books["work_key"])
    # same settings -> same arrays
    td2 = prepare_training(dataset, s)
    assert all(np.array_equal(a, b) for a, b in zip(td.test, td2.test))
