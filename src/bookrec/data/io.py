"""Read and write the normalised data directory (docs/ARCHITECTURE.md, section 1).

Files: ``ratings.parquet``, ``books.parquet``, ``users.parquet``, ``manifest.json`` and, for
synthetic data, ``truth.npz`` (arrays) + ``truth.json`` (scalars and the rating mapping).
Parquet is written without timestamps so the same tables give the same bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RATINGS_FILE = "ratings.parquet"
BOOKS_FILE = "books.parquet"
USERS_FILE = "users.parquet"
MANIFEST_FILE = "manifest.json"
TRUTH_ARRAYS_FILE = "truth.npz"
TRUTH_JSON_FILE = "truth.json"


class DatasetError(Exception):
    """A data directory is missing or unreadable (shown to the user without a traceback)."""


@dataclass
class Dataset:
    """The three normalised tables, the manifest and (synthetic data only) the ground truth.

    ``truth`` merges ``truth.json`` (scalars, mapping) and ``truth.npz`` (arrays) into one dict.
    """

    ratings: pd.DataFrame
    books: pd.DataFrame
    users: pd.DataFrame
    manifest: dict = field(default_factory=dict)
    truth: dict | None = None

    @property
    def source(self) -> str:
        return str(self.manifest.get("source", "unknown"))

    def counts(self) -> dict[str, int]:
        """Row counts of each table and of explicit/implicit ratings."""
        r = self.ratings["rating"].to_numpy()
        return {
            "users": len(self.users),
            "books": len(self.books),
            "ratings": len(self.ratings),
            "explicit": int((r > 0).sum()),
            "implicit": int((r == 0).sum()),
        }


def is_dataset_dir(path: Path | str) -> bool:
    """True when ``path`` holds a normalised data directory."""
    p = Path(path)
    return all((p / f).is_file() for f in (RATINGS_FILE, BOOKS_FILE, USERS_FILE, MANIFEST_FILE))


# No statistics timestamps exist in Parquet; fixed writer options keep bytes reproducible.
PARQUET_COMPRESSION = "zstd"
PARQUET_ROW_GROUP = 1 << 20


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression=PARQUET_COMPRESSION, row_group_size=PARQUET_ROW_GROUP)
    tmp.replace(path)


def write_dataset(dataset: Dataset, path: Path | str) -> Path:
    """Write ``dataset`` as a normalised directory (created if needed); returns the path.

    The manifest gets ``created_at`` and ``counts`` filled in when absent. Truth arrays
    (numpy values of ``dataset.truth``) go to ``truth.npz``, the rest to ``truth.json``.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _write_parquet(dataset.ratings, out / RATINGS_FILE)
    _write_parquet(dataset.books, out / BOOKS_FILE)
    _write_parquet(dataset.users, out / USERS_FILE)
    manifest = dict(dataset.manifest)
    manifest.setdefault("source", "unknown")
    manifest.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest["counts"] = dataset.counts()
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    write_truth(dataset.truth, out)
    return out


class ChunkedDatasetWriter:
    """Writes a normalised directory whose ratings and users arrive in chunks, so a data set
    larger than memory can be written: the same files :func:`write_dataset` writes, which
    :func:`load_dataset` reads the same way (only the Parquet row groups differ).

    Chunks must come in ascending user ids (each table sorted within its chunk), so the files
    keep the batch order. Files are written under temporary names and the manifest comes last.
    """

    def __init__(self, path: Path | str, books: pd.DataFrame) -> None:
        self.out = Path(path)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest: not a data set until closed
        _write_parquet(books, self.out / BOOKS_FILE)
        self.n_books = len(books)
        self._writers: dict[str, Any] = {}
        self.counts = {"users": 0, "ratings": 0, "explicit": 0, "implicit": 0}

    def _append(self, name: str, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = self._writers.get(name)
        if writer is None:
            table = pa.Table.from_pandas(df, preserve_index=False)
            writer = pq.ParquetWriter(self.out / f"{name}.tmp", table.schema, compression=PARQUET_COMPRESSION)
            self._writers[name] = writer
        else:  # the first chunk's schema for all (a column null throughout a chunk keeps its type)
            table = pa.Table.from_pandas(df, schema=writer.schema, preserve_index=False)
        writer.write_table(table, row_group_size=PARQUET_ROW_GROUP)

    def append(self, ratings: pd.DataFrame, users: pd.DataFrame) -> None:
        """Add one chunk of readers: their ratings and their rows of the users table."""
        self._append(RATINGS_FILE, ratings)
        self._append(USERS_FILE, users)
        r = ratings["rating"].to_numpy()
        self.counts["users"] += len(users)
        self.counts["ratings"] += len(ratings)
        self.counts["explicit"] += int((r > 0).sum())
        self.counts["implicit"] += int((r == 0).sum())

    def close(self, manifest: dict, truth: dict | None) -> dict[str, int]:
        """Finish the files, then write the truth and the manifest; returns the manifest's counts."""
        for name, writer in self._writers.items():
            writer.close()
            (self.out / f"{name}.tmp").replace(self.out / name)
        manifest = dict(manifest)
        manifest.setdefault("source", "unknown")
        manifest.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        c = self.counts
        manifest["counts"] = {"users": c["users"], "books": self.n_books, "ratings": c["ratings"],
                              "explicit": c["explicit"], "implicit": c["implicit"]}
        write_truth(truth, self.out)
        (self.out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest["counts"]


def write_truth(truth: dict | None, out: Path) -> None:
    """Truth arrays (numpy values) to truth.npz, the rest to truth.json; stale files go when there is none."""
    if truth is None:
        for stale in (TRUTH_ARRAYS_FILE, TRUTH_JSON_FILE):
            (out / stale).unlink(missing_ok=True)
        return
    arrays = {k: v for k, v in truth.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in truth.items() if not isinstance(v, np.ndarray)}
    np.savez_compressed(out / TRUTH_ARRAYS_FILE, **arrays)
    (out / TRUTH_JSON_FILE).write_text(json.dumps(scalars, indent=2, sort_keys=True, default=_json_default) + "\n")


def publish_dataset(dataset: Dataset, path: Path | str) -> Path:
    """Write ``dataset`` so that ``path`` never holds a half-written data set.

    The files go to a temporary sibling directory first. A new ``path`` is that directory,
    renamed; an existing one loses its manifest first and gets it back last, so a reader in
    between sees no data set rather than a mixed one.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} exists and is not a directory")
    tmp = out.parent / f".{out.name}.writing-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write_dataset(dataset, tmp)
        if not out.exists():
            tmp.rename(out)
            return out
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        for stale in (TRUTH_ARRAYS_FILE, TRUTH_JSON_FILE):
            if not (tmp / stale).exists():
                (out / stale).unlink(missing_ok=True)
        for name in (RATINGS_FILE, BOOKS_FILE, USERS_FILE, TRUTH_ARRAYS_FILE, TRUTH_JSON_FILE, MANIFEST_FILE):
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_truth(path: Path | str) -> dict | None:
    """The ground truth of a synthetic directory (``truth.json`` + ``truth.npz``), or None."""
    p = Path(path)
    if not (p / TRUTH_JSON_FILE).is_file():
        return None
    truth: dict = json.loads((p / TRUTH_JSON_FILE).read_text())
    if (p / TRUTH_ARRAYS_FILE).is_file():
        with np.load(p / TRUTH_ARRAYS_FILE, allow_pickle=False) as npz:
            truth.update({k: npz[k] for k in npz.files})
    return truth


# The columns every reader of a table relies on (docs/ARCHITECTURE.md, section 1), and what kind
# each must be. The users table's location and age are optional: their readers check for them.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    RATINGS_FILE: {"user_id": "integer", "isbn": "text", "rating": "number"},
    BOOKS_FILE: {"isbn": "text", "title": "text", "author": "text", "year": "any", "publisher": "text",
                 "image_url": "text", "work_key": "text"},
    USERS_FILE: {"user_id": "integer"},
}


def _is_kind(series: pd.Series, kind: str) -> bool:
    from pandas.api import types

    if kind == "any":  # a year column may be numbers, or nulls of no particular type
        return True
    if kind == "integer":
        return types.is_integer_dtype(series.dtype)
    if kind == "number":
        return types.is_numeric_dtype(series.dtype) and not types.is_bool_dtype(series.dtype)
    # Text: pandas' string dtype, or object columns (all nulls read back as object).
    return types.is_string_dtype(series.dtype) or types.is_object_dtype(series.dtype)


def check_columns(file: Path, table: pd.DataFrame) -> None:
    """Raise :class:`DatasetError` naming ``file`` when it lacks a required column or one has the
    wrong kind, so that a misplaced file (books.parquet copied over ratings.parquet) stops the
    load rather than a later step with a KeyError."""
    required = REQUIRED_COLUMNS[file.name]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{file}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns)) or 'none'}); "
            f"a {file.name} needs {', '.join(required)}: is it the right file?"
        )
    wrong = [f"{c} is {table[c].dtype}, not {kind}" for c, kind in required.items() if not _is_kind(table[c], kind)]
    if wrong:
        raise DatasetError(f"{file}: wrong column type(s): {'; '.join(wrong)}")


def load_dataset(path: Path | str, *, with_truth: bool = True) -> Dataset:
    """Read a normalised data directory into a :class:`Dataset`.

    Raises :class:`DatasetError` with a readable message when the directory is incomplete, or a
    table lacks a required column (:data:`REQUIRED_COLUMNS`).
    """
    p = Path(path)
    if not p.is_dir():
        raise DatasetError(f"{p} is not a directory; create it with `bookrec data import` or `bookrec data synth`")
    missing = [f for f in (RATINGS_FILE, BOOKS_FILE, USERS_FILE, MANIFEST_FILE) if not (p / f).is_file()]
    if missing:
        raise DatasetError(f"{p} is not a bookrec data directory (missing {', '.join(missing)})")
    try:
        ratings = pd.read_parquet(p / RATINGS_FILE)
        books = pd.read_parquet(p / BOOKS_FILE)
        users = pd.read_parquet(p / USERS_FILE)
        manifest = json.loads((p / MANIFEST_FILE).read_text())
    except Exception as exc:  # pyarrow raises several types for truncated files
        raise DatasetError(f"{p}: cannot read data directory ({type(exc).__name__}: {exc})") from exc
    for name, table in ((RATINGS_FILE, ratings), (BOOKS_FILE, books), (USERS_FILE, users)):
        check_columns(p / name, table)
    truth = load_truth(p) if with_truth else None
    return Dataset(ratings=ratings, books=books, users=users, manifest=manifest, truth=truth)
