"""Import a BookCrossing copy (original ``BX-*.csv`` dump or the Kaggle republication).

The layout is detected from the file names and confirmed by the header row. Rows are read with
pyarrow's CSV reader (fast path); rows it cannot split into the expected columns are handed to
a slower repair path (Python's csv module with the same dialect) that fixes what has a clear
intent and counts the rest by reason. The result is normalised by :mod:`bookrec.data.normalize`
and is deterministic (the same input always gives the same tables).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bookrec.data.io import Dataset
from bookrec.data.normalize import normalize_tables

TABLES = ("ratings", "books", "users")
LAYOUTS = {
    "bx": {"ratings": "bx-book-ratings.csv", "books": "bx-books.csv", "users": "bx-users.csv"},
    "kaggle": {"ratings": "ratings.csv", "books": "books.csv", "users": "users.csv"},
}
PRETTY_NAMES = {
    "bx": {"ratings": "BX-Book-Ratings.csv", "books": "BX-Books.csv", "users": "BX-Users.csv"},
    "kaggle": {"ratings": "Ratings.csv", "books": "Books.csv", "users": "Users.csv"},
}
DIALECTS = {
    "bx": {"delimiter": ";", "escape": "\\", "encoding": "latin-1"},
    "kaggle": {"delimiter": ",", "escape": None, "encoding": "utf-8"},
}
COLUMNS = {
    "ratings": ["user_id", "isbn", "rating"],
    "users": ["user_id", "location", "age"],
    "books": ["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m", "image_url_l"],
}
EXPECTED_HEADERS = {
    "ratings": ["userid", "isbn", "bookrating"],
    "users": ["userid", "location", "age"],
    "books": ["isbn", "booktitle", "bookauthor", "yearofpublication", "publisher", "imageurls", "imageurlm", "imageurll"],
}
# a shifted book row: the author was glued to the title with '";' (or '\";')
_GLUE = re.compile(r'\\?";')


class DataImportError(Exception):
    """The input cannot be used (missing file, not a BookCrossing layout, unreadable archive)."""


@dataclass
class _Parsed:
    frame: pd.DataFrame
    rows_read: int
    repaired: Counter
    rejected: Counter


def _find_sources(path: Path) -> tuple[str, dict[str, bytes]]:
    """Detect the layout and return the raw bytes of its three files."""
    path = Path(path)
    if not path.exists():
        raise DataImportError(f"{path} does not exist")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataImportError(f"{path} is neither a zip archive nor a folder")
        try:
            with zipfile.ZipFile(path) as zf:
                names = {Path(n).name.lower(): n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n}
                layout, wanted = _choose_layout(names, str(path))
                return layout, {t: zf.read(names[f]) for t, f in wanted.items()}
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as exc:
            raise DataImportError(f"{path}: the zip archive is damaged or truncated ({exc})") from exc
    names = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and len(f.relative_to(path).parts) <= 2:
            names.setdefault(f.name.lower(), f)
    layout, wanted = _choose_layout(names, str(path))
    return layout, {t: names[f].read_bytes() for t, f in wanted.items()}


def _choose_layout(names: dict, where: str) -> tuple[str, dict[str, str]]:
    for layout, files in LAYOUTS.items():
        if any(f in names for f in files.values()):
            missing = [f for f in files.values() if f not in names]
            if missing:
                pretty = {"bx": "BX-Books.csv, BX-Users.csv, BX-Book-Ratings.csv", "kaggle": "Books.csv, Users.csv, Ratings.csv"}
                raise DataImportError(
                    f"{where}: looks like the {layout} layout but {', '.join(missing)} is missing "
                    f"(expected {pretty[layout]})"
                )
            return layout, {t: files[t] for t in TABLES}
    raise DataImportError(
        f"{where}: not a BookCrossing copy (expected BX-Books.csv/BX-Users.csv/BX-Book-Ratings.csv "
        f"or Books.csv/Users.csv/Ratings.csv)"
    )


def _decode(data: bytes, layout: str) -> str:
    if layout == "bx":
        return data.decode("latin-1")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="replace")


def _header_key(field: str) -> str:
    return re.sub(r"[^a-z]", "", field.lower())


def _csv_rows(text: str, layout: str) -> list[list[str]]:
    d = DIALECTS[layout]
    reader = csv.reader(
        io.StringIO(text), delimiter=d["delimiter"], quotechar='"', escapechar=d["escape"], doublequote=True, strict=False
    )
    return [row for row in reader]


def _parse(table: str, text: str, layout: str, name: str) -> _Parsed:
    """Fast path with pyarrow; invalid rows go through :func:`_repair_row`."""
    import pyarrow as pa
    import pyarrow.csv as pc

    d = DIALECTS[layout]
    first_line, _, _rest = text.partition("\n")
    if not first_line.strip():
        raise DataImportError(f"{name} is empty (no header row)")
    header = _csv_rows(first_line, layout)
    header = header[0] if header else []
    if [_header_key(h) for h in header] != EXPECTED_HEADERS[table]:
        raise DataImportError(
            f"{name}: unexpected header {header!r}; this is not a BookCrossing {table} file "
            f"(or it is truncated)"
        )
    cols = COLUMNS[table]
    bad_lines: list[str] = []

    def on_invalid(row) -> str:
        bad_lines.append(row.text)
        return "skip"

    parse = pc.ParseOptions(
        delimiter=d["delimiter"],
        quote_char='"',
        double_quote=True,
        escape_char=d["escape"] or False,
        newlines_in_values=False,
        invalid_row_handler=on_invalid,
    )
    read = pc.ReadOptions(column_names=cols, skip_rows=1, encoding="utf8", block_size=1 << 24)
    convert = pc.ConvertOptions(
        column_types={c: pa.string() for c in cols}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    try:
        tbl = pc.read_csv(io.BytesIO(text.encode("utf-8")), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise DataImportError(f"{name}: cannot be read as CSV ({exc})") from exc
    frame = tbl.to_pandas()
    for c in cols:
        frame[c] = frame[c].astype(object)
    repaired: Counter = Counter()
    rejected: Counter = Counter()
    fixed_rows: list[list[str]] = []
    truncated_tail = not text.endswith("\n")
    for i, line in enumerate(bad_lines):
        fields, reason = _repair_row(table, line, layout)
        if fields is None:
            is_last = truncated_tail and i == len(bad_lines) - 1 and text.rstrip("\n").endswith(line.rstrip("\n"))
            rejected["truncated_last_row" if is_last else reason] += 1
        else:
            fixed_rows.append(fields)
            repaired[reason] += 1
    if fixed_rows:
        frame = pd.concat([frame, pd.DataFrame(fixed_rows, columns=cols, dtype=object)], ignore_index=True)
    # empty strings mean missing
    frame = frame.replace({"": None})
    if table == "books":
        frame, n_shift = _unshift_books(frame)
        repaired["shifted_columns"] += n_shift
        if "short_row" in repaired:  # a 7-field shifted BX row is counted once, as shifted
            repaired.pop("short_row")
    return _Parsed(frame=frame, rows_read=len(tbl) + len(bad_lines), repaired=+repaired, rejected=+rejected)


def _repair_row(table: str, line: str, layout: str) -> tuple[list[str] | None, str]:
    """Fields of one row the fast path rejected, or ``(None, reason)`` when its intent is unclear."""
    rows = _csv_rows(line, layout)
    if len(rows) != 1:
        return None, "broken_quoting"
    fields = [f for f in rows[0]]
    n = len(COLUMNS[table])
    # trailing empty separators ("a";"b";"c";) carry no data
    while len(fields) > n and fields[-1].strip() == "":
        fields = fields[:-1]
    if len(fields) == n:
        return fields, "trailing_separator"
    if table == "books" and len(fields) == n - 1 and _GLUE.search(fields[1] or ""):
        return fields + [""], "short_row"  # unshifted later, with the 8-field ones
    if layout == "bx" and "\\" in line:
        # a field that really ends in a backslash ("C:\";) swallows its closing quote when
        # backslash is the escape character; read without escapes, the row may be whole
        plain = list(csv.reader(io.StringIO(line), delimiter=";", quotechar='"', doublequote=True, strict=False))
        if len(plain) == 1 and len(plain[0]) == n:
            return plain[0], "backslash_before_quote"
    if table == "users" and len(fields) > n and fields[0].strip().isdigit():
        # separators inside an unquoted location: the id is first, the age last
        return [fields[0], layout_join(layout).join(fields[1:-1]), fields[-1]], "separator_in_location"
    if len(fields) < n:
        return None, "too_few_fields"
    return None, "too_many_fields"


def layout_join(layout: str) -> str:
    return DIALECTS[layout]["delimiter"]


def _unshift_books(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Repair rows where the author was glued into the title and the rest moved one column left.

    Intent is clear when the title holds '";' (optionally backslash-escaped), the author
    column holds a number (the year) and the year column does not.
    """
    title = frame["title"].fillna("")
    author = frame["author"].fillna("")
    year = frame["year"].fillna("")
    mask = (
        title.str.contains(_GLUE.pattern, regex=True)
        & author.str.strip().str.fullmatch(r"\d{1,4}")
        & ~year.str.strip().str.fullmatch(r"\d{1,4}")
    )
    if not mask.any():
        return frame, 0
    frame = frame.copy()
    rows = frame.loc[mask]
    parts = rows["title"].str.split(_GLUE.pattern, n=1, regex=True)
    frame.loc[mask, "image_url_l"] = rows["image_url_m"]
    frame.loc[mask, "image_url_m"] = rows["image_url_s"]
    frame.loc[mask, "image_url_s"] = rows["publisher"]
    frame.loc[mask, "publisher"] = rows["year"]
    frame.loc[mask, "year"] = rows["author"]
    frame.loc[mask, "title"] = parts.str[0].str.strip()
    frame.loc[mask, "author"] = parts.str[1].str.strip().str.strip('"').str.strip()
    return frame, int(mask.sum())


def import_path(path: Path | str, progress=None) -> Dataset:
    """Read a BookCrossing copy (zip or folder, either layout) into a normalised :class:`Dataset`.

    ``dataset.manifest["report"]`` holds the import report: per table rows read, kept,
    repaired and rejected by reason, plus ratings whose ISBN is not in the books file.
    Raises :class:`DataImportError` when the input is unusable. ``progress`` (optional) receives
    stage names.
    """
    say = progress or (lambda _msg: None)
    say("opening")
    layout, blobs = _find_sources(Path(path))
    files = PRETTY_NAMES[layout]
    parsed = {}
    for table in TABLES:
        say(f"reading {files[table]} ({layout} layout)")
        text = _decode(blobs.pop(table), layout)
        parsed[table] = _parse(table, text, layout, files[table])
        del text
    say("normalising")
    ratings, books, users, norm = normalize_tables(parsed["ratings"].frame, parsed["books"].frame, parsed["users"].frame)
    report: dict = {"layout": layout, "tables": {}}
    kept = {"ratings": len(ratings), "books": len(books), "users": len(users)}
    for table in TABLES:
        p = parsed[table]
        rejected = Counter(p.rejected)
        notes = {}
        for key, value in norm[table].items():
            if key.startswith("rejected_"):
                rejected[key.removeprefix("rejected_")] += value
            elif key != "kept":
                notes[key] = value
        report["tables"][table] = {
            "file": files[table],
            "rows_read": p.rows_read,
            "kept": kept[table],
            "repaired": dict(sorted(p.repaired.items())),
            "rejected": dict(sorted((+rejected).items())),
            "notes": notes,
        }
    report["ratings_isbn_not_in_books"] = norm["ratings"]["isbn_not_in_books"]
    manifest = {
        "source": layout,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(Path(path).resolve()),
        "report": report,
    }
    return Dataset(ratings=ratings, books=books, users=users, manifest=manifest, truth=None)


def report_table(report: dict):
    """The import report as a rich table."""
    from rich.table import Table

    t = Table(title=f"Import report ({report['layout']} layout)")
    for col in ("file", "rows read", "kept", "repaired", "rejected"):
        t.add_column(col, justify="right" if col in ("rows read", "kept") else "left")
    for table, r in report["tables"].items():
        fmt = lambda d: ", ".join(f"{k}: {v:,}" for k, v in d.items()) or "-"  # noqa: E731
        t.add_row(r["file"], f"{r['rows_read']:,}", f"{r['kept']:,}", fmt(r["repaired"]), fmt(r["rejected"]))
    t.caption = f"ratings whose ISBN is not in the books file: {report['ratings_isbn_not_in_books']:,}"
    return t
