"""Malformed input to the real `bookrec data import` process: one error line and exit code 2,
or (UTF-16/32) the same tables as the latin-1/UTF-8 original; never a traceback, never a
half-written output directory."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bookrec.data.importer import import_path
from bookrec.data.io import MANIFEST_FILE, load_dataset

FIXTURES = Path(__file__).parent / "fixtures"
BX_RATINGS = "BX-Book-Ratings.csv"


def run_import(src: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    return subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "data", "import", str(src), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=out.parent,
        env=clean | env,
    )


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def assert_refused(proc: subprocess.CompletedProcess, out: Path, *expected: str) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() and leftovers(out) == []
    return lines[0]


def copy_fixture(layout: str, tmp_path: Path) -> Path:
    dest = tmp_path / f"src-{layout}"
    shutil.copytree(FIXTURES / layout, dest)
    return dest


def zip_folder(folder: Path, archive: Path, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return archive


def random_bytes(n: int) -> bytes:
    return random.Random(20).randbytes(n)


# ---- refused inputs ---------------------------------------------------------------------


def case_random_bytes_file(tmp: Path) -> Path:
    path = tmp / "BX-CSV-Dump.zip"
    path.write_bytes(random_bytes(64 * 1024))
    return path


def case_random_bytes_ratings(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    (src / BX_RATINGS).write_bytes(random_bytes(64 * 1024))
    return src


def case_random_bytes_in_zip(tmp: Path) -> Path:
    src = copy_fixture("kaggle", tmp)
    (src / "Books.csv").write_bytes(random_bytes(200 * 1024))
    return zip_folder(src, tmp / "kaggle.zip")


def case_header_only_ratings(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    (src / BX_RATINGS).write_text('"User-ID";"ISBN";"Book-Rating"\n', encoding="latin-1")
    return src


def case_header_only_without_newline(tmp: Path) -> Path:
    src = copy_fixture("kaggle", tmp)
    (src / "Ratings.csv").write_text("User-ID,ISBN,Book-Rating", encoding="utf-8")
    return src


def case_empty_ratings(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    (src / BX_RATINGS).write_bytes(b"")
    return src


def case_no_usable_rating(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    (src / BX_RATINGS).write_text('"User-ID";"ISBN";"Book-Rating"\n"x";"0195153448";"5"\n"";"0195153448";"4"\n')
    return src


def case_truncated_zip(tmp: Path) -> Path:
    archive = zip_folder(FIXTURES / "bx", tmp / "whole.zip")
    data = archive.read_bytes()
    cut = tmp / "BX-CSV-Dump.zip"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def case_damaged_zip_data(tmp: Path) -> Path:
    archive = zip_folder(FIXTURES / "bx", tmp / "BX-CSV-Dump.zip")
    data = bytearray(archive.read_bytes())
    for i in range(80, 240):  # inside the first member's deflate stream
        data[i] ^= 0x55
    archive.write_bytes(bytes(data))
    return archive


def case_zip_bomb(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    with open(src / BX_RATINGS, "ab") as f:
        f.write(b'"1";"0195153448";"0"\n' * 300_000)  # 6.3 MB that deflates several hundredfold
    return zip_folder(src, tmp / "bomb.zip")


def case_bzip2_member(tmp: Path) -> Path:
    return zip_folder(FIXTURES / "bx", tmp / "bz.zip", compression=zipfile.ZIP_BZIP2)


def case_encrypted_member(tmp: Path) -> Path:
    archive = zip_folder(FIXTURES / "bx", tmp / "BX-CSV-Dump.zip")
    data = bytearray(archive.read_bytes())
    entry = data.find(b"PK\x01\x02")  # the first central directory entry; its flags follow at +8
    data[entry + 8] |= 0x1
    archive.write_bytes(bytes(data))
    return archive


def case_utf16_cut_mid_character(tmp: Path) -> Path:
    src = copy_fixture("bx", tmp)
    users = src / "BX-Users.csv"
    users.write_bytes(users.read_bytes().decode("latin-1").encode("utf-16")[:-1])
    return src


def case_no_line_break(tmp: Path) -> Path:
    src = copy_fixture("kaggle", tmp)
    (src / "Users.csv").write_bytes(b"A" * 200_000)
    return src


REFUSED = {
    "random_bytes_file": (case_random_bytes_file, {}, ["neither a zip archive nor a folder"]),
    "random_bytes_ratings": (case_random_bytes_ratings, {}, [BX_RATINGS, "binary data"]),
    "random_bytes_in_zip": (case_random_bytes_in_zip, {}, ["Books.csv", "binary data"]),
    "header_only_ratings": (case_header_only_ratings, {}, [BX_RATINGS, "no rows"]),
    "header_only_without_newline": (case_header_only_without_newline, {}, ["Ratings.csv", "no rows"]),
    "empty_ratings": (case_empty_ratings, {}, [BX_RATINGS, "empty"]),
    "no_usable_rating": (case_no_usable_rating, {}, [BX_RATINGS, "none of its 2 rows"]),
    "truncated_zip": (case_truncated_zip, {}, ["truncated", "zip"]),
    "damaged_zip_data": (case_damaged_zip_data, {}, ["damaged"]),
    "zip_bomb_ratio": (case_zip_bomb, {}, [BX_RATINGS, "BOOKREC_IMPORT_MAX_RATIO=100"]),
    "expanded_cap_zip": (case_zip_bomb, {"BOOKREC_IMPORT_MAX_RATIO": "100000", "BOOKREC_IMPORT_MAX_EXPANDED_MB": "5"},
                         ["BOOKREC_IMPORT_MAX_EXPANDED_MB=5", "expand to"]),
    "expanded_cap_folder": (lambda tmp: copy_fixture("bx", tmp), {"BOOKREC_IMPORT_MAX_EXPANDED_MB": "0.005"},
                            ["BOOKREC_IMPORT_MAX_EXPANDED_MB=0.005"]),
    "bzip2_member": (case_bzip2_member, {}, ["bzip2", "deflated"]),
    "encrypted_member": (case_encrypted_member, {}, [BX_RATINGS, "encrypted"]),
    "utf16_cut_mid_character": (case_utf16_cut_mid_character, {}, ["BX-Users.csv", "UTF-16"]),
    "no_line_break": (case_no_line_break, {}, ["Users.csv", "no line break"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_input_is_refused_with_one_line(case, tmp_path):
    build, env, expected = REFUSED[case]
    src = build(tmp_path)
    out = tmp_path / "imported"
    message = assert_refused(run_import(src, out, **env), out, *expected)
    if case == "truncated_zip":
        assert "neither" not in message


def test_a_failed_import_leaves_the_previous_output_intact(tmp_path):
    out = tmp_path / "imported"
    assert run_import(FIXTURES / "bx", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_import(case_header_only_ratings(tmp_path), out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(out) == []


def test_reimport_replaces_the_output_in_place(tmp_path):
    out = tmp_path / "imported"
    assert run_import(FIXTURES / "kaggle", out).returncode == 0
    assert load_dataset(out).source == "kaggle"
    assert run_import(FIXTURES / "bx", out).returncode == 0
    assert load_dataset(out).source == "bx" and (out / MANIFEST_FILE).is_file()
    assert leftovers(out) == []


# ---- inputs that import ------------------------------------------------------------------


def test_backslash_before_carriage_return_is_a_counted_row(tmp_path):
    src = copy_fixture("bx", tmp_path)
    with open(src / BX_RATINGS, "ab") as f:
        f.write(b'11\\\r;5\n"11";1\\\r2;5;7\n"12";"0195153448\\\r";"3"\n')
    proc = run_import(src, tmp_path / "imported")
    assert proc.returncode == 0, proc.stderr
    table = json.loads(proc.stdout)["tables"]["ratings"]
    fixture = {"bad_rating": 2, "bad_user_id": 1, "duplicate": 1, "empty_isbn": 1, "too_few_fields": 1}
    assert table["rows_read"] == 19 + 3
    # the first two new rows split into 2 and 4 fields; the third is whole once the escaped CR goes
    assert table["rejected"] == fixture | {"too_few_fields": 2, "too_many_fields": 1}
    assert table["kept"] == 13 + 1
    ratings = load_dataset(tmp_path / "imported").ratings.set_index(["user_id", "isbn"])["rating"]
    assert ratings.loc[(12, "0195153448")] == 3.0


# with and without a byte-order mark, both byte orders
ENCODINGS = ["utf-16", "utf-16-be", "utf-32", "utf-32-le"]


@pytest.mark.parametrize("layout,original", [("bx", "latin-1"), ("kaggle", "utf-8")])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wide_encodings_import_as_their_original(layout, original, encoding, tmp_path):
    src = copy_fixture(layout, tmp_path)
    for f in src.iterdir():
        f.write_bytes(f.read_bytes().decode(original).encode(encoding))
    wide = tmp_path / "wide"
    proc = run_import(src, wide)
    assert proc.returncode == 0, proc.stderr
    got, want = load_dataset(wide), import_path(FIXTURES / layout)
    for table in ("ratings", "books", "users"):
        pd.testing.assert_frame_equal(getattr(got, table), getattr(want, table))
    assert got.manifest["report"] == want.manifest["report"]
    assert not got.books["title"].str.contains("\x00", regex=False).any()
