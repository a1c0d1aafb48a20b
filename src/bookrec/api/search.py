"""Typo-tolerant search over the whole catalogue by title and author.

Scoring every one of 271k books with a fuzzy scorer per keystroke is too slow, so a query runs
in two stages:

1. Prefilter with an inverted word index. Each query word is matched against the catalogue's
   vocabulary (tens of thousands of distinct words, not hundreds of thousands of books):
   exactly, by prefix (the last word of a type-ahead query is usually unfinished) and fuzzily
   with rapidfuzz (one or two typos). The books containing the matched words get a coverage
   score: the idf-weighted share of query words they match (rare words count more than "the").
2. Rank the best few hundred candidates with rapidfuzz's WRatio on "title author", plus a small
   popularity bonus so the well-known edition wins a tie, and keep one result per work
   (editions share a work key).

A cold start's typed titles go through `match_title`, a bounded variant of the same two stages
(see there); `TitleBudget` caps what one request may spend on them.

Built once per published version (a second or two for the full catalogue) and then read-only,
so concurrent requests share it without locks.
"""

from __future__ import annotations

import contextlib
import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

# How many books survive the prefilter into the (more expensive) WRatio ranking.
CANDIDATES = 300
# Words a prefix may expand to (the most frequent ones): "t" alone must not pull in 10k words.
MAX_PREFIX_WORDS = 200
# Fuzzy vocabulary matches per query word, and the lowest rapidfuzz ratio accepted. Ratio is
# 100 * (1 - indel distance / total length): one typo in a 5-letter word ("hary"/"harry")
# scores 89, a transposition in 7 letters ("tolkein"/"tolkien") 86; 80 admits about one edit
# per five letters, which is where unrelated words start to match.
MAX_FUZZY_WORDS = 30
FUZZY_CUTOFF = 80.0
MIN_FUZZY_LEN = 4
# Quality of a word match, relative to an exact match.
PREFIX_QUALITY = 0.9
FUZZY_QUALITY = 0.8
MAX_QUERY_WORDS = 12
# Results scoring below this are not shown: e.g. "harry potter" over a catalogue without it would
# otherwise list every "Hardy" (one fuzzy word of two: coverage ~0.2, score ~34).
MIN_SCORE = 40.0
# A typed title (cold start) is matched on at most this many characters and distinct words, and
# only its best-covered candidates are scored: the cost of a title then has a ceiling, whatever
# its length. Real titles fit (BookCrossing's longest are ~250 characters, and their first ten
# words identify them).
MAX_TITLE_CHARS = 300
MAX_TITLE_WORDS = 10
TITLE_CANDIDATES = 20
# Distinct words whose vocabulary matches are remembered: type-ahead repeats its earlier words on
# every keystroke, and cold starts name the same books.
WORD_CACHE = 4096


@dataclass
class TitleBudget:
    """CPU time one request may spend matching typed titles, and the titles it already matched."""

    seconds: float
    spent: float = 0.0
    memo: dict[str, list[int]] = field(default_factory=dict)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.seconds

    @contextlib.contextmanager
    def charge(self) -> Iterator[None]:
        # Thread CPU time: what this request costs, however many others share the cores.
        started = time.thread_time()
        try:
            yield
        finally:
            self.spent += time.thread_time() - started


@dataclass(frozen=True)
class SearchHit:
    row: int
    score: float  # 0-100, what the API reports
    coverage: float  # 0-1, idf-weighted share of query words the book matched


class SearchIndex:
    """Inverted word index + fuzzy vocabulary over parallel lists of titles and authors."""

    def __init__(
        self,
        titles: list[str],
        authors: list[str | None],
        popularity: list[int] | None = None,
        groups: list[str | None] | None = None,
    ) -> None:
        n = len(titles)
        self.n_docs = n
        self.groups = groups
        self.title_text = [default_process(t or "") for t in titles]
        self.author_text = [default_process(a or "") for a in authors]
        self.text = [f"{t} {a}".strip() for t, a in zip(self.title_text, self.author_text)]
        pop = np.asarray(popularity if popularity is not None else np.zeros(n), dtype=np.float64)
        # Up to +5 points for the most-read books: breaks ties, never beats a better match.
        self.pop_bonus = np.minimum(5.0, 1.5 * np.log10(1.0 + np.maximum(pop, 0.0)))

        vocab: dict[str, int] = {}
        doc_ids: list[int] = []
        word_ids: list[int] = []
        for doc, text in enumerate(self.text):
            for word in set(text.split()):
                wid = vocab.get(word)
                if wid is None:
                    wid = vocab[word] = len(vocab)
                doc_ids.append(doc)
                word_ids.append(wid)
        words = np.asarray(word_ids, dtype=np.int64)
        order = np.argsort(words, kind="stable")
        self.postings = np.asarray(doc_ids, dtype=np.int32)[order]
        counts = np.bincount(words, minlength=len(vocab)) if len(vocab) else np.zeros(0, np.int64)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.df = counts
        self.words = list(vocab)  # index = word id
        self.vocab = vocab
        self.sorted_words = sorted(vocab)
        self.sorted_ids = np.asarray([vocab[w] for w in self.sorted_words], dtype=np.int64)
        # Exact processed title -> rows, for resolving a typed title (cold start) before fuzzing.
        self.rows_of_title: dict[str, list[int]] = {}
        for row, title in enumerate(self.title_text):
            if title:
                self.rows_of_title.setdefault(title, []).append(row)
        self._word_cache: dict[tuple[str, bool], dict[int, float]] = {}

    # --- stage 1: words -> candidate books --------------------------------------------------
    def _idf(self, word_id: int) -> float:
        return math.log((self.n_docs + 1) / (self.df[word_id] + 1)) + 1.0

    def _word_matches(self, words: list[tuple[str, bool]]) -> list[dict[int, float]]:
        """For each (query word, prefix allowed): vocabulary word id -> match quality (1 exact,
        0.9 prefix, <=0.8 fuzzy).

        The words to fuzz are scored against the vocabulary in one `cdist` call: batched, rapidfuzz
        compares several words per SIMD pass (measured ~3x cheaper per word than one `extract` each).
        """
        out: list[dict[int, float] | None] = []
        to_fuzz: list[tuple[int, str]] = []
        for token, allow_prefix in words:
            cached = self._word_cache.get((token, allow_prefix))
            if cached is not None:
                out.append(cached)
                continue
            matches: dict[int, float] = {}
            exact = self.vocab.get(token)
            if exact is not None:
                matches[exact] = 1.0
            if allow_prefix:
                lo = bisect_left(self.sorted_words, token)
                hi = bisect_left(self.sorted_words, token + "\U0010ffff", lo)
                ids = self.sorted_ids[lo:hi]
                if len(ids) > MAX_PREFIX_WORDS:
                    ids = ids[np.argpartition(-self.df[ids], MAX_PREFIX_WORDS)[:MAX_PREFIX_WORDS]]
                for wid in ids.tolist():
                    matches.setdefault(wid, PREFIX_QUALITY)
            # A word that several books contain is taken as spelled on purpose: fuzzing it too would
            # only add noise (and cost a scan of the vocabulary).
            if len(token) >= MIN_FUZZY_LEN and (exact is None or self.df[exact] < 3):
                to_fuzz.append((len(out), token))
            out.append(matches)
        if to_fuzz and self.words:
            scores = process.cdist(
                [t for _, t in to_fuzz], self.words, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF,
                dtype=np.float32, workers=1,
            )
            for (position, _), row in zip(to_fuzz, scores):
                hits = np.flatnonzero(row >= FUZZY_CUTOFF)
                if len(hits) > MAX_FUZZY_WORDS:
                    hits = hits[np.argsort(-row[hits], kind="stable")[:MAX_FUZZY_WORDS]]
                matches = out[position]
                for wid in hits.tolist():
                    quality = FUZZY_QUALITY * float(row[wid]) / 100.0
                    if quality > matches.get(wid, 0.0):
                        matches[wid] = quality
        if len(self._word_cache) > WORD_CACHE:
            self._word_cache.clear()  # bounded; a plain dict stays safe to share between threads
        for (token, allow_prefix), matches in zip(words, out):
            self._word_cache[(token, allow_prefix)] = matches
        return out

    def _coverage(self, tokens: list[str]) -> np.ndarray:
        total = np.zeros(self.n_docs, dtype=np.float32)
        weight_sum = 0.0
        last = len(tokens) - 1
        looked_up = self._word_matches([(t, len(t) >= (2 if i == last else 3)) for i, t in enumerate(tokens)])
        for matches in looked_up:
            if not matches:
                weight_sum += math.log(self.n_docs + 1) + 1.0  # an unknown word is as rare as it gets
                continue
            best = max(matches, key=lambda w: (matches[w], -self.df[w]))
            weight = self._idf(best)
            weight_sum += weight
            token_score = np.zeros(self.n_docs, dtype=np.float32)
            for wid, quality in matches.items():
                docs = self.postings[self.indptr[wid] : self.indptr[wid + 1]]
                token_score[docs] = np.maximum(token_score[docs], quality)
            total += weight * token_score
        if weight_sum > 0:
            total /= weight_sum
        return total

    # --- stage 2: rank candidates -----------------------------------------------------------
    def search(self, query: str, limit: int = 10, exact_rows: list[int] | None = None) -> list[SearchHit]:
        """The best `limit` books (one per work when groups were given), best first.

        `exact_rows` (e.g. an ISBN typed into the box) are put first with score 100.
        """
        processed = default_process(query)
        tokens = list(dict.fromkeys(processed.split()))[:MAX_QUERY_WORDS]
        hits: list[SearchHit] = [SearchHit(r, 100.0, 1.0) for r in (exact_rows or [])]
        if tokens and self.n_docs:
            coverage = self._coverage(tokens)
            candidates = np.flatnonzero(coverage > 0)
            if len(candidates) > CANDIDATES:
                key = coverage[candidates] + 1e-3 * self.pop_bonus[candidates]
                candidates = candidates[np.argpartition(-key, CANDIDATES)[:CANDIDATES]]
            scored = []
            for row in candidates.tolist():
                ratio = fuzz.WRatio(processed, self.text[row], processor=None)
                score = 60.0 * float(coverage[row]) + 0.4 * ratio
                scored.append((score + self.pop_bonus[row], score, row, float(coverage[row])))
            scored.sort(reverse=True)
            for _, score, row, cov in scored:
                if score >= MIN_SCORE:
                    hits.append(SearchHit(row, round(score, 2), cov))
        out: list[SearchHit] = []
        seen_rows: set[int] = set()
        seen_groups: set[str] = set()
        for hit in hits:
            if hit.row in seen_rows:
                continue
            group = self.groups[hit.row] if self.groups is not None else None
            if group is not None and group in seen_groups:
                continue
            seen_rows.add(hit.row)
            if group is not None:
                seen_groups.add(group)
            out.append(hit)
            if len(out) >= limit:
                break
        return out

    def match_title(self, title: str, min_coverage: float, min_ratio: float, limit: int = 5) -> list[int]:
        """Rows whose title reads like `title` (a cold start's typed title), best first.

        The rule of the search, bounded: a row needs idf-weighted word coverage >= `min_coverage`
        (typos and prefixes matched against the vocabulary, as in the search) and a
        WRatio of its title alone >= `min_ratio`. At most MAX_TITLE_WORDS words are looked up,
        coverage is summed into one array (no per-word arrays), a title whose known words cannot
        reach the coverage stops before touching the catalogue, and only the TITLE_CANDIDATES best
        covered rows are scored, with a cutoff.
        """
        processed = default_process(title)[:MAX_TITLE_CHARS]
        tokens = list(dict.fromkeys(processed.split()))[:MAX_TITLE_WORDS]
        if not tokens or not self.n_docs:
            return []
        looked_up: list[tuple[float, dict[int, float]]] = []
        weight_sum = 0.0
        reachable = 0.0
        # Prefixes as in the search box: a typed 'and' then meets 'andrew' rather than counting as
        # the rarest possible word, which would sink titles that write '&'.
        prefixes = [(t, len(t) >= (2 if n == len(tokens) - 1 else 3)) for n, t in enumerate(tokens)]
        for matches in self._word_matches(prefixes):
            if not matches:
                weight_sum += math.log(self.n_docs + 1) + 1.0
                continue
            best = max(matches, key=lambda w: (matches[w], -self.df[w]))
            weight = self._idf(best)
            weight_sum += weight
            reachable += weight * matches[best]
            looked_up.append((weight, matches))
        need = min_coverage * weight_sum
        if reachable < need:
            return []
        total = np.zeros(self.n_docs, dtype=np.float32)
        for weight, matches in looked_up:
            if len(matches) == 1:
                ((wid, quality),) = matches.items()
                total[self.postings[self.indptr[wid] : self.indptr[wid + 1]]] += weight * quality
                continue
            # A book counts once per typed word, with its best-matching vocabulary word.
            docs = np.concatenate([self.postings[self.indptr[w] : self.indptr[w + 1]] for w in matches])
            quality = np.concatenate([
                np.full(self.indptr[w + 1] - self.indptr[w], q, dtype=np.float32) for w, q in matches.items()
            ])
            order = np.lexsort((-quality, docs))
            docs, quality = docs[order], quality[order]
            first = np.ones(len(docs), dtype=bool)
            first[1:] = docs[1:] != docs[:-1]
            total[docs[first]] += weight * quality[first]
        candidates = np.flatnonzero(total >= need * (1.0 - 1e-6))
        if len(candidates) > TITLE_CANDIDATES:
            key = total[candidates] + 1e-3 * self.pop_bonus[candidates]
            candidates = candidates[np.argpartition(-key, TITLE_CANDIDATES)[:TITLE_CANDIDATES]]
        choices = {row: self.title_text[row] for row in candidates.tolist()}
        hits = process.extract(
            processed, choices, scorer=fuzz.WRatio, processor=None, score_cutoff=min_ratio, limit=limit
        )
        return [row for _, _, row in hits]

    def title_ratio(self, query: str, row: int) -> float:
        return fuzz.WRatio(default_process(query), self.title_text[row], processor=None)

    def exact_title_rows(self, title: str) -> list[int]:
        return self.rows_of_title.get(default_process(title), [])
