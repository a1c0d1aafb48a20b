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


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    tmp = path.with_suffix(".parquet.tmp")
    # No statistics timestamps exist in Parquet; fixed writer options keep bytes reproducible.
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
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
    for stale in (TRUTH_ARRAYS_FILE, TRUTH_JSON_FILE):
        if dataset.truth is None and (out / stale).exists():
            (out / stale).unlink()
    if dataset.truth is not None:
        arrays = {k: v for k, v in dataset.truth.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in dataset.truth.items() if not isinstance(v, np.ndarray)}
        np.savez_compressed(out / TRUTH_ARRAYS_FILE, **arrays)
        (out / TRUTH_JSON_FILE).write_text(json.dumps(scalars, indent=2, sort_keys=True, default=_json_default) + "\n")
    return out


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


def load_dataset(path: Path | str, *, with_truth: bool = True) -> Dataset:
    """Read a normalised data directory into a :class:`Dataset`.

    Raises :class:`DatasetError` with a readable message when the directory is incomplete.
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
    truth = load_truth(p) if with_truth else None
    return Dataset(ratings=ratings, books=books, users=users, manifest=manifest, truth=truth)
