"""The ISBN rule shared by the importer and the API (standard library only: cheap to import)."""

from __future__ import annotations

import re

# Upper-case, keep only digits and letters: spaces, dashes, dots and quotes go; 'x' becomes 'X'.
NOT_ISBN_CHAR = re.compile(r"[^0-9A-Z]")


def normalize_isbn_text(text: str) -> str:
    """One ISBN by the importer's rule: `'0-316-66634 3'` -> `'0316666343'` (what the API looks up)."""
    return NOT_ISBN_CHAR.sub("", text.upper())
