"""Take the README's screenshots of the web page from a running API (a developer tool).

    bookrec data synth --out var/data --preset small
    bookrec batch --preset development --data var/data
    bookrec serve &
    python -m bookrec.web.screenshots --base http://127.0.0.1:8000 --out docs/screenshots

Drives Debian's headless Chromium with Playwright (the test extra). The browser is kept
offline (every request to another host is aborted), as on the project's machines, so covers
show their fallback tiles. PNGs are reduced to 256 colours to keep the repository small.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=10) as response:  # noqa: S310 - a local URL given by the developer
        return json.load(response)


def _pick_personal_reader(base: str, tries: int = 50) -> int:
    """A random reader whose recommendations are personal (the most telling example)."""
    fallback = None
    for _ in range(tries):
        user = _get(base, "/users?random=1")["users"][0]
        fallback = fallback if fallback is not None else user
        if _get(base, f"/recommend/{user}?top_k=1")["basis"] == "personal":
            return user
    if fallback is None:
        raise SystemExit("no readers are published")
    return fallback


def _shrink(path: Path, max_height: int | None = None) -> None:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if max_height and image.height > max_height:
        image = image.crop((0, 0, image.width, max_height))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def take(base: str, out: Path, n_books: int = 9) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    base = base.rstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    user = _pick_personal_reader(base)
    catalogue = _get(base, "/books?limit=200&offset=0")["books"]
    to_rate = sorted((b for b in catalogue if b.get("in_model")), key=lambda b: -(b.get("n_ratings") or 0))[:3]
    written: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        origin = base + "/"

        def offline(route):
            route.continue_() if route.request.url.startswith(origin) else route.abort()

        for width, suffix in ((1280, ""), (375, "-phone")):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.route("**/*", offline)
            page.goto(f"{base}/app/#/readers")
            page.get_by_label("Reader id").fill(str(user))
            page.get_by_label("How many books").fill(str(n_books))
            page.get_by_role("button", name="Show recommendations").click()
            expect(page.locator(".view-known .card")).to_have_count(n_books)
            page.wait_for_timeout(300)
            written.append(out / f"known-reader{suffix}.png")
            page.screenshot(path=str(written[-1]), full_page=True)
            if suffix:
                page.close()
                continue

            page.goto(f"{base}/app/#/new")
            for book in to_rate:
                page.get_by_role("combobox", name="Find books you have read").fill(book["title"])
                page.get_by_role("option").filter(has_text=book["title"]).first.click()
            # Two rated, one only marked as read ("not rated": the select's empty value).
            for select, rating in zip(page.locator(".rating-select").all(), ("9", "", "8")):
                select.select_option(rating)
            page.get_by_role("button", name="Get recommendations").click()
            page.locator(".view-new .card").first.wait_for()
            page.wait_for_timeout(300)
            written.append(out / "new-reader.png")
            page.screenshot(path=str(written[-1]), full_page=True)

            page.locator(".view-new .card .card-title a").first.click()
            page.locator(".similar .card").first.wait_for()
            page.wait_for_timeout(300)
            written.append(out / "book.png")
            page.screenshot(path=str(written[-1]), full_page=True)

            page.goto(f"{base}/app/#/model")
            page.locator(".trace-chart path").first.wait_for()
            page.locator(".table-ranking, .view-model .panel .status-empty").first.wait_for()
            page.wait_for_timeout(300)
            written.append(out / "model.png")
            page.screenshot(path=str(written[-1]), full_page=True)
            page.close()
        browser.close()
    for path in written:
        _shrink(path, max_height=1300 if path.stem.endswith("-phone") else None)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000", help="URL of a running API (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="Output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in take(args.base, args.out):
        print(path)


if __name__ == "__main__":  # pragma: no cover
    main()
