"""The ISBN rules shared by the importer and the API.

Keys are stored in the form the input had (BookCrossing uses ISBN-10); ISBN-10/13 equivalence
is applied only when looking a key up, so stored and published keys never change.
"""

from __future__ import annotations

import re

from stdnum import isbn as _stdnum_isbn
from stdnum.exceptions import ValidationError

# Upper-case, keep only digits and letters: spaces, dashes, dots and quotes go; 'x' becomes 'X'.
NOT_ISBN_CHAR = re.compile(r"[^0-9A-Z]")
# "ISBN 0-316-66634-3" and "ISBN:0316666343" are the ISBN 0316666343
ISBN_PREFIX = re.compile(r"^ISBN(?=[0-9])")


def normalize_isbn_text(text: str) -> str:
    """One ISBN by the importer's rule: `'ISBN 0-316-66634 3'` -> `'0316666343'` (what the API looks up)."""
    return ISBN_PREFIX.sub("", NOT_ISBN_CHAR.sub("", text.upper()))


def isbn_twin(key: str) -> str | None:
    """The other form of a normalised, check-digit-valid ISBN: ISBN-10 <-> 978 ISBN-13, else None."""
    if len(key) not in (10, 13):
        return None
    try:
        if not _stdnum_isbn.is_valid(key):
            return None
        return _stdnum_isbn.to_isbn13(key) if len(key) == 10 else _stdnum_isbn.to_isbn10(key)
    except ValidationError:  # a valid 979 ISBN-13 has no ISBN-10
        return None


def isbn_lookup_keys(text: str) -> list[str]:
    """Keys to try for one ISBN as typed: the normalised key, then its ISBN-10/13 twin if any.

    `'978-0-316-66634-3'` -> `['9780316666343', '0316666343']`; a key whose check digit fails
    gives only itself (BookCrossing has such keys and they stay as they are).
    """
    key = normalize_isbn_text(text)
    twin = isbn_twin(key)
    return [key] if twin is None else [key, twin]
