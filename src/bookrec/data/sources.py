"""The importer's input: which three files, how big they may get, and their text as UTF-8.

A zip member or a file is streamed into pyarrow, never held whole in memory. Sizes are checked
against the caps before anything is read, because a zip states the expanded size of each
member and :mod:`zipfile` never returns more than that. The encoding is detected from the
first bytes, so a UTF-16/32 copy reads as the same text as its latin-1 or UTF-8 twin. Byte
text (either layout) is read as UTF-8 where it is valid UTF-8 and as Windows-1252 elsewhere,
byte by byte: the dump is latin-1 with UTF-8 fragments, and copies are re-encoded as UTF-8.
Whatever makes the input unusable raises :class:`DataImportError` with one line for the user.
"""

from __future__ import annotations

import codecs
import io
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

TABLES = ("ratings", "books", "users")
LAYOUTS = {
    "bx": {"ratings": "bx-book-ratings.csv", "books": "bx-books.csv", "users": "bx-users.csv"},
    "kaggle": {"ratings": "ratings.csv", "books": "books.csv", "users": "users.csv"},
}
PRETTY_NAMES = {
    "bx": {"ratings": "BX-Book-Ratings.csv", "books": "BX-Books.csv", "users": "BX-Users.csv"},
    "kaggle": {"ratings": "Ratings.csv", "books": "Books.csv", "users": "Users.csv"},
}
# A byte that is not part of valid UTF-8 is read as Windows-1252 (the superset of latin-1 that
# editors of that era wrote: curly quotes, dashes), and as latin-1 where 1252 leaves it undefined.
MIXED_ERRORS = "bookrec-cp1252"

MB = 1 << 20
HEAD_BYTES = 64 * 1024
CHUNK_BYTES = 4 * MB
TAIL_CHARS = 64 * 1024
# small members compress well without being bombs (a header-only file, a few repeated rows)
RATIO_FLOOR_BYTES = MB
# bzip2 and lzma decompress a whole compressed chunk at once, unbounded; deflate takes a limit
READABLE_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
)


def _cp1252_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    byte = exc.object[exc.start:exc.start + 1]
    try:
        return byte.decode("cp1252"), exc.start + 1
    except UnicodeDecodeError:
        return byte.decode("latin-1"), exc.start + 1


codecs.register_error(MIXED_ERRORS, _cp1252_fallback)


class DataImportError(Exception):
    """The input cannot be used (missing file, not a BookCrossing layout, unreadable archive)."""


@dataclass(frozen=True)
class Limits:
    """Decompression caps (settings ``import_max_expanded_mb`` and ``import_max_ratio``)."""

    max_expanded_mb: float
    max_ratio: float

    @classmethod
    def from_settings(cls) -> "Limits":
        from bookrec.config import Settings

        s = Settings()
        return cls(max_expanded_mb=s.import_max_expanded_mb, max_ratio=s.import_max_ratio)

    @property
    def max_expanded_bytes(self) -> int:
        return int(self.max_expanded_mb * MB)


@dataclass
class Member:
    """One of the three CSV files: its user-facing name, expanded size and how to open it."""

    name: str
    size: int
    open: Callable[[], BinaryIO]


@dataclass
class Budget:
    """Bytes the three files may still expand to (the cap, counted while reading)."""

    left: int


@dataclass(frozen=True)
class Encoding:
    codec: str
    errors: str
    label: str


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB"


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


def _zip_members(zf: zipfile.ZipFile, where: str, limits: Limits) -> tuple[str, dict[str, Member]]:
    infos = {Path(i.filename).name.lower(): i for i in zf.infolist() if not i.is_dir() and "__MACOSX" not in i.filename}
    layout, wanted = _choose_layout(infos, where)
    members = {}
    for table, key in wanted.items():
        info = infos[key]
        name = PRETTY_NAMES[layout][table]
        if info.flag_bits & 0x1:
            raise DataImportError(f"{where}: {name} is encrypted; extract it with its password and import the folder")
        if info.compress_type not in READABLE_COMPRESSION:
            raise DataImportError(
                f"{where}: {name} is compressed with {zipfile.compressor_names.get(info.compress_type, info.compress_type)}; "
                f"only stored or deflated members are read "
                f"(re-create the zip with the default compression)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
            raise DataImportError(
                f"{where}: {name} would expand {ratio:,.0f}x ({_mb(info.compress_size)} to {_mb(info.file_size)}), "
                f"more than BOOKREC_IMPORT_MAX_RATIO={limits.max_ratio:g}; refusing a possible zip bomb"
            )
        members[table] = Member(name, info.file_size, lambda info=info: zf.open(info))
    return layout, members


def _folder_members(path: Path) -> tuple[str, dict[str, Member]]:
    names: dict[str, Path] = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and len(f.relative_to(path).parts) <= 2:
            names.setdefault(f.name.lower(), f)
    layout, wanted = _choose_layout(names, str(path))
    members = {}
    for table, key in wanted.items():
        f = names[key]
        members[table] = Member(PRETTY_NAMES[layout][table], f.stat().st_size, lambda f=f: open(f, "rb"))
    return layout, members


def _check_total(members: dict[str, Member], where: str, limits: Limits, zipped: bool) -> None:
    total = sum(m.size for m in members.values())
    if total > limits.max_expanded_bytes:
        what = "would expand to" if zipped else "hold"
        raise DataImportError(
            f"{where}: the three CSV files {what} {_mb(total)}, more than "
            f"BOOKREC_IMPORT_MAX_EXPANDED_MB={limits.max_expanded_mb:g}"
        )


def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


@contextmanager
def open_sources(path: Path, limits: Limits) -> Iterator[tuple[str, dict[str, Member]]]:
    """Detect the layout of a zip or folder and yield ``(layout, {table: Member})``.

    The size caps are checked here, before any member is read.
    """
    path = Path(path)
    if not path.exists():
        raise DataImportError(f"{path} does not exist")
    if path.is_dir():
        layout, members = _folder_members(path)
        _check_total(members, str(path), limits, zipped=False)
        yield layout, members
        return
    if not zipfile.is_zipfile(path):
        if _looks_like_zip(path):
            raise DataImportError(f"{path} is a truncated or damaged zip archive (its table of contents is missing)")
        raise DataImportError(f"{path} is neither a zip archive nor a folder")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        raise DataImportError(f"{path}: the zip archive is damaged or truncated ({exc})") from exc
    with zf:
        layout, members = _zip_members(zf, str(path), limits)
        _check_total(members, str(path), limits, zipped=True)
        yield layout, members


def _nul_share(head: bytes, offset: int, step: int) -> float:
    sample = head[offset::step]
    return sample.count(0) / max(len(sample), 1)


def detect_encoding(head: bytes) -> Encoding:
    """The encoding of a file from its first bytes: a byte-order mark, else the NUL pattern of
    UTF-16/32 text, else UTF-8 with Windows-1252 for the bytes that are not UTF-8 (either layout)."""
    for bom, codec, label in _BOMS:
        if head.startswith(bom):
            errors = MIXED_ERRORS if label == "UTF-8" else "strict"
            return Encoding(codec, errors, label)
    usable = head[: len(head) - len(head) % 4]
    if len(usable) >= 8:
        zero = [_nul_share(usable, i, 4) for i in range(4)]
        mostly, rarely = (lambda x: x > 0.9), (lambda x: x < 0.1)
        if rarely(zero[0]) and all(map(mostly, zero[1:])):
            return Encoding("utf-32-le", "strict", "UTF-32")
        if all(map(mostly, zero[:3])) and rarely(zero[3]):
            return Encoding("utf-32-be", "strict", "UTF-32")
        if rarely(zero[0]) and rarely(zero[2]) and mostly(zero[1]) and mostly(zero[3]):
            return Encoding("utf-16-le", "strict", "UTF-16")
        if mostly(zero[0]) and mostly(zero[2]) and rarely(zero[1]) and rarely(zero[3]):
            return Encoding("utf-16-be", "strict", "UTF-16")
    return Encoding("utf-8", MIXED_ERRORS, "UTF-8 or Windows-1252")


class Utf8Stream(io.RawIOBase):
    """A member's text re-encoded as UTF-8, chunk by chunk, for pyarrow's CSV reader.

    Problems (damaged zip data, undecodable bytes, NUL characters, a cap exceeded) end the
    stream and are kept in :attr:`error`; exceptions raised here would reach the user through
    pyarrow as an unrelated error.
    """

    def __init__(self, raw: BinaryIO, head: bytes, member: Member, encoding: Encoding, budget: Budget):
        self._raw = raw
        self._first = head
        self._member = member
        self._encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding.codec)(errors=encoding.errors)
        self._budget = budget
        self._pending = memoryview(b"")
        self._done = False
        self.tail = ""
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()

    def _stop(self, message: str) -> None:
        self.error = message
        self._done = True
        self._pending = memoryview(b"")

    def _next_chunk(self) -> bytes | None:
        if self._first:
            chunk, self._first = self._first, b""
            return chunk
        try:
            return self._raw.read(CHUNK_BYTES)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            self._stop(f"{self._member.name}: the data is damaged or truncated ({exc})")
            return None

    def _fill(self) -> None:
        chunk = self._next_chunk()
        if chunk is None:
            return
        self._budget.left -= len(chunk)
        if self._budget.left < 0:
            self._stop(f"{self._member.name}: the input grew past BOOKREC_IMPORT_MAX_EXPANDED_MB while reading")
            return
        final = not chunk
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            self._stop(f"{self._member.name} looks like {self._encoding.label} but does not decode as it ({exc.reason})")
            return
        if "\x00" in text:
            self._stop(f"{self._member.name} holds binary data (NUL characters), not CSV text")
            return
        if text:
            self.tail = (self.tail + text)[-TAIL_CHARS:] if len(text) < TAIL_CHARS else text[-TAIL_CHARS:]
            self._pending = memoryview(text.encode("utf-8"))
        self._done = final

    def readinto(self, buffer) -> int:
        while not len(self._pending) and not self._done:
            self._fill()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


@dataclass
class OpenedText:
    """A member ready to parse: its header line (decoded) and the UTF-8 stream of the whole file."""

    header_line: str
    stream: Utf8Stream
    header_only: bool  # no line break after the header
    no_rows: bool  # nothing but the header and blank lines


def _split_header(head_text: str, name: str, complete: bool) -> tuple[str, bool, str]:
    """The first line, whether it is all the file holds, and the rest of ``head_text``."""
    line, newline, rest = head_text.partition("\n")
    if not newline and not complete:
        raise DataImportError(f"{name}: no line break in its first {HEAD_BYTES // 1024} KB; not a BookCrossing CSV file")
    return line, not newline, rest


def _read_head(member: Member) -> tuple[BinaryIO, bytes]:
    try:
        raw = member.open()
        return raw, raw.read(HEAD_BYTES)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise DataImportError(f"{member.name}: cannot be read, the data is damaged or truncated ({exc})") from exc


def open_text(member: Member, budget: Budget) -> OpenedText:
    """Open ``member``, detect its encoding and read its header line (close ``.stream`` after use)."""
    raw, head = _read_head(member)
    try:
        encoding = detect_encoding(head)
        try:
            head_text = codecs.getincrementaldecoder(encoding.codec)(errors=encoding.errors).decode(head, False)
        except UnicodeDecodeError as exc:
            raise DataImportError(f"{member.name} looks like {encoding.label} but does not decode as it ({exc.reason})") from exc
        if "\x00" in head_text:
            raise DataImportError(f"{member.name} holds binary data (NUL characters), not CSV text")
        complete = len(head) < HEAD_BYTES
        line, header_only, rest = _split_header(head_text, member.name, complete)
    except DataImportError:
        raw.close()
        raise
    no_rows = header_only or (complete and not rest.strip())
    return OpenedText(line, Utf8Stream(raw, head, member, encoding, budget), header_only, no_rows)
