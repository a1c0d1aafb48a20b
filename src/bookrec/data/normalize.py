"""Turn raw BookCrossing tables (all fields as text) into the normalised tables.

Shared by the importer and the generator: the generator builds raw-looking tables and runs
them through exactly this code, so `synth --format normalized` and `synth --format bx` followed
by `import` give the same data.

Raw tables have these string columns (None/NaN for missing):
- ratings: ``user_id``, ``isbn``, ``rating``
- books: ``isbn``, ``title``, ``author``, ``year``, ``publisher``, ``image_url_s``, ``image_url_m``, ``image_url_l``
- users: ``user_id``, ``location``, ``age``
"""

from __future__ import annotations

import html
import re
import unicodedata

import numpy as np
import pandas as pd

from bookrec.data.isbn import ISBN_PREFIX, NOT_ISBN_CHAR, isbn_twin

# Years outside this window are junk (0 for unknown, 2030/2050, typos like 1376 are kept as
# plausible old books; the crawl was in 2004 so anything after 2006 cannot be a real edition).
YEAR_MIN, YEAR_MAX = 1000, 2006
AGE_MIN, AGE_MAX = 1, 100
ISBN_VALID = re.compile(r"^(?:[0-9]{9}[0-9X]|97[89][0-9]{10})$")
# A user id is a plain non-negative integer ("12", or "12.0" from a float column); 15 digits stay
# exact in float64 (2**53 has 16). "1e3", "inf" and longer ids are rejected, never converted.
ID_TEXT = re.compile(r"\s*\d{1,15}(?:\.0*)?\s*")


def normalize_isbn(values: pd.Series) -> pd.Series:
    """Upper-case, keep only digits and letters (spaces, dashes, dots and quotes go) and drop a
    leading ``ISBN`` (:func:`bookrec.data.isbn.normalize_isbn_text`, for a whole column).

    Junk that survives (empty, wrong length) is kept as it is: a rating on a junk ISBN is
    still an interaction, and the ISBN will simply not join to a book.
    """
    s = values.astype("str").str.upper().str.replace(NOT_ISBN_CHAR.pattern, "", regex=True)
    return s.str.replace(ISBN_PREFIX.pattern, "", regex=True)


def is_valid_isbn(isbns: pd.Series) -> pd.Series:
    """True for ISBN-10 (9 digits + digit/X) and 978/979 ISBN-13 keys whose check digit holds."""
    shaped = isbns.str.fullmatch(ISBN_VALID.pattern).fillna(False).astype(bool).to_numpy()
    valid = np.zeros(len(isbns), dtype=bool)
    if shaped.any():
        keys = isbns.to_numpy(dtype=object)[shaped]
        valid[shaped] = _check_digits_hold(keys)
    return pd.Series(valid, index=isbns.index)


def _check_digits_hold(keys: np.ndarray) -> np.ndarray:
    """ISBN check digits of well-shaped keys: weights 10..1 mod 11 (X = 10), or 1,3,1,... mod 10."""
    codes = keys.astype("S13").view(np.uint8).reshape(len(keys), 13)  # ASCII, zero-padded
    digits = np.where(codes == ord("X"), 10, codes.astype(np.int16) - ord("0"))
    ten = codes[:, 10] == 0
    holds = np.empty(len(keys), dtype=bool)
    holds[ten] = digits[ten, :10] @ np.arange(10, 0, -1, dtype=np.int16) % 11 == 0
    holds[~ten] = digits[~ten] @ np.tile(np.array([1, 3], dtype=np.int16), 7)[:13] % 10 == 0
    return holds


def decode_entities(values: pd.Series) -> pd.Series:
    """Decode HTML entities (``&amp;``, ``&#39;``...) only where an ``&`` occurs (fast path)."""
    s = values.astype("str")
    mask = s.str.contains("&", regex=False).fillna(False).astype(bool)
    if mask.any():
        s = s.copy()
        s.loc[mask] = [html.unescape(v) for v in s.loc[mask]]
    return s.str.strip()


def _fold(text: str) -> str:
    # accents become their base letters; other non-ASCII characters are dropped (the keys keep
    # only [0-9a-z] anyway)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def _folded_lower(values: pd.Series) -> pd.Series:
    """Lower-case text with accents stripped; the slow Unicode path only for non-ASCII rows."""
    s = values.fillna("").astype("str")
    non_ascii = ~s.str.isascii().fillna(True).astype(bool)
    if non_ascii.any():
        s = s.copy()
        s.loc[non_ascii] = [_fold(x) for x in s.loc[non_ascii]]
    return s.str.lower()


def work_keys(titles: pd.Series, authors: pd.Series) -> pd.Series:
    """The work key of each book: ``normalised title|normalised author`` (editions share it).

    The title keeps its lower-case ASCII words with punctuation removed ('The Da-Vinci Code!' ->
    'the da vinci code'); the author keeps letters and digits only, so 'J. K. Rowling',
    'J.K. Rowling' and 'J K ROWLING' agree.
    """
    t = _folded_lower(titles).str.replace(_NON_ALNUM.pattern, " ", regex=True).str.strip()
    a = _folded_lower(authors).str.replace(_NON_ALNUM.pattern, "", regex=True)
    return (t + "|" + a).astype("str")


def isin(values: pd.Series, allowed) -> np.ndarray:
    """Fast membership test for string or integer columns (pyarrow's hash set, not a Python loop)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(np.asarray(values, dtype=object) if values.dtype == object else values)
    value_set = pa.array(np.asarray(allowed, dtype=object) if getattr(allowed, "dtype", None) == object else allowed)
    if arr.type != value_set.type:
        value_set = value_set.cast(arr.type)
    return pc.is_in(arr, value_set=value_set).to_numpy(zero_copy_only=False).astype(bool)


def parse_year(values: pd.Series) -> tuple[pd.Series, int]:
    """Year as nullable Int16; junk (0, future years, strings) -> null. Returns (years, n_junk)."""
    num = pd.to_numeric(values, errors="coerce")
    present = values.notna() & (values.astype("str").str.strip() != "")
    ok = num.notna() & (num == num.round()) & (num >= YEAR_MIN) & (num <= YEAR_MAX)
    years = num.where(ok).astype("Int16")
    return years, int((present & ~ok).sum())


def parse_age(values: pd.Series) -> tuple[pd.Series, int, int]:
    """Age as nullable Int16; missing (NULL, empty) and junk (0, >100, text) -> null.

    Returns (ages, n_missing, n_junk).
    """
    text = values.astype("str").str.strip()
    missing = values.isna() | text.isin(["", "NULL", "null", "NaN", "nan"])
    num = pd.to_numeric(text.where(~missing), errors="coerce")
    ok = num.notna() & (num == num.round()) & (num >= AGE_MIN) & (num <= AGE_MAX)
    ages = num.where(ok).astype("Int16")
    return ages, int(missing.sum()), int((~missing & ~ok).sum())


_LOCATION_NULLS = {"", "n/a", "na", "none", "null", "unknown", "-", "."}


def _clean_location_part(s: pd.Series) -> pd.Series:
    s = s.astype("str").str.strip().str.strip('"').str.strip()
    return s.where(~isin(s.str.lower().fillna(""), list(_LOCATION_NULLS)) & s.notna())


def parse_location(values: pd.Series) -> pd.DataFrame:
    """Split free-text 'city, state, country' into three nullable columns.

    The country is the last comma-separated part and the city the first; whatever lies between
    is the state (extra commas are common: 'portland, oregon, usa, ').
    """
    text = values.fillna("").astype("str").str.strip().str.rstrip(",").str.strip()
    n = text.str.count(",") + 1
    city = text.str.replace(r",.*$", "", regex=True)
    country = text.str.replace(r"^.*,", "", regex=True).where(n >= 2)
    state = text.str.replace(r"^[^,]*,", "", regex=True).str.replace(r",[^,]*$", "", regex=True).where(n >= 3)
    return pd.DataFrame(
        {
            "city": _clean_location_part(city),
            "state": _clean_location_part(state),
            "country": _clean_location_part(country),
        },
        index=values.index,
    )


def _str_col(s: pd.Series) -> pd.Series:
    out = s.astype("str").str.strip()
    return out.where(s.notna() & (out != ""))


def normalize_users(raw_users: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Raw users -> normalised users sorted by id, and their report counts."""
    uid = pd.Series(_id_numbers(raw_users["user_id"]), index=raw_users.index)
    bad_uid = uid.isna()
    users = raw_users.loc[~bad_uid]
    uid = uid[~bad_uid].astype("int64")
    dup = uid.duplicated(keep="first")
    users, uid = users.loc[~dup], uid[~dup]
    loc = parse_location(users["location"])
    ages, n_age_missing, n_age_junk = parse_age(users["age"])
    # .array keeps strings Arrow-backed; .to_numpy() would make one Python object per value
    users_out = pd.DataFrame(
        {"user_id": uid.to_numpy(), "city": loc["city"].array, "state": loc["state"].array,
         "country": loc["country"].array, "age": ages.array}
    )
    users_out = _typed_users(users_out.sort_values("user_id", kind="stable").reset_index(drop=True))
    return users_out, {
        "rejected_bad_id": int(bad_uid.sum()),
        "rejected_duplicate": int(dup.sum()),
        "age_missing": n_age_missing,
        "age_junk": n_age_junk,
        "kept": len(users_out),
    }


def normalize_books(raw_books: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Raw books -> normalised books sorted by ISBN, and their report counts."""
    isbn = normalize_isbn(raw_books["isbn"])
    empty = isbn.isna() | (isbn == "")
    books = raw_books.loc[~empty]
    isbn = isbn[~empty]
    dup = isbn.duplicated(keep="first")
    books, isbn = books.loc[~dup], isbn[~dup]
    title = decode_entities(books["title"].fillna(""))
    author = decode_entities(books["author"].fillna(""))
    publisher = decode_entities(books["publisher"].fillna(""))
    years, n_year_junk = parse_year(books["year"])
    books_out = pd.DataFrame(
        {
            "isbn": isbn.array,
            "title": title.array,
            "author": author.array,
            "year": years.array,
            "publisher": publisher.array,
            "image_url": _str_col(books["image_url_m"]).array,
            "work_key": work_keys(title, author).array,
        }
    )
    books_out = _typed_books(books_out.sort_values("isbn", kind="stable").reset_index(drop=True))
    return books_out, {
        "rejected_empty_isbn": int(empty.sum()),
        "rejected_duplicate_isbn": int(dup.sum()),
        "isbn_changed_by_normalisation": int((isbn != raw_books["isbn"].loc[isbn.index].astype("str")).sum()),
        "invalid_isbn_kept": int((~is_valid_isbn(isbn)).sum()),
        "year_junk": n_year_junk,
        "kept": len(books_out),
    }


def match_isbn_twins(keys: pd.Index, book_isbns: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """Rating keys absent from the books whose ISBN-10/13 twin is a books key take that key.

    The books keep their own form, so a rating on ``9780316666343`` joins the book stored as
    ``0316666343``. ``keys`` are distinct normalised keys; returns them mapped, and which changed.
    """
    changed = np.zeros(len(keys), dtype=bool)
    candidates = np.flatnonzero(~isin(keys, book_isbns) & is_valid_isbn(pd.Series(keys)).to_numpy())
    twins = {i: twin for i in candidates if (twin := isbn_twin(keys[i])) is not None}
    if not twins:
        return keys, changed
    known = isin(pd.Series(list(twins.values()), dtype="str"), book_isbns)
    mapped = keys.to_numpy(dtype=object)
    for (i, twin), ok in zip(twins.items(), known):
        if ok:
            mapped[i] = twin
            changed[i] = True
    return pd.Index(mapped, dtype="str"), changed


def restore_leading_zeros(keys: pd.Index, book_isbns: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """9-character rating keys that are a books key with its leading 0 lost (a spreadsheet read the
    ISBN as a number) take that key. Returns the keys, and which changed."""
    changed = np.zeros(len(keys), dtype=bool)
    short = np.flatnonzero(keys.str.len().to_numpy() == 9)
    if not len(short):
        return keys, changed
    padded = pd.Series("0" + keys[short].to_numpy(dtype=object), dtype="str")
    ok = isin(padded, book_isbns) & is_valid_isbn(padded).to_numpy() & ~isin(keys[short], book_isbns)
    if not ok.any():
        return keys, changed
    mapped = keys.to_numpy(dtype=object)
    mapped[short[ok]] = padded.to_numpy(dtype=object)[ok]
    changed[short[ok]] = True
    return pd.Index(mapped, dtype="str"), changed


def _release_arrow_memory() -> None:
    """Hand the pages of dropped Arrow columns back: Arrow's allocator keeps them for itself,
    and the numpy arrays that follow would add to the peak instead of reusing them."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _id_numbers(texts: pd.Series) -> np.ndarray:
    """Each text as a user id (float64), NaN where it is not one (``ID_TEXT``)."""
    s = pd.Series(texts, dtype="str")
    ok = s.str.fullmatch(ID_TEXT.pattern).fillna(False).astype(bool).to_numpy()
    numbers = np.full(len(s), np.nan)
    numbers[ok] = pd.to_numeric(s[ok]).to_numpy(dtype=np.float64)
    return numbers


def _distinct_numbers(values: pd.Series, parse=None) -> tuple[np.ndarray, np.ndarray]:
    """``pd.to_numeric(errors="coerce")`` of each distinct text: ``(codes, numbers)`` with
    ``numbers[codes]`` the value of each row and code -1 (missing) taking the trailing NaN.

    Millions of ratings hold few distinct user ids and ratings, so this is where a large table
    stays cheap: rows carry 4-byte codes, and each text is converted once.
    """
    codes, uniques = pd.factorize(values)
    if parse is None:
        numbers = pd.to_numeric(pd.Series(uniques), errors="coerce").to_numpy(dtype=np.float64)
    else:
        numbers = parse(pd.Series(uniques))
    return codes.astype(np.int32), np.append(numbers, np.nan)


def _isbn_codes(values: pd.Series, book_isbns: pd.Series) -> tuple[np.ndarray, pd.Index, np.ndarray, np.ndarray]:
    """Each rating's ISBN as a code into sorted, normalised, matched keys (-1: missing).

    Only the distinct keys are normalised. Returns the codes, the keys, and per rating whether
    its key was a twin match and whether its leading zero was restored.
    """
    raw_codes, raw_keys = pd.factorize(values)
    raw_codes = raw_codes.astype(np.int32)
    keys = normalize_isbn(pd.Series(raw_keys, dtype="str"))
    keys, zero_restored = restore_leading_zeros(pd.Index(keys, dtype="str"), book_isbns)
    keys, changed = match_isbn_twins(keys, book_isbns)
    key_codes, sorted_keys = pd.factorize(keys, sort=True)
    codes = np.append(key_codes.astype(np.int32), np.int32(-1))[raw_codes]
    return codes, sorted_keys, np.append(changed, False)[raw_codes], np.append(zero_restored, False)[raw_codes]


def normalize_ratings(
    raw_ratings: pd.DataFrame, books_out: pd.DataFrame, users_out: pd.DataFrame
) -> tuple[pd.DataFrame, dict]:
    """Raw ratings -> normalised ratings sorted by user and ISBN, and their report counts.

    Consumes ``raw_ratings``: each raw column is dropped once converted, so a large table is
    not held twice (pass ``raw.copy(deep=False)`` to keep yours).
    """
    uid_codes, uids = _distinct_numbers(raw_ratings.pop("user_id"), parse=_id_numbers)
    _release_arrow_memory()
    val_codes, vals = _distinct_numbers(raw_ratings.pop("rating"))
    _release_arrow_memory()
    codes, keys, twinned, zero_restored = _isbn_codes(raw_ratings.pop("isbn"), books_out["isbn"])
    _release_arrow_memory()
    with np.errstate(invalid="ignore"):
        bad_uid = np.isnan(uids)[uid_codes]
        bad_rating = ~bad_uid & (np.isnan(vals) | (vals < 0) | (vals > 10))[val_codes]
    empty_key = np.append(np.asarray(keys == "", dtype=bool), True)
    bad_isbn = ~bad_uid & ~bad_rating & empty_key[codes]
    keep = ~(bad_uid | bad_rating | bad_isbn)
    n_twins, n_zero_restored = int(twinned[keep].sum()), int(zero_restored[keep].sum())
    del twinned, zero_restored
    # ids as dense ranks (int32) so the sort key is small; rank order is numeric order
    valid_ids, uid_rank = np.unique(np.nan_to_num(uids, nan=-1.0), return_inverse=True)
    uid_codes, val_codes, codes = uid_rank.astype(np.int32)[uid_codes[keep]], val_codes[keep], codes[keep]
    # of duplicates, an explicit rating before an implicit 0 (it says more), then the first read
    implicit = vals[val_codes] == 0
    order = np.lexsort((implicit, codes, uid_codes))
    del implicit
    uid_codes, val_codes, codes = uid_codes[order], val_codes[order], codes[order]
    del order
    dup = np.zeros(len(codes), dtype=bool)
    dup[1:] = (uid_codes[1:] == uid_codes[:-1]) & (codes[1:] == codes[:-1])
    uid_codes, val_codes, codes = uid_codes[~dup], val_codes[~dup], codes[~dup]
    rating = vals.astype(np.float32)[val_codes]
    fractional = int((rating != np.round(rating)).sum())
    ratings_out = _typed_ratings(
        pd.DataFrame({"user_id": valid_ids.astype(np.int64)[uid_codes], "isbn": keys.take(codes).array, "rating": rating})
    )
    in_books = isin(keys, books_out["isbn"])[codes]
    known_users = isin(ratings_out["user_id"], users_out["user_id"])
    return ratings_out, {
        "rejected_bad_user_id": int(bad_uid.sum()),
        "rejected_bad_rating": int(bad_rating.sum()),
        "rejected_empty_isbn": int(bad_isbn.sum()),
        "rejected_duplicate": int(dup.sum()),
        "kept": len(ratings_out),
        "explicit": int((rating > 0).sum()),
        "implicit": int((rating == 0).sum()),
        "rating_not_integer": fractional,
        "isbn_not_in_books": int((~in_books).sum()),
        "isbn_matched_by_twin": n_twins,
        "isbn_leading_zero_restored": n_zero_restored,
        "user_not_in_users": int((~known_users).sum()),
    }


def normalize_tables(
    raw_ratings: pd.DataFrame, raw_books: pd.DataFrame, raw_users: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Raw text tables -> normalised ``(ratings, books, users, report)`` per ARCHITECTURE.md 1.

    Deterministic: output order is sorted (ratings by user, isbn; books by isbn; users by id).
    """
    users_out, users_report = normalize_users(raw_users)
    books_out, books_report = normalize_books(raw_books)
    ratings_out, ratings_report = normalize_ratings(raw_ratings.copy(deep=False), books_out, users_out)
    report = {"users": users_report, "books": books_report, "ratings": ratings_report}
    return ratings_out, books_out, users_out, report


def _typed_ratings(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({"user_id": "int64", "isbn": "str", "rating": "float32"})


def _typed_books(df: pd.DataFrame) -> pd.DataFrame:
    out = df.astype({"isbn": "str", "title": "str", "author": "str", "publisher": "str", "work_key": "str"})
    out["year"] = out["year"].astype("Int16")
    out["image_url"] = out["image_url"].astype("str")
    return out


def _typed_users(df: pd.DataFrame) -> pd.DataFrame:
    out = df.astype({"user_id": "int64", "city": "str", "state": "str", "country": "str"})
    out["age"] = out["age"].astype("Int16")
    return out
