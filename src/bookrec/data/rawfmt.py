"""Writers of the two published BookCrossing layouts, quirks included.

- ``bx``: ``BX-Books.csv``, ``BX-Users.csv``, ``BX-Book-Ratings.csv``; ``;``-separated, every
  field in double quotes, latin-1, ``NULL`` ages, quotes inside fields backslash-escaped (``\\"``),
  and a few book rows with the author glued into the title (``Title\\";Author``) so that the
  author, year, publisher and URLs sit one column to the left.
- ``kaggle``: ``Books.csv``, ``Users.csv``, ``Ratings.csv``; ``,``-separated UTF-8 with standard
  CSV quoting, empty ages, and the same shifted rows (so publisher names land in the year column).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from bookrec.data.synth import RawTables

BX_FILES = {"books": "BX-Books.csv", "users": "BX-Users.csv", "ratings": "BX-Book-Ratings.csv"}
KAGGLE_FILES = {"books": "Books.csv", "users": "Users.csv", "ratings": "Ratings.csv"}
BOOK_HEADER = ["ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher", "Image-URL-S", "Image-URL-M", "Image-URL-L"]
USER_HEADER = ["User-ID", "Location", "Age"]
RATING_HEADER = ["User-ID", "ISBN", "Book-Rating"]
BOOK_COLS = ["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m", "image_url_l"]


def _rating_text(values: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(values):
        # continuous ratings: 9 significant digits round-trip any float32 exactly
        return pd.Series(np.char.mod("%.9g", values.to_numpy(dtype=np.float64)), index=values.index)
    return values.astype(str)


def _bx_quote(s: pd.Series) -> pd.Series:
    return '"' + s.fillna("").astype(str).str.replace('"', '\\"', regex=False) + '"'


def _shift_books(books: pd.DataFrame, shifted: np.ndarray, glue: str) -> list[list[str]]:
    """The shifted rows as field lists: title+glue+author, then year, publisher, urls (one left)."""
    rows = []
    for rec in books.loc[shifted, BOOK_COLS].itertuples(index=False):
        isbn, title, author, year, publisher, s, m, l = ("" if v is None else str(v) for v in rec)
        rows.append([isbn, f"{title}{glue}{author}", year, publisher, s, m, l])
    return rows


def write_bx(raw: RawTables, out: Path) -> None:
    """Write the original ``BX-*.csv`` layout into ``out``."""
    out = Path(out)

    def write(name: str, header: list[str], body: pd.Series, extra_lines: list[str] = ()) -> None:
        head = ";".join(f'"{h}"' for h in header)
        with open(out / name, "w", encoding="latin-1", errors="replace", newline="") as f:
            f.write(head + "\n")
            f.write("\n".join(body.tolist()))
            if len(body):
                f.write("\n")
            for line in extra_lines:
                f.write(line + "\n")

    r = raw.ratings
    body = _bx_quote(r["user_id"].astype(str)) + ";" + _bx_quote(r["isbn"]) + ";" + _bx_quote(_rating_text(r["rating"]))
    write(BX_FILES["ratings"], RATING_HEADER, body)

    u = raw.users
    age = u["age"].where(u["age"].notna(), None)
    age_field = pd.Series(np.where(age.isna(), "NULL", '"' + age.fillna("").astype(str) + '"'), index=u.index)
    body = _bx_quote(u["user_id"].astype(str)) + ";" + _bx_quote(u["location"]) + ";" + age_field
    write(BX_FILES["users"], USER_HEADER, body)

    b = raw.books
    normal = b.loc[~raw.shifted_books]
    body = _bx_quote(normal["isbn"])
    for col in BOOK_COLS[1:]:
        body = body + ";" + _bx_quote(normal[col])
    # shifted rows: the title field holds 'Title\";Author' and the row has 7 fields
    shifted_lines = [";".join(f'"{f}"' for f in row) for row in _shift_books(b, raw.shifted_books, '\\";')]
    write(BX_FILES["books"], BOOK_HEADER, body, shifted_lines)


def write_kaggle(raw: RawTables, out: Path) -> None:
    """Write the Kaggle ``Books.csv``/``Users.csv``/``Ratings.csv`` layout into ``out``."""
    out = Path(out)
    r = raw.ratings
    ratings = pd.DataFrame({"User-ID": r["user_id"], "ISBN": r["isbn"], "Book-Rating": _rating_text(r["rating"])})
    ratings.to_csv(out / KAGGLE_FILES["ratings"], index=False, encoding="utf-8", lineterminator="\n")
    u = raw.users
    users = pd.DataFrame({"User-ID": u["user_id"], "Location": u["location"], "Age": u["age"]})
    users.to_csv(out / KAGGLE_FILES["users"], index=False, encoding="utf-8", lineterminator="\n")
    b = raw.books
    books = b.loc[~raw.shifted_books, BOOK_COLS].copy()
    books.columns = BOOK_HEADER
    books.to_csv(out / KAGGLE_FILES["books"], index=False, encoding="utf-8", lineterminator="\n")
    with open(out / KAGGLE_FILES["books"], "a", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for row in _shift_books(b, raw.shifted_books, '\\";'):
            writer.writerow(row + [""])  # 8 fields, the last empty: publisher name sits in the year column
