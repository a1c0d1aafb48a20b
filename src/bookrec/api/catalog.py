"""The whole catalogue of one published version, held in memory by the API for search and paging.

Parsed once per version from the `catalog` blob (gzip-compressed JSON lines, plain JSON lines or
Parquet, told apart by their magic bytes). Columns are kept as plain lists: row access is then a
list index (the pages and the search results are built row by row).
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from bookrec.data.isbn import isbn_lookup_keys

COLUMNS = ("isbn", "work_key", "title", "author", "year", "publisher", "image_url", "n_ratings", "in_model")


class CatalogFormatError(ValueError):
    """The `catalog` blob is not in a format this API understands."""


def _clean(value: Any) -> Any:
    # Parquet/pandas give NaN for missing strings and numpy scalars; JSON wants None and Python numbers.
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _rows_from_blob(blob: bytes) -> list[dict[str, Any]]:
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    if blob[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(blob))
        return table.to_pylist()
    text = blob.strip()
    if not text:
        return []
    if text[:1] == b"[":
        rows = orjson.loads(text)
        if not isinstance(rows, list):
            raise CatalogFormatError("catalog JSON is not a list")
        return rows
    return [orjson.loads(line) for line in text.split(b"\n") if line.strip()]


@dataclass
class Catalog:
    """Column lists plus lookups: ISBN -> row, work key -> rows (most-rated edition first)."""

    isbn: list[str]
    work_key: list[str | None]
    title: list[str]
    author: list[str | None]
    year: list[int | None]
    publisher: list[str | None]
    image_url: list[str | None]
    n_ratings: list[int]
    in_model: list[bool]
    row_of_isbn: dict[str, int] = field(default_factory=dict)
    rows_of_work: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_blob(cls, blob: bytes) -> "Catalog":
        try:
            rows = _rows_from_blob(blob)
        except (OSError, ValueError, orjson.JSONDecodeError) as exc:
            raise CatalogFormatError(f"unreadable catalog blob: {type(exc).__name__}") from exc
        return cls.from_rows(rows)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> "Catalog":
        cols: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for row in rows:
            isbn = row.get("isbn")
            if not isbn:
                continue
            cols["isbn"].append(str(isbn))
            cols["work_key"].append(_clean(row.get("work_key")))
            cols["title"].append(_clean(row.get("title")) or "")
            cols["author"].append(_clean(row.get("author")))
            year = _clean(row.get("year"))
            cols["year"].append(int(year) if year is not None else None)
            cols["publisher"].append(_clean(row.get("publisher")))
            cols["image_url"].append(_clean(row.get("image_url")))
            n = _clean(row.get("n_ratings"))
            cols["n_ratings"].append(int(n) if n is not None else 0)
            cols["in_model"].append(bool(_clean(row.get("in_model")) or False))
        catalog = cls(**cols)
        catalog.row_of_isbn = {isbn: i for i, isbn in enumerate(catalog.isbn)}
        by_work: dict[str, list[int]] = {}
        for i, key in enumerate(catalog.work_key):
            if key:
                by_work.setdefault(key, []).append(i)
        for rows_ in by_work.values():
            rows_.sort(key=lambda r: -catalog.n_ratings[r])
        catalog.rows_of_work = by_work
        return catalog

    def __len__(self) -> int:
        return len(self.isbn)

    def summary(self, row: int) -> dict[str, Any]:
        """The book-summary shape (`BookSummary`) of one row."""
        return {
            "isbn": self.isbn[row],
            "work_key": self.work_key[row],
            "title": self.title[row],
            "author": self.author[row],
            "year": self.year[row],
            "publisher": self.publisher[row],
            "image_url": self.image_url[row],
            "n_ratings": self.n_ratings[row],
            "in_model": self.in_model[row],
        }

    def find_isbn(self, text: str) -> int | None:
        """The row of an ISBN as typed: the key as given first, then its ISBN-10/13 twin."""
        for key in isbn_lookup_keys(text):
            row = self.row_of_isbn.get(key)
            if row is not None:
                return row
        return None

    def representative_row(self, work_key: str, isbn_hint: str | None = None) -> int | None:
        """The row to show for a work: the hinted edition when it is in the catalogue, else the most rated."""
        if isbn_hint is not None:
            row = self.row_of_isbn.get(isbn_hint)
            if row is not None:
                return row
        rows = self.rows_of_work.get(work_key)
        return rows[0] if rows else None
