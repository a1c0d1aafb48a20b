"""The README stays a short guide for users, and the docs speak of the system as it is.

The README has at most 220 lines; no Markdown file speaks of sessions (a code identifier such as
pytest's `scope="session"` is fine); the relative links of the README and docs/ lead to files and
headings that exist; every `BOOKREC_*` variable they name is one the settings read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bookrec.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIPPED_DIRS = {".venv", ".git", "var", "node_modules", "artifacts", ".pytest_cache"}


def markdown_files() -> list[Path]:
    found = []
    for path in sorted(ROOT.rglob("*.md")):
        if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
            found.append(path)
    return found


def prose(text: str) -> str:
    """The text without code spans and fenced blocks, where identifiers live."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move details to docs/"


def test_the_readme_keeps_the_two_quick_start_commands():
    text = README.read_text()
    assert "bash scripts/run.sh     # install, prepare data, train, publish, serve on http://127.0.0.1:8000" in text
    assert "bash scripts/test.sh    # install (with test tools) and run the tests" in text


def test_the_readme_has_the_exit_code_table():
    rows = re.findall(r"^\| ([0-3]) \| ([^|]+) \|", README.read_text(), flags=re.M)
    assert [(code, meaning.strip()) for code, meaning in rows] == [
        ("0", "done"), ("1", "failure"), ("2", "bad input or usage"), ("3", "refused to publish")]


def test_the_word_session_finds_no_markdown_prose():
    assert markdown_files(), "no Markdown files found"
    offenders = []
    for path in markdown_files():
        for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
            if re.search(r"session", line, flags=re.I):
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("path", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_lead_somewhere(path):
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: {target} does not exist"
        if fragment and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", prose_headings(linked.read_text()), flags=re.M)
            assert fragment in {anchor(heading) for heading in headings}, f"{path.name}: no heading for {target}"


def prose_headings(text: str) -> str:
    """The text without fenced blocks (a `# comment` in a shell block is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_every_variable_the_docs_name_is_a_setting():
    known = {f"BOOKREC_{name.upper()}" for name in Settings.model_fields} | {"BOOKREC_CONFIG"}
    for path in (README, ROOT / "docs" / "CONFIGURATION.md", ROOT / "docs" / "ARCHITECTURE.md"):
        named = set(re.findall(r"\bBOOKREC_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        assert named - known == set(), f"{path.name} names variables the settings do not read"
