"""Every endpoint and every error path of the API, in-process (httpx.ASGITransport, lifespan run),
against real stores: the suite's redis-server and the embedded SQLite store, holding a version
published by `tests.support.publish.publish_fixture`.

The expected values come from what the fixture published (decoded independently of the API),
and fold-in / similarity results are recomputed here directly from the published serving arrays.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import orjson
import pytest

from bookrec.api.main import create_app
from bookrec.config import Settings
from bookrec.contracts.payloads import P_LIKED_DIGITS, RATING_DECIMALS
from scipy.special import ndtr

from bookrec.model.foldin import fold_in_components, fold_in_from_arrays, rank_items_for_fold_in
from bookrec.store import open_store
from tests.support.asgi import serving
from tests.support.publish import _catalog_parquet, fresh_store_url, publish_fixture

# How far a served figure may be from the exact one: the payload contract's rounding.
RATING_ABS = 0.5 * 10.0**-RATING_DECIMALS + 1e-9
P_LIKED_REL = 0.5 * 10.0 ** (1 - P_LIKED_DIGITS)

N_USERS, N_BOOKS, TOP_N = 120, 60, 20


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def world(request, redis_server, tmp_path_factory):
    url = fresh_store_url(request.param, redis_server, tmp_path_factory, "store")
    # The serving model covers the works flagged in_model only, as the batch's does, so books
    # outside the rating model exist; the relevance blob covers 80% of the works (w % 5 != 1).
    fx = publish_fixture(url, n_users=N_USERS, n_books=N_BOOKS, top_n=TOP_N, seed=3, serving_works="in_model")
    return {"url": url, "fx": fx, "backend": request.param}


@pytest.fixture()
async def client(world):
    async with serving(world["url"]) as c:
        yield c


def _not_relevance_candidates(works, fx):
    """Works the relevance blob does not cover: a cold start from these alone is a plain fold-in."""
    candidates = set(fx.relevance["item_keys"].tolist())
    return [w for w in works if w["work_key"] not in candidates]


# --- service ---------------------------------------------------------------------------------


async def test_root_describes_the_service(client):
    r = await client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "bookrec"
    assert body["links"]["health"] == "/health" and body["links"]["app"] == "/app/"


async def test_health_ok_names_the_published_version(client, world):
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "ok", "model_version": world["fx"].version}


async def test_health_503_when_nothing_is_published(tmp_path):
    url = f"sqlite:///{tmp_path}/empty.sqlite3"
    with open_store(url) as store, pytest.raises(RuntimeError):  # a store file with nothing published
        with store.begin_publish():
            raise RuntimeError("aborted")
    async with serving(url) as c:
        r = await c.get("/health")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        body = r.json()
        assert body["status"] == "unavailable" and body["store"] == "ok"
        assert "no model version is published" in body["reason"]
        r = await c.get(f"/recommend/1")
        assert r.status_code == 503 and "bookrec batch" in r.json()["detail"]


async def test_health_names_a_missing_store_file_and_creates_nothing(tmp_path):
    async with serving(f"sqlite:///{tmp_path}/mistyped/store.sqlite3") as c:
        r = await c.get("/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        body = r.json()
        assert body["store"] == "unavailable" and "does not exist" in body["reason"]
        assert str(tmp_path) not in r.text
        assert (await c.get("/recommend/1")).status_code == 503
    assert list(tmp_path.iterdir()) == []


async def test_stats_counts_what_was_published(client, world):
    fx = world["fx"]
    body = (await client.get("/stats")).json()
    assert body["users_with_recommendations"] == N_USERS
    assert body["books"] == len(fx.books)
    assert body["model_version"] == fx.version
    assert body["coverage_by_tier"] == fx.meta["coverage_by_tier"]
    assert body["store"]["backend"] == world["backend"]


async def test_model_info_is_the_published_meta(client, world):
    r = await client.get("/model/info", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert r.json() == orjson.loads(orjson.dumps(world["fx"].meta))


async def test_model_info_without_traces_gzipped_and_revalidated(client, world):
    meta = orjson.loads(orjson.dumps(world["fx"].meta))
    assert "traces" in meta
    brief = await client.get("/model/info", params={"traces": "false"}, headers={"Accept-Encoding": "gzip"})
    assert brief.status_code == 200 and brief.headers["content-encoding"] == "gzip"
    assert brief.json() == {k: v for k, v in meta.items() if k != "traces"}  # httpx decompresses
    full = await client.get("/model/info", headers={"Accept-Encoding": "gzip"})
    assert full.json() == meta and full.headers["etag"] != brief.headers["etag"]
    assert len(full.content) > len(brief.content)
    again = await client.get("/model/info", params={"traces": "false"}, headers={"If-None-Match": brief.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert (await client.get("/model/info", params={"traces": "maybe"})).status_code == 422


# --- recommendations of known readers --------------------------------------------------------


async def test_recommend_returns_the_stored_list_head(client, world):
    fx = world["fx"]
    user = fx.user_ids[5]
    r = await client.get(f"/recommend/{user}", params={"top_k": 7})
    assert r.status_code == 200
    body = r.json()
    stored = fx.recommendations[user]
    # The default ranking is for_you, the order the list is stored in.
    assert body["rank_by"] == "for_you"
    assert body["recommendations"] == stored["recommendations"][:7]
    assert body["user_id"] == user and body["basis"] == stored["basis"]
    assert body["total_available"] == TOP_N and body["model_version"] == fx.version
    assert "note" not in body


async def test_recommend_more_than_stored_adds_a_note(client, world):
    user = world["fx"].user_ids[0]
    body = (await client.get(f"/recommend/{user}", params={"top_k": 50})).json()
    assert len(body["recommendations"]) == TOP_N
    assert "50" in body["note"] and str(TOP_N) in body["note"]


@pytest.mark.parametrize("top_k", ["0", "-3", "101", "ten", "2.5"])
async def test_recommend_bad_top_k_is_422_with_a_message(client, world, top_k):
    r = await client.get(f"/recommend/{world['fx'].user_ids[0]}", params={"top_k": top_k})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("top_k: ")


async def test_recommend_unknown_user_is_404_with_help(client):
    r = await client.get("/recommend/987654321")
    assert r.status_code == 404
    detail = r.json()["detail"]
    assert "987654321" in detail and "/users" in detail and "cold-start" in detail


async def test_recommend_user_id_beyond_the_store_range_is_422(client):
    r = await client.get(f"/recommend/{2**60}")
    assert r.status_code == 422 and r.json()["detail"].startswith("user_id: ")


@pytest.mark.parametrize("user", ["-1", "abc", "1.5", "1" * 4301])
async def test_recommend_non_numeric_user_id_is_422_with_help(client, user):
    r = await client.get(f"/recommend/{user}")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("user_id: ") and "whole number" in detail and "/users" in detail


async def test_405_lists_every_method_of_the_path(client):
    r = await client.get("/recommend/cold-start")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await client.put("/books/search")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"
    # the fixed path wins over /recommend/{user_id}, whose GET would answer 405 here
    for method in ("PUT", "DELETE"):
        r = await client.request(method, "/recommend/cold-start")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
    for path in ("/app/", "/openapi.json"):
        r = await client.put(path)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", path


async def test_page_directory_urls_never_redirect_by_the_host_header(client):
    r = await client.get("/app/%2e", headers={"Host": "evil.example"})
    assert r.status_code == 404 and "evil" not in r.headers.get("location", "")
    r = await client.get("/app", headers={"Host": "evil.example"})
    assert r.status_code == 307 and r.headers["location"] == "app/"


async def test_a_json_body_sent_as_another_type_is_a_415(client):
    r = await client.post("/books/search", content=b'{"query": "storm"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


async def test_a_body_field_named_query_keeps_its_name_in_the_message(client):
    r = await client.post("/books/search", json={"query": ""})
    assert r.status_code == 422 and r.json()["detail"].startswith("query: ")


@pytest.mark.parametrize("path,body", [
    ("/books/search", {"query": "storm", "limit": True}),
    ("/books/search", {"query": "storm", "limit": "3"}),
    ("/recommend/cold-start", {"ratings": [{"title": "storm"}], "top_k": True}),
])
async def test_body_counts_must_be_json_integers(client, path, body):
    r = await client.post(path, json=body)
    assert r.status_code == 422 and ("limit" in r.json()["detail"] or "top_k" in r.json()["detail"])


async def test_recommend_rank_by_lower_reorders_the_stored_list(client, world):
    fx = world["fx"]
    user = fx.user_ids[1]
    body = (await client.get(f"/recommend/{user}", params={"top_k": TOP_N, "rank_by": "lower"})).json()
    lowers = [r["confidence_interval"][0] for r in body["recommendations"]]
    assert lowers == sorted(lowers, reverse=True)
    assert [r["score"] for r in body["recommendations"]] == lowers
    assert [r["rank"] for r in body["recommendations"]] == list(range(1, TOP_N + 1))
    stored_keys = {r["work_key"] for r in fx.recommendations[user]["recommendations"]}
    assert {r["work_key"] for r in body["recommendations"]} == stored_keys
    assert body["rank_by"] == "lower"


async def test_recommend_rank_by_sample_is_seeded_and_a_permutation(client, world):
    user = world["fx"].user_ids[2]
    params = {"top_k": TOP_N, "rank_by": "sample", "seed": 11}
    a = (await client.get(f"/recommend/{user}", params=params)).json()["recommendations"]
    b = (await client.get(f"/recommend/{user}", params=params)).json()["recommendations"]
    c = (await client.get(f"/recommend/{user}", params={**params, "seed": 12})).json()["recommendations"]
    assert [r["work_key"] for r in a] == [r["work_key"] for r in b]
    assert sorted(r["work_key"] for r in a) == sorted(r["work_key"] for r in c)
    # 20 items with overlapping intervals: two seeds giving the same order has negligible probability.
    assert [r["work_key"] for r in a] != [r["work_key"] for r in c]


async def test_concurrent_reads_share_store_round_trips_and_get_their_own_answers(world):
    fx = world["fx"]
    app = create_app(Settings(store_url=world["url"]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await c.get("/health")
            coalescer = app.state.api.recommendations
            users = fx.user_ids[:40] + [987654321]  # one unknown reader in the middle of a batch
            before = coalescer.round_trips
            responses = await asyncio.gather(*(c.get(f"/recommend/{u}", params={"top_k": 20}) for u in users))
            for user, r in zip(users, responses):
                if user in fx.recommendations:
                    assert r.status_code == 200
                    assert r.json()["recommendations"] == fx.recommendations[user]["recommendations"]
                else:
                    assert r.status_code == 404
            # 41 concurrent requests; the unknown one is re-checked once more after a fresh pointer read.
            assert coalescer.round_trips - before < len(users) // 2


# --- users -----------------------------------------------------------------------------------


async def test_users_cursor_pages_cover_every_user_once(client, world):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 25} | ({"cursor": cursor} if cursor is not None else {})
        body = (await client.get("/users", params=params)).json()
        assert body["total"] == N_USERS
        seen += body["users"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(world["fx"].user_ids)
    assert pages == -(-N_USERS // 25)


async def test_users_random_sample_is_distinct_known_users(client, world):
    body = (await client.get("/users", params={"random": 30})).json()
    assert set(body) == {"users", "total"}
    assert len(body["users"]) == len(set(body["users"])) == 30
    assert set(body["users"]) <= set(world["fx"].user_ids)


@pytest.mark.parametrize("params", [{"random": 0}, {"random": 101}, {"limit": 0}, {"limit": 501}, {"cursor": -1}])
async def test_users_bad_parameters_are_422(client, params):
    r = await client.get("/users", params=params)
    assert r.status_code == 422 and r.json()["detail"]


# --- books -----------------------------------------------------------------------------------


async def test_books_pages_walk_the_catalogue(client, world):
    fx = world["fx"]
    first = (await client.get("/books", params={"limit": 10, "offset": 0})).json()
    second = (await client.get("/books", params={"limit": 10, "offset": 10})).json()
    assert first["total"] == len(fx.books) and first["limit"] == 10 and first["offset"] == 0
    isbns = [b["isbn"] for b in first["books"] + second["books"]]
    assert len(isbns) == len(set(isbns)) == 20 and set(isbns) <= set(fx.books)
    beyond = (await client.get("/books", params={"offset": 10_000})).json()
    assert beyond["books"] == [] and beyond["total"] == len(fx.books)


async def test_book_by_isbn_normalises_like_the_importer(client, world):
    fx = world["fx"]
    isbn = fx.isbns[3]
    messy = f" {isbn[:1]}-{isbn[1:4]} {isbn[4:]}".lower()
    r = await client.get(f"/books/{messy}")
    assert r.status_code == 200
    assert r.json() == fx.books[isbn]


@pytest.mark.parametrize("isbn", ["0000000000", "---"])
async def test_unknown_book_is_404(client, isbn):
    r = await client.get(f"/books/{isbn}")
    assert r.status_code == 404 and "/books/search" in r.json()["detail"]


async def test_similar_books_of_a_work_without_relevance_match_the_factor_cosine(client, world):
    fx = world["fx"]
    work = _not_relevance_candidates(fx.in_model_works(), fx)[2]
    r = await client.get(f"/books/{work['isbn']}/similar", params={"n": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["basis"] == "factor_cosine"
    keys = fx.serving_model["item_keys"].tolist()
    i = keys.index(work["work_key"])
    v = fx.serving_model["item_factors"].astype(np.float64)
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    cos = np.einsum("sik,sk->si", v, v[:, i, :])
    mean, sd = cos.mean(axis=0), cos.std(axis=0)
    mean[i] = -np.inf
    expected = np.argsort(-mean, kind="stable")[:5]
    assert [s["work_key"] for s in body["similar"]] == [keys[j] for j in expected]
    # float32 factors in the API vs float64 here: agree to ~1e-6, reported to 4 decimals.
    assert np.allclose([s["similarity"] for s in body["similar"]], mean[expected], atol=2e-4)
    assert np.allclose([s["similarity_sd"] for s in body["similar"]], sd[expected], atol=2e-4)
    assert work["work_key"] not in {s["work_key"] for s in body["similar"]}


async def test_similar_of_a_book_outside_both_models_is_404(client, world):
    fx = world["fx"]
    outside = next(w for w in _not_relevance_candidates(fx.works, fx) if w not in fx.in_model_works())
    r = await client.get(f"/books/{outside['isbn']}/similar")
    assert r.status_code == 404 and "too few ratings" in r.json()["detail"]


# --- search ----------------------------------------------------------------------------------


async def test_search_finds_a_title_despite_a_typo(client, world):
    work = world["fx"].works[10]
    title = work["title"]
    typo = title[:-2] + title[-1]  # drop the second-to-last letter
    for q in (title, typo.lower()):
        body = (await client.get("/books/search", params={"q": q, "limit": 5})).json()
        assert body["query"] == q
        assert work["work_key"] in [b["work_key"] for b in body["results"][:3]], q


async def test_search_by_author_and_one_result_per_work(client, world):
    work = world["fx"].works[4]
    body = (await client.get("/books/search", params={"q": work["author"], "limit": 50})).json()
    keys = [b["work_key"] for b in body["results"]]
    assert len(keys) == len(set(keys))
    same_author = {w["work_key"] for w in world["fx"].works if w["author"] == work["author"]}
    assert same_author <= set(keys)
    scores = [b["score"] for b in body["results"]]
    assert all(0 <= s <= 100 for s in scores)


async def test_search_post_matches_get(client, world):
    q = world["fx"].works[7]["title"]
    got = (await client.get("/books/search", params={"q": q, "limit": 4})).json()
    posted = (await client.post("/books/search", json={"query": q, "limit": 4})).json()
    assert posted == got and len(got["results"]) == 4


@pytest.mark.parametrize("params", [{"q": ""}, {"q": "x", "limit": 0}, {"q": "x", "limit": 51}, {}])
async def test_search_bad_parameters_are_422(client, params):
    r = await client.get("/books/search", params=params)
    assert r.status_code == 422 and r.json()["detail"]


# --- cold start ------------------------------------------------------------------------------


async def test_cold_start_from_books_without_relevance_folds_in_with_the_serving_model(client, world):
    """Rated books the relevance model does not cover: every book of the rating model is ranked by
    the fold-in alone (for_you falls back to the predicted rating, and says so)."""
    fx = world["fx"]
    works = _not_relevance_candidates(fx.in_model_works(), fx)
    by_isbn, by_title = works[0], works[3]
    outside = next(w for w in _not_relevance_candidates(fx.works, fx) if w not in fx.in_model_works())
    request = {
        "ratings": [
            {"isbn": "-".join([by_isbn["isbn"][:3], by_isbn["isbn"][3:]]), "rating": 9},
            {"title": by_title["title"].lower() + "s", "rating": 3},  # one letter too many
            {"isbn": "1234567890", "rating": 7},
            {"isbn": outside["isbn"], "rating": 8},
        ],
        "top_k": 6,
    }
    r = await client.post("/recommend/cold-start", json=request)
    assert r.status_code == 200
    body = r.json()
    assert body["n_recognized"] == 2 and body["basis"] == "folded_in" and body["model_version"] == fx.version
    assert body["rank_by"] == "for_you" and "ranked by predicted rating" in body["note"]
    assert [x["work_key"] for x in body["recognized"]] == [by_isbn["work_key"], by_title["work_key"]]
    reasons = {u["input"]: u["reason"] for u in body["unrecognized"]}
    assert "no book with ISBN" in reasons["1234567890"]
    assert "too few ratings" in reasons[outside["isbn"]]

    # The same fold-in computed here, straight from the published arrays.
    keys = fx.serving_model["item_keys"].tolist()
    items = np.array([keys.index(by_isbn["work_key"]), keys.index(by_title["work_key"])])
    arrays = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in fx.serving_model.items()}
    fold = fold_in_from_arrays(arrays, items, np.array([9.0, 3.0]))
    top, mean, lower, upper = rank_items_for_fold_in(arrays, fold, n=6, exclude=items, level=0.9)
    recs = body["recommendations"]
    assert [x["work_key"] for x in recs] == [keys[i] for i in top]
    assert np.allclose([x["predicted_rating"] for x in recs], mean, rtol=0, atol=RATING_ABS)
    assert np.allclose([x["confidence_interval"] for x in recs], np.c_[lower, upper], rtol=0, atol=RATING_ABS)
    assert not {by_isbn["work_key"], by_title["work_key"]} & {x["work_key"] for x in recs}
    # P(liked) of each: the mixture mean of the per-sample normal tails above the liked threshold.
    means, sds = fold_in_components(arrays, fold, top)
    p_liked = ndtr((means - float(fx.relevance["liked_threshold"])) / sds).mean(axis=1)
    assert np.allclose([x["p_liked"] for x in recs], p_liked, rtol=P_LIKED_REL, atol=0)


async def test_cold_start_rank_by_lower_matches_the_model(client, world):
    fx = world["fx"]
    works = _not_relevance_candidates(fx.in_model_works(), fx)[:3]
    request = {"ratings": [{"isbn": w["isbn"], "rating": r} for w, r in zip(works, (8, 9, 2))], "top_k": 8,
               "rank_by": "lower"}
    body = (await client.post("/recommend/cold-start", json=request)).json()
    keys = fx.serving_model["item_keys"].tolist()
    items = np.array([keys.index(w["work_key"]) for w in works])
    arrays = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in fx.serving_model.items()}
    fold = fold_in_from_arrays(arrays, items, np.array([8.0, 9.0, 2.0]))
    top, _, lower, _ = rank_items_for_fold_in(arrays, fold, n=8, exclude=items, rank_by="lower", level=0.9)
    assert [x["work_key"] for x in body["recommendations"]] == [keys[i] for i in top]
    lowers = [x["confidence_interval"][0] for x in body["recommendations"]]
    assert lowers == sorted(lowers, reverse=True) and np.allclose(lowers, lower, rtol=0, atol=RATING_ABS)


async def test_cold_start_empty_is_422_as_the_schema_says(client):
    r = await client.post("/recommend/cold-start", json={"ratings": []})
    assert r.status_code == 422 and r.json()["detail"].startswith("ratings: add at least one book")


async def test_cold_start_nothing_recognised_is_400_with_the_list(client):
    r = await client.post(
        "/recommend/cold-start", json={"ratings": [{"title": "qwxz vbnm plkj", "rating": 8}, {"isbn": "999", "rating": 2}]}
    )
    assert r.status_code == 400
    body = r.json()
    assert "none of the books was recognised" in body["detail"]
    assert [u["input"] for u in body["unrecognized"]] == ["qwxz vbnm plkj", "999"]


@pytest.mark.parametrize(
    "payload",
    [
        {"ratings": [{"isbn": "0316666343", "rating": 11}]},
        {"ratings": [{"isbn": "0316666343", "rating": 0}]},
        {"ratings": [{"isbn": "0316666343", "rating": "7"}]},
        {"ratings": [{"isbn": "0316666343", "rating": True}]},
        {"ratings": [{"isbn": "0316666343", "rating": 5}], "rank_by": "best"},
        {"ratings": [{"rating": 5}]},
        {"ratings": [{"isbn": "0316666343", "rating": 5}], "top_k": 0},
        {"ratings": [{"isbn": "0316666343", "rating": 5}], "top_k": 101},
        {"ratings": [{"isbn": "0316666343", "rating": 5}] * 201},
        {"ratings": "nope"},
        {"ratings": [{"isbn": "0316666343", "rating": 5}], "surprise": 1},
    ],
)
async def test_cold_start_bad_bodies_are_422(client, payload):
    r = await client.post("/recommend/cold-start", json=payload)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


async def test_cold_start_invalid_json_is_400_saying_where(client):
    r = await client.post("/recommend/cold-start", content=b'{"ratings": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"detail": "the request body is not valid JSON (near character 13)"}


async def test_unreadable_body_is_400(client):
    r = await client.post("/books/search", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"detail": "the request body is not valid JSON (UTF-8)"}


async def test_request_body_over_the_limit_is_413(client):
    big = {"ratings": [{"title": "x" * 200, "rating": 5}] * 400}  # ~90 kB > 64 kB
    r = await client.post("/recommend/cold-start", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


# --- corrupt published data: 503 with a generic message, never exception text ----------------


async def test_corrupt_payload_and_model_never_leak_internals(tmp_path, world):
    fx = world["fx"]
    url = f"sqlite:///{tmp_path}/corrupt.sqlite3"
    with open_store(url) as store:
        with store.begin_publish() as pub:
            pub.put_recommendations([(1, b"{this is not json"), (2, orjson.dumps(fx.recommendations[fx.user_ids[0]]))])
            pub.put_books((i, orjson.dumps(b)) for i, b in fx.books.items())
            pub.put_blob("meta", orjson.dumps(fx.meta))
            pub.put_blob("catalog", _catalog_parquet(fx.works))
            pub.put_blob("serving_model", b"PK\x03\x04 definitely not an npz")
    async with serving(url) as c:
        r = await c.get("/recommend/1")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json() == {"detail": "the recommendation store returned unreadable data; it has been logged"}
        assert (await c.get("/recommend/2")).status_code == 200
        r = await c.post("/recommend/cold-start", json={"ratings": [{"isbn": fx.isbns[0], "rating": 8}]})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json() == {"detail": "the published serving model is unreadable"}
        # The catalogue is fine, so search still answers.
        assert (await c.get("/books/search", params={"q": fx.works[0]["title"]})).status_code == 200


# --- metrics and CORS ------------------------------------------------------------------------


async def test_metrics_count_requests_per_route_template(client, world):
    fx = world["fx"]
    for user in fx.user_ids[:3]:
        await client.get(f"/recommend/{user}")
    await client.get("/recommend/987654321")
    text = (await client.get("/metrics")).text

    def value(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)", text)
        assert m, pattern
        return float(m.group(1))

    ok = value(r'bookrec_http_requests_total\{method="GET",route="/recommend/\{user_id\}",status="200"\}')
    missing = value(r'bookrec_http_requests_total\{method="GET",route="/recommend/\{user_id\}",status="404"\}')
    assert ok >= 3 and missing >= 1
    assert value(r'bookrec_http_request_duration_seconds_count\{method="GET",route="/recommend/\{user_id\}"\}') >= 4
    assert value(rf'bookrec_model_version_info\{{version="{fx.version}"\}}') == 1.0
    assert not re.search(r'route="/recommend/\d', text)  # one series per template, not per user


async def test_cors_allows_only_configured_origins_without_credentials(world):
    async with serving(world["url"], cors_origins=["http://allowed.example"]) as c:
        pre = await c.options(
            "/recommend/1",
            headers={"Origin": "http://allowed.example", "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://allowed.example"
        assert "access-control-allow-credentials" not in pre.headers
        r = await c.get("/", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        bad = await c.options(
            "/recommend/1", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert bad.status_code == 400
