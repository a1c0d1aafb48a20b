"""Docs that quote the code: docs/DEPLOYMENT.md's preset table (bookrec.batch.presets.PRESETS) and
the readers and books the README's quick start suggests trying (its seed-42 `small` data)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bookrec.batch.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
SCRIPT = ROOT / "scripts" / "preset_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("preset_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def guide_rows() -> dict[str, list[str]]:
    """The rows of the table between the markers, by preset name."""
    script = load_script()
    block = script.current_block(GUIDE)
    rows = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_the_guide_shows_the_generated_table():
    script = load_script()
    assert script.current_block(GUIDE) == script.block(), "run: python scripts/preset_table.py --write"
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_figure_of_a_preset_matches_the_code(name):
    """Read the doc's table on its own, so a wrong formatter cannot agree with itself."""
    preset = PRESETS[name]
    rows = guide_rows()
    assert set(rows) == set(PRESETS)
    _, sweeps, chains, factors, kept, top_n = rows[name]
    match = re.fullmatch(r"([\d,]+) burn-in \+ ([\d,]+)(?:, thinned by (\d+))?", sweeps)
    assert match, sweeps
    assert number(match.group(1)) == preset.burn_in
    assert number(match.group(2)) == preset.n_samples
    assert int(match.group(3) or 1) == preset.thin
    assert int(chains) == preset.n_chains
    assert int(factors) == preset.n_factors
    assert int(kept) == preset.max_kept_samples
    assert int(top_n) == preset.top_n


def test_a_changed_preset_is_caught(monkeypatch):
    script = load_script()
    changed = dict(PRESETS)
    changed["development"] = type(PRESETS["development"])(**{**PRESETS["development"].__dict__, "n_factors": 7})
    monkeypatch.setattr(script, "PRESETS", changed)
    assert script.current_block(GUIDE) != script.block()


@pytest.fixture(scope="module")
def quickstart_data(tmp_path_factory):
    import pandas as pd

    out = tmp_path_factory.mktemp("quickstart") / "data"
    result = subprocess.run([sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", "small", "--seed", "42",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return pd.read_parquet(out / "ratings.parquet"), pd.read_parquet(out / "books.parquet"), pd.read_parquet(out / "users.parquet")


def try_first() -> str:
    match = re.search(r"\*\*Try first:\*\*(.*?)\n- \*\*Stop:", README, flags=re.S)
    assert match, "the README's quick start has no 'Try first' item"
    return match.group(1)


def test_the_readers_the_readme_suggests_exist_with_the_data_it_describes(quickstart_data):
    ratings, _, users = quickstart_data
    text = " ".join(try_first().split())
    shown = re.findall(r"`(\d+)` is `(\w+)` \(([^)]*)\)", text)
    assert {basis for _, basis, _ in shown} == {"personal", "folded_in", "similar_reading", "popular"}
    for reader, basis, note in shown:
        assert int(reader) in set(users["user_id"])
        mine = ratings[ratings["user_id"] == int(reader)]
        explicit = int((mine["rating"] > 0).sum())
        if basis == "popular":
            assert len(mine) == 0 and "nothing read" in note
        elif basis == "similar_reading":
            assert explicit == 0 and f"{len(mine)} books read" in note
        else:
            assert re.search(rf"\b{explicit} ratings?\b", note), (reader, note, explicit)


def test_the_isbns_the_readme_suggests_are_the_most_read_books(quickstart_data):
    ratings, books, _ = quickstart_data
    text = " ".join(try_first().split())
    shown = re.findall(r"`(\d{9}[\dX])` \(\*([^*]+)\*\)", text)
    assert len(shown) == 3
    titles = dict(zip(books["isbn"], books["title"]))
    most_read = list(ratings.groupby("isbn").size().sort_values(ascending=False, kind="stable").index[:3])
    assert [isbn for isbn, _ in shown] == most_read
    for isbn, title in shown:
        assert titles[isbn] == title
    for isbn in re.findall(r'"isbn": "(\w+)"', text):
        assert isbn in titles
