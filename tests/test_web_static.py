"""Static checks of the web page's files: offline by construction, no HTML built from strings.

The browser tests (test_web_page.py) show the page behaving; these guard the rules that make
that behaviour hold for every future edit: nothing loaded from another origin, no inline
script (a strict CSP would block it), and no API for turning strings into markup.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "src" / "bookrec" / "web" / "static"
SCRIPTS = sorted(STATIC.rglob("*.js"))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_script = True


def _index() -> _Collector:
    parser = _Collector()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser


def test_page_files_exist():
    for name in ("index.html", "app.js", "style.css"):
        assert (STATIC / name).is_file(), name
    assert SCRIPTS, "no JavaScript modules found"


def test_index_loads_nothing_from_elsewhere():
    parser = _index()
    for tag, attrs in parser.tags:
        for attr in ("src", "href"):
            value = attrs.get(attr) or ""
            assert not re.match(r"^(https?:)?//", value), f"<{tag} {attr}={value}> points to another origin"
        assert not any(name.startswith("on") for name in attrs), f"inline event handler on <{tag}>"
        assert "style" not in attrs, f"inline style on <{tag}> (blocked by style-src 'self')"
    assert not parser.inline_script, "inline <script> would be blocked by the page's CSP"


def test_index_declares_api_base_and_csp():
    metas = {attrs.get("name") or attrs.get("http-equiv"): attrs.get("content") for tag, attrs in _index().tags if tag == "meta"}
    assert metas.get("api-base") == "..", "the nginx image rewrites this tag; keep its default"
    csp = metas.get("Content-Security-Policy") or ""
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(STATIC)))
def test_scripts_never_parse_strings_as_html(path):
    source = path.read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "createContextualFragment"):
        assert sink not in source, f"{path.name} uses {sink}"


@pytest.mark.parametrize("path", [*SCRIPTS, STATIC / "style.css"], ids=lambda p: str(p.relative_to(STATIC)))
def test_no_external_urls_in_code(path):
    source = path.read_text(encoding="utf-8")
    # The only absolute URL allowed is the SVG namespace, which is an identifier, not a fetch.
    urls = set(re.findall(r"https?://[^\s\"'`)]+", source)) - {"http://www.w3.org/2000/svg"}
    assert not urls, f"{path.name} mentions {urls}"
