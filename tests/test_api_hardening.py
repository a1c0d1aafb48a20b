"""Hostile and odd requests, in-process against real stores holding a published fixture:
big and non-numeric ids, HEAD, the page's security headers and relative redirect, local API docs,
per-client rate limits, bounded fuzzy title matching, ISBN-13 lookups, and what /stats reveals.
"""

from __future__ import annotations

import logging
import random
import re
import string
import time

import httpx
import orjson
import pytest
from stdnum import isbn as stdnum_isbn

from bookrec.api.main import create_app
from bookrec.api.middleware import RateLimiter
from bookrec.api.search import TitleBudget
from bookrec.config import Settings
from tests.support.asgi import serving
from tests.support.publish import fresh_store_url, publish_fixture

N_USERS, N_BOOKS = 60, 40


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def world(request, redis_server, tmp_path_factory):
    url = fresh_store_url(request.param, redis_server, tmp_path_factory, "hardening")
    fx = publish_fixture(url, n_users=N_USERS, n_books=N_BOOKS, seed=5, serving_works="in_model")
    return {"url": url, "fx": fx, "backend": request.param}


@pytest.fixture()
async def client(world):
    async with serving(world["url"]) as c:
        yield c


def _isbn13(isbn10: str) -> str:
    return stdnum_isbn.to_isbn13(isbn10)


# --- ids in the path ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["1" * 4301, "9" * 20, "abc", "-1", "1e3", "%E2%91%A0"])
async def test_big_or_non_numeric_reader_ids_are_422_with_a_message_and_no_traceback(client, caplog, user):
    with caplog.at_level(logging.WARNING):
        r = await client.get(f"/recommend/{user}")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("user_id: a reader id is a whole number") and "GET /users" in detail
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_get_on_cold_start_is_the_documented_405(client):
    for method in ("GET", "HEAD"):
        r = await client.request(method, "/recommend/cold-start")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
    spec = create_app(Settings(store_url="sqlite:///unused.sqlite3")).openapi()
    assert "405" in spec["paths"]["/recommend/{user_id}"]["get"]["responses"]


async def test_a_content_length_of_thousands_of_digits_is_413(client):
    r = await client.post(
        "/recommend/cold-start", content=b"{}", headers={"content-type": "application/json", "content-length": "9" * 5001}
    )
    assert r.status_code == 413


async def test_an_unknown_path_says_where_to_look(client):
    r = await client.get("/no/such/thing")
    assert r.status_code == 404 and "GET /" in r.json()["detail"]


# --- HEAD --------------------------------------------------------------------------------------


async def test_head_answers_every_get_route_like_get_without_a_body(client, world):
    fx = world["fx"]
    paths = [
        "/", "/health", "/users?limit=3", "/books?limit=2", "/stats", "/model/info", "/metrics",
        f"/recommend/{fx.user_ids[0]}", f"/books/{fx.works[0]['isbn']}", f"/books/{fx.in_model_works()[0]['isbn']}/similar",
        "/books/search?q=garden", "/openapi.json", "/docs", "/redoc", "/app/", "/app/app.js",
        "/recommend/1", "/books/0000000000",  # 404s too
    ]
    for path in paths:
        get = await client.get(path)
        head = await client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path != "/metrics":  # the metrics text changes between the two requests
            assert head.headers.get("content-length") == get.headers.get("content-length"), path


# --- the page, its redirect, the docs ----------------------------------------------------------


async def test_the_page_is_sent_with_security_headers(client):
    for path in ("/app/", "/app/app.js", "/app/style.css"):
        r = await client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    # The header's policy is the page's own meta policy plus what only a header can say.
    page = (await client.get("/app/")).text
    meta = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert r.headers["content-security-policy"].startswith(meta)


async def test_the_redirect_to_the_page_is_relative_whatever_the_host_header(client):
    r = await client.get("/app", headers={"host": "evil.example"})
    assert r.status_code == 307 and r.headers["location"] == "app/"
    # No other redirect builds a URL from the Host header either: a trailing slash is just unknown.
    r = await client.get("/health/", headers={"host": "evil.example"})
    assert r.status_code == 404 and "location" not in r.headers


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_api_docs_load_only_local_files(client, page):
    r = await client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html
    assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        a = await client.get(asset)
        assert a.status_code == 200 and len(a.content) > 1000, asset
    assert "/openapi.json" in html


async def test_stats_reveal_no_paths(client, world):
    r = await client.get("/stats")
    assert r.status_code == 200
    text = r.text
    store = r.json()["store"]
    assert store["backend"] == world["backend"] and store["used_memory"] > 0
    assert "path" not in store and "/" not in text.replace("\\/", "")
    if world["backend"] == "sqlite":
        assert world["url"].split("///", 1)[1] not in text


# --- rate limits -------------------------------------------------------------------------------


async def _client_from(app, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_search_and_cold_start_answer_429_with_retry_after_beyond_the_limit(world):
    fx = world["fx"]
    settings = Settings(
        store_url=world["url"], rate_limit_search_per_minute=6, rate_limit_search_burst=3,
        rate_limit_cold_start_per_minute=2, rate_limit_cold_start_burst=2,
    )
    app = create_app(settings)
    body = {"ratings": [{"isbn": fx.in_model_works()[0]["isbn"], "rating": 8}]}
    async with app.router.lifespan_context(app):
        async with await _client_from(app, "192.0.2.1") as one, await _client_from(app, "192.0.2.2") as two:
            # GET and POST search share one bucket.
            statuses = [(await one.get("/books/search", params={"q": "garden"})).status_code for _ in range(2)]
            statuses.append((await one.post("/books/search", json={"query": "garden"})).status_code)
            assert statuses == [200, 200, 200]
            r = await one.get("/books/search", params={"q": "garden"})
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1 and "retry after" in r.json()["detail"]
            # Another client is not held back, and other endpoints are not limited.
            assert (await two.get("/books/search", params={"q": "garden"})).status_code == 200
            assert (await one.get("/books?limit=1")).status_code == 200

            codes = [(await one.post("/recommend/cold-start", json=body)).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = await one.post("/recommend/cold-start", json=body)
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 30
            assert (await two.post("/recommend/cold-start", json=body)).status_code == 200


SMALL_BOUNDS = {"max_top_k": 3, "max_page_size": 4, "max_random_users": 2, "max_search_results": 5,
                "max_cold_start_ratings": 2}


async def test_bounds_set_in_the_settings_are_checked_and_documented(world):
    """The routes are shared by every app: each app checks and documents the bounds of its own settings."""
    isbn = world["fx"].in_model_works()[0]["isbn"]
    user = world["fx"].user_ids[0]
    over = [
        ("GET", f"/recommend/{user}?top_k=4", None, "top_k: Input should be less than or equal to 3"),
        ("GET", "/users?limit=5&random=3", None,
         "limit: Input should be less than or equal to 4; random: Input should be less than or equal to 2"),
        ("GET", "/books?limit=5", None, "limit: Input should be less than or equal to 4"),
        ("GET", "/books/search?q=garden&limit=6", None, "limit: Input should be less than or equal to 5"),
        ("POST", "/books/search", {"query": "garden", "limit": 6}, "limit: Input should be less than or equal to 5"),
        ("GET", f"/books/{isbn}/similar?n=4", None, "n: Input should be less than or equal to 3"),
        ("POST", "/recommend/cold-start", {"ratings": [{"isbn": isbn}] * 3, "top_k": 4},
         "ratings: List should have at most 2 items after validation, not 3; "
         "top_k: Input should be less than or equal to 3"),
    ]
    async with serving(world["url"], **SMALL_BOUNDS) as small:
        for method, path, body, detail in over:
            r = await small.request(method, path, json=body)
            assert (r.status_code, r.json()["detail"]) == (422, detail), path
            at_most = path.replace("top_k=4", "top_k=3").replace("limit=5", "limit=4").replace("random=3", "random=2")
            at_most = at_most.replace("limit=6", "limit=5").replace("n=4", "n=3")
            if body is None:
                assert (await small.request(method, at_most)).status_code == 200, at_most
    spec = create_app(Settings(store_url="sqlite:///unused.sqlite3", **SMALL_BOUNDS)).openapi()
    params = {(path, p["name"]): p["schema"] for path, item in spec["paths"].items()
              for op in item.values() for p in op.get("parameters", [])}
    assert params[("/recommend/{user_id}", "top_k")]["maximum"] == params[("/books/{isbn}/similar", "n")]["maximum"] == 3
    assert params[("/users", "limit")]["maximum"] == params[("/books", "limit")]["maximum"] == 4
    assert params[("/users", "random")]["anyOf"][0]["maximum"] == 2
    assert params[("/books/search", "limit")]["maximum"] == 5
    bodies = spec["components"]["schemas"]
    assert bodies["ColdStartRequest"]["properties"]["ratings"]["maxItems"] == 2
    assert bodies["ColdStartRequest"]["properties"]["top_k"]["maximum"] == 3
    assert bodies["SearchRequest"]["properties"]["limit"]["maximum"] == 5


def test_the_rate_limiter_refills_and_keeps_a_bounded_table():
    limiter = RateLimiter(per_minute=60, burst=2, max_clients=100, what="test")
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.take("a", now=1.0) == 0.0  # one token back after a second
    assert limiter.take("a", now=1.0) > 0
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", now=2.0)
    assert len(limiter.buckets) == 100
    assert RateLimiter(per_minute=0, burst=1, max_clients=1, what="off").enabled is False


# --- cold start: bounded title matching, ISBN-13 -----------------------------------------------


def _gibberish_titles(n: int, length: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
        out.append(" ".join(words)[:length].strip())
    return out


async def test_cold_start_with_200_long_titles_answers_quickly_and_correctly(client, world):
    fx = world["fx"]
    known = fx.in_model_works()[1]
    titles = _gibberish_titles(199, 300)
    body = {"ratings": [{"title": t, "rating": 5} for t in titles] + [{"isbn": known["isbn"], "rating": 9}]}
    await client.post("/recommend/cold-start", json={"ratings": [{"isbn": known["isbn"], "rating": 9}]})  # warm
    started = time.perf_counter()
    r = await client.post("/recommend/cold-start", json=body)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    out = r.json()
    assert out["n_recognized"] == 1 and out["recognized"][0]["work_key"] == known["work_key"]
    assert [u["input"] for u in out["unrecognized"]] == titles
    assert all(u["reason"] for u in out["unrecognized"])
    assert out["recommendations"]
    assert elapsed < 3.0  # the matching itself is capped at 0.15 s of CPU; the rest is the fold-in


async def test_typed_titles_with_a_typo_are_still_matched(client, world):
    fx = world["fx"]
    works = fx.in_model_works()[:4]
    typed = [w["title"].lower() + "s" for w in works]  # one letter too many
    r = await client.post("/recommend/cold-start", json={"ratings": [{"title": t, "rating": 7} for t in typed]})
    assert r.status_code == 200
    found = {x["input"]: x["work_key"] for x in r.json()["recognized"]}
    assert found == {t: w["work_key"] for t, w in zip(typed, works)}


async def test_title_matching_stops_at_its_budget_but_exact_titles_still_match(world):
    from bookrec.api.services import resolve_book
    from bookrec.api.schemas import RatingIn

    work = world["fx"].in_model_works()[0]
    app = create_app(Settings(store_url=world["url"]))
    async with app.router.lifespan_context(app):
        bundle = await app.state.api.versions.bundle()
    spent = TitleBudget(0.0)
    read, entry = resolve_book(bundle, RatingIn(title=work["title"], rating=8), spent)
    assert read is not None and entry["work_key"] == work["work_key"]
    read, entry = resolve_book(bundle, RatingIn(title=work["title"].lower() + "x", rating=8), spent)
    assert read is None and "too many titles" in entry["reason"]
    # With time left, the same typo matches.
    read, entry = resolve_book(bundle, RatingIn(title=work["title"].lower() + "x", rating=8), TitleBudget(1.0))
    assert read is not None and entry["work_key"] == work["work_key"]


async def test_isbn13_finds_the_same_book_as_its_isbn10_everywhere(client, world):
    fx = world["fx"]
    work = fx.in_model_works()[2]
    isbn10 = work["isbn"]
    isbn13 = _isbn13(isbn10)
    dashed = stdnum_isbn.format(isbn13)
    assert dashed != isbn13 and "-" in dashed

    ten = await client.get(f"/books/{isbn10}")
    assert ten.status_code == 200
    for form in (isbn13, dashed):
        r = await client.get(f"/books/{form}")
        assert r.status_code == 200 and r.json() == ten.json()  # the stored form, unchanged
        assert r.json()["isbn"] == isbn10

    sim10 = await client.get(f"/books/{isbn10}/similar", params={"n": 3})
    sim13 = await client.get(f"/books/{isbn13}/similar", params={"n": 3})
    assert sim13.status_code == sim10.status_code == 200 and sim13.json() == sim10.json()

    hits = (await client.get("/books/search", params={"q": dashed})).json()["results"]
    assert hits and hits[0]["isbn"] == isbn10 and hits[0]["score"] == 100.0

    r = await client.post("/recommend/cold-start", json={"ratings": [{"isbn": dashed, "rating": 9}]})
    assert r.status_code == 200
    recognised = r.json()["recognized"]
    assert [(x["input"], x["isbn"], x["work_key"]) for x in recognised] == [(dashed, isbn10, work["work_key"])]


async def test_an_isbn13_of_no_catalogue_book_is_404(client):
    r = await client.get("/books/9791234567896")  # valid 979 ISBN-13: no ISBN-10 twin
    assert r.status_code == 404 and "9791234567896" in r.json()["detail"]


# --- messages ----------------------------------------------------------------------------------


async def test_a_nan_rating_is_refused_as_not_a_number(client):
    r = await client.post(
        "/recommend/cold-start", content=b'{"ratings": [{"isbn": "0316666343", "rating": NaN}]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "finite number" in detail and "10" not in detail


async def test_an_empty_ratings_list_is_refused_as_the_schema_says(client):
    r = await client.post("/recommend/cold-start", json={"ratings": []})
    assert r.status_code == 422 and "at least one book" in r.json()["detail"]
    schema = create_app(Settings(store_url="sqlite:///unused.sqlite3")).openapi()["components"]["schemas"]
    assert schema["ColdStartRequest"]["properties"]["ratings"]["minItems"] == 1
    assert orjson.dumps(schema)  # the document stays serialisable
