"""The web page in a real browser (Debian's headless Chromium driven by Playwright) against the
real API in a subprocess, on a real redis-server holding a published fixture version.

Nothing is mocked: the page fetches from the live API, which reads the store. The only thing the
browser is denied is the outside network (the machines are offline anyway): cover images on
other hosts are aborted, which also exercises the page's fallback covers. Screenshots land in
artifacts/screenshots/ (see docs/screenshots/ for the README copies).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from bookrec.store import open_store
from tests.support.live_server import LiveServer
from tests.support.publish import PublishedFixture, _catalog_parquet, publish_fixture
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
# Generous waits: the machine is shared, and the first search or fold-in builds indexes.
TIMEOUT_MS = 15_000
expect.set_options(timeout=TIMEOUT_MS)
# A title that would run code if any view inserted it as HTML.
EVIL_TITLE = "<script>window.__pwned=1;alert('script')</script><img src=x onerror=\"window.__pwned=2;alert('img')\"> The Night Garden"


# ---- the world: a store with a published version, the API, a browser -------------------------


def _republish_with_title(store_url: str, fx: PublishedFixture, work_key: str, title: str) -> None:
    """Publish the fixture again as a new version with one work renamed (everywhere it appears)."""
    for work in fx.works:
        if work["work_key"] == work_key:
            work["title"] = title
    for payload in [*fx.recommendations.values(), {"recommendations": fx.popular}]:
        for item in payload["recommendations"]:
            if item["work_key"] == work_key:
                item["title"] = title
            reason = item.get("reason") or {}
            if reason.get("work_key") == work_key:
                reason["title"] = title
    for book in fx.books.values():
        if book["work_key"] == work_key:
            book["title"] = title
    buffer = io.BytesIO()
    np.savez(buffer, **fx.serving_model)
    relevance = io.BytesIO()
    np.savez(relevance, **fx.relevance)
    with open_store(store_url) as store:
        with store.begin_publish() as pub:
            fx.meta["version"] = pub.version
            pub.put_recommendations((u, orjson.dumps(p)) for u, p in fx.recommendations.items())
            pub.put_books((isbn, orjson.dumps(b)) for isbn, b in fx.books.items())
            pub.put_blob("meta", orjson.dumps(fx.meta))
            pub.put_blob("catalog", _catalog_parquet(fx.works))
            pub.put_blob("popular", orjson.dumps(fx.popular))
            pub.put_blob("serving_model", buffer.getvalue())
            pub.put_blob("relevance", relevance.getvalue())
    fx.version = pub.version


@pytest.fixture(scope="module")
def world():
    redis = RedisServer().start()
    try:
        fx = publish_fixture(redis.url, n_users=120, n_books=60, seed=7, serving_works="in_model")
        # The evil title goes on the top recommendation of the first personal reader.
        first_personal = next(u for u in fx.user_ids if fx.recommendations[u]["basis"] == "personal")
        evil_key = fx.recommendations[first_personal]["recommendations"][0]["work_key"]
        # The real batch also checks sampled predictions (pred_0, ...) and lists what failed; make
        # this version one whose chains did not converge, so the page has to say so.
        conv = fx.meta["convergence"]
        for i, (rhat, ess) in enumerate([(1.002, 380.0), (1.09, 41.4), (1.01, 250.0)]):
            conv["rhat"][f"pred_{i}"], conv["ess_bulk"][f"pred_{i}"], conv["ess_tail"][f"pred_{i}"] = rhat, ess, ess + 20
        conv.update(converged=False, failing=["pred_1"], rhat_threshold=1.05, min_ess=100.0)
        # An older batch also put ranking figures of re-ordered held-out items into test_metrics:
        # the page must leave them out (the ranking panel replaces them).
        fx.meta["test_metrics"].update({"ndcg@10": 0.05, "precision@10": 0.02, "recall@10": 0.04})
        _republish_with_title(redis.url, fx, evil_key, EVIL_TITLE)
        with LiveServer(redis.url) as server:
            yield {"redis": redis, "fx": fx, "base": server.url.rstrip("/"), "evil_user": first_personal, "evil_key": evil_key}
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (scripts/test.sh does it)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page plus what it did: dialogs, script errors, console errors, requests."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.dialogs: list[str] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.requests: list[tuple[str, str]] = []


def _open(browser: Browser, base: str, width: int = 1280, height: int = 900) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    watched = Watched(page, origin)

    def on_dialog(dialog):
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    def route(r):
        watched.requests.append((r.request.resource_type, r.request.url))
        if r.request.url.startswith(origin + "/"):
            r.continue_()
        else:
            r.abort()  # offline: the outside world is unreachable

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda err: watched.page_errors.append(str(err)))
    page.on("console", lambda msg: watched.console_errors.append(msg.text) if msg.type == "error" else None)
    context.route("**/*", route)
    return watched


def _check_and_close(watched: Watched) -> None:
    """No script error, no dialog, and nothing but cover images asked of other hosts."""
    assert watched.page_errors == []
    assert watched.dialogs == []
    # Console errors only for failed loads (aborted covers, the API's deliberate 4xx/503).
    assert all(text.startswith("Failed to load resource") for text in watched.console_errors), watched.console_errors
    foreign = [(kind, url) for kind, url in watched.requests if not url.startswith(watched.origin + "/")]
    assert all(kind == "image" for kind, _ in foreign), foreign
    watched.page.context.close()


@pytest.fixture()
def page(browser, world):
    watched = _open(browser, world["base"])
    yield watched
    _check_and_close(watched)


@pytest.fixture()
def sized_page(browser, world):
    """Open a page at a given viewport size; checked and closed at the end like `page`."""
    opened: list[Watched] = []

    def open_page(width: int, height: int) -> Page:
        opened.append(_open(browser, world["base"], width, height))
        return opened[-1].page

    yield open_page
    for watched in opened:
        _check_and_close(watched)


# Viewports the layout is checked at: a laptop, a small laptop, a phone.
DESKTOP = (1366, 900)
LAPTOP = (1024, 768)
PHONE = (375, 800)


def shot(page: Page, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.wait_for_timeout(150)  # let fallback covers swap in
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _lower_bounds(page: Page) -> list[float]:
    texts = page.locator(".view-known .card .ci-text").all_inner_texts()
    return [float(re.search(r"(\d+(?:\.\d+)?)\s*–", t).group(1)) for t in texts]


def _personal_users(fx: PublishedFixture, exclude: int | None = None) -> list[int]:
    return [u for u in fx.user_ids if fx.recommendations[u]["basis"] == "personal" and u != exclude]


def _percent(p: float) -> str:
    return f"{math.floor(p * 100 + 0.5)}%"  # Math.round, as the page rounds


def _expect_reason(card, reason: dict) -> None:
    """The card's reason line says why the book is there, as the stored reason does."""
    line = card.locator(".reason")
    if reason["kind"] == "because_you_read":
        expect(line).to_have_text(f"Because you read {reason['title']}")
        expect(line.locator("a")).to_have_attribute("href", f"#/book/{reason['isbn']}")
    elif reason["kind"] == "popular_in_segment":
        expect(line).to_have_text(f"Popular with {reason['segment']}")
    else:
        expect(line).to_have_text("Popular")


# ---- known readers -----------------------------------------------------------------------------


def test_known_reader_shows_n_cards_with_interval_bars(page, world):
    fx, p = world["fx"], page.page
    user = _personal_users(fx, exclude=world["evil_user"])[0]
    stored = fx.recommendations[user]["recommendations"]
    p.goto(f"{world['base']}/app/")
    expect(p.get_by_role("tab", name="Readers")).to_have_attribute("aria-selected", "true")

    # Four ranking modes, "For you" first and chosen.
    radios = p.locator(".view-known input[name=rank_by]")
    expect(radios).to_have_count(4)
    assert [p.locator(f"label[for={r.get_attribute('id')}]").inner_text() for r in radios.all()] == [
        "For you", "Highest rated", "Safe bets", "Explore"]
    expect(p.get_by_role("radio", name="For you")).to_be_checked()

    p.get_by_label("Reader id").fill(str(user))
    p.get_by_label("How many books").fill("7")
    expect(p.locator("#top-n-value")).to_have_text("7")
    p.get_by_role("button", name="Show recommendations").click()

    cards = p.locator(".view-known .card")
    expect(cards).to_have_count(7)
    # In stored order (the for_you ranking), with the stored titles and intervals.
    assert p.locator(".view-known .card .card-title").all_inner_texts() == [r["title"] for r in stored[:7]]
    expect(p.locator(".view-known .card svg.interval-bar rect.interval")).to_have_count(7)
    expect(p.locator(".view-known .card svg.interval-bar circle.point")).to_have_count(7)
    expect(p.locator(".view-known .results-head .basis")).to_have_text("personal")

    # The bar spans exactly the stored interval on the 1-10 axis (x = 10 + (v - 1) / 9 * 220).
    for card, item in zip(cards.all(), stored[:7]):
        lo, hi = item["confidence_interval"]
        rect = card.locator("rect.interval")
        x, width = float(rect.get_attribute("x")), float(rect.get_attribute("width"))
        assert x == pytest.approx(10 + (lo - 1) / 9 * 220, abs=0.01)
        assert x + width == pytest.approx(10 + (hi - 1) / 9 * 220, abs=0.01)
        cx = float(card.locator("circle.point").get_attribute("cx"))
        assert cx == pytest.approx(10 + (item["predicted_rating"] - 1) / 9 * 220, abs=0.01)
        expect(card.locator(".predicted-value")).to_have_text(f"{item['predicted_rating']:.1f}")
        # Next to the interval: P(liked) as a meter whose fill is that share of its track.
        expect(card.locator(".liked-value")).to_have_text(_percent(item["p_liked"]))
        fill = card.locator("svg.liked-meter rect.fill")
        if item["p_liked"] >= 0.005:
            assert float(fill.get_attribute("width")) == pytest.approx(max(8, 64 * math.floor(item["p_liked"] * 100 + 0.5) / 100), abs=0.01)
        # And why it is there: "Because you read <title>", linking to that book.
        _expect_reason(card, item["reason"])

    # Dead cover URLs (the outside world is offline here) and missing ones both end as initials tiles.
    assert any(item["image_url"] for item in stored[:7]), "the fixture should include cover URLs"
    expect(p.locator(".view-known .card .cover-placeholder")).to_have_count(7)
    expect(p.locator(".view-known .card img")).to_have_count(0)
    shot(p, "known-reader")

    # Safe bets: re-ranked by the lower end of the interval.
    p.get_by_role("radio", name="Safe bets").check()
    p.wait_for_function("() => !document.querySelector('.view-known .status-loading')")
    expect(p.locator(".view-known .card")).to_have_count(7)
    lows = _lower_bounds(p)
    assert lows == sorted(lows, reverse=True)

    # Highest rated: by the predicted rating; the same books as "For you" chose.
    p.get_by_role("radio", name="Highest rated").check()
    expect(p.locator("#rank-help")).to_have_text("Highest predicted rating first")
    stored_all = fx.recommendations[user]["recommendations"]
    best = sorted(stored_all, key=lambda r: -r["predicted_rating"])[:7]
    expect(p.locator(".view-known .card .card-title")).to_have_text([r["title"] for r in best])


# The numbers of the 1-10 scale under a card's interval bar: whatever draws them (SVG or HTML),
# each element whose whole text is one of them, with its rendered font size and box.
SCALE_LABELS_JS = """(card) => [...card.querySelectorAll('.card-figures *')]
    .filter((el) => el.children.length === 0 && /^(10|[1-9])$/.test(el.textContent.trim()))
    .map((el) => {
      const r = el.getBoundingClientRect();
      // SVG text is scaled with its drawing: its font size on screen is the CSS size times that scale.
      const scale = el.getScreenCTM ? el.getScreenCTM().a : 1;
      return {text: el.textContent.trim(), size: parseFloat(getComputedStyle(el).fontSize) * scale,
              left: r.left, right: r.right, height: r.height};
    })"""


@pytest.mark.parametrize("viewport", [DESKTOP, LAPTOP, PHONE], ids=["desktop", "laptop", "phone"])
def test_interval_scale_numbers_are_legible(sized_page, world, viewport):
    p = sized_page(*viewport)
    user = _personal_users(world["fx"], exclude=world["evil_user"])[0]
    p.goto(f"{world['base']}/app/#/readers/{user}")
    card = p.locator(".view-known .card").first
    expect(card).to_be_visible()
    labels = card.evaluate(SCALE_LABELS_JS)
    assert [label["text"] for label in labels] == [str(v) for v in range(1, 11)]
    for label in labels:
        assert label["height"] >= 10, f"scale number {label['text']} is {label['height']:.1f} px tall"
        assert label["size"] >= 10, f"scale number {label['text']} is drawn at {label['size']:.1f} px"
    for a, b in zip(labels, labels[1:]):
        assert a["right"] <= b["left"], f"scale numbers {a['text']} and {b['text']} overlap"
    shot(p, f"card-scale-{viewport[0]}", full_page=False)


def test_cards_say_why_each_book_is_there(page, world):
    """Reasons of every kind: a book the reader read, popularity in the reader's segment, popularity."""
    fx, p = world["fx"], page.page
    seen = set()
    for basis in ("popular", "similar_reading"):
        for user in [u for u in fx.user_ids if fx.recommendations[u]["basis"] == basis][:2]:
            stored = fx.recommendations[user]["recommendations"][:10]
            p.goto(f"{world['base']}/app/#/readers/{user}")
            cards = p.locator(".view-known .card")
            expect(cards).to_have_count(10)
            expect(p.locator(".view-known .results-head h2")).to_have_text(f"Reader {user}")
            for card, item in zip(cards.all(), stored):
                _expect_reason(card, item["reason"])
                seen.add(item["reason"]["kind"])
    assert seen == {"because_you_read", "popular_in_segment", "popular"}
    # A reason's link opens the book the reader read (the last reader shown reads similar books).
    link = p.locator(".view-known .card .reason-read a").first
    isbn = link.get_attribute("href").split("/")[-1]
    link.click()
    expect(p.get_by_role("tab", name="Books")).to_have_attribute("aria-selected", "true")
    expect(p.locator(".book-title")).to_have_text(fx.books[isbn]["title"])


def test_random_reader_and_input_validation(page, world):
    fx, p = world["fx"], page.page
    p.goto(f"{world['base']}/app/#/readers")
    p.get_by_label("Reader id").fill("twelve")
    p.get_by_role("button", name="Show recommendations").click()
    expect(p.locator("#user-id-error")).to_contain_text("whole number")
    expect(p.get_by_label("Reader id")).to_have_attribute("aria-invalid", "true")
    expect(p.locator(".view-known .card")).to_have_count(0)

    p.get_by_role("button", name="Random reader").click()
    expect(p.locator(".view-known .card").first).to_be_visible()
    picked = int(p.get_by_label("Reader id").input_value())
    assert picked in fx.user_ids
    expect(p.locator(".view-known .card")).to_have_count(10)  # the slider's default
    assert p.url.endswith(f"#/readers/{picked}")


def test_unknown_reader_gets_a_message(page, world):
    fx, p = world["fx"], page.page
    unknown = max(fx.user_ids) + 1
    p.goto(f"{world['base']}/app/#/readers/{unknown}")
    alert = p.locator(".view-known .status-error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(str(unknown))
    expect(p.locator(".view-known .card")).to_have_count(0)


# ---- new readers ---------------------------------------------------------------------------------


def _add_book(p: Page, work: dict) -> None:
    box = p.get_by_role("combobox", name="Find books you have read")
    box.fill(work["title"])
    exact = re.compile(f"^{re.escape(work['title'])}$")
    option = p.get_by_role("option").filter(has=p.locator(".option-title", has_text=exact)).filter(has_text=work["author"])
    expect(option).to_have_count(1)
    option.click()
    expect(p.locator(".rated-item").filter(has=p.locator(".rated-title", has_text=exact))).to_have_count(1)


def _distinct_works(fx: PublishedFixture, n: int, avoid: str, relevance: bool = False) -> list[dict]:
    """In-model works whose titles are unique in the catalogue and not part of each other's
    (with `relevance`: only works the relevance blob covers)."""
    titles = [w["title"] for w in fx.works]
    candidates = set(fx.relevance["item_keys"].tolist())
    picked: list[dict] = []
    for w in fx.works:
        if not w["in_model"] or w["work_key"] == avoid or titles.count(w["title"]) > 1:
            continue
        if relevance and w["work_key"] not in candidates:
            continue
        if any(w["title"] in o["title"] or o["title"] in w["title"] for o in picked):
            continue
        picked.append(w)
        if len(picked) == n:
            return picked
    raise AssertionError("the fixture has too few distinct in-model titles")


def test_new_reader_flow_excludes_rated_books_and_persists(page, world):
    fx, p = world["fx"], page.page
    chosen = _distinct_works(fx, 3, avoid=world["evil_key"])
    p.goto(f"{world['base']}/app/#/new")
    expect(p.get_by_role("tab", name="New reader")).to_have_attribute("aria-selected", "true")
    expect(p.locator(".rated-item")).to_have_count(0)
    for work in chosen:
        _add_book(p, work)
    for select, rating in zip(p.locator(".rating-select").all(), ("9", "3", "7")):
        select.select_option(rating)

    p.get_by_role("button", name="Get recommendations").click()
    cards = p.locator(".view-new .card")
    expect(cards.first).to_be_visible()
    expect(p.locator(".recognised summary")).to_have_text("Recognised 3 of 3")
    shown = [c.get_attribute("data-isbn") for c in cards.all()]
    assert len(shown) == 10
    rated_isbns = {isbn for w in chosen for isbn in w["editions"]}
    assert not rated_isbns & set(shown), "a rated book came back as a recommendation"
    rated_titles = {w["title"] for w in chosen}
    assert not rated_titles & set(p.locator(".view-new .card .card-title").all_inner_texts())
    expect(p.locator(".view-new .card svg.interval-bar rect.interval")).to_have_count(10)
    expect(p.locator(".view-new .results-head .basis")).to_have_text("folded-in")
    shot(p, "new-reader")

    # The list survives a reload, ratings included; removing one is remembered too.
    p.reload()
    expect(p.locator(".rated-item")).to_have_count(3)
    assert [s.input_value() for s in p.locator(".rating-select").all()] == ["9", "3", "7"]
    p.get_by_role("button", name=f"Remove {chosen[1]['title']}").click()
    expect(p.locator(".rated-item")).to_have_count(2)
    p.reload()
    expect(p.locator(".rated-item")).to_have_count(2)
    assert p.locator(".rated-title").all_inner_texts() == [chosen[0]["title"], chosen[2]["title"]]


def test_new_reader_adds_books_read_without_a_rating(page, world):
    fx, p = world["fx"], page.page
    chosen = _distinct_works(fx, 3, avoid=world["evil_key"], relevance=True)
    p.goto(f"{world['base']}/app/#/new")
    toggle = p.get_by_label("Add books as read, without a rating")
    toggle.check()
    _add_book(p, chosen[0])
    _add_book(p, chosen[1])
    toggle.uncheck()
    _add_book(p, chosen[2])
    selects = p.locator(".rating-select")
    assert [s.input_value() for s in selects.all()] == ["", "", "8"]
    expect(selects.first.locator("option:checked")).to_have_text("not rated")
    selects.nth(2).select_option("7")
    stored = p.evaluate("() => JSON.parse(localStorage.getItem('bookrec.new-reader.ratings.v1'))")
    assert [r["rating"] for r in stored] == [None, None, 7]
    expect(p.locator(".rated-count")).to_contain_text("3 books, 1 rated")

    with p.expect_request(lambda r: r.url.endswith("/recommend/cold-start") and r.method == "POST") as sent:
        p.get_by_role("button", name="Get recommendations").click()
    ratings = sent.value.post_data_json["ratings"]
    # (the search shows one edition per work, which may be another edition than the work's first)
    assert [fx.books[r["isbn"]]["work_key"] for r in ratings] == [w["work_key"] for w in chosen]
    assert [r["rating"] for r in ratings] == [None, None, 7]  # sent as null, not left out
    assert sent.value.post_data_json["rank_by"] == "for_you"

    cards = p.locator(".view-new .card")
    expect(cards.first).to_be_visible()
    expect(p.locator(".recognised summary")).to_have_text("Recognised 3 of 3")
    expect(p.locator(".recognised-list .ok", has_text="read, not rated")).to_have_count(2)
    expect(p.locator(".view-new .results-head .basis")).to_have_text("folded-in")
    # Every card says which of the reader's books it comes from (or that it is popular).
    read_isbns = {r["isbn"] for r in ratings}
    links = p.locator(".view-new .card .reason-read a")
    expect(links.first).to_be_visible()
    assert {a.get_attribute("href").split("/")[-1] for a in links.all()} <= read_isbns
    assert links.count() + p.locator(".view-new .card .reason-popular").count() == cards.count()
    expect(p.locator(".view-new .card svg.liked-meter")).to_have_count(cards.count())
    shown = {c.get_attribute("data-isbn") for c in cards.all()}
    assert not {isbn for w in chosen for isbn in w["editions"]} & shown

    # Highest rated: the same kind of list, sorted by the predicted rating.
    p.locator("#cold-rank-by").select_option("mean")
    p.get_by_role("button", name="Get recommendations").click()
    p.wait_for_function("() => !document.querySelector('.view-new .status-loading')")
    values = [float(v) for v in p.locator(".view-new .card .predicted-value").all_inner_texts()]
    assert len(values) == 10 and values == sorted(values, reverse=True)

    # The not-rated choice survives a reload.
    p.reload()
    expect(p.locator(".rated-item.is-unrated")).to_have_count(2)
    assert [s.input_value() for s in p.locator(".rating-select").all()] == ["", "", "7"]


def test_new_reader_with_only_unknown_books_gets_told_why(page, world):
    fx, p = world["fx"], page.page
    # A list saved in the browser under an older catalogue: its one book is gone now.
    gone = {"isbn": "0000000000", "title": "A Book From Last Year", "author": "Someone", "year": 1999, "rating": 8}
    assert gone["isbn"] not in fx.books
    p.goto(f"{world['base']}/app/#/new")
    p.evaluate("(entry) => localStorage.setItem('bookrec.new-reader.ratings.v1', JSON.stringify([entry]))", gone)
    p.reload()
    expect(p.locator(".rated-item")).to_have_count(1)
    p.get_by_role("button", name="Get recommendations").click()
    alert = p.locator(".view-new .status-error")
    expect(alert).to_contain_text("None of these books are known to the model")
    # In the page's own words: which books, and what to do (the search box), not the API's hint.
    expect(alert).to_contain_text("search box")
    expect(alert).not_to_contain_text("GET /")
    missing = p.locator(".view-new .missing")
    expect(missing).to_contain_text(gone["title"])
    expect(missing).to_contain_text(gone["isbn"])
    expect(p.locator(".view-new .results")).not_to_contain_text("GET /")
    expect(p.locator(".view-new .card")).to_have_count(0)


def test_new_reader_leaves_out_malformed_saved_books(page, world):
    """A list saved in the browser is untrusted: entries the API would refuse (an ISBN longer than
    40 characters, a rating off the 1-10 scale or not a number) are dropped, not sent, so the
    well-formed rest still gets recommendations."""
    fx, p = world["fx"], page.page
    good, other = _distinct_works(fx, 2, avoid=world["evil_key"], relevance=True)
    saved = [
        {"isbn": "9" * 41, "title": "Too Long An ISBN", "rating": 8},
        {"isbn": good["editions"][0], "title": good["title"], "author": good["author"], "rating": 9},
        {"isbn": "0000000001", "title": "Rated Eleven", "rating": 11},
        {"isbn": "0000000002", "title": "Rated In Words", "rating": "7"},
        {"isbn": 123456789, "title": "A Numeric ISBN", "rating": 6},
        # A sound book under a title longer than the API takes (300): kept, without that title.
        {"isbn": other["editions"][0], "title": "x" * 301, "rating": None},
    ]
    p.goto(f"{world['base']}/app/#/new")
    p.evaluate("(entries) => localStorage.setItem('bookrec.new-reader.ratings.v1', JSON.stringify(entries))", saved)
    p.reload()
    expect(p.locator(".rated-item")).to_have_count(2)
    expect(p.locator(".rated-title")).to_have_text([good["title"], other["editions"][0]])
    with p.expect_request(lambda r: r.url.endswith("/recommend/cold-start") and r.method == "POST") as sent:
        p.get_by_role("button", name="Get recommendations").click()
    sent_ratings = sent.value.post_data_json["ratings"]
    assert [(r["isbn"], r["rating"]) for r in sent_ratings] == [(good["editions"][0], 9), (other["editions"][0], None)]
    assert "title" not in sent_ratings[1]
    expect(p.locator(".view-new .card").first).to_be_visible()
    expect(p.locator(".view-new .status-error")).to_have_count(0)


def test_search_is_keyboard_driven(page, world):
    fx, p = world["fx"], page.page
    work = next(w for w in fx.works if w["work_key"] != world["evil_key"])
    p.goto(f"{world['base']}/app/#/new")
    box = p.get_by_role("combobox", name="Find books you have read")
    box.focus()
    p.keyboard.type(work["title"], delay=20)  # debounced: one search after typing stops
    expect(box).to_have_attribute("aria-expanded", "true")
    p.keyboard.press("Enter")  # picks the highlighted (first) match
    expect(p.locator(".rated-item")).to_have_count(1)
    expect(box).to_have_attribute("aria-expanded", "false")


# ---- book view -------------------------------------------------------------------------------------


def _read_together(fx: PublishedFixture, work_key: str, n: int = 10) -> list[str]:
    """Titles of the books reading `work_key` raises (positive weights), strongest first."""
    rel = fx.relevance
    keys = rel["item_keys"].tolist()
    i = keys.index(work_key)
    pairs = [(float(w), int(j)) for j, w in zip(rel["neighbours"][i], rel["weights"][i]) if w > 0 and j != i]
    pairs.sort(key=lambda t: -t[0])
    by_key = {w["work_key"]: w for w in fx.works}
    return [by_key[keys[j]]["title"] for _, j in pairs[:n]]


def test_book_view_shows_details_and_similar_books(page, world):
    fx, p = world["fx"], page.page
    candidates = set(fx.relevance["item_keys"].tolist())
    user = _personal_users(fx, exclude=world["evil_user"])[1]
    rank, first = next((i, r) for i, r in enumerate(fx.recommendations[user]["recommendations"])
                       if r["work_key"] in candidates and _read_together(fx, r["work_key"]))
    p.goto(f"{world['base']}/app/#/readers/{user}")
    p.locator(".view-known .card .card-title a").nth(rank).click()
    expect(p.get_by_role("tab", name="Books")).to_have_attribute("aria-selected", "true")
    expect(p.locator(".book-title")).to_have_text(first["title"])
    book = fx.books[first["isbn"]]
    expect(p.locator(".book-detail .facts")).to_contain_text(book["author"])
    # "Readers who like this may also like": what readers read together with it, strongest first.
    expect(p.locator(".similar .section-title")).to_have_text("Readers who like this may also like")
    expect(p.locator(".similar .similar-basis")).to_contain_text("read together")
    expected = _read_together(fx, first["work_key"])
    similar = p.locator(".similar .card")
    expect(similar).to_have_count(len(expected))
    expect(p.locator(".similar .card .card-title")).to_have_text(expected)
    expect(p.locator(".similar svg.weight-bar circle.point")).to_have_count(len(expected))
    values = [float(v) for v in p.locator(".similar .card .predicted-value").all_inner_texts()]
    assert values == sorted(values, reverse=True)
    shot(p, "book")


def test_unknown_book_is_explained_in_the_pages_words(page, world):
    p = page.page
    p.goto(f"{world['base']}/app/#/book/BOGUS")
    alert = p.locator(".view-book .status-error")
    expect(alert).to_contain_text("Book not found")
    expect(alert).to_contain_text("No book with ISBN BOGUS in the catalogue")
    expect(alert).to_contain_text("search")
    expect(alert).not_to_contain_text("GET /")


# ---- model view ---------------------------------------------------------------------------------------


# What the real batch publishes where the fixture abbreviates: the baselines' full labels
# (bookrec.batch.evaluation) and every quantity BPMF traces (bookrec.model.bpmf.TRACED), with
# effective sample sizes in the thousands. The layout has to hold these.
BATCH_LABELS = {
    "popularity": "Popularity (interaction count)",
    "ease": "Relevance alone (Bayesian EASE)",
    "als": "Predicted rating over every work (BPMF)",
}
TRACED = ("alpha", "mu", "train_rmse", "log_norm_U", "log_norm_V", "log_det_Lambda_U", "log_det_Lambda_V")


def _serve_batch_like_meta(p: Page) -> None:
    def rewrite(route):
        response = route.fetch()
        meta = response.json()
        for row in meta["ranking"]["rows"]:
            row["label"] = BATCH_LABELS.get(row["model"], row["label"])
        conv = meta["convergence"]
        for name in TRACED:
            conv["rhat"][name], conv["ess_bulk"][name], conv["ess_tail"][name] = 1.004, 12345.6, 11234.5
        route.fulfill(response=response, json=meta)

    p.route("**/model/info", rewrite)


def _model_view_with_batch_meta(sized_page, world, viewport):
    p = sized_page(*viewport)
    _serve_batch_like_meta(p)
    p.goto(f"{world['base']}/app/#/model")
    return p


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_model_bar_labels_are_not_cut_off(sized_page, world, viewport):
    p = _model_view_with_batch_meta(sized_page, world, viewport)
    labels = p.locator(".view-model svg.model-bars .bar-label")
    expect(labels).to_have_count(len(world["fx"].meta["ranking"]["rows"]))
    expect(labels.filter(has_text=BATCH_LABELS["als"])).to_have_count(1)
    svg = p.locator(".view-model svg.model-bars").bounding_box()
    for label in labels.all():
        box = label.bounding_box()
        assert box["x"] >= svg["x"] - 0.5 and box["x"] + box["width"] <= svg["x"] + svg["width"] + 0.5, \
            f"{label.text_content()!r} sticks out of its chart"
        assert box["y"] >= svg["y"] - 0.5 and box["y"] + box["height"] <= svg["y"] + svg["height"] + 0.5
    p.locator(".view-model svg.model-bars").scroll_into_view_if_needed()
    shot(p, f"model-ranking-{viewport[0]}", full_page=False)


@pytest.mark.parametrize("viewport", [DESKTOP, LAPTOP], ids=["desktop", "laptop"])
def test_ranking_table_fits_at_desktop_width(sized_page, world, viewport):
    p = _model_view_with_batch_meta(sized_page, world, viewport)
    table = p.locator(".view-model .table-ranking")
    expect(table.locator("tbody th", has_text=BATCH_LABELS["als"])).to_have_count(1)
    # Every column, Coverage and Novelty included, inside the panel: nothing hides past its edge.
    panel = p.locator(".view-model .panel", has=p.locator(".table-ranking")).bounding_box()
    for cell in table.locator("thead th").all():
        box = cell.bounding_box()
        assert box["x"] + box["width"] <= panel["x"] + panel["width"], f"column {cell.text_content()!r} is off the panel"
    overflow = table.evaluate("(t) => t.parentElement.scrollWidth - t.parentElement.clientWidth")
    assert overflow <= 0, f"the table scrolls sideways by {overflow} px at {viewport[0]} px"


def test_model_view_fits_a_phone_and_hints_at_wide_tables(sized_page, world):
    p = _model_view_with_batch_meta(sized_page, world, PHONE)
    convergence = p.locator(".view-model .panel", has=p.locator("h2", has_text="Convergence"))
    expect(convergence.locator("tr", has_text="log_det_Lambda_U")).to_have_count(1)
    expect(p.locator(".trace-chart path").first).to_be_visible()
    assert p.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "the Model view scrolls sideways"
    # Tables wider than a phone scroll inside their own box, which shows that more columns follow.
    ranking = p.locator(".view-model .table-scroll", has=p.locator(".table-ranking"))
    assert ranking.evaluate("(s) => s.scrollWidth > s.clientWidth"), "the ranking table should be wider than a phone"
    hint = "(s) => getComputedStyle(s.parentElement, '::after').opacity"
    expect(ranking.locator("xpath=..")).to_have_class(re.compile(r"\bmore-right\b"))
    assert float(ranking.evaluate(hint)) > 0
    shot(p, "model-phone", full_page=False)
    ranking.evaluate("(s) => { s.scrollLeft = s.scrollWidth; }")
    expect(ranking.locator("xpath=..")).not_to_have_class(re.compile(r"\bmore-right\b"))
    expect(ranking.locator("xpath=..")).to_have_class(re.compile(r"\bmore-left\b"))


def test_page_loads_the_model_report_without_traces_until_the_model_view_needs_them(page, world):
    """Every page load reads the interval level from /model/info: without the MCMC traces (most of
    its size). Only the Model view, which draws them, asks for the whole document."""
    p = page.page
    asked: list[str] = []
    p.on("request", lambda r: asked.append(r.url) if urlsplit(r.url).path.endswith("/model/info") else None)
    with p.expect_request(lambda r: urlsplit(r.url).path.endswith("/model/info")):
        p.goto(f"{world['base']}/app/#/readers")
    p.wait_for_load_state("networkidle")
    assert [urlsplit(u).query for u in asked] == ["traces=false"]
    p.get_by_role("tab", name="Model").click()
    expect(p.locator(".trace-chart path").first).to_be_visible()
    assert [urlsplit(u).query for u in asked] == ["traces=false", ""]




def test_model_view_draws_its_plots(page, world):
    fx, p = world["fx"], page.page
    meta = fx.meta
    p.goto(f"{world['base']}/app/#/model")
    traces = p.locator(".trace-chart")
    expect(traces).to_have_count(len(meta["traces"]))
    n_lines = sum(len(chains) for chains in meta["traces"].values())
    expect(p.locator(".trace-chart path.series")).to_have_count(n_lines)
    # One vertex per draw in each chain's line.
    first_name = next(iter(meta["traces"]))
    d = p.locator(".trace-chart").first.locator("path.series").first.get_attribute("d")
    assert d.count("L") + 1 == len(meta["traces"][first_name][0])
    expect(p.locator(".calibration-chart circle.point")).to_have_count(len(meta["calibration"]))
    expect(p.locator(".calibration-chart path.calibration-line")).to_have_count(1)
    explicit_values = [k for k in meta["rating_distribution"] if k != "0"]
    expect(p.locator(".bar-chart rect.bar")).to_have_count(len(explicit_values))
    expect(p.locator(".stacked-chart rect.seg")).to_have_count(sum(1 for v in meta["coverage_by_tier"].values() if v > 0))
    verdict = p.locator(".view-model .verdict")
    expect(verdict).to_contain_text("Chains have not converged")
    expect(verdict).to_contain_text("1 of 3 sampled predictions")
    # Named quantities get a row each; the three predictions share one row with their worst values.
    panel = p.locator(".view-model .panel", has=p.locator("h2", has_text="Convergence"))
    expect(panel.locator("tbody tr")).to_have_count(len([n for n in meta["convergence"]["rhat"] if not n.startswith("pred_")]) + 1)
    worst = panel.locator("tr", has_text="3 predictions (worst)")
    expect(worst.locator("td")).to_have_text(["1.090", "41", "61"])  # an ESS is a count: no decimals
    expect(worst.locator("td.warn")).to_have_count(3)
    expect(p.locator(".view-model")).to_contain_text(meta["version"])
    expect(p.locator(".view-model")).to_contain_text("1.5 s")  # training_time_seconds
    expect(p.locator(".view-model")).not_to_contain_text("undefined")
    expect(p.locator(".view-model")).not_to_contain_text("NaN")
    shot(p, "model")


def test_model_verdict_says_the_intervals_stand_when_only_global_quantities_fail(page, world):
    """The published meta says every sampled prediction passes and only alpha and the train RMSE
    fall short: the verdict says the intervals can be used, instead of the blanket caution."""
    p = page.page

    def only_globals_fail(route):
        response = route.fetch()
        meta = response.json()
        conv = meta["convergence"]
        for name in conv["rhat"]:
            slow = name in ("alpha", "train_rmse")
            conv["rhat"][name], conv["ess_bulk"][name], conv["ess_tail"][name] = (
                (1.08, 20.4, 219.0) if slow else (1.002, 900.0, 1200.0))
        conv.update(converged=False, failing=["alpha", "train_rmse"], rhat_threshold=1.01, min_ess=400.0,
                    summary="slowest alpha: ESS 20 of 400 needed (19.6x longer chains)")
        route.fulfill(response=response, json=meta)

    p.route("**/model/info", only_globals_fail)
    p.goto(f"{world['base']}/app/#/model")
    verdict = p.locator(".view-model .verdict")
    expect(verdict).to_contain_text("Chains have not converged (alpha, train_rmse)")
    n_preds = sum(name.startswith("pred_") for name in world["fx"].meta["convergence"]["rhat"])
    expect(verdict).to_contain_text(f"the {n_preds} sampled predictions pass, so the predictions and their intervals can be used")
    expect(verdict).not_to_contain_text("with caution")
    expect(verdict).to_contain_text("own estimates. Slowest alpha: ESS 20 of 400 needed (19.6x longer chains).")
    panel = p.locator(".view-model .panel", has=p.locator("h2", has_text="Convergence"))
    expect(panel.locator("tr", has_text="alpha").locator("td")).to_have_text(["1.080", "20", "219"])
    slow_present = [n for n in ("alpha", "train_rmse") if n in world["fx"].meta["convergence"]["rhat"]]
    expect(panel.locator("td.warn")).to_have_count(3 * len(slow_present))  # their R-hat, bulk and tail ESS


def test_model_view_shows_the_top_n_ranking_table_and_chart(page, world):
    fx, p = world["fx"], page.page
    ranking = fx.meta["ranking"]
    rows = ranking["rows"]
    p.goto(f"{world['base']}/app/#/model")
    table = p.locator(".view-model .table-ranking")
    expect(table.locator("thead th")).to_have_text(
        ["Model", "Recall@10", "NDCG@10", "Liked recall@10", "MRR@10", "Distinct works", "Top-work share", "Coverage", "Novelty"])
    body_rows = table.locator("tbody tr")
    expect(body_rows).to_have_count(len(rows))
    # Models as rows, the default first, ours highlighted.
    expect(body_rows.first.locator("th")).to_contain_text("For you (default)")
    expect(table.locator("tbody tr.row-ours")).to_have_count(sum(r["kind"] == "ours" for r in rows))
    for i, row in enumerate(rows):
        cells = body_rows.nth(i).locator("td")
        expect(body_rows.nth(i).locator("th")).to_contain_text(row["label"])
        expect(cells.nth(0)).to_contain_text(f"{row['recall@10']:.3f}")
        if row["recall@10_se"] is None:
            expect(cells.nth(0)).not_to_contain_text("±")
        else:
            expect(cells.nth(0)).to_contain_text(f"± {row['recall@10_se']:.3f}")
        expect(cells.nth(1)).to_have_text(f"{row['ndcg@10']:.3f}")
        expect(cells.nth(2)).to_have_text(f"{row['liked_recall@10']:.3f}")
        expect(cells.nth(3)).to_have_text(f"{row['mrr@10']:.3f}")
        expect(cells.nth(4)).to_have_text(str(row["distinct_works"]))
    # recall@10 per model as bars: one per row, ours in the accent colour, lengths proportional.
    bars = p.locator(".view-model svg.model-bars rect.bar")
    expect(bars).to_have_count(len(rows))
    expect(p.locator(".view-model svg.model-bars rect.bar:not(.bar-alt)")).to_have_count(sum(r["kind"] == "ours" for r in rows))
    widths = [float(b.get_attribute("width")) for b in bars.all()]
    for row, width in zip(rows, widths):
        assert width / widths[0] == pytest.approx(row["recall@10"] / rows[0]["recall@10"], rel=1e-3)
    caption = p.locator(".view-model .ranking-caption")
    expect(caption).to_contain_text("held out")
    expect(caption).to_contain_text("every work the reader had not touched was ranked")
    expect(caption).to_contain_text("7.3 or more")
    # The rating-accuracy table shows rating figures only; ranking figures live in the top-N table.
    metrics = p.locator(".view-model .table-metrics")
    expect(metrics).to_contain_text("RMSE")
    for old in ("nDCG", "Precision", "Recall"):
        expect(metrics).not_to_contain_text(old)


def test_system_view_and_footer(page, world):
    fx, p = world["fx"], page.page
    p.goto(f"{world['base']}/app/#/system")
    expect(p.locator(".view-system .verdict")).to_contain_text("Healthy")
    expect(p.locator(".view-system .tiles")).to_contain_text(f"{len(fx.user_ids)}")
    expect(p.locator("#footer-status")).to_contain_text(fx.version)
    expect(p.locator(".view-system .stacked-chart rect.seg")).to_have_count(sum(1 for v in fx.meta["coverage_by_tier"].values() if v > 0))
    for view in (".view-system", "#footer-status"):
        expect(p.locator(view)).not_to_contain_text("undefined")
    shot(p, "system")


# ---- safety: a title with markup stays text -------------------------------------------------------------


def test_script_in_a_title_is_shown_as_text_and_runs_nothing(page, world):
    p = page.page
    p.goto(f"{world['base']}/app/#/readers/{world['evil_user']}")
    title = p.locator(".view-known .card .card-title").first
    expect(title).to_have_text(EVIL_TITLE)

    p.goto(f"{world['base']}/app/#/new")
    p.get_by_role("combobox", name="Find books you have read").fill("Night Garden")
    option = p.get_by_role("option").filter(has_text="The Night Garden").first
    expect(option).to_contain_text("<script>")
    option.click()
    expect(p.locator(".rated-title")).to_have_text(EVIL_TITLE)

    p.locator(".rated-title a").click()
    expect(p.locator(".book-title")).to_have_text(EVIL_TITLE)

    assert p.evaluate("() => window.__pwned") is None
    assert p.locator("img[src='x']").count() == 0
    assert p.locator("main script").count() == 0
    # page fixture teardown asserts: no dialog opened, no script error.


# ---- keyboard and phone width ----------------------------------------------------------------------------


def test_tabs_work_from_the_keyboard(page, world):
    p = page.page
    p.goto(f"{world['base']}/app/#/readers")
    p.get_by_role("tab", name="Readers").focus()
    p.keyboard.press("ArrowRight")
    expect(p.get_by_role("tab", name="New reader")).to_have_attribute("aria-selected", "true")
    expect(p.get_by_role("tab", name="New reader")).to_be_focused()
    expect(p.locator("#panel-new")).to_be_visible()
    expect(p.locator("#panel-readers")).to_be_hidden()
    p.keyboard.press("End")
    expect(p.get_by_role("tab", name="System")).to_have_attribute("aria-selected", "true")


def test_unknown_route_says_page_not_found(page, world):
    p = page.page
    # A reader id too long to be one leaves a message in the Readers view...
    p.goto(f"{world['base']}/app/#/readers/1234567890123")
    expect(p.locator("#user-id-error")).to_contain_text("too long")
    # ...which an unknown address must not show: it says the page does not exist, and links home.
    p.evaluate("() => { location.hash = '#/nonexistent'; }")
    not_found = p.locator("#main").get_by_role("heading", name="Page not found")
    expect(not_found).to_be_visible()
    expect(p.get_by_text("too long")).to_be_hidden()
    expect(p.locator("[role=tab][aria-selected=true]")).to_have_count(0)
    expect(p).to_have_title(re.compile("not found", re.I))
    p.get_by_role("link", name=re.compile("home", re.I)).click()
    expect(p.get_by_role("tab", name="Readers")).to_have_attribute("aria-selected", "true")
    expect(not_found).to_be_hidden()
    # "#main", the skip link's target, is no route: following it keeps the view and focuses it.
    p.get_by_role("tab", name="Model").click()
    p.locator(".skip-link").focus()
    p.keyboard.press("Enter")
    expect(p.locator("#main")).to_be_focused()
    expect(p.get_by_role("tab", name="Model")).to_have_attribute("aria-selected", "true")
    expect(not_found).to_be_hidden()


def test_usable_at_phone_width(browser, world):
    watched = _open(browser, world["base"], width=375, height=800)
    p = watched.page
    user = _personal_users(world["fx"])[2]
    try:
        for route, ready in ((f"#/readers/{user}", ".view-known .card"), ("#/model", ".trace-chart path"), ("#/new", ".search input")):
            p.goto(f"{world['base']}/app/{route}")
            expect(p.locator(ready).first).to_be_visible()
            assert p.evaluate("() => document.documentElement.scrollWidth") <= 375, f"{route} scrolls sideways"
            if route.startswith("#/readers"):
                shot(p, "known-reader-phone")
        assert watched.page_errors == []
    finally:
        p.context.close()


# ---- errors: no model yet, store down, recovery -------------------------------------------------------------


def _wait_until_healthy(base: str, timeout: float = 30.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the API did not become healthy within {timeout} s after the store came back")


def test_page_explains_missing_model_and_store_outage(browser):
    redis = RedisServer().start()
    try:
        with LiveServer(redis.url) as server:
            base = server.url.rstrip("/")
            watched = _open(browser, base)
            p = watched.page
            p.goto(f"{base}/app/#/readers")
            expect(p.locator("#banner")).to_contain_text("No model published yet")
            p.get_by_label("Reader id").fill("8")
            p.get_by_role("button", name="Show recommendations").click()
            expect(p.locator(".view-known .status-error")).to_be_visible()
            shot(p, "error-no-model", full_page=False)

            fx = publish_fixture(redis.url, n_users=40, n_books=40, seed=3)
            user = fx.user_ids[0]
            redis.stop()  # the store goes down
            p.get_by_label("Reader id").fill(str(user))
            p.get_by_role("button", name="Show recommendations").click()
            alert = p.locator(".view-known .status-error")
            expect(alert).to_contain_text("temporarily unavailable")
            # The failed call made the page recheck /health: the banner now names the outage.
            expect(p.locator("#banner")).to_contain_text("temporarily unavailable")
            shot(p, "error-store-down", full_page=False)

            redis.start()  # and comes back (empty: it keeps nothing on disk), the batch republishes,
            publish_fixture(redis.url, n_users=40, n_books=40, seed=3)
            # The API reconnects by itself; wait until it says so (bounded), so that a busy
            # machine cannot turn this into a test of reconnection timing.
            _wait_until_healthy(base)
            # and "Try again" works without reloading the page.
            alert.get_by_role("button", name="Try again").click()
            expect(p.locator(".view-known .card")).to_have_count(10)
            expect(p.locator("#banner")).to_be_hidden()
            expect(p.locator("#footer-status")).to_contain_text("Model ")
            assert watched.page_errors == []
            assert watched.dialogs == []
            p.context.close()
    finally:
        redis.stop()
