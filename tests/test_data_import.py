"""Import of both BookCrossing layouts from hand-written fixtures with every documented quirk.

The expected report counts below are worked out by hand from the fixture files
(see tests/fixtures/README.md for the row-by-row list), not copied from program output.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bookrec.cli import app
from bookrec.data.importer import DataImportError, import_path
from bookrec.data.io import load_dataset
from bookrec.data.isbn import isbn_lookup_keys

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def _report(layout: str) -> dict:
    return import_path(FIXTURES / layout).manifest["report"]


def test_bx_fixture_report_counts():
    r = _report("bx")
    assert r["layout"] == "bx"
    books, users, ratings = r["tables"]["books"], r["tables"]["users"], r["tables"]["ratings"]
    assert books["rows_read"] == 23 and books["kept"] == 20
    assert books["repaired"] == {"shifted_columns": 2, "trailing_separator": 1, "backslash_before_quote": 1}
    assert books["rejected"] == {"duplicate_isbn": 1, "empty_isbn": 1, "too_many_fields": 1}
    # invalid: 0440234743X (11 characters) and 0771086176 (its check digit fails)
    assert books["notes"] == {"year_junk": 3, "isbn_changed_by_normalisation": 2, "invalid_isbn_kept": 2}
    assert users["rows_read"] == 13 and users["kept"] == 11
    assert users["rejected"] == {"bad_id": 1, "duplicate": 1} and users["repaired"] == {}
    assert users["notes"] == {"age_missing": 3, "age_junk": 3}
    assert ratings["rows_read"] == 19 and ratings["kept"] == 13
    assert ratings["repaired"] == {"trailing_separator": 1}
    assert ratings["rejected"] == {"bad_rating": 2, "bad_user_id": 1, "duplicate": 1, "empty_isbn": 1, "too_few_fields": 1}
    assert ratings["notes"] == {"explicit": 9, "implicit": 4, "rating_not_integer": 0, "isbn_not_in_books": 2,
                                "isbn_matched_by_twin": 0, "isbn_leading_zero_restored": 0, "user_not_in_users": 1}
    assert r["ratings_isbn_not_in_books"] == 2
    # every row read is either kept or rejected (repaired rows are kept)
    for t in (books, users, ratings):
        assert t["rows_read"] == t["kept"] + sum(t["rejected"].values())


def test_kaggle_fixture_report_counts():
    r = _report("kaggle")
    assert r["layout"] == "kaggle"
    books, users, ratings = r["tables"]["books"], r["tables"]["users"], r["tables"]["ratings"]
    assert books["rows_read"] == 16 and books["kept"] == 13
    assert books["repaired"] == {"shifted_columns": 2, "trailing_separator": 1}
    assert books["rejected"] == {"duplicate_isbn": 1, "empty_isbn": 1, "too_many_fields": 1}
    # invalid: 0679425601 and 0771086176 (their check digits fail)
    assert books["notes"] == {"year_junk": 2, "isbn_changed_by_normalisation": 2, "invalid_isbn_kept": 2}
    assert users["rows_read"] == 10 and users["kept"] == 8
    assert users["rejected"] == {"bad_id": 1, "duplicate": 1} and users["notes"] == {"age_missing": 2, "age_junk": 2}
    assert ratings["rows_read"] == 13 and ratings["kept"] == 9
    assert ratings["repaired"] == {"trailing_separator": 1}
    assert ratings["rejected"] == {"bad_rating": 1, "bad_user_id": 1, "duplicate": 1, "too_few_fields": 1}
    assert ratings["notes"] == {"explicit": 7, "implicit": 2, "rating_not_integer": 0, "isbn_not_in_books": 2,
                                "isbn_matched_by_twin": 0, "isbn_leading_zero_restored": 0, "user_not_in_users": 0}
    for t in (books, users, ratings):
        assert t["rows_read"] == t["kept"] + sum(t["rejected"].values())


def test_bx_fixture_values():
    d = import_path(FIXTURES / "bx")
    books = d.books.set_index("isbn")
    # HTML entities decoded, backslash-escaped quotes unescaped, latin-1 decoded
    assert "1918 & the Search" in books.loc["0374157065", "title"]
    assert books.loc["0393045218", "publisher"] == "W. W. Norton & Company"
    assert books.loc["0887841740", "title"] == 'The "Middle" Stories'
    assert books.loc["0771086176", "author"] == "Antoine de Saint-Exupéry"
    # shifted row repaired: author split from the title, year/publisher/urls moved back
    dk = books.loc["078946697X"]
    assert dk["title"] == "DK Readers: Creating the X-Men, How It All Began (Level 4: Proficient Readers)"
    assert (dk["author"], dk["year"], dk["publisher"]) == ("Michael Teitelbaum", 2000, "DK Publishing Inc")
    assert dk["image_url"].endswith("078946697X.01.MZZZZZZZ.jpg")
    # a publisher ending in a backslash: read without escapes, the row has the right fields
    win = books.loc["0312970242"]
    assert (win["author"], win["year"], win["publisher"]) == ("Bill Gates", 1998, "Microsoft Press\\")
    # junk years -> null; ISBNs normalised (case, spaces, dashes); the first of duplicates kept
    assert books.loc[["0393045218", "0399135782", "0425176428"], "year"].isna().all()
    assert "074322678X" in books.index and "0771086176" in books.index
    assert books.loc["0679425608", "title"].startswith("Under the Black Flag: The Romance")
    # editions of one work share the work key (case and punctuation differ)
    assert books.loc["0679425608", "work_key"] == books.loc["0156005646", "work_key"]
    assert books.loc["0679425608", "work_key"] != books.loc["9780679425601", "work_key"]
    users = d.users.set_index("user_id")
    assert users.loc[4, ["city", "country"]].tolist() == ["porto", "portugal"] and pd.isna(users.loc[4, "state"])
    assert users.loc[10, "country"] == "usa" and users.loc[9, "city"] == "münchen"
    assert users.loc[7, ["city", "state", "country"]].isna().all()
    assert users.loc[[1, 5, 6, 8, 9], "age"].isna().all() and users.loc[2, "age"] == 18
    ratings = d.ratings.set_index(["user_id", "isbn"])["rating"]
    assert ratings.loc[(2, "074322678X")] == 8.0  # first of the two duplicates
    assert ratings.loc[(3, "0679425608")] == 7.0  # ' 0-679-42560-8 ' normalised
    assert ratings.loc[(7, "0887841740")] == 6.0  # trailing separator repaired


def test_kaggle_fixture_values():
    d = import_path(FIXTURES / "kaggle")
    books = d.books.set_index("isbn")
    assert books.loc["0887841740", "title"] == 'The "Middle" Stories'
    assert books.loc["0771086176", "author"] == "Antoine de Saint-Exupéry"
    # publisher name that sat in the year column moved back
    dk = books.loc["078946697X"]
    assert (dk["author"], dk["year"], dk["publisher"]) == ("Michael Teitelbaum", 2000, "DK Publishing Inc")
    assert books.loc["2070426769", "publisher"] == "Gallimard" and books.loc["2070426769", "year"] == 2003
    users = d.users.set_index("user_id")
    assert users.loc[2, "age"] == 18 and pd.isna(users.loc[1, "age"]) and pd.isna(users.loc[5, "age"])


def test_zip_input_and_idempotent_output(tmp_path):
    archive = tmp_path / "BX-CSV-Dump.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((FIXTURES / "bx").iterdir()):
            zf.write(f, f"BX-CSV-Dump/{f.name}")
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        res = runner.invoke(app, ["data", "import", str(archive), "--out", str(out), "--json"])
        assert res.exit_code == 0, res.output
        outs.append(out)
    report = json.loads(res.output)
    assert report["tables"]["books"]["kept"] == 20
    for name in ("ratings.parquet", "books.parquet", "users.parquet"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    folder = load_dataset(outs[0])
    direct = import_path(FIXTURES / "bx")
    pd.testing.assert_frame_equal(folder.books, direct.books)


def _copy(layout: str, tmp_path: Path) -> Path:
    dest = tmp_path / layout
    shutil.copytree(FIXTURES / layout, dest)
    return dest


def _import_fails(path: Path, tmp_path: Path, *expected: str) -> None:
    res = runner.invoke(app, ["data", "import", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no unexpected exception
    flat = " ".join(res.output.split())
    for text in expected:
        assert text in flat, res.output
    assert not (tmp_path / "out" / "ratings.parquet").exists()


def test_missing_path_is_a_clear_error(tmp_path):
    _import_fails(tmp_path / "nope.zip", tmp_path, "does not exist")


def test_missing_file_is_a_clear_error(tmp_path):
    d = _copy("bx", tmp_path)
    (d / "BX-Users.csv").unlink()
    _import_fails(d, tmp_path, "BX-Users.csv", "missing")


def test_not_bookcrossing_is_a_clear_error(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "data.csv").write_text("a,b\n1,2\n")
    _import_fails(d, tmp_path, "not a BookCrossing copy")


def test_wrong_header_is_a_clear_error(tmp_path):
    d = _copy("kaggle", tmp_path)
    (d / "Ratings.csv").write_text("user,item,score\n1,2,3\n")
    _import_fails(d, tmp_path, "Ratings.csv", "unexpected header")


def test_empty_file_is_a_clear_error(tmp_path):
    d = _copy("bx", tmp_path)
    (d / "BX-Book-Ratings.csv").write_bytes(b"")
    _import_fails(d, tmp_path, "BX-Book-Ratings.csv", "empty")


def test_truncated_zip_is_a_clear_error(tmp_path):
    archive = tmp_path / "bx.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((FIXTURES / "bx").iterdir()):
            zf.write(f, f.name)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _import_fails(archive, tmp_path, "zip")


def test_file_cut_mid_row_keeps_the_rest(tmp_path):
    d = _copy("bx", tmp_path)
    ratings = (d / "BX-Book-Ratings.csv").read_bytes()
    cut = ratings.rstrip(b"\n")[:-6]  # the last row loses its closing quote and rating
    (d / "BX-Book-Ratings.csv").write_bytes(cut)
    res = runner.invoke(app, ["data", "import", str(d), "--out", str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    table = json.loads(res.output)["tables"]["ratings"]
    # the fixture's last row ('10', '', '5') was rejected for its empty ISBN; now it is a truncated row
    assert table["rejected"].get("truncated_last_row") == 1 and "empty_isbn" not in table["rejected"]
    assert table["kept"] == 13


def test_stats_on_missing_directory_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a directory" in " ".join(res.output.split())


def test_import_error_type_for_library_callers(tmp_path):
    with pytest.raises(DataImportError):
        import_path(tmp_path / "missing")


def test_isbn_lookup_keys_pair_isbn10_and_isbn13():
    assert isbn_lookup_keys("0316666343") == ["0316666343", "9780316666343"]
    assert isbn_lookup_keys("978-0-316-66634-3") == ["9780316666343", "0316666343"]
    assert isbn_lookup_keys(" 0-8044-2957-x ") == ["080442957X", "9780804429573"]
    # the example: a 978 ISBN-13 whose ISBN-10 is the BookCrossing key
    assert isbn_lookup_keys("9786781082299") == ["9786781082299", "6781082299"]


def test_isbn_lookup_keys_leave_failing_check_digits_and_979_alone():
    assert isbn_lookup_keys("0316666344") == ["0316666344"]
    assert isbn_lookup_keys("9780316666344") == ["9780316666344"]
    assert isbn_lookup_keys("979-10-90636-07-1") == ["9791090636071"]  # valid, but has no ISBN-10
    assert isbn_lookup_keys("0.000000") == ["0000000"]


def test_rating_on_an_isbn13_joins_the_isbn10_book(tmp_path):
    d = _copy("bx", tmp_path)
    twin = isbn_lookup_keys("0195153448")[1]
    with open(d / "BX-Book-Ratings.csv", "a", encoding="latin-1") as f:
        f.write(f'"11";"{twin}";"7"\n"11";"9780316666344";"2"\n')
    dataset = import_path(d)
    ratings = dataset.ratings.set_index(["user_id", "isbn"])["rating"]
    assert ratings.loc[(11, "0195153448")] == 7.0
    assert (11, twin) not in ratings.index
    assert ratings.loc[(11, "9780316666344")] == 2.0  # check digit fails: kept as it is
    notes = dataset.manifest["report"]["tables"]["ratings"]["notes"]
    assert notes["isbn_matched_by_twin"] == 1 and notes["isbn_not_in_books"] == 3
    # the books keep the form they were published in
    assert "0195153448" in set(dataset.books["isbn"]) and twin not in set(dataset.books["isbn"])
