"""A generator of BookCrossing-shaped data with a known ground truth.

The model (all on the 1-10 rating scale):

    m[u, j] = mu + b_user[u] + b_work[j] + <U[u], V[j]>           (the true mean)
    z[u, j] = m[u, j] + N(0, noise_sd^2)                           (the latent rating)

- integer mode (default): rating = 1 + #(thresholds < z), with the nine thresholds set at the
  quantiles of z that reproduce the real explicit distribution (monotone, recorded in truth.json);
- ``continuous=True``: rating = z, clipped to [1, 10] (parameters are chosen so clipping is rare:
  its frequency is recorded as ``clip_fraction``), so explicit ratings are exactly mean + Gaussian noise.

Which (user, book) pairs exist depends only on ``m`` and the reading structure below (never on
the rating noise); each interaction is explicit or implicit (rating 0) by a per-user propensity.
ISBNs are editions of works; popular works have several, and a reader reads one edition of a
work (bar a rare collision with the work's discovery reader, below).

Reading structure (who reads what), so that readers are personal as real ones are:

- every work has a genre (``n_genres``, sizes log-normal): an author writes in one genre, some
  authors (``SECOND_GENRE_RATE``) partly in a second one; an author's works mostly appear with
  the author's house publisher; an author's consecutive works in one genre form series;
- work factors = author part + genre centroid + publisher part + own noise (variance shares
  ``FACTOR_*_SHARE``), work biases = author + publisher + own; a reader has a sparse genre
  mixture (Dirichlet, total concentration ``genre_concentration`` around the genres' shares of
  reading) and their factors lean towards the centroids of their genres (``USER_GENRE_SHARE``),
  so what a reader picks and how they rate it are related;
- a reader's picks come in ``WAVES`` waves. A fresh pick is a book of a genre drawn from the
  reader's mixture, or (``bestseller_share``) of any genre, by popularity. A returning pick (with
  the reader's loyalty, Beta with mean ``loyalty``, once they have read something) starts from
  a book read in an earlier wave and takes another book of its series, author, publisher or
  genre (``RETURN_*``) by popularity. Each reader keeps the candidates with the largest
  ``preference_tilt * (b_work + <U, V>) + Gumbel`` keys, i.e. picks are tilted towards what the
  reader likes; every ISBN also has one "discovery" reader (drawn by activity, taste and genre);
- picks of ISBNs missing from the books file ("ghosts", works of their own with a genre) are an
  exact count per reader, so ``missing_isbn_share`` is met exactly whatever the structure.

The truth records the structure: ``work_genre`` (all works, ghosts included), ``work_series``,
``genre_weights``, ``genre_factors``, ``user_genre_mixture``, ``user_loyalty`` and, in
``reading_structure``, the constants.

Everything is produced as *raw* text tables (quirks included: junk ages and years, free-text
locations, messy ISBNs) and normalised with :mod:`bookrec.data.normalize`, the same code the
importer runs, so ``synth --format bx`` + ``import`` gives the same tables as ``synth``.

``xl`` (ten times BookCrossing) is written by :func:`write_in_chunks` instead: the catalogue
once, then the readers chunk by chunk through the same stages, so memory holds the catalogue and
one chunk of readers however many readers there are.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bookrec.data.io import ChunkedDatasetWriter, Dataset, write_dataset, write_truth
from bookrec.data.normalize import (
    decode_entities, normalize_books, normalize_ratings, normalize_tables, normalize_users, work_keys,
)

# The real explicit distribution (BX, ratings 1..10) and counts.
REAL_EXPLICIT_COUNTS = np.array([1770, 2759, 5996, 8904, 50974, 36924, 76457, 103736, 67541, 78610])
REAL_EXPLICIT_SHARE = REAL_EXPLICIT_COUNTS / REAL_EXPLICIT_COUNTS.sum()
REAL_COUNTS = {"users": 278_858, "books": 271_360, "ratings": 1_149_780, "implicit": 716_109}
IMPLICIT_SHARE = 716_109 / 1_149_780


@dataclass(frozen=True)
class SynthPreset:
    """Sizes and shape parameters of one synthetic data set."""

    name: str
    n_users: int
    n_books: int  # ISBNs in the books file
    n_ratings: int
    n_implicit: int
    n_authors: int
    n_publishers: int
    active_user_fraction: float  # users with at least one interaction (real: 105,283 / 278,858)
    activity_sigma: float  # log-normal spread of user activity (heavy tail)
    popularity_sigma: float  # log-normal spread of work popularity (proposal; readers deep in their genres flatten it)
    missing_isbn_share: float = 0.10  # share of interactions on ISBNs absent from the books file
    ghost_isbn_ratio: float = 0.25  # ghost ISBNs per book-file ISBN
    n_factors: int = 5
    preference_tilt: float = 1.5  # how strongly readers pick books they like
    age_missing: float = 0.40
    age_junk: float = 0.006
    # personal reading structure (see the module docstring)
    n_genres: int = 40
    genre_concentration: float = 3.0  # Dirichlet concentration of a reader's genre mixture (small: few genres)
    loyalty: float = 0.4  # mean share of a reader's later picks that return to what they have read
    bestseller_share: float = 0.3  # share of fresh picks made by overall popularity, whatever the genre


# missing_isbn_share is met exactly; tiny and small keep their own shares (the tests and the quick
# start's examples rely on their data), full has the real one.
PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset(
        "tiny", n_users=400, n_books=300, n_ratings=9_000, n_implicit=round(9_000 * IMPLICIT_SHARE),
        n_authors=120, n_publishers=30, active_user_fraction=0.9, activity_sigma=0.9, popularity_sigma=1.0,
        missing_isbn_share=0.114, n_genres=12,
    ),
    "small": SynthPreset(
        "small", n_users=8_000, n_books=2_500, n_ratings=150_000, n_implicit=round(150_000 * IMPLICIT_SHARE),
        n_authors=900, n_publishers=150, active_user_fraction=0.8, activity_sigma=1.1, popularity_sigma=1.3,
        missing_isbn_share=0.105,
    ),
    "full": SynthPreset(
        "full", n_users=REAL_COUNTS["users"], n_books=REAL_COUNTS["books"], n_ratings=REAL_COUNTS["ratings"],
        n_implicit=REAL_COUNTS["implicit"], n_authors=102_000, n_publishers=16_800,
        active_user_fraction=105_283 / 278_858, activity_sigma=2.1, popularity_sigma=2.6,
        missing_isbn_share=118_644 / 1_149_780,
        # most readers here log two or three books, and those few are related far more often
        # than a reader's 20-odd books on the dense presets (item-based recommenders beat
        # popularity on the real data about 2x): more loyal, fewer genres, fewer bestsellers;
        # a catalogue of 240,000 works has finer genres
        n_genres=60, genre_concentration=1.0, loyalty=0.65, bestseller_share=0.05,
    ),
}
# ten times BookCrossing, shaped as full. The catalogue grows tenfold too: ratings per ISBN (the
# popularity tail, the share of ISBNs rated once) and books per author then stay those of full.
PRESETS["xl"] = replace(
    PRESETS["full"], name="xl", n_users=10 * REAL_COUNTS["users"], n_books=10 * REAL_COUNTS["books"],
    n_ratings=10 * REAL_COUNTS["ratings"], n_implicit=10 * REAL_COUNTS["implicit"], n_authors=1_020_000,
    n_publishers=168_000,
)
# Presets written in chunks of this many readers by write_in_chunks (generate refuses them):
# their per-reader arrays would not fit a worker's memory at once.
CHUNKED_READERS: dict[str, int] = {"xl": 250_000}

# Model scales on the rating scale (chosen so continuous ratings are rarely clipped).
MU = 5.6  # readers pick books they like, so observed means sit about 0.6 higher
USER_BIAS_SD = 0.6
WORK_BIAS_SD = 0.6
INTERACTION_SD = 0.8  # sd of <U, V>
NOISE_SD = 0.9
AUTHOR_SHARE, PUBLISHER_SHARE = 0.6, 0.15  # variance shares of a work's bias
# variance shares of a work's factors: author, genre centroid, publisher (the rest is the work's own)
FACTOR_AUTHOR_SHARE, FACTOR_GENRE_SHARE, FACTOR_PUBLISHER_SHARE = 0.45, 0.25, 0.10
USER_GENRE_SHARE = 0.5  # variance share of a reader's factors set by their genre mixture
GENRE_SIZE_SIGMA = 1.0  # log-normal spread of genre weights (some genres are far bigger)
SECOND_GENRE_RATE, SECOND_GENRE_WORKS = 0.35, 0.3  # authors with a second genre; share of their works in it
HOUSE_PUBLISHER_RATE = 0.7  # an author's works mostly appear with one publisher
SERIES_CONTINUE = 0.45  # an author's next work (same genre) continues the previous one's series
LOYALTY_CONCENTRATION = 4.0  # Beta(loyalty * c, (1 - loyalty) * c) per reader
# where a returning pick goes, given a book already read (series only when it has other volumes)
RETURN_SERIES, RETURN_AUTHOR, RETURN_PUBLISHER = 0.35, 0.35, 0.10  # the rest: the book's genre
WAVES = 4  # picks are made in this many waves; returns draw on the books of the earlier waves

# ---- vocabularies for text fields (latin-1 safe) --------------------------------------------
_ADJ = ("Silent Hidden Golden Broken Secret Last Lost Wild Dark Bright Quiet Burning Frozen Distant "
        "Crimson Forgotten Endless Gentle Bitter Sweet Hollow Ancient Little Great Stolen Painted "
        "Sleeping Wandering Falling Rising Scarlet Silver Iron Glass Paper Velvet Savage Tender "
        "Final First Second Strange Perfect Invisible Midnight Summer Winter Autumn Spring Café").split()
_NOUN = ("River Garden House Road Sea Mountain Child Heart Island Kingdom Promise Letter Door Voice "
         "Shadow Storm Fire Song Dream Mirror Window City Forest Bridge Journey Secret Daughter Son "
         "Witness Hunter Angel Stranger Queen King Lady Doctor Soldier Widow Painter Thief Garden's "
         "Crossing Harvest Season Harbor Lighthouse Orchard Tower Labyrinth Crown Compass Map Clock "
         "Return Escape Night Morning Evening Silence Memory Legacy Bargain Game").split()
_PLACE = ("Avalon Paris Rome Berlin Vienna Prague Dublin Boston Texas Kansas Lisbon Madrid Cairo "
          "Kyoto Delhi Oslo Zürich Montréal Québec Lyon Sevilla Provence Tuscany Cornwall Yorkshire "
          "Maine Vermont Georgia Carolina Nevada Alaska Hawaii Brooklyn Harlem Soho Chelsea Eden "
          "Arcadia Babylon Troy Sparta Atlantis").split()
_PATTERNS = (
    "The {a} {n} of {p}",
    "{n} of the {a} {p}",
    "A {a} {n} in {p}",
    "{a} {n}: A {p} Novel",
    "The {n} from {p} & the {a} Hour",
    "{p}'s {a} {n}",
)
_FIRST = ("James John Robert Michael William David Richard Joseph Thomas Charles Mary Patricia "
          "Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Margaret Sandra "
          "Ashley Kimberly Emily Donna Michelle Carol Amanda Dorothy Melissa Deborah Stephen Anne "
          "Nora Danielle Dean Janet Sue Terry Agatha Isabel Gabriel Toni Kurt Jodi Wally Ray Zoë "
          "Frédéric Günter José Renée Ursula Ian Neil Philip Paul Peter Alice Edith Virginia "
          "Harper Rosamunde Maeve Anita Marian Barbara Jane Louisa Ken Tom Dan Jon Amy Kate "
          "Arthur Ernest Herman Leo Fyodor Umberto Haruki Salman Orhan Italo Milan Jorge").split()
_INITIALS = list("ABCDEFGHJKLMNPRSTW")
_SUFFIXES = ("Jr.", "Sr.", "II", "III", "IV", "V")
_LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
         "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
         "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
         "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Grisham Steel "
         "Koontz Christie Allende Marquez Morrison Vonnegut Picoult Lamb Cornwell Patterson Clancy "
         "Binchy Pilcher Tan Rice Brontë Austen Hemingway Melville Tolstoy Dostoevsky Eco Murakami "
         "Rushdie Pamuk Calvino Kundera Borges Müller Dubois Lefèvre Kowalski Novak Jensen Larsen "
         "O'Brien McCarthy Fitzgerald Dickens Hardy Woolf Orwell Huxley Atwood Munro Ondaatje Irving "
         "Updike Roth Bellow Franzen Chabon Eggers Tartt Lethem Moody Wolfe Mailer Vidal Capote").split()
_PUB_A = ("Ballantine Bantam Penguin Random Harper Simon Warner Pocket Vintage Anchor Scribner Knopf "
          "Little Putnam Berkley Signet Avon Dell Tor Harlequin Scholastic Puffin Picador Faber Virago "
          "Orion Hodder Gallimard Seuil Flammarion Rowohlt Fischer Heyne Goldmann Mondadori Feltrinelli "
          "Anagrama Alfaguara Plaza Tusquets Grove Norton Viking Crown Dutton Riverhead Delacorte "
          "Atria Bloomsbury Canongate Granta Methuen Macmillan Collins Houghton Beacon Dover").split()
_PUB_B = ("Books", "Press", "Publishing", "Publishers", "& Co", "House", "Paperbacks", "Editions",
          "Verlag", "Classics", "Inc", "Group", "Library", "Trade", "Mass Market", "Audio")
_LOCATIONS = (
    ("new york", "new york", "usa"), ("san francisco", "california", "usa"), ("los angeles", "california", "usa"),
    ("chicago", "illinois", "usa"), ("houston", "texas", "usa"), ("seattle", "washington", "usa"),
    ("portland", "oregon", "usa"), ("boston", "massachusetts", "usa"), ("austin", "texas", "usa"),
    ("denver", "colorado", "usa"), ("toronto", "ontario", "canada"), ("vancouver", "british columbia", "canada"),
    ("montréal", "quebec", "canada"), ("london", "england", "united kingdom"), ("manchester", "england", "united kingdom"),
    ("edinburgh", "scotland", "united kingdom"), ("dublin", "dublin", "ireland"), ("berlin", "berlin", "germany"),
    ("münchen", "bayern", "germany"), ("hamburg", "hamburg", "germany"), ("madrid", "madrid", "spain"),
    ("barcelona", "barcelona", "spain"), ("lisboa", "lisboa", "portugal"), ("paris", "ile de france", "france"),
    ("roma", "lazio", "italy"), ("milano", "lombardia", "italy"), ("sydney", "new south wales", "australia"),
    ("melbourne", "victoria", "australia"), ("auckland", "auckland", "new zealand"), ("amsterdam", "noord holland", "netherlands"),
    ("wien", "wien", "austria"), ("zürich", "zürich", "switzerland"), ("stockholm", "stockholm", "sweden"),
    ("kuala lumpur", "selangor", "malaysia"), ("singapore", "singapore", "singapore"), ("são paulo", "sp", "brazil"),
)


@dataclass
class RawTables:
    """Raw text tables in BookCrossing's own shape (before normalisation).

    ``shifted_books`` marks the rows the raw writers emit in the broken "author glued into the
    title, everything shifted one column left" form (the importer repairs them).
    """

    ratings: pd.DataFrame
    books: pd.DataFrame
    users: pd.DataFrame
    shifted_books: np.ndarray


@dataclass
class SynthResult:
    """What :func:`generate` returns: the normalised dataset (with truth) and the raw tables."""

    dataset: Dataset
    raw: RawTables
    seconds: float


def _isbn10_check(body: np.ndarray) -> np.ndarray:
    """ISBN-10 check characters for 9-digit integer bodies (vectorised)."""
    digits = np.stack([(body // 10 ** (8 - i)) % 10 for i in range(9)], axis=1)
    total = (digits * np.arange(10, 1, -1)).sum(axis=1)
    check = (11 - total % 11) % 11
    return np.where(check == 10, "X", check.astype(str))


def _unique_isbns(rng: np.random.Generator, n: int) -> np.ndarray:
    bodies = np.unique(rng.integers(0, 10**9, size=int(n * 1.05) + 16))
    while len(bodies) < n:  # pragma: no cover - astronomically unlikely
        bodies = np.unique(np.r_[bodies, rng.integers(0, 10**9, size=n)])
    bodies = rng.permutation(bodies)[:n]
    body_str = np.char.zfill(bodies.astype(str), 9)
    return np.char.add(body_str, _isbn10_check(bodies))


def _mixed_radix_names(rng: np.random.Generator, n: int, sizes: list[int]) -> np.ndarray:
    """n distinct tuples of indices into vocabularies of the given sizes (as an (n, len(sizes)) array)."""
    total = int(np.prod(sizes))
    if n > total:
        raise ValueError("vocabulary too small")
    codes = rng.choice(total, size=n, replace=False) if total < 50_000_000 else np.unique(
        rng.integers(0, total, size=int(n * 1.1) + 16))[:n]
    codes = rng.permutation(codes)[:n]
    out = np.empty((n, len(sizes)), dtype=np.int64)
    for i, s in enumerate(sizes):
        out[:, i] = codes % s
        codes = codes // s
    return out


def _titles(rng: np.random.Generator, n: int) -> np.ndarray:
    idx = _mixed_radix_names(rng, n, [len(_PATTERNS), len(_ADJ), len(_NOUN), len(_PLACE), 40])
    out = []
    for pat, a, nn, p, vol in idx:
        t = _PATTERNS[pat].format(a=_ADJ[a], n=_NOUN[nn], p=_PLACE[p])
        if vol:  # series volumes keep titles distinct
            t = f"{t} (Book {vol})" if vol < 20 else f"{t} {vol - 18}"
        out.append(t)
    return np.array(out, dtype=object)


def _authors(rng: np.random.Generator, n: int) -> np.ndarray:
    sizes = [len(_FIRST), len(_INITIALS) + 1, len(_LAST)]
    if n > np.prod(sizes):  # more authors than names (xl): some get a generational suffix
        idx = _mixed_radix_names(rng, n, sizes + [len(_SUFFIXES) + 1])
        return np.array(
            [f"{_FIRST[f]} {_INITIALS[m - 1] + '. ' if m else ''}{_LAST[l]}{' ' + _SUFFIXES[x - 1] if x else ''}"
             for f, m, l, x in idx], dtype=object
        )
    idx = _mixed_radix_names(rng, n, sizes)
    return np.array(
        [f"{_FIRST[f]} {_INITIALS[m - 1] + '. ' if m else ''}{_LAST[l]}" for f, m, l in idx], dtype=object
    )


def _publishers(rng: np.random.Generator, n: int) -> np.ndarray:
    sizes = [len(_PUB_A), len(_PUB_B), 20]
    if n > np.prod(sizes):  # more publishers than names (xl): some get a place, as regional houses do
        idx = _mixed_radix_names(rng, n, sizes + [len(_PLACE) + 1])
        return np.array(
            [f"{_PUB_A[a]}{' ' + _PUB_A[(a + k * 7) % len(_PUB_A)] if k else ''} {_PUB_B[b]}"
             f"{' ' + _PLACE[x - 1] if x else ''}" for a, b, k, x in idx], dtype=object
        )
    idx = _mixed_radix_names(rng, n, sizes)
    return np.array(
        [f"{_PUB_A[a]}{' ' + _PUB_A[(a + k * 7) % len(_PUB_A)] if k else ''} {_PUB_B[b]}" for a, b, k in idx],
        dtype=object,
    )


def _lognormal_weights(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, size=n)
    return w / w.sum()


def _sample_by_weight(rng: np.random.Generator, cumulative: np.ndarray, size: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cumulative, rng.random(size) * cumulative[-1], side="right"), len(cumulative) - 1)


def _choose_interactions(
    rng: np.random.Generator,
    per_user: np.ndarray,  # interactions wanted per user (index = user position)
    item_work: np.ndarray,  # the work of each item: a user reads one edition of a work at most
    propose: Callable[[np.ndarray, int], np.ndarray],
    item_pref: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tilt: float,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs with distinct (user, work), ``per_user[u]`` for user u, items ~ proposal * exp(tilt * pref).

    ``propose(users, round)`` draws one candidate item per entry of ``users`` (-1: none); each
    user keeps the candidates with the largest ``tilt * pref + Gumbel`` keys (weighted sampling
    without replacement); short users are topped up in further rounds. Pairs whose (user, work)
    is in ``exclude`` are not drawn again.
    """
    n_keys = int(item_work.max()) + 1
    per_user = np.minimum(per_user, n_keys // 2)
    chosen_u: list[np.ndarray] = []
    chosen_i: list[np.ndarray] = []
    have = np.zeros_like(per_user)
    taken_keys = np.empty(0, dtype=np.int64)
    if exclude is not None:
        taken_keys = np.sort(exclude[0].astype(np.int64) * n_keys + item_work[exclude[1]])
    factor = 2.5
    for _round in range(12):
        need = per_user - have
        users = np.flatnonzero(need > 0)
        if len(users) == 0:
            break
        n_cand = np.ceil(need[users] * factor).astype(np.int64) + 2
        cu = np.repeat(users, n_cand)
        ci = propose(cu, _round)
        cu, ci = cu[ci >= 0], ci[ci >= 0]
        key = cu.astype(np.int64) * n_keys + item_work[ci]
        key, first = np.unique(key, return_index=True)
        cu, ci = cu[first], ci[first]
        fresh = np.ones(len(key), bool)
        if len(taken_keys):  # membership by binary search in the sorted keys (isin would sort again)
            fresh = taken_keys[np.minimum(np.searchsorted(taken_keys, key), len(taken_keys) - 1)] != key
        cu, ci, key = cu[fresh], ci[fresh], key[fresh]
        score = tilt * item_pref(cu, ci) + rng.gumbel(size=len(cu))
        order = np.lexsort((-score, cu))
        cu, ci, key = cu[order], ci[order], key[order]
        starts = np.r_[0, np.flatnonzero(cu[1:] != cu[:-1]) + 1]
        counts = np.diff(np.r_[starts, len(cu)])
        rank = np.arange(len(cu)) - np.repeat(starts, counts)
        keep = rank < need[cu]
        keep &= need[cu] > 0
        chosen_u.append(cu[keep])
        chosen_i.append(ci[keep])
        taken_keys = np.sort(np.r_[taken_keys, key[keep]])
        np.add.at(have, cu[keep], 1)
        factor *= 2
    if not chosen_u:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(chosen_u), np.concatenate(chosen_i)


class _GroupSampler:
    """Draws an item of a given group with probability proportional to its weight.

    Items are sorted by group and sampled by inverse CDF on one cumulative array, so a draw for
    any mix of groups is a single vectorised ``searchsorted``. Items with group -1 never come up;
    a group without items gives -1.
    """

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        order = np.argsort(group, kind="stable")
        order = order[group[order] >= 0]
        sorted_group = group[order]
        self.items = order
        self.cum = np.cumsum(weight[order])
        cum0 = np.r_[0.0, self.cum]
        self.lo = np.searchsorted(sorted_group, np.arange(n_groups), side="left")
        self.hi = np.searchsorted(sorted_group, np.arange(n_groups), side="right")
        self.base = cum0[self.lo]
        self.mass = cum0[self.hi] - self.base

    def draw(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        r = self.base[groups] + rng.random(len(groups)) * self.mass[groups]
        idx = np.clip(np.searchsorted(self.cum, r, side="right"), self.lo[groups], np.maximum(self.hi[groups] - 1, 0))
        return np.where(self.hi[groups] > self.lo[groups], self.items[np.minimum(idx, len(self.items) - 1)], -1)


class _Proposer:
    """Candidate books for readers: how a reader comes to a book.

    A fresh pick takes a genre from the reader's mixture and a book of it by popularity, or (the
    bestseller share) a book by overall popularity. A returning pick (with the reader's loyalty,
    once they have read something) starts from a book they read and takes another book of its
    series, author, publisher or genre, by popularity. Whether a pick lands on an ISBN missing
    from the books file is decided beforehand (an exact count per reader), so the share of
    dangling ratings does not depend on the mix of routes; those picks follow the reader's genres.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        isbn_w: np.ndarray,
        isbn_work: np.ndarray,
        n_works: int,
        work_genre: np.ndarray,  # all works, ghosts included
        work_author: np.ndarray,
        work_series: np.ndarray,
        work_publisher: np.ndarray,
        user_genre: np.ndarray,
        loyalty: np.ndarray,
        bestseller_share: float,
    ) -> None:
        self.rng = rng
        self.isbn_work = isbn_work
        self.n_works = n_works
        self.work_genre = work_genre
        self.work_author, self.work_series, self.work_publisher = work_author, work_series, work_publisher
        self.series_size = np.bincount(work_series)
        self.loyalty = loyalty
        self.bestseller_share = bestseller_share
        n_genres = user_genre.shape[1]
        real = isbn_work < n_works
        work = np.minimum(isbn_work, n_works - 1)
        book_genre = np.where(real, work_genre[isbn_work], -1)

        def by(group: np.ndarray) -> np.ndarray:
            return np.where(real, group[work], -1)

        self.best = _GroupSampler(np.where(real, 0, -1), isbn_w, 1)
        self.genre = _GroupSampler(book_genre, isbn_w, n_genres)
        self.ghost = _GroupSampler(np.where(real, -1, work_genre[isbn_work]), isbn_w, n_genres)
        self.all_ghosts = _GroupSampler(np.where(real, -1, 0), isbn_w, 1)
        self.author = _GroupSampler(by(work_author), isbn_w, int(work_author.max()) + 1)
        self.series = _GroupSampler(by(work_series), isbn_w, int(work_series.max()) + 1)
        self.publisher = _GroupSampler(by(work_publisher), isbn_w, int(work_publisher.max()) + 1)
        # the readers' genre mixtures as one increasing array: reader u's genres span [u, u + 1)
        cum = np.cumsum(user_genre, axis=1)
        cum /= cum[:, -1:]
        self.n_genres = n_genres
        self.flat_genre_cdf = (np.arange(len(user_genre))[:, None] + cum).ravel()
        self.set_history(np.empty(0, np.int64), np.empty(0, np.int64))

    def set_history(self, users: np.ndarray, items: np.ndarray) -> None:
        order = np.argsort(users, kind="stable")
        self.hist_items = items[order]
        self.hist_count = np.bincount(users, minlength=len(self.loyalty))
        self.hist_start = np.cumsum(self.hist_count) - self.hist_count

    def reader_genre(self, users: np.ndarray) -> np.ndarray:
        v = users + self.rng.random(len(users))
        pos = np.searchsorted(self.flat_genre_cdf, v, side="right")
        return np.clip(pos - users * self.n_genres, 0, self.n_genres - 1)

    def propose(self, users: np.ndarray, round_no: int) -> np.ndarray:
        """Books-file candidates for ``users`` (one each)."""
        rng = self.rng
        u = users
        # top-up rounds: a reader still short has run out of their authors and genres, so the
        # candidates widen towards overall popularity
        widen = 1.0 - 0.5 ** max(round_no - 1, 0)
        ret = (self.hist_count[u] > 0) & (rng.random(len(u)) < self.loyalty[u] * (1 - widen))
        best = ~ret & (rng.random(len(u)) < 1 - (1 - self.bestseller_share) * (1 - widen))
        fresh = ~ret & ~best
        pick = np.full(len(u), -1, dtype=np.int64)
        pick[best] = self.best.draw(rng, np.zeros(int(best.sum()), np.int64))
        pick[fresh] = self.genre.draw(rng, self.reader_genre(u[fresh]))
        if ret.any():
            ur = u[ret]
            anchor = self.hist_items[self.hist_start[ur] + (rng.random(len(ur)) * self.hist_count[ur]).astype(np.int64)]
            work = self.isbn_work[anchor]
            real = work < self.n_works
            w = np.minimum(work, self.n_works - 1)
            route = rng.random(len(ur))
            series = real & (route < RETURN_SERIES) & (self.series_size[self.work_series[w]] > 1)
            author = real & ~series & (route < RETURN_SERIES + RETURN_AUTHOR)
            publisher = real & (route >= RETURN_SERIES + RETURN_AUTHOR) & (
                route < RETURN_SERIES + RETURN_AUTHOR + RETURN_PUBLISHER)
            genre = ~(series | author | publisher)
            got = np.empty(len(ur), dtype=np.int64)
            got[series] = self.series.draw(rng, self.work_series[w[series]])
            got[author] = self.author.draw(rng, self.work_author[w[author]])
            got[publisher] = self.publisher.draw(rng, self.work_publisher[w[publisher]])
            got[genre] = self.genre.draw(rng, self.work_genre[work[genre]])
            pick[ret] = got
        return pick

    def propose_ghost(self, users: np.ndarray, round_no: int) -> np.ndarray:
        """Candidates among the ISBNs missing from the books file: by the reader's genres, widening
        to all of them in top-up rounds."""
        widen = 1.0 - 0.5 ** max(round_no - 1, 0)
        wide = self.rng.random(len(users)) < widen
        out = np.empty(len(users), dtype=np.int64)
        out[wide] = self.all_ghosts.draw(self.rng, np.zeros(int(wide.sum()), np.int64))
        out[~wide] = self.ghost.draw(self.rng, self.reader_genre(users[~wide]))
        return out


def _series(rng: np.random.Generator, work_author: np.ndarray, work_genre: np.ndarray) -> np.ndarray:
    """Series ids of works: an author's next work (catalogue order) in the same genre continues
    the previous one's series with probability SERIES_CONTINUE; otherwise it starts a new one."""
    order = np.lexsort((np.arange(len(work_author)), work_author))
    a, g = work_author[order], work_genre[order]
    cont = np.r_[False, (a[1:] == a[:-1]) & (g[1:] == g[:-1])] & (rng.random(len(a)) < SERIES_CONTINUE)
    out = np.empty(len(a), dtype=np.int64)
    out[order] = np.cumsum(~cont) - 1
    return out


def _dirichlet(rng: np.random.Generator, alpha: np.ndarray, n: int) -> np.ndarray:
    """n draws of Dirichlet(alpha) as rows. With tiny concentrations every gamma of a row can
    underflow to zero; such a row puts all its weight on one component drawn by alpha (the limit)."""
    x = rng.standard_gamma(alpha, size=(n, len(alpha)))
    total = x.sum(axis=1)
    empty = total <= 0
    if empty.any():  # pragma: no cover - needs concentrations far below the presets'
        x[empty] = 0.0
        x[empty, _sample_by_weight(rng, np.cumsum(alpha), int(empty.sum()))] = 1.0
        total = x.sum(axis=1)
    return x / total[:, None]


def _shortfall_weights(per_user: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Weights for handing out a shortfall: proportional to the activity already planned."""
    return per_user[room > 0].astype(np.float64) + 1.0


def _capped_counts(
    rng: np.random.Generator, weights: np.ndarray, total: int, cap: int | np.ndarray | None, minimum: int = 1
) -> np.ndarray:
    """Like :func:`_exact_counts` but no count exceeds ``cap`` (the excess goes to the others)."""
    counts = _exact_counts(rng, weights, total, minimum)
    if cap is None:
        return counts
    for _ in range(50):
        excess = int(np.maximum(counts - cap, 0).sum())
        if excess == 0:
            break
        counts = np.minimum(counts, cap)
        room = counts < cap
        counts[room] += rng.multinomial(excess, weights[room] / weights[room].sum())
    return counts


def _exact_counts(rng: np.random.Generator, weights: np.ndarray, total: int, minimum: int = 1) -> np.ndarray:
    """Integer counts >= minimum summing to ``total``, proportional to weights (multinomial)."""
    n = len(weights)
    extra = total - minimum * n
    if extra < 0:
        raise ValueError("total too small for the number of users")
    return minimum + rng.multinomial(extra, weights / weights.sum())


def _catalogue(rng: np.random.Generator, p: SynthPreset, say: Callable[[str], None]) -> _Works:
    """The works, their ghost copies and their ISBNs: the first draws of every preset."""
    say("catalogue")
    works = _catalogue_works(rng, p)
    _add_ghost_works(rng, p, works)
    _add_isbns(rng, p, works)
    return works


def generate(
    preset: str | SynthPreset = "small",
    seed: int = 42,
    continuous: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SynthResult:
    """Generate a BookCrossing-shaped data set with its ground truth.

    Args:
        preset: ``"tiny"`` (a few hundred users, ~1 s), ``"small"`` (thousands of users, a dense
            k-core), ``"full"`` (the real counts) or a :class:`SynthPreset`.
        seed: everything is determined by it.
        continuous: keep explicit ratings unrounded (``mean + N(0, noise_sd^2)`` clipped to [1, 10]).
        progress: optional callback receiving stage names.

    Returns a :class:`SynthResult`; ``result.dataset`` is ready for :func:`bookrec.data.io.write_dataset`.
    """
    # The stages share one generator and run in a fixed order: every seed's data depends on it.
    t0 = time.perf_counter()
    p = PRESETS[preset] if isinstance(preset, str) else preset
    if p.name in CHUNKED_READERS:
        raise ValueError(f"preset {p.name!r} is generated in chunks straight to disk: use write_in_chunks")
    rng = np.random.default_rng(seed)
    say = progress or (lambda _msg: None)
    works = _catalogue(rng, p, say)
    say("interactions")
    readers = _readers(rng, p, works)
    ru, ri = _interactions(rng, p, works, readers)
    is_explicit = _explicit_or_implicit(rng, p, readers, ru)
    say("ratings")
    ratings = _ratings(rng, works, readers, ru, ri, is_explicit, continuous)
    say("tables")
    raw = _raw_tables(rng, p, works, ru, ri, ratings.rating, continuous)
    say("normalise")
    normal_ratings, books, users, report = normalize_tables(raw.ratings, raw.books, raw.users)
    truth_work_keys = _canonical_work_keys(raw.books, works.isbn_work[: p.n_books], works.n_works)
    truth = _truth(p, seed, continuous, works, readers, ratings, truth_work_keys)
    manifest = {"source": "synthetic", "preset": p.name, "seed": seed, "continuous": continuous, "report": report}
    dataset = Dataset(ratings=normal_ratings, books=books, users=users, manifest=manifest, truth=truth)
    return SynthResult(dataset=dataset, raw=raw, seconds=time.perf_counter() - t0)


@dataclass
class _Works:
    """The hidden world of books: catalogue works, ghost works (ISBNs the books file lacks) and
    their editions' ISBNs. Arrays named ``all_*`` cover catalogue and ghost works."""

    factor_sd: float
    genre_w: np.ndarray
    genre_f: np.ndarray  # genre centroids in factor space
    n_works: int
    work_author: np.ndarray
    work_genre: np.ndarray
    work_publisher: np.ndarray
    work_series: np.ndarray
    work_pop: np.ndarray
    work_f: np.ndarray
    work_b: np.ndarray
    n_editions: np.ndarray
    n_ghost: int = 0
    all_genre: np.ndarray | None = None
    all_f: np.ndarray | None = None
    all_b: np.ndarray | None = None
    ghost_pop: np.ndarray | None = None
    isbn_work: np.ndarray | None = None  # the work of each ISBN (books-file ISBNs first)
    edition_no: np.ndarray | None = None
    isbn_w: np.ndarray | None = None  # pick weight of each ISBN
    isbns: np.ndarray | None = None


@dataclass
class _Readers:
    genre: np.ndarray  # each reader's genre mixture
    factors: np.ndarray
    bias: np.ndarray
    loyalty: np.ndarray
    active: np.ndarray  # readers with at least one interaction
    activity_w: np.ndarray  # of the active readers


@dataclass
class _Ratings:
    rating: np.ndarray  # 0 for implicit interactions
    thresholds: np.ndarray
    clip_fraction: float


def _catalogue_works(rng: np.random.Generator, p: SynthPreset) -> _Works:
    """Authors, publishers, genres and the works of the books file with their editions."""
    k = p.n_factors
    factor_sd = np.sqrt(INTERACTION_SD / np.sqrt(k))  # k * sd_u^2 * sd_v^2 = INTERACTION_SD^2
    author_w = _lognormal_weights(rng, p.n_authors, 1.3)
    publisher_w = _lognormal_weights(rng, p.n_publishers, 1.8)
    author_f = rng.normal(0, factor_sd, (p.n_authors, k))
    author_b = rng.normal(0, WORK_BIAS_SD, p.n_authors)
    pub_f = rng.normal(0, factor_sd, (p.n_publishers, k))
    pub_b = rng.normal(0, WORK_BIAS_SD, p.n_publishers)

    n_work_cand = p.n_books
    work_pop = rng.lognormal(0.0, p.popularity_sigma, n_work_cand)
    pop_rank = np.argsort(np.argsort(-work_pop)) / n_work_cand  # 0 = most popular
    # popular works come in several editions (hardcover, paperback, book club, reprints...)
    n_editions = 1 + rng.poisson(np.where(pop_rank < 0.02, 2.5, np.where(pop_rank < 0.15, 0.5, 0.05)))
    cum = np.cumsum(n_editions)
    n_works = int(np.searchsorted(cum, p.n_books) + 1)
    n_editions = n_editions[:n_works].copy()
    n_editions[-1] -= int(cum[n_works - 1] - p.n_books)
    work_pop = work_pop[:n_works]
    work_author = _sample_by_weight(rng, np.cumsum(author_w), n_works)

    # genres: an author writes mostly in one genre, some also in a second one
    g = p.n_genres
    genre_w = _lognormal_weights(rng, g, GENRE_SIZE_SIGMA)
    genre_f = rng.normal(0, factor_sd, (g, k))
    author_genre = _sample_by_weight(rng, np.cumsum(genre_w), p.n_authors)
    author_genre2 = np.where(rng.random(p.n_authors) < SECOND_GENRE_RATE,
                             _sample_by_weight(rng, np.cumsum(genre_w), p.n_authors), author_genre)
    work_genre = np.where(rng.random(n_works) < SECOND_GENRE_WORKS, author_genre2[work_author], author_genre[work_author])
    # publishers: most of an author's works appear with the author's house
    house = _sample_by_weight(rng, np.cumsum(publisher_w), p.n_authors)
    work_publisher = np.where(rng.random(n_works) < HOUSE_PUBLISHER_RATE, house[work_author],
                              _sample_by_weight(rng, np.cumsum(publisher_w), n_works))
    work_series = _series(rng, work_author, work_genre)

    fa, fg, fp = FACTOR_AUTHOR_SHARE, FACTOR_GENRE_SHARE, FACTOR_PUBLISHER_SHARE
    work_f = (np.sqrt(fa) * author_f[work_author] + np.sqrt(fg) * genre_f[work_genre] + np.sqrt(fp) * pub_f[work_publisher]
              + np.sqrt(1 - fa - fg - fp) * rng.normal(0, factor_sd, (n_works, k)))
    a_s, p_s, o_s = np.sqrt(AUTHOR_SHARE), np.sqrt(PUBLISHER_SHARE), np.sqrt(1 - AUTHOR_SHARE - PUBLISHER_SHARE)
    work_b = a_s * author_b[work_author] + p_s * pub_b[work_publisher] + o_s * rng.normal(0, WORK_BIAS_SD, n_works)
    return _Works(factor_sd, genre_w, genre_f, n_works, work_author, work_genre, work_publisher, work_series,
                  work_pop, work_f, work_b, n_editions)


def _add_ghost_works(rng: np.random.Generator, p: SynthPreset, w: _Works) -> None:
    """Ghost works: ISBNs that readers rated but the books file lacks (own single-edition works
    of authors outside the catalogue, in a genre like any other book)."""
    fg = FACTOR_GENRE_SHARE
    w.n_ghost = n_ghost = max(1, round(p.n_books * p.ghost_isbn_ratio))
    ghost_genre = _sample_by_weight(rng, np.cumsum(w.genre_w), n_ghost)
    ghost_f = np.sqrt(fg) * w.genre_f[ghost_genre] + np.sqrt(1 - fg) * rng.normal(0, w.factor_sd, (n_ghost, p.n_factors))
    ghost_b = rng.normal(0, WORK_BIAS_SD, n_ghost)
    w.ghost_pop = rng.lognormal(0.0, p.popularity_sigma * 0.7, n_ghost)
    w.all_genre = np.r_[w.work_genre, ghost_genre]
    w.all_f = np.vstack([w.work_f, ghost_f])
    w.all_b = np.r_[w.work_b, ghost_b]


def _add_isbns(rng: np.random.Generator, p: SynthPreset, w: _Works) -> None:
    """Every work's ISBNs, their pick weights and their text (some typed by readers wrongly)."""
    n_all_works = w.n_works + w.n_ghost
    # editions of a work share its popularity (the first edition most of it)
    w.isbn_work = np.r_[np.repeat(np.arange(w.n_works), w.n_editions), np.arange(w.n_works, n_all_works)]
    w.edition_no = np.r_[np.arange(p.n_books) - np.repeat(np.cumsum(w.n_editions) - w.n_editions, w.n_editions),
                         np.zeros(w.n_ghost, dtype=np.int64)]
    share = 0.55 ** w.edition_no
    share /= np.bincount(w.isbn_work, weights=share)[w.isbn_work]
    isbn_w = np.r_[w.work_pop, w.ghost_pop][w.isbn_work] * share
    if p.n_ratings - len(w.isbn_work) <= 0:
        raise ValueError("preset has fewer ratings than ISBNs")
    isbn_w[: p.n_books] /= isbn_w[: p.n_books].sum()
    isbn_w[p.n_books :] /= isbn_w[p.n_books :].sum()
    w.isbn_w = isbn_w
    isbns = _unique_isbns(rng, len(w.isbn_work)).astype(object)
    # ISBNs readers typed that no books row has: some in 13-digit form, a few outright junk
    # (ASIN-like codes); both stay distinct after normalisation
    ghost_pos = np.arange(p.n_books, len(w.isbn_work))
    form = rng.random(w.n_ghost)
    as13 = ghost_pos[form < 0.03]
    isbns[as13] = ["978" + x[:9] + str(d) for x, d in zip(isbns[as13], rng.integers(0, 10, len(as13)))]
    junk = ghost_pos[form > 0.995]
    isbns[junk] = [f"B{int(x[:9]):09d}" for x in isbns[junk]]
    w.isbns = isbns.astype(str)


def _readers(rng: np.random.Generator, p: SynthPreset, w: _Works) -> _Readers:
    """A reader's genre mixture is sparse (a few genres dominate), centred on the genres' shares
    of reading; their taste (factors) leans towards the centroids of the genres they read, so
    what they pick and how they rate it are related."""
    books = slice(None, p.n_books)
    genre_mass = np.bincount(w.work_genre[w.isbn_work[books]], weights=w.isbn_w[books], minlength=p.n_genres)
    user_genre = _dirichlet(rng, p.genre_concentration * np.maximum(genre_mass / genre_mass.sum(), 1e-6), p.n_users)
    taste = (user_genre @ w.genre_f) / np.sqrt((user_genre**2).sum(axis=1))[:, None]
    user_f = (np.sqrt(USER_GENRE_SHARE) * taste
              + np.sqrt(1 - USER_GENRE_SHARE) * rng.normal(0, w.factor_sd, (p.n_users, p.n_factors)))
    user_b = rng.normal(0, USER_BIAS_SD, p.n_users)
    c = LOYALTY_CONCENTRATION
    user_loyalty = rng.beta(p.loyalty * c, (1 - p.loyalty) * c, p.n_users)
    n_active = max(1, round(p.n_users * p.active_user_fraction))
    active = np.sort(rng.choice(p.n_users, n_active, replace=False))
    activity_w = rng.lognormal(0, p.activity_sigma, n_active)
    return _Readers(user_genre, user_f, user_b, user_loyalty, active, activity_w)


def _interactions(rng: np.random.Generator, p: SynthPreset, w: _Works, r: _Readers) -> tuple[np.ndarray, np.ndarray]:
    """Who reads what: (reader, ISBN) positions of every interaction, explicit or implicit."""
    n_isbns = len(w.isbn_work)
    n_rest = p.n_ratings - n_isbns
    # every ISBN gets one "discovery" interaction (the crawl found books through ratings, so
    # nearly every book is rated and most only once); of the remaining interactions, exactly
    # enough go to ghost ISBNs that missing_isbn_share of all ratings miss the books file
    n_ghost_picks = _ghost_pick_total(p, w)
    pref = _preference(w, r)
    cover_i = np.arange(n_isbns)
    cover_u = _discovery_readers(rng, p, w, r, pref, cover_i)
    return _reading(rng, p, w, r, pref, cover_u, cover_i, n_rest, n_ghost_picks)


def _ghost_pick_total(p: SynthPreset, w: _Works) -> int:
    """Picks of ghost ISBNs beyond their discoveries, so that missing_isbn_share of all ratings
    miss the books file."""
    n_rest = p.n_ratings - len(w.isbn_work)
    return round(max(p.missing_isbn_share * p.n_ratings - w.n_ghost, 0.01 * n_rest))


def _preference(w: _Works, r: _Readers) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """How much reader u likes ISBN i (the part of the true mean that picking leans on)."""
    item_f_isbn = w.all_f[w.isbn_work]
    item_b_isbn = w.all_b[w.isbn_work]

    def pref(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        return item_b_isbn[i] + np.einsum("ij,ij->i", r.factors[u], item_f_isbn[i])

    return pref


def _reading(rng: np.random.Generator, p: SynthPreset, w: _Works, r: _Readers, pref, cover_u: np.ndarray,
             cover_i: np.ndarray, n_rest: int, n_ghost_picks: int) -> tuple[np.ndarray, np.ndarray]:
    """The readers' picks besides the discoveries (``cover_u`` read ``cover_i``): ``n_rest`` by
    activity, ``n_ghost_picks`` of them on ghost ISBNs, topped up to ``p.n_ratings`` in all."""
    n_isbns = len(w.isbn_work)
    covered = np.bincount(cover_u, minlength=p.n_users)
    per_user = np.zeros(p.n_users, dtype=np.int64)
    per_user[r.active] = _capped_counts(
        rng, r.activity_w, n_rest, cap=np.maximum(n_isbns // 2 - covered[r.active], 1), minimum=1
    )
    proposer = _Proposer(
        rng, w.isbn_w, w.isbn_work, w.n_works, w.all_genre, w.work_author, w.work_series, w.work_publisher, r.genre,
        r.loyalty, p.bestseller_share,
    )
    ghost_picks = np.zeros(p.n_users, dtype=np.int64)
    ghost_picks[r.active] = _capped_counts(rng, per_user[r.active].astype(np.float64), n_ghost_picks,
                                           cap=per_user[r.active], minimum=0)
    book_picks = per_user - ghost_picks
    # picks come in waves: the first are fresh (genre or bestseller), later ones also return to
    # the authors, series, publishers and genres of the books read in the waves before
    ru, ri = cover_u, cover_i
    done = np.zeros(p.n_users, dtype=np.int64)
    for wave in range(WAVES):
        want = -(-book_picks * (wave + 1) // WAVES) - done
        proposer.set_history(ru, ri)
        wu, wi = _choose_interactions(rng, np.maximum(want, 0), w.isbn_work, proposer.propose, pref, p.preference_tilt,
                                      exclude=(ru, ri))
        ru, ri = np.r_[ru, wu], np.r_[ri, wi]
        done += np.bincount(wu, minlength=p.n_users)
    gu, gi = _choose_interactions(rng, ghost_picks, w.isbn_work, proposer.propose_ghost, pref, p.preference_tilt,
                                  exclude=(ru, ri))
    ru, ri = np.r_[ru, gu], np.r_[ri, gi]
    return _top_up(rng, p, w, proposer, pref, per_user + covered, ru, ri)


def _discovery_readers(rng: np.random.Generator, p: SynthPreset, w: _Works, r: _Readers, pref,
                       isbns: np.ndarray) -> np.ndarray:
    """The discovery reader of each of ``isbns``: the best of 8 readers drawn by activity, by taste and genre."""
    n_isbns = len(isbns)
    isbn_genre = w.all_genre[w.isbn_work]
    n_cand = 8
    cover_u = r.active[_sample_by_weight(rng, np.cumsum(r.activity_w), n_isbns * n_cand)]
    cover_i = np.repeat(isbns, n_cand)
    cover_score = (p.preference_tilt * pref(cover_u, cover_i) + np.log(r.genre[cover_u, isbn_genre[cover_i]] + 1e-12)
                   + rng.gumbel(size=len(cover_u))).reshape(n_isbns, n_cand)
    return cover_u.reshape(n_isbns, n_cand)[np.arange(n_isbns), cover_score.argmax(axis=1)]


def _top_up(rng: np.random.Generator, p: SynthPreset, w: _Works, proposer: _Proposer, pref, per_user: np.ndarray,
            ru: np.ndarray, ri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A reader can run out of distinct books; hand the shortfall to readers with room."""
    for _attempt in range(5):
        short = p.n_ratings - len(ru)
        if short <= 0:
            break
        have = np.bincount(ru, minlength=p.n_users)
        room = np.where(per_user > 0, len(w.isbn_work) // 2 - have, 0)
        more = np.zeros(p.n_users, dtype=np.int64)
        more[room > 0] = _capped_counts(rng, _shortfall_weights(per_user, room), short, cap=None, minimum=0)
        more = np.minimum(more, np.maximum(room, 0))
        proposer.set_history(ru, ri)
        extra_u, extra_i = _choose_interactions(rng, more, w.isbn_work, proposer.propose, pref, p.preference_tilt,
                                                exclude=(ru, ri))
        ru, ri = np.r_[ru, extra_u], np.r_[ri, extra_i]
    return ru, ri


def _explicit_or_implicit(rng: np.random.Generator, p: SynthPreset, r: _Readers, ru: np.ndarray) -> np.ndarray:
    """Which interactions carry a rating: by a per-reader propensity (many readers only ever
    log books, rating 0)."""
    n_int = len(ru)
    # top-ups can fall a few short for the most active readers (popular books run out): take
    # the difference from the implicit count so the explicit count stays exact
    n_implicit = p.n_implicit - (p.n_ratings - n_int)
    n_explicit = n_int - n_implicit
    propensity = rng.beta(0.5, 0.8, p.n_users)
    logit = np.log(propensity + 1e-9) - np.log1p(-propensity + 1e-9)
    explicit_score = logit[ru] + rng.logistic(size=n_int)
    is_explicit = np.zeros(n_int, dtype=bool)
    is_explicit[np.argpartition(-explicit_score, n_explicit - 1)[:n_explicit]] = True
    return is_explicit


def _ratings(rng: np.random.Generator, w: _Works, r: _Readers, ru: np.ndarray, ri: np.ndarray,
             is_explicit: np.ndarray, continuous: bool, thresholds: np.ndarray | None = None) -> _Ratings:
    """Explicit ratings from the model; implicit interactions keep rating 0.

    The thresholds sit at the quantiles of these latent ratings unless given."""
    n_int = len(ru)
    n_explicit = int(is_explicit.sum())
    item_f_isbn = w.all_f[w.isbn_work]
    mean = MU + r.bias[ru] + w.all_b[w.isbn_work][ri] + np.einsum("ij,ij->i", r.factors[ru], item_f_isbn[ri])
    z = mean + rng.normal(0, NOISE_SD, n_int)
    rating = np.zeros(n_int, dtype=np.float64)
    cum_share = np.cumsum(REAL_EXPLICIT_SHARE)[:-1]
    if thresholds is None:
        thresholds = np.quantile(z[is_explicit], cum_share) if n_explicit else np.zeros(9)
    clip_fraction = float(np.mean((z[is_explicit] < 1) | (z[is_explicit] > 10))) if n_explicit else 0.0
    if continuous:
        rating[is_explicit] = np.clip(z[is_explicit], 1.0, 10.0)
    else:
        rating[is_explicit] = 1 + np.searchsorted(thresholds, z[is_explicit], side="left")
    return _Ratings(rating, thresholds, clip_fraction)


def _raw_tables(rng: np.random.Generator, p: SynthPreset, w: _Works, ru: np.ndarray, ri: np.ndarray,
                rating: np.ndarray, continuous: bool) -> RawTables:
    raw_ratings = _raw_ratings(rng, w, ru, ri, rating, continuous)
    books = slice(None, p.n_books)
    raw_books, shifted = _raw_books(
        rng, w.isbns[books], w.isbn_work[books], w.edition_no[books], w.n_works, w.work_author, w.work_publisher, p,
    )
    raw_users = _raw_users(rng, p)
    return RawTables(raw_ratings, raw_books, raw_users, shifted)


def _raw_ratings(rng: np.random.Generator, w: _Works, ru: np.ndarray, ri: np.ndarray, rating: np.ndarray,
                 continuous: bool, first_id: int = 1) -> pd.DataFrame:
    """The raw ratings file of readers ``ru`` (ids from ``first_id``), in random order."""
    raw_ratings = pd.DataFrame(
        {"user_id": ru + first_id, "isbn": _messy_isbns(rng, w.isbns[ri]),
         "rating": rating.astype(np.float32) if continuous else rating.astype(np.int64)}
    )
    return raw_ratings.iloc[rng.permutation(len(ru))].reset_index(drop=True)


# per-reader truth arrays: left out where readers are generated in chunks (they grow with the readers)
READER_TRUTH = ("user_ids", "user_bias", "user_factors", "user_genre_mixture", "user_loyalty")


def _truth(p: SynthPreset, seed: int, continuous: bool, w: _Works, r: _Readers | None, ratings: _Ratings,
           truth_work_keys: np.ndarray) -> dict:
    """The parameters and hidden arrays behind the data (truth.json and truth.npz); without
    readers (``r`` None), the per-reader arrays are left out."""
    truth = {
        "preset": p.name,
        "seed": seed,
        "continuous": continuous,
        "global_mean": MU,
        "noise_sd": NOISE_SD,
        "n_factors": p.n_factors,
        "user_bias_sd": USER_BIAS_SD,
        "work_bias_sd": WORK_BIAS_SD,
        "interaction_sd": INTERACTION_SD,
        "preference_tilt": p.preference_tilt,
        "n_genres": p.n_genres,
        "reading_structure": _reading_structure(p),
        "clip_fraction": ratings.clip_fraction,
        "mapping": {
            "kind": "identity_clipped" if continuous else "thresholds",
            "thresholds": [float(x) for x in ratings.thresholds],
            "description": (
                "rating = clip(z, 1, 10)" if continuous else "rating = 1 + number of thresholds below z"
            ),
        },
        "model": "z = global_mean + user_bias[u] + work_bias[w] + user_factors[u].work_factors[w] + N(0, noise_sd^2)",
        "preset_parameters": asdict(p),
        # arrays (truth.npz): users are indexed by position in user_ids, works by position in work_keys
        "user_ids": np.arange(1, p.n_users + 1, dtype=np.int64) if r else None,
        "user_bias": r.bias if r else None,
        "user_factors": r.factors if r else None,
        "work_keys": np.r_[truth_work_keys, np.array([f"ghost:{i}" for i in range(w.n_ghost)])].astype(str),
        "work_bias": w.all_b,
        "work_factors": w.all_f,
        "isbns": w.isbns.astype(str),
        "isbn_work": w.isbn_work.astype(np.int64),
        "in_books_file": np.r_[np.ones(p.n_books, bool), np.zeros(w.n_ghost, bool)],
        "work_author": w.work_author.astype(np.int64),
        "work_publisher": w.work_publisher.astype(np.int64),
        # reading structure: genres of all works (ghosts included), series of catalogue works,
        # genre centroids in factor space, readers' genre mixtures and loyalty
        "work_genre": w.all_genre.astype(np.int64),
        "work_series": w.work_series.astype(np.int64),
        "genre_weights": w.genre_w,
        "genre_factors": w.genre_f,
        "user_genre_mixture": r.genre.astype(np.float32) if r else None,
        "user_loyalty": r.loyalty if r else None,
    }
    if r is None:
        truth = {k: v for k, v in truth.items() if k not in READER_TRUTH}
        truth["reader_truth"] = "omitted: readers were generated in chunks"
    return truth


def _reading_structure(p: SynthPreset) -> dict:
    return {
        "factor_shares": {"author": FACTOR_AUTHOR_SHARE, "genre": FACTOR_GENRE_SHARE,
                          "publisher": FACTOR_PUBLISHER_SHARE},
        "user_genre_share": USER_GENRE_SHARE,
        "genre_concentration": p.genre_concentration,
        "loyalty": p.loyalty,
        "loyalty_concentration": LOYALTY_CONCENTRATION,
        "bestseller_share": p.bestseller_share,
        "return_routes": {"series": RETURN_SERIES, "author": RETURN_AUTHOR, "publisher": RETURN_PUBLISHER,
                          "genre": 1 - RETURN_SERIES - RETURN_AUTHOR - RETURN_PUBLISHER},
        "second_genre_rate": SECOND_GENRE_RATE,
        "second_genre_works": SECOND_GENRE_WORKS,
        "house_publisher_rate": HOUSE_PUBLISHER_RATE,
        "series_continue": SERIES_CONTINUE,
        "waves": WAVES,
    }


def truth_mean(truth: dict, user_ids, isbns=None, work_keys=None) -> np.ndarray:
    """The true mean rating m[u, j] for user ids and ISBNs (or work keys); NaN where unknown."""
    users = pd.Index(truth["user_ids"]).get_indexer(np.asarray(user_ids))
    if work_keys is not None:
        works = pd.Index(truth["work_keys"]).get_indexer(np.asarray(work_keys))
    else:
        pos = pd.Index(truth["isbns"]).get_indexer(np.asarray(isbns))
        works = np.where(pos >= 0, truth["isbn_work"][np.maximum(pos, 0)], -1)
    ok = (users >= 0) & (works >= 0)
    out = np.full(len(users), np.nan)
    u, w = users[ok], works[ok]
    out[ok] = (
        truth["global_mean"] + truth["user_bias"][u] + truth["work_bias"][w]
        + np.einsum("ij,ij->i", truth["user_factors"][u], truth["work_factors"][w])
    )
    return out


def _canonical_work_keys(raw_books: pd.DataFrame, isbn_work: np.ndarray, n_works: int) -> np.ndarray:
    first = np.r_[True, isbn_work[1:] != isbn_work[:-1]]
    keys = work_keys(decode_entities(raw_books["title"][first]), decode_entities(raw_books["author"][first])).to_numpy()
    out = np.empty(n_works, dtype=object)
    out[isbn_work[first]] = keys
    return out


def _messy_isbns(rng: np.random.Generator, isbns: np.ndarray) -> np.ndarray:
    """Rating-file ISBNs as users typed them: some lowercase x, stray spaces, dashes."""
    out = isbns.astype(object)
    r = rng.random(len(out))
    lower = (r < 0.01) & np.char.endswith(isbns.astype(str), "X")
    out[lower] = np.char.lower(isbns[lower].astype(str))
    space = (r > 0.995)
    out[space] = np.char.add(isbns[space].astype(str), " ")
    dash = (r > 0.990) & (r <= 0.992) & (np.char.str_len(isbns.astype(str)) == 10)  # the ISBN-10 pattern
    out[dash] = [f"{s[0]}-{s[1:4]}-{s[4:9]}-{s[9]}" for s in isbns[dash]]
    return out


def _raw_books(
    rng: np.random.Generator,
    isbns: np.ndarray,
    isbn_work: np.ndarray,
    edition_no: np.ndarray,
    n_works: int,
    work_author: np.ndarray,
    work_publisher: np.ndarray,
    p: SynthPreset,
) -> tuple[pd.DataFrame, np.ndarray]:
    n = len(isbns)
    titles = _titles(rng, n_works)
    authors = _authors(rng, p.n_authors)
    publishers = _publishers(rng, p.n_publishers)
    work_title = titles[isbn_work]
    # editions may differ in case; a few titles carry HTML entities or quotes
    caps = (edition_no > 0) & (rng.random(n) < 0.3)
    title = work_title.copy()
    title[caps] = [t.upper() for t in title[caps]]
    title = np.array([t.replace("&", "&amp;") for t in title], dtype=object)
    quoted = (rng.random(n_works) < 0.002)[isbn_work]  # per work, so editions keep one work key
    title[quoted] = [f'{t} "Special Edition"' for t in title[quoted]]
    author = authors[work_author][isbn_work]
    author_variant = (edition_no > 0) & (rng.random(n) < 0.2)
    author[author_variant] = [a.upper() for a in author[author_variant]]
    pub_idx = np.where(edition_no > 0, _sample_by_weight(rng, np.cumsum(np.ones(p.n_publishers)), n),
                       work_publisher[isbn_work])
    publisher = np.array([x.replace("&", "&amp;") for x in publishers[pub_idx]], dtype=object)
    base_year = np.clip(2004 - np.round(rng.exponential(9.0, n_works)), 1900, 2004).astype(np.int64)
    year = np.minimum(base_year[isbn_work] + edition_no * rng.integers(1, 4, n), 2004).astype(object)
    r = rng.random(n)
    year[r < 0.017] = 0
    year[(r >= 0.017) & (r < 0.0172)] = 2030
    year[(r >= 0.0172) & (r < 0.0173)] = 2050
    year = year.astype(str)
    url = np.array([f"http://images.amazon.com/images/P/{i}.01." for i in isbns], dtype=object)
    # a handful of rows are emitted shifted (author glued to the title) by the raw writers;
    # quoted titles are never shifted
    shifted = np.zeros(n, dtype=bool)
    plain = np.flatnonzero(~quoted)
    shifted[rng.choice(plain, size=min(len(plain), max(2, n // 20_000)), replace=False)] = True
    books = pd.DataFrame(
        {
            "isbn": isbns.astype(object),
            "title": title,
            "author": author,
            "year": year,
            "publisher": publisher,
            "image_url_s": url + "THUMBZZZ.jpg",
            "image_url_m": url + "MZZZZZZZ.jpg",
            "image_url_l": url + "LZZZZZZZ.jpg",
        }
    )
    return books, shifted


def _raw_users(rng: np.random.Generator, p: SynthPreset, first_id: int = 1) -> pd.DataFrame:
    n = p.n_users
    loc_idx = rng.integers(0, len(_LOCATIONS), n)
    city = np.array([_LOCATIONS[i][0] for i in range(len(_LOCATIONS))], dtype=object)[loc_idx]
    state = np.array([_LOCATIONS[i][1] for i in range(len(_LOCATIONS))], dtype=object)[loc_idx]
    country = np.array([_LOCATIONS[i][2] for i in range(len(_LOCATIONS))], dtype=object)[loc_idx]
    r = rng.random(n)
    state[r < 0.05] = "n/a"
    city[(r >= 0.05) & (r < 0.07)] = ""
    country[(r >= 0.07) & (r < 0.08)] = ""
    typo = (r >= 0.08) & (r < 0.09)
    country[typo] = [c[:-1] + c[-1] * 2 for c in country[typo]]  # 'usaa', 'spainn'
    location = np.char.add(np.char.add(np.char.add(np.char.add(city.astype(str), ", "), state.astype(str)), ", "),
                           country.astype(str)).astype(object)
    extra = (r >= 0.09) & (r < 0.1)
    location[extra] = [f"{x}," for x in location[extra]]
    age = np.clip(np.round(rng.gamma(6.0, 6.0, n)), 8, 99).astype(np.int64).astype(str).astype(object)
    a = rng.random(n)
    age[a < p.age_missing] = None
    junk = (a >= p.age_missing) & (a < p.age_missing + p.age_junk)
    age[junk] = np.where(rng.random(int(junk.sum())) < 0.5, "0", rng.integers(101, 245, int(junk.sum())).astype(str))
    return pd.DataFrame({"user_id": np.arange(first_id, first_id + n), "location": location, "age": age})


def write_synthetic(result: SynthResult, out: Path | str, fmt: str = "normalized") -> Path:
    """Write a generated data set: the normalised directory, or raw ``bx``/``kaggle`` files.

    Raw layouts get the ground truth too (truth.npz/json) so benchmarks can score imported data.
    """
    out = Path(out)
    if fmt == "normalized":
        return write_dataset(result.dataset, out)
    from bookrec.data import rawfmt

    out.mkdir(parents=True, exist_ok=True)
    if fmt == "bx":
        rawfmt.write_bx(result.raw, out)
    elif fmt == "kaggle":
        rawfmt.write_kaggle(result.raw, out)
    else:
        raise ValueError(f"unknown format {fmt!r} (normalized, bx or kaggle)")
    write_truth(result.dataset.truth, out)
    return out


def write_in_chunks(
    preset: str | SynthPreset,
    out: Path | str,
    seed: int = 42,
    continuous: bool = False,
    readers_per_chunk: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, int], float]:
    """Generate a data set reader chunk by reader chunk and write it as a normalised directory.

    Memory holds the catalogue and one chunk of readers, whatever the number of readers. The
    catalogue is made as :func:`generate` makes it; then the totals are split between chunks
    (ISBN discoveries and activity by each chunk's activity mass, ghost picks by its activity,
    implicit interactions by its size) and each chunk runs the reading, rating and
    normalisation stages on its own readers with its own generator (``seed``, chunk number).
    Differences from one batch: the rating thresholds are the quantiles of the first chunk's
    latent ratings, and the truth leaves out the per-reader arrays (``READER_TRUTH``).

    Returns the manifest's counts and the seconds taken.
    """
    t0 = time.perf_counter()
    p = PRESETS[preset] if isinstance(preset, str) else preset
    size = readers_per_chunk or CHUNKED_READERS.get(p.name, p.n_users)
    rng = np.random.default_rng(seed)
    say = progress or (lambda _msg: None)
    works = _catalogue(rng, p, say)
    books, books_report, truth_work_keys = _normalised_books(rng, p, works)

    firsts = np.arange(0, p.n_users, size)
    sizes = np.diff(np.r_[firsts, p.n_users])

    def chunk_readers(k: int, chunk_p: SynthPreset) -> tuple[np.random.Generator, _Readers]:
        chunk_rng = np.random.default_rng([seed, k])
        return chunk_rng, _readers(chunk_rng, chunk_p, works)

    say("plan")
    # a first pass over the chunks' readers (regenerated later from the same generators) for
    # their activity mass: a reader drawn by activity falls in a chunk with its share of the mass
    mass = np.array([chunk_readers(k, replace(p, n_users=int(n)))[1].activity_w.sum() for k, n in enumerate(sizes)])
    isbn_chunk, rest, ghost, total, implicit = _chunk_plan(rng, p, works, sizes, mass)
    writer = ChunkedDatasetWriter(out, books)
    thresholds = None
    clipped = n_explicit = 0
    users_report: dict[str, int] = {}
    ratings_report: dict[str, int] = {}
    for k, first in enumerate(firsts):
        say(f"readers {k + 1}/{len(firsts)}")
        chunk_p = replace(p, n_users=int(sizes[k]), n_ratings=int(total[k]), n_implicit=int(implicit[k]))
        chunk_rng, readers = chunk_readers(k, chunk_p)
        pref = _preference(works, readers)
        cover_i = np.flatnonzero(isbn_chunk == k)
        cover_u = _discovery_readers(chunk_rng, chunk_p, works, readers, pref, cover_i)
        ru, ri = _reading(chunk_rng, chunk_p, works, readers, pref, cover_u, cover_i, int(rest[k]), int(ghost[k]))
        is_explicit = _explicit_or_implicit(chunk_rng, chunk_p, readers, ru)
        ratings = _ratings(chunk_rng, works, readers, ru, ri, is_explicit, continuous, thresholds)
        thresholds = ratings.thresholds  # the first chunk's quantiles serve every chunk
        clipped += ratings.clip_fraction * is_explicit.sum()
        n_explicit += int(is_explicit.sum())
        raw_ratings = _raw_ratings(chunk_rng, works, ru, ri, ratings.rating, continuous, first_id=int(first) + 1)
        users, u_report = normalize_users(_raw_users(chunk_rng, chunk_p, first_id=int(first) + 1))
        chunk_ratings, r_report = normalize_ratings(raw_ratings, books, users)
        writer.append(chunk_ratings, users)
        users_report = _add_counts(users_report, u_report)
        ratings_report = _add_counts(ratings_report, r_report)

    # the truth's arrays come next: the books table and the last chunk go first
    del books, readers, pref, ru, ri, ratings, raw_ratings, users, chunk_ratings
    say("truth")
    clip_fraction = float(clipped / n_explicit) if n_explicit else 0.0
    truth = _truth(p, seed, continuous, works, None, _Ratings(np.empty(0), thresholds, clip_fraction), truth_work_keys)
    report = {"users": users_report, "books": books_report, "ratings": ratings_report}
    manifest = {"source": "synthetic", "preset": p.name, "seed": seed, "continuous": continuous, "report": report,
                "readers_per_chunk": int(size)}
    counts = writer.close(manifest, truth)
    return counts, time.perf_counter() - t0


def _normalised_books(rng: np.random.Generator, p: SynthPreset, w: _Works) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """The normalised books table, its report, and the truth's work keys of the catalogue."""
    books = slice(None, p.n_books)
    raw_books, _shifted = _raw_books(rng, w.isbns[books], w.isbn_work[books], w.edition_no[books], w.n_works,
                                     w.work_author, w.work_publisher, p)
    normal_books, report = normalize_books(raw_books)
    return normal_books, report, _canonical_work_keys(raw_books, w.isbn_work[books], w.n_works)


def _chunk_plan(rng: np.random.Generator, p: SynthPreset, w: _Works, sizes: np.ndarray,
                mass: np.ndarray) -> tuple[np.ndarray, ...]:
    """The totals split between chunks of readers (``sizes``, activity ``mass``): each ISBN's
    chunk (that of its discovery reader), then per chunk the picks by activity beyond the
    discoveries, the ghost picks among them, all interactions, and the implicit ones."""
    n_active = np.array([max(1, round(int(n) * p.active_user_fraction)) for n in sizes])
    n_isbns = len(w.isbn_work)
    isbn_chunk = _sample_by_weight(rng, np.cumsum(mass), n_isbns)
    rest = n_active + rng.multinomial(p.n_ratings - n_isbns - n_active.sum(), mass / mass.sum())
    ghost = rng.multinomial(_ghost_pick_total(p, w), rest / rest.sum())
    total = rest + np.bincount(isbn_chunk, minlength=len(sizes))
    implicit = rng.multivariate_hypergeometric(total, p.n_implicit)
    return isbn_chunk, rest, ghost, total, implicit


def _add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {k: total.get(k, 0) + v for k, v in more.items()}
