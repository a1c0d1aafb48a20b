"""JSON payloads of the store (docs/ARCHITECTURE.md, "Payloads"), encoded fast.

Every recommendation repeats its book's static fields (work key, ISBN, title, author, year,
image URL); those are serialised once per work with orjson and spliced into each
recommendation with bytes formatting, so encoding ~280,000 readers' lists takes seconds.
Readers who share a list (the popularity tier) share its encoded bytes too.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson

from bookrec.batch.catalog import WorkCatalog
from bookrec.contracts.payloads import BOOK_FIELDS, ITEM_TEMPLATE, P_LIKED_DIGITS, READER_TEMPLATE, json_number

BASES = ("personal", "folded_in", "similar_reading", "popular")
POPULAR_REASON = b'{"kind":"popular"}'


class PayloadEncoder:
    def __init__(self, catalog: WorkCatalog) -> None:
        self.catalog = catalog
        self._static: dict[int, bytes] = {}
        self._reasons: dict[int, bytes] = {}

    def static(self, work: int) -> bytes:
        """The book fields (``BOOK_FIELDS``) of one work, as the inside of a JSON object."""
        cached = self._static.get(work)
        if cached is None:
            c = self.catalog
            year = int(c.year[work])
            book = {"work_key": c.works.values[work], "isbn": c.isbn[work], "title": c.title[work],
                    "author": c.author[work], "year": year if year >= 0 else None, "image_url": c.image_url[work]}
            cached = orjson.dumps({name: book[name] for name in BOOK_FIELDS})[1:-1]
            self._static[work] = cached
        return cached

    def reason_because(self, work: int) -> bytes:
        """``{"kind":"because_you_read",...}`` naming one of the reader's works."""
        cached = self._reasons.get(work)
        if cached is None:
            c = self.catalog
            cached = orjson.dumps({"kind": "because_you_read", "isbn": c.isbn[work], "work_key": c.works.values[work],
                                   "title": c.title[work], "author": c.author[work]})
            self._reasons[work] = cached
        return cached

    def items(self, works, predicted, lower, upper, basis, score=None, relevance=None, relevance_sd=None,
              p_liked=None, because=None, reason: bytes = POPULAR_REASON) -> bytes:
        """The JSON array of one reader's recommendations (rows with work -1 are skipped).

        ``because`` (work index per slot, -1 = none) gives each slot its "because you read"
        reason; slots without one get ``reason``."""
        parts = []
        rank = 0
        n = len(works)
        columns = [np.full(n, np.nan) if col is None else np.asarray(col, dtype=np.float64)
                   for col in (score, relevance, relevance_sd, p_liked)]
        why = np.full(n, -1) if because is None else np.asarray(because)
        for w, p, lo, hi, b, sc, rel, rsd, pl, bw in zip(works.tolist(), predicted.tolist(), lower.tolist(), upper.tolist(),
                                                          basis, *(c.tolist() for c in columns), why.tolist()):
            if w < 0:
                continue
            rank += 1
            parts.append(
                ITEM_TEMPLATE
                % (rank, self.static(w), p, (hi - lo) / 2.0, lo, hi, b, json_number(sc), json_number(rel),
                   json_number(rsd), json_number(pl, P_LIKED_DIGITS), self.reason_because(bw) if bw >= 0 else reason)
            )
        return b"[" + b",".join(parts) + b"]"

    def reader(self, user_id: int, basis: str, items_json: bytes) -> bytes:
        return READER_TEMPLATE % (user_id, basis.encode(), items_json)

    def ranked_block(self, user_ids: np.ndarray, basis: str, block) -> Iterator[tuple[int, bytes]]:
        """(user_id, payload) for each reader of a :class:`~bookrec.batch.foryou.ForYouBlock`;
        slots without a relevance figure were filled by popularity and say so."""
        own = basis.encode()
        for row, uid in enumerate(user_ids.tolist()):
            per_item = [own if np.isfinite(x) else b"popular" for x in block.relevance_sd[row]]
            yield uid, self.reader(uid, basis, self.items(
                block.works[row], block.predicted[row], block.lower[row], block.upper[row], per_item,
                block.score[row], block.relevance[row], block.relevance_sd[row], block.p_liked[row], block.because[row],
            ))

    def item_dicts(self, works, predicted, lower, upper, basis: str, p_liked=None) -> list[dict]:
        """The same recommendations as plain dicts (the ``popular`` blob)."""
        return orjson.loads(self.items(works, predicted, lower, upper, [basis.encode()] * len(works), p_liked=p_liked))


def segment_reason(segment: str) -> bytes:
    """The reason of a segment's popularity list ("country+age:usa|25-34" -> readers in usa aged 25-34)."""
    level, _, key = segment.partition(":")
    if level == "country+age":
        country, _, band = key.partition("|")
        text = f"readers in {country} aged {band}"
    elif level == "country":
        text = f"readers in {key}"
    elif level == "age":
        text = f"readers aged {key}"
    else:
        return POPULAR_REASON
    return orjson.dumps({"kind": "popular_in_segment", "segment": text})


def book_payloads(catalog: WorkCatalog, in_model: np.ndarray, max_editions: int = 50) -> Iterator[tuple[str, bytes]]:
    """(isbn, payload) for every edition: its own fields plus its work's editions and rating summary."""
    books = catalog.books
    order = np.lexsort((books["isbn"].to_numpy(), books["work_idx"].to_numpy()))
    work_sorted = books["work_idx"].to_numpy()[order]
    isbn_sorted = books["isbn"].to_numpy()[order]
    starts = np.r_[0, np.flatnonzero(work_sorted[1:] != work_sorted[:-1]) + 1]
    ends = np.r_[starts[1:], len(order)]
    editions = {int(work_sorted[s]): isbn_sorted[s:e][:max_editions].tolist() for s, e in zip(starts, ends)}
    counts = catalog.rating_counts
    explicit_counts = counts[:, 1:]
    n_explicit_raw = explicit_counts.sum(axis=1)
    weighted = (explicit_counts * np.arange(1, 11)).sum(axis=1)
    mean_rating = np.divide(weighted, n_explicit_raw, out=np.full(len(catalog), np.nan), where=n_explicit_raw > 0)
    cols = [books[c].tolist() for c in ("isbn", "work_key", "work_idx", "title", "author", "year", "publisher", "image_url")]
    for isbn, work_key, w, title, author, year, publisher, image in zip(*cols):
        row = counts[w]
        m = mean_rating[w]
        yield isbn, orjson.dumps(
            {
                "isbn": isbn,
                "work_key": work_key,
                "title": title,
                "author": author,
                "year": year if year >= 0 else None,
                "publisher": publisher,
                "image_url": image if isinstance(image, str) and image else None,
                "editions": editions[w],
                "n_ratings": int(catalog.n_interactions[w]),
                "n_explicit": int(n_explicit_raw[w]),
                "mean_rating": None if np.isnan(m) else round(float(m), 3),
                "rating_counts": {str(v): int(row[v]) for v in range(1, 11) if row[v]},
                "in_model": bool(in_model[w]),
            }
        )


def catalog_parquet(catalog: WorkCatalog, in_model: np.ndarray) -> bytes:
    """The catalogue blob: one row per edition, Parquet bytes (zstd)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    b = catalog.books
    w = b["work_idx"].to_numpy()
    table = pa.table(
        {
            "isbn": b["isbn"].to_numpy(dtype=object),
            "work_key": b["work_key"].to_numpy(dtype=object),
            "title": b["title"].to_numpy(dtype=object),
            "author": b["author"].to_numpy(dtype=object),
            "year": pa.array(np.where(b["year"].to_numpy() >= 0, b["year"].to_numpy(), 0), mask=b["year"].to_numpy() < 0, type=pa.int16()),
            "publisher": b["publisher"].to_numpy(dtype=object),
            "image_url": pa.array([x if isinstance(x, str) and x else None for x in b["image_url"]], type=pa.string()),
            "n_ratings": catalog.n_interactions[w].astype(np.int32),
            "in_model": in_model[w].astype(bool),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
