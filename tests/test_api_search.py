"""The catalogue search index and the catalogue blob reader, on small hand-made catalogues."""

from __future__ import annotations

import gzip
import io

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bookrec.api.catalog import Catalog, CatalogFormatError
from bookrec.api.search import SearchIndex
from bookrec.data.normalize import normalize_isbn as importer_normalize_isbn
from bookrec.data.isbn import normalize_isbn_text as normalize_isbn

ROWS = [
    {"isbn": "0439064864", "work_key": "harry potter and the chamber of secrets|jkrowling",
     "title": "Harry Potter and the Chamber of Secrets", "author": "J. K. Rowling", "n_ratings": 500},
    {"isbn": "0439136350", "work_key": "harry potter and the prisoner of azkaban|jkrowling",
     "title": "Harry Potter and the Prisoner of Azkaban", "author": "J. K. Rowling", "n_ratings": 450},
    {"isbn": "059035342X", "work_key": "harry potter and the sorcerers stone|jkrowling",
     "title": "Harry Potter and the Sorcerer's Stone", "author": "J. K. Rowling", "n_ratings": 600},
    {"isbn": "0747532699", "work_key": "harry potter and the sorcerers stone|jkrowling",  # another edition
     "title": "Harry Potter and the Sorcerer's Stone", "author": "J.K. Rowling", "n_ratings": 40},
    {"isbn": "0345339681", "work_key": "the hobbit|jrrtolkien", "title": "The Hobbit", "author": "J.R.R. Tolkien",
     "n_ratings": 300},
    {"isbn": "0618002227", "work_key": "the fellowship of the ring|jrrtolkien",
     "title": "The Fellowship of the Ring", "author": "J.R.R. Tolkien", "n_ratings": 200},
    {"isbn": "0060928336", "work_key": "divine secrets of the yaya sisterhood|rebeccawells",
     "title": "Divine Secrets of the Ya-Ya Sisterhood", "author": "Rebecca Wells", "n_ratings": 350},
    {"isbn": "0385504209", "work_key": "the da vinci code|danbrown", "title": "The Da Vinci Code",
     "author": "Dan Brown", "n_ratings": 800},
    {"isbn": "0671027360", "work_key": "angels demons|danbrown", "title": "Angels & Demons", "author": "Dan Brown",
     "n_ratings": 400},
    {"isbn": "0316666343", "work_key": "the lovely bones a novel|alicesebold", "title": "The Lovely Bones: A Novel",
     "author": "Alice Sebold", "n_ratings": 700},
]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_rows([{**r, "year": 2000, "publisher": "P", "image_url": None, "in_model": True} for r in ROWS])


@pytest.fixture(scope="module")
def index(catalog) -> SearchIndex:
    return SearchIndex(catalog.title, catalog.author, catalog.n_ratings, groups=catalog.work_key)


def titles(index, catalog, query, limit=5):
    return [catalog.title[h.row] for h in index.search(query, limit=limit)]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("the hobbit", "The Hobbit"),
        ("hobit", "The Hobbit"),                                   # a letter missing
        ("tolkein hobbit", "The Hobbit"),                          # author misspelt, words swapped
        ("lovely bnoes", "The Lovely Bones: A Novel"),             # transposition
        ("da vinci", "The Da Vinci Code"),
        ("harry potter sorcerer", "Harry Potter and the Sorcerer's Stone"),
        ("harry potter azk", "Harry Potter and the Prisoner of Azkaban"),  # type-ahead: unfinished last word
        ("ya-ya", "Divine Secrets of the Ya-Ya Sisterhood"),
        ("angels and demons", "Angels & Demons"),
    ],
)
def test_search_tolerates_typos_and_unfinished_words(index, catalog, query, expected):
    assert titles(index, catalog, query)[0] == expected


def test_search_by_author_finds_all_their_works_once(index, catalog):
    found = titles(index, catalog, "rowling", limit=10)
    assert sorted(found) == sorted({r["title"] for r in ROWS if "Rowling" in r["author"]})
    hits = index.search("sorcerer's stone", limit=10)
    works = [catalog.work_key[h.row] for h in hits]
    assert len(works) == len(set(works))  # the two editions collapse into one result
    assert catalog.isbn[hits[0].row] == "059035342X"  # the more-read edition represents the work


def test_search_scores_are_ordered_and_bounded(index):
    hits = index.search("harry potter", limit=10)
    assert len(hits) == 3
    assert all(0 <= h.score <= 100 for h in hits)
    # Ranked by score plus the small popularity bonus (scores are rounded to 0.01).
    keys = [h.score + index.pop_bonus[h.row] for h in hits]
    assert all(a >= b - 0.01 for a, b in zip(keys, keys[1:]))


def test_search_without_a_match_returns_nothing(index):
    assert index.search("zzzz qqqq", limit=5) == []
    assert index.search("!!!", limit=5) == []


def test_exact_rows_come_first(index, catalog):
    row = catalog.row_of_isbn["0671027360"]
    hits = index.search("harry", limit=3, exact_rows=[row])
    assert hits[0].row == row and hits[0].score == 100.0


def test_isbn_normalisation_agrees_with_the_importer():
    raw = ["0-316-66634-3", " 043935806x ", "978 0 439 13635 0", "'0439064864'", "abc.def"]
    assert [normalize_isbn(x) for x in raw] == importer_normalize_isbn(pd.Series(raw)).tolist()


def _jsonl(rows) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in rows)


def _parquet(rows) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


@pytest.mark.parametrize("encode", [_jsonl, lambda r: gzip.compress(_jsonl(r)), _parquet, lambda r: orjson.dumps(r)])
def test_catalog_blob_formats(encode):
    rows = [{**r, "year": None if i % 2 else 1999, "publisher": None, "image_url": "http://x", "in_model": i % 3 == 0}
            for i, r in enumerate(ROWS)]
    catalog = Catalog.from_blob(encode(rows))
    assert catalog.isbn == [r["isbn"] for r in ROWS]
    assert catalog.year[:2] == [1999, None]
    assert catalog.in_model[:4] == [True, False, False, True]
    assert catalog.rows_of_work["harry potter and the sorcerers stone|jkrowling"] == [2, 3]
    assert catalog.summary(4)["title"] == "The Hobbit"


def test_unreadable_catalog_is_a_clear_error():
    with pytest.raises(CatalogFormatError):
        Catalog.from_blob(gzip.compress(b"{not json"))


def test_weak_fuzzy_matches_are_not_shown():
    # "harry" is one edit from "hardy": alone it would list every Hardy for a Harry Potter query.
    index = SearchIndex(["Far from the Madding Crowd", "Tess of the d'Urbervilles"], ["Thomas Hardy", "Thomas Hardy"])
    assert index.search("harry potter", limit=5) == []
    assert len(index.search("hardy", limit=5)) == 2
