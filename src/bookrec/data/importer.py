"""Import a BookCrossing copy (original ``BX-*.csv`` dump or the Kaggle republication).

The layout is detected from the file names and confirmed by the header row; :mod:`bookrec.data.sources`
streams the files as UTF-8 whatever their encoding, within the decompression caps. Rows are read with
pyarrow's CSV reader (fast path); rows it cannot split into the expected columns are handed to
a slower repair path (Python's csv module with the same dialect) that fixes what has a clear
intent and counts the rest by reason. The result is normalised by :mod:`bookrec.data.normalize`
and is deterministic (the same input always gives the same tables).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bookrec.data.io import Dataset
from bookrec.data.normalize import normalize_books, normalize_ratings, normalize_users
from bookrec.data.sources import PRETTY_NAMES, TABLES, Budget, DataImportError, Limits, OpenedText, open_sources, open_text

__all__ = ["DataImportError", "Limits", "import_path", "report_table"]

DIALECTS = {
    "bx": {"delimiter": ";", "escape": "\\"},
    "kaggle": {"delimiter": ",", "escape": None},
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
SHOWN_HEADER_CHARS = 100


@dataclass
class _Parsed:
    frame: pd.DataFrame | None
    rows_read: int
    repaired: Counter
    rejected: Counter


def _header_key(field: str) -> str:
    return re.sub(r"[^a-z]", "", field.lower())


def _csv_rows(text: str, layout: str) -> list[list[str]]:
    d = DIALECTS[layout]
    reader = csv.reader(
        io.StringIO(text), delimiter=d["delimiter"], quotechar='"', escapechar=d["escape"], doublequote=True, strict=False
    )
    return [row for row in reader]


def _csv_error_reason(exc: csv.Error, line: str) -> str:
    if "field larger than field limit" in str(exc):
        return "field_too_long"
    return "stray_carriage_return" if "\r" in line else "broken_quoting"


def _check_header(opened: OpenedText, table: str, layout: str, name: str) -> None:
    first_line = opened.header_line
    if not first_line.strip():
        raise DataImportError(f"{name} is empty (no header row)")
    try:
        rows = _csv_rows(first_line, layout)
    except csv.Error:
        rows = [[first_line]]
    header = rows[0] if rows else []
    if [_header_key(h) for h in header] != EXPECTED_HEADERS[table]:
        shown = repr(header)
        if len(shown) > SHOWN_HEADER_CHARS:
            shown = shown[:SHOWN_HEADER_CHARS] + "..."
        raise DataImportError(
            f"{name}: unexpected header {shown}; this is not a BookCrossing {table} file (or it is truncated)"
        )


def _read_table(opened: OpenedText, table: str, layout: str, name: str, bad_lines: list[str]) -> pd.DataFrame:
    """The fast path: pyarrow reads every row it can split; the others land in ``bad_lines``."""
    import pyarrow as pa
    import pyarrow.csv as pc

    d = DIALECTS[layout]
    cols = COLUMNS[table]

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
    # one thread: Arrow's allocator hands freed pages back only from the releasing thread's heap
    read = pc.ReadOptions(column_names=cols, skip_rows=1, encoding="utf8", block_size=1 << 24, use_threads=False)
    convert = pc.ConvertOptions(
        column_types={c: pa.string() for c in cols}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )
    if opened.header_only:  # pyarrow cannot skip a header that has no line break after it
        return pd.DataFrame({c: pd.Series([], dtype="str") for c in cols})
    stream = opened.stream
    try:
        with io.BufferedReader(stream, buffer_size=1 << 20) as buffered:
            tbl = pc.read_csv(buffered, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        if stream.error:
            raise DataImportError(stream.error) from exc
        raise DataImportError(f"{name}: cannot be read as CSV ({' '.join(str(exc).split())})") from exc
    if stream.error:
        raise DataImportError(stream.error)
    # Arrow-backed string columns: Python string objects would take several times the memory.
    # One column at a time, dropping it from the table, so the two are never both held whole.
    columns = {}
    for name in cols:
        series = tbl.column(name).to_pandas()
        tbl = tbl.drop_columns([name])
        empty = series == ""
        columns[name] = series.where(~empty) if empty.any() else series  # empty means missing
        del series, empty
    # Arrow's allocator keeps freed pages for reuse; without this a large table counts twice in the peak
    pa.default_memory_pool().release_unused()
    return pd.DataFrame(columns, copy=False)


def _parse(table: str, opened: OpenedText, layout: str, name: str) -> _Parsed:
    """Fast path with pyarrow; invalid rows go through :func:`_repair_row`."""
    _check_header(opened, table, layout, name)
    cols = COLUMNS[table]
    bad_lines: list[str] = []
    frame = _read_table(opened, table, layout, name, bad_lines)
    rows_read = len(frame) + len(bad_lines)
    repaired: Counter = Counter()
    rejected: Counter = Counter()
    fixed_rows: list[list[str]] = []
    short_rows: list[int] = []
    tail = opened.stream.tail
    truncated_tail = bool(tail) and not tail.endswith("\n")
    last_line = tail.rsplit("\n", 1)[-1]
    for i, line in enumerate(bad_lines):
        fields, reason = _repair_row(table, line, layout)
        if fields is None:
            is_last = truncated_tail and i == len(bad_lines) - 1 and tail.rstrip("\n").endswith(line.rstrip("\n"))
            rejected["truncated_last_row" if is_last else reason] += 1
        else:
            if reason == "short_row":
                short_rows.append(len(fixed_rows))
            fixed_rows.append(fields)
            repaired[reason] += 1
    last_parsed = truncated_tail and len(frame) and not (bad_lines and last_line.endswith(bad_lines[-1].rstrip("\n")))
    if last_parsed and _open_quote(last_line, layout):
        # the file ends inside a quoted value: its last field (a rating "1" of "10"?) is cut short
        frame = frame.iloc[:-1]
        rejected["truncated_last_row"] += 1
    short = np.zeros(len(frame) + len(fixed_rows), dtype=bool)
    if fixed_rows:
        short[len(frame) + np.asarray(short_rows, dtype=np.int64)] = True
        fixed = pd.DataFrame(fixed_rows, columns=cols, dtype="str")
        frame = pd.concat([frame, fixed.where(fixed != "")], ignore_index=True)
    if table == "books":
        frame, unshifted = _unshift_books(frame)
        repaired["shifted_columns"] += int(unshifted.sum())
        # a 7-field row is kept only once unshifted, and counted as shifted, not as short
        repaired.pop("short_row", None)
        unclear = short & ~unshifted
        if unclear.any():
            frame = frame.loc[~unclear].reset_index(drop=True)
            rejected["too_few_fields"] += int(unclear.sum())
    return _Parsed(frame=frame, rows_read=rows_read, repaired=+repaired, rejected=+rejected)


def _open_quote(line: str, layout: str) -> bool:
    """Whether ``line`` ends inside a quoted field (an odd number of unescaped quotes)."""
    if DIALECTS[layout]["escape"]:
        line = re.sub(r"\\.", "", line)
    return line.count('"') % 2 == 1


def _repair_row(table: str, line: str, layout: str) -> tuple[list[str] | None, str]:
    """Fields of one row the fast path rejected, or ``(None, reason)`` when its intent is unclear."""
    try:
        rows = _csv_rows(line, layout)
    except csv.Error as exc:
        return None, _csv_error_reason(exc, line)
    if len(rows) != 1:
        return None, "broken_quoting"
    raw_fields = rows[0]
    fields = list(raw_fields)
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
        try:
            plain = list(csv.reader(io.StringIO(line), delimiter=";", quotechar='"', doublequote=True, strict=False))
        except csv.Error:
            plain = []
        if len(plain) == 1 and len(plain[0]) == n:
            return plain[0], "backslash_before_quote"
    if table == "users" and len(raw_fields) > n and raw_fields[0].strip().isdigit() and _unquoted_second(line, layout):
        # separators inside an unquoted location: the id is first, the age (maybe empty) last
        return [raw_fields[0], layout_join(layout).join(raw_fields[1:-1]), raw_fields[-1]], "separator_in_location"
    if len(fields) < n:
        return None, "too_few_fields"
    return None, "too_many_fields"


def _unquoted_second(line: str, layout: str) -> bool:
    """Whether the second field of ``line`` is unquoted (a quoted one cannot hold a stray separator)."""
    _, _, rest = line.partition(layout_join(layout))
    return not rest.lstrip().startswith('"')


def layout_join(layout: str) -> str:
    return DIALECTS[layout]["delimiter"]


def _unshift_books(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Repair rows where the author was glued into the title and the rest moved one column left.

    Intent is clear when the title holds '";' (optionally backslash-escaped), the author
    column holds a number (the year) and the year column does not. Returns the frame and which
    rows were repaired.
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
        return frame, mask.to_numpy(dtype=bool)
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
    return frame, mask.to_numpy(dtype=bool)


def _no_ratings(name: str) -> DataImportError:
    return DataImportError(f"{name} has a header but no rows: there are no ratings to import")


def _no_books(name: str) -> DataImportError:
    return DataImportError(f"{name} has no book rows: no rating could be joined to a book (is the copy complete?)")


def _check_headers(members: dict, layout: str, limits: Limits) -> None:
    """Encoding, binary content and header of all three files, from their first bytes, so a bad
    ratings file is reported before the books are read."""
    for table in TABLES:
        opened = open_text(members[table], Budget(limits.max_expanded_bytes))
        with opened.stream:
            _check_header(opened, table, layout, PRETTY_NAMES[layout][table])
            if table == "ratings" and opened.no_rows:
                raise _no_ratings(PRETTY_NAMES[layout][table])
            if table == "books" and opened.no_rows:
                raise _no_books(PRETTY_NAMES[layout][table])


def _read(table: str, members: dict, layout: str, budget: Budget) -> _Parsed:
    opened = open_text(members[table], budget)
    with opened.stream:
        return _parse(table, opened, layout, PRETTY_NAMES[layout][table])


def import_path(path: Path | str, progress=None, limits: Limits | None = None) -> Dataset:
    """Read a BookCrossing copy (zip or folder, either layout) into a normalised :class:`Dataset`.

    ``dataset.manifest["report"]`` holds the import report: per table rows read, kept,
    repaired and rejected by reason, plus ratings whose ISBN is not in the books file.
    Raises :class:`DataImportError` when the input is unusable. ``progress`` (optional) receives
    stage names. ``limits`` caps decompression (default: from the settings).
    """
    say = progress or (lambda _msg: None)
    limits = limits or Limits.from_settings()
    say("opening")
    parsed: dict[str, _Parsed] = {}
    norm: dict[str, dict] = {}
    with open_sources(Path(path), limits) as (layout, members):
        files = PRETTY_NAMES[layout]
        _check_headers(members, layout, limits)
        budget = Budget(limits.max_expanded_bytes)
        # one raw table in memory at a time: each is normalised, then its raw frame dropped
        say(f"reading {files['users']} ({layout} layout)")
        parsed["users"] = _read("users", members, layout, budget)
        users, norm["users"] = normalize_users(parsed["users"].frame)
        parsed["users"].frame = None
        say(f"reading {files['books']} ({layout} layout)")
        parsed["books"] = _read("books", members, layout, budget)
        books, norm["books"] = normalize_books(parsed["books"].frame)
        parsed["books"].frame = None
        if len(books) == 0:
            raise _no_books(files["books"])
        say(f"reading {files['ratings']} ({layout} layout)")
        parsed["ratings"] = _read("ratings", members, layout, budget)
    if parsed["ratings"].rows_read == 0:
        raise _no_ratings(files["ratings"])
    say("normalising")
    ratings, norm["ratings"] = normalize_ratings(parsed["ratings"].frame, books, users)
    parsed["ratings"].frame = None
    if len(ratings) == 0:
        n = parsed["ratings"].rows_read
        raise DataImportError(f"{files['ratings']}: none of its {n:,} rows is a usable rating")
    return Dataset(ratings=ratings, books=books, users=users, manifest=_manifest(path, layout, parsed, norm))


def _manifest(path: Path | str, layout: str, parsed: dict[str, _Parsed], norm: dict[str, dict]) -> dict:
    files = PRETTY_NAMES[layout]
    report: dict = {"layout": layout, "tables": {}}
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
            "kept": norm[table]["kept"],
            "repaired": dict(sorted(p.repaired.items())),
            "rejected": dict(sorted((+rejected).items())),
            "notes": notes,
        }
    report["ratings_isbn_not_in_books"] = norm["ratings"]["isbn_not_in_books"]
    report["warnings"] = [f"{files['users']} has no usable rows: readers have no age or location"] if not norm["users"]["kept"] else []
    return {
        "source": layout,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(Path(path).resolve()),
        "report": report,
    }


def report_table(report: dict):
    """The import report as a rich table."""
    from rich.table import Table

    t = Table(title=f"Import report ({report['layout']} layout)")
    for col in ("file", "rows read", "kept", "repaired", "rejected"):
        t.add_column(col, justify="right" if col in ("rows read", "kept") else "left")
    for table, r in report["tables"].items():
        fmt = lambda d: ", ".join(f"{k}: {v:,}" for k, v in d.items()) or "-"  # noqa: E731
        t.add_row(r["file"], f"{r['rows_read']:,}", f"{r['kept']:,}", fmt(r["repaired"]), fmt(r["rejected"]))
    t.caption = "\n".join([f"ratings whose ISBN is not in the books file: {report['ratings_isbn_not_in_books']:,}",
                           *(f"warning: {w}" for w in report.get("warnings", []))])
    return t
