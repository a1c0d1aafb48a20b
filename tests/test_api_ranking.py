"""The ranking contract of the API (docs/ARCHITECTURE.md sections 3 and 4): ranking modes that
re-sort the same stored candidates, reasons, cold start from books read (rated or not) through
the `relevance` blob, similar books read together, and the fallbacks for versions without (or
with a broken) relevance blob.

In-process (httpx.ASGITransport, lifespan run) against real stores, the suite's redis-server and
the embedded SQLite store, holding versions published by `tests.support.publish.publish_fixture`.
Expected values are recomputed here from what the fixture published (its relevance arrays and
serving model), independently of the API's code.
"""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest
from scipy.special import ndtr

from bookrec.contracts.payloads import P_LIKED_DIGITS, RATING_DECIMALS, SCORE_DIGITS
from bookrec.model import kernels
from bookrec.model.foldin import fold_in_components, fold_in_from_arrays
from bookrec.store import open_store
from tests.support.asgi import serving
from tests.support.publish import _catalog_parquet, fresh_store_url, publish_fixture

# How far a served figure may be from the exact one: the payload contract's rounding.
RATING_ABS = 0.5 * 10.0**-RATING_DECIMALS + 1e-9
SCORE_REL = 0.5 * 10.0 ** (1 - SCORE_DIGITS)
P_LIKED_REL = 0.5 * 10.0 ** (1 - P_LIKED_DIGITS)

N_USERS, N_BOOKS, TOP_N = 80, 60, 20
Z90 = 1.6448536269514722
MODES = ("for_you", "mean", "lower", "sample")


@pytest.fixture(scope="module", params=["redis", "sqlite"])
def world(request, redis_server, tmp_path_factory):
    url = fresh_store_url(request.param, redis_server, tmp_path_factory, "ranking")
    fx = publish_fixture(url, n_users=N_USERS, n_books=N_BOOKS, top_n=TOP_N, seed=5, serving_works="in_model")
    return {"url": url, "fx": fx}


@pytest.fixture()
async def client(world):
    async with serving(world["url"]) as c:
        yield c


# --- what the fixture published, decoded independently ------------------------------------------


class Rel:
    """The published relevance arrays, with the expected cold-start computation written out."""

    def __init__(self, fx):
        a = fx.relevance
        self.keys = a["item_keys"].tolist()
        self.isbns = a["item_isbns"].tolist()
        self.nb = a["neighbours"].astype(np.int64)
        self.w = a["weights"].astype(np.float64)
        self.sd = a["weight_sd"].astype(np.float64)
        self.pop = a["popularity"]
        self.fmean = a["fallback_mean"]
        self.fsd = a["fallback_sd"]
        self.threshold = float(a["liked_threshold"])
        self.like_weight = float(a["like_weight"])
        self.local = {k: i for i, k in enumerate(self.keys)}

    def candidates(self, read: list[int]) -> dict[int, tuple[float, float, int]]:
        """candidate -> (relevance, sd, because) over the stored neighbours, read ones excluded,
        positive relevance only."""
        total, var, best = {}, {}, {}
        for h in read:
            for j, w, sd in zip(self.nb[h], self.w[h], self.sd[h]):
                j = int(j)
                total[j] = total.get(j, 0.0) + w
                var[j] = var.get(j, 0.0) + sd * sd
                if j not in best or w > best[j][0]:
                    best[j] = (w, h)
        return {j: (total[j], np.sqrt(var[j]), best[j][1]) for j in total if j not in read and total[j] > 0}


def _work(fx, key):
    return next(w for w in fx.works if w["work_key"] == key)


def _serving_keys(fx) -> list[str]:
    return fx.serving_model["item_keys"].tolist()


def _users_of_each_basis(fx, per_basis: int = 2) -> list[int]:
    out = []
    for basis in ("personal", "folded_in", "similar_reading", "popular"):
        out += [u for u in fx.user_ids if fx.recommendations[u]["basis"] == basis][:per_basis]
    return out


def _mode_key(item: dict, mode: str) -> float:
    return {"for_you": item["score"], "mean": item["predicted_rating"], "lower": item["confidence_interval"][0]}[mode]


# --- GET /recommend: every mode re-sorts the same stored items by its own key ------------------


@pytest.mark.parametrize("mode", MODES)
async def test_each_mode_sorts_the_same_items_by_its_own_key(client, world, mode):
    fx = world["fx"]
    reordered = 0
    for user in _users_of_each_basis(fx):
        stored = fx.recommendations[user]["recommendations"]
        r = await client.get(f"/recommend/{user}", params={"top_k": TOP_N, "rank_by": mode, "seed": 3})
        assert r.status_code == 200
        body = r.json()
        items = body["recommendations"]
        assert body["rank_by"] == mode and body["total_available"] == TOP_N
        # The same items (the whole stored list), each unchanged apart from rank and score.
        assert sorted(x["work_key"] for x in items) == sorted(x["work_key"] for x in stored)
        by_key = {x["work_key"]: x for x in stored}
        for x in items:
            same = {k: v for k, v in x.items() if k not in ("rank", "score")}
            assert same == {k: v for k, v in by_key[x["work_key"]].items() if k not in ("rank", "score")}
        assert [x["rank"] for x in items] == list(range(1, TOP_N + 1))
        scores = [x["score"] for x in items]
        assert scores == sorted(scores, reverse=True), f"{mode} is not sorted by its score"
        if mode == "sample":
            # One draw per book around its predicted rating (sd = half-width / z90): well within 6 sd.
            for x in items:
                assert abs(x["score"] - x["predicted_rating"]) <= 6 * max(x["uncertainty"], 1e-9) / Z90 + 1e-6
        else:
            assert scores == [_mode_key(x, mode) for x in items]
            if mode == "for_you":
                assert scores == [by_key[x["work_key"]]["score"] for x in items]  # the stored score
        reordered += [x["work_key"] for x in items] != [x["work_key"] for x in stored]
    # for_you is the stored order; every other mode reorders most lists.
    if mode == "for_you":
        assert reordered == 0
    else:
        assert reordered >= 4


async def test_default_mode_is_for_you_and_the_stored_order(client, world):
    fx = world["fx"]
    user = fx.user_ids[0]
    body = (await client.get(f"/recommend/{user}", params={"top_k": 8})).json()
    assert body["rank_by"] == "for_you"
    assert body["recommendations"] == fx.recommendations[user]["recommendations"][:8]
    scores = [x["score"] for x in body["recommendations"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1


async def test_sample_mode_is_reproducible_with_a_seed(client, world):
    user = world["fx"].user_ids[1]
    params = {"top_k": TOP_N, "rank_by": "sample", "seed": 7}
    a = (await client.get(f"/recommend/{user}", params=params)).json()["recommendations"]
    b = (await client.get(f"/recommend/{user}", params=params)).json()["recommendations"]
    c = (await client.get(f"/recommend/{user}", params={**params, "seed": 8})).json()["recommendations"]
    assert a == b
    assert [x["score"] for x in a] != [x["score"] for x in c]


async def test_reasons_of_every_kind_come_through(client, world):
    fx = world["fx"]
    kinds = set()
    for user in _users_of_each_basis(fx, per_basis=3):
        body = (await client.get(f"/recommend/{user}", params={"top_k": TOP_N, "rank_by": "mean"})).json()
        stored = {x["work_key"]: x for x in fx.recommendations[user]["recommendations"]}
        for x in body["recommendations"]:
            assert x["reason"] == stored[x["work_key"]]["reason"]
            assert x["p_liked"] == stored[x["work_key"]]["p_liked"]
            assert x["relevance"] == stored[x["work_key"]]["relevance"]
            kinds.add(x["reason"]["kind"])
            if x["reason"]["kind"] == "because_you_read":
                assert x["reason"]["isbn"] in fx.books and x["reason"]["title"]
                assert x["reason"]["work_key"] != x["work_key"]
            if x["reason"]["kind"] == "popular_in_segment":
                assert x["reason"]["segment"].startswith("readers in ")
    assert kinds == {"because_you_read", "popular_in_segment", "popular"}


async def test_bad_rank_by_is_422_naming_the_modes(client, world):
    r = await client.get(f"/recommend/{world['fx'].user_ids[0]}", params={"rank_by": "best"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("rank_by: ") and "for_you" in detail and "sample" in detail


async def test_payloads_without_scores_keep_the_stored_order_and_unsorted_ones_are_sorted(tmp_path, world):
    fx = world["fx"]
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    new_fields = ("score", "relevance", "relevance_sd", "p_liked", "reason")
    old_items = [{k: v for k, v in x.items() if k not in new_fields} for x in fx.recommendations[fx.user_ids[0]]["recommendations"]]
    old_items = sorted(old_items, key=lambda x: -x["predicted_rating"])  # an old list: sorted by mean
    old_items = [{**x, "rank": i} for i, x in enumerate(old_items, 1)]
    shuffled = list(reversed(fx.recommendations[fx.user_ids[1]]["recommendations"]))
    with open_store(url) as store:
        with store.begin_publish() as pub:
            pub.put_recommendations([
                (1, orjson.dumps({"user_id": 1, "basis": "personal", "recommendations": old_items})),
                (2, orjson.dumps({"user_id": 2, "basis": "personal", "recommendations": shuffled})),
            ])
            pub.put_blob("meta", orjson.dumps(fx.meta))
    async with serving(url) as c:
        body = (await c.get("/recommend/1", params={"top_k": TOP_N})).json()
        assert body["rank_by"] == "for_you" and body["recommendations"] == old_items
        lower = (await c.get("/recommend/1", params={"top_k": TOP_N, "rank_by": "lower"})).json()["recommendations"]
        assert [x["score"] for x in lower] == sorted((x["confidence_interval"][0] for x in old_items), reverse=True)
        body = (await c.get("/recommend/2", params={"top_k": TOP_N})).json()
        assert [x["work_key"] for x in body["recommendations"]] == [
            x["work_key"] for x in fx.recommendations[fx.user_ids[1]]["recommendations"]]
        assert [x["rank"] for x in body["recommendations"]] == list(range(1, TOP_N + 1))


# --- cold start through the relevance blob --------------------------------------------------------


def _read_candidates(fx, rel: Rel, n: int, in_serving: bool | None = None, skip: int = 0) -> list[dict]:
    """Works that are relevance candidates (optionally: in / not in the serving model)."""
    keys = set(_serving_keys(fx))
    out = [w for w in fx.works if w["work_key"] in rel.local and (in_serving is None or (w["work_key"] in keys) == in_serving)]
    return out[skip:skip + n]


async def test_cold_start_from_unrated_books_ranks_relevance_with_reasons(client, world):
    fx = world["fx"]
    rel = Rel(fx)
    read = _read_candidates(fx, rel, 3, skip=2)
    body = {"ratings": [{"isbn": read[0]["isbn"]}, {"isbn": read[1]["isbn"], "rating": None},
                        {"title": read[2]["title"], "rating": None}], "top_k": 10}
    r = await client.post("/recommend/cold-start", json=body)
    assert r.status_code == 200
    out = r.json()
    assert out["basis"] == "similar_reading" and out["rank_by"] == "for_you" and out["n_recognized"] == 3
    assert [x["rating"] for x in out["recognized"]] == [None, None, None]
    assert [x["work_key"] for x in out["recognized"]] == [w["work_key"] for w in read]

    # Expected: the positive-relevance neighbours of the read books, each rated by the book-level
    # fallback normal, sorted by relevance x P(liked)^like_weight.
    local_read = [rel.local[w["work_key"]] for w in read]
    cands = rel.candidates(local_read)
    assert len(cands) >= 10, "the fixture should give enough candidates"
    expected = {}
    for j, (relevance, sd, because) in cands.items():
        p = ndtr((rel.fmean[j] - rel.threshold) / rel.fsd[j])
        expected[rel.keys[j]] = (relevance * p**rel.like_weight, relevance, sd, p, j, because)
    best = sorted(expected, key=lambda k: -expected[k][0])[:10]
    recs = out["recommendations"]
    assert [x["work_key"] for x in recs] == best
    read_isbns = {w["isbn"] for w in read}
    for x in recs:
        score, relevance, sd, p, j, because = expected[x["work_key"]]
        assert x["score"] == pytest.approx(score, rel=SCORE_REL, abs=1e-12)
        assert x["relevance"] == pytest.approx(relevance, rel=SCORE_REL)
        assert x["relevance_sd"] == pytest.approx(sd, rel=SCORE_REL)
        assert x["p_liked"] == pytest.approx(p, rel=P_LIKED_REL)
        m = float(np.clip(rel.fmean[j], 1, 10))
        assert x["predicted_rating"] == pytest.approx(m, abs=RATING_ABS)
        lo, hi = np.clip([rel.fmean[j] - Z90 * rel.fsd[j], rel.fmean[j] + Z90 * rel.fsd[j]], 1, 10)
        assert x["confidence_interval"] == pytest.approx([lo, hi], abs=RATING_ABS)
        assert x["basis"] == "similar_reading"
        # The reason names the read book with the largest weight towards this one.
        assert x["reason"]["kind"] == "because_you_read" and x["reason"]["isbn"] in read_isbns
        assert x["reason"]["work_key"] == rel.keys[because]
        assert x["work_key"] not in {w["work_key"] for w in read}


async def test_cold_start_with_a_rated_book_folds_it_in_for_the_model_books(client, world):
    fx = world["fx"]
    rel = Rel(fx)
    rated = _read_candidates(fx, rel, 1, in_serving=True)[0]
    unrated = _read_candidates(fx, rel, 2, in_serving=False)
    body = {"ratings": [{"isbn": rated["isbn"], "rating": 9}] + [{"isbn": w["isbn"]} for w in unrated], "top_k": 50}
    out = (await client.post("/recommend/cold-start", json=body)).json()
    assert out["basis"] == "folded_in"
    assert [x["rating"] for x in out["recognized"]] == [9.0, None, None]
    recs = out["recommendations"]
    keys = _serving_keys(fx)
    arrays = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in fx.serving_model.items()}
    fold = fold_in_from_arrays(arrays, np.array([keys.index(rated["work_key"])]), np.array([9.0]))
    seen = {"model": 0, "fallback": 0, "popular": 0}
    for x in recs:
        j = rel.local[x["work_key"]]
        if x["basis"] == "popular":  # fill slots: nothing read points to them
            seen["popular"] += 1
            assert x["reason"] == {"kind": "popular"} and x["relevance"] is None and x["score"] == 0
            continue
        if x["work_key"] in keys:
            seen["model"] += 1
            means, sds = fold_in_components(arrays, fold, np.array([keys.index(x["work_key"])]))
            q = kernels.mixture_quantiles_ser(means, sds, np.array([0.05, 0.95]))
            assert x["predicted_rating"] == pytest.approx(float(np.clip(means.mean(), 1, 10)), abs=RATING_ABS)
            assert x["confidence_interval"] == pytest.approx(np.clip(q[0], 1, 10).tolist(), abs=RATING_ABS)
            p = ndtr((means - rel.threshold) / sds).mean()
        else:
            seen["fallback"] += 1
            assert x["predicted_rating"] == pytest.approx(float(np.clip(rel.fmean[j], 1, 10)), abs=RATING_ABS)
            p = ndtr((rel.fmean[j] - rel.threshold) / rel.fsd[j])
        assert x["p_liked"] == pytest.approx(p, rel=P_LIKED_REL)
        assert x["score"] == pytest.approx(x["relevance"] * x["p_liked"] ** rel.like_weight,
                                             rel=2 * SCORE_REL + rel.like_weight * P_LIKED_REL)
        assert x["basis"] == "folded_in"
    assert seen["model"] and seen["fallback"], seen
    # for_you: positive-relevance candidates by score, then the popularity fill.
    scores = [x["score"] for x in recs]
    assert scores == sorted(scores, reverse=True)
    read_keys = {rated["work_key"]} | {w["work_key"] for w in unrated}
    assert not read_keys & {x["work_key"] for x in recs}
    assert len(recs) == len({x["work_key"] for x in recs})


@pytest.mark.parametrize("mode", ["mean", "lower", "sample"])
async def test_cold_start_modes_sort_the_same_candidates_by_their_own_key(client, world, mode):
    fx = world["fx"]
    rel = Rel(fx)
    read = _read_candidates(fx, rel, 3)
    ratings = [{"isbn": read[0]["isbn"], "rating": 3}, {"isbn": read[1]["isbn"], "rating": 8}, {"isbn": read[2]["isbn"]}]
    base = (await client.post("/recommend/cold-start", json={"ratings": ratings, "top_k": 50})).json()["recommendations"]
    out = (await client.post("/recommend/cold-start", json={"ratings": ratings, "top_k": 50, "rank_by": mode})).json()
    recs = out["recommendations"]
    assert out["rank_by"] == mode
    assert sorted(x["work_key"] for x in recs) == sorted(x["work_key"] for x in base)
    scores = [x["score"] for x in recs]
    assert scores == sorted(scores, reverse=True)
    if mode != "sample":
        assert scores == [_mode_key(x, mode) for x in recs]
    assert [x["work_key"] for x in recs] != [x["work_key"] for x in base]


async def test_cold_start_unrated_book_outside_relevance_is_left_out_with_a_reason(client, world):
    fx = world["fx"]
    rel = Rel(fx)
    model_only = next(w for w in fx.works if w["work_key"] in _serving_keys(fx) and w["work_key"] not in rel.local)
    r = await client.post("/recommend/cold-start", json={"ratings": [{"isbn": model_only["isbn"]}]})
    assert r.status_code == 400
    body = r.json()
    assert body["unrecognized"][0]["input"] == model_only["isbn"]
    assert "not rated" in body["unrecognized"][0]["reason"]
    # Together with a usable book it is listed, and the rest still works.
    usable = _read_candidates(fx, rel, 1)[0]
    r = await client.post("/recommend/cold-start", json={"ratings": [{"isbn": model_only["isbn"]}, {"isbn": usable["isbn"]}]})
    assert r.status_code == 200
    body = r.json()
    assert body["n_recognized"] == 1 and [u["input"] for u in body["unrecognized"]] == [model_only["isbn"]]
    assert body["recommendations"] and all(x["reason"]["isbn"] == usable["isbn"] for x in body["recommendations"]
                                           if x["reason"]["kind"] == "because_you_read")


@pytest.mark.parametrize(
    "rating, message",
    [(11, "less than or equal to 10"), (0.5, "greater than or equal to 1"), ("7", "valid number"),
     ("great", "valid number"), (True, "valid number"), ([8], "valid number")],
)
async def test_cold_start_rating_outside_the_scale_or_not_a_number_is_422(client, world, rating, message):
    isbn = world["fx"].works[0]["isbn"]
    r = await client.post("/recommend/cold-start", json={"ratings": [{"isbn": isbn, "rating": 8}, {"isbn": isbn, "rating": rating}]})
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith("ratings.1.rating: ") and message in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "ratings", 1, "rating"]


# --- similar books: read together ----------------------------------------------------------------


async def test_similar_books_are_read_together_neighbours_sorted_by_weight(client, world):
    fx = world["fx"]
    rel = Rel(fx)
    dropped = 0
    for w in _read_candidates(fx, rel, 12):
        i = rel.local[w["work_key"]]
        positive = [(rel.w[i, k], rel.sd[i, k], int(rel.nb[i, k])) for k in range(rel.nb.shape[1])
                    if rel.w[i, k] > 0 and rel.nb[i, k] != i]
        positive.sort(key=lambda t: -t[0])
        dropped += len(positive) < rel.nb.shape[1]
        for n in (3, 50):
            r = await client.get(f"/books/{w['isbn']}/similar", params={"n": n})
            assert r.status_code == 200
            body = r.json()
            assert body["basis"] == "read_together" and body["work_key"] == w["work_key"]
            sims = body["similar"]
            # Only books reading this one raises (positive weights), strongest first.
            assert [s["work_key"] for s in sims] == [rel.keys[j] for _, _, j in positive[:n]]
            assert [s["similarity"] for s in sims] == sorted((s["similarity"] for s in sims), reverse=True)
            assert np.allclose([s["similarity"] for s in sims], [t[0] for t in positive[:n]], atol=1e-6)
            assert np.allclose([s["similarity_sd"] for s in sims], [t[1] for t in positive[:n]], atol=1e-6)
            for s in sims:  # described from the catalogue
                other = _work(fx, s["work_key"])
                assert s["title"] == other["title"] and s["isbn"] == other["isbn"]
    assert dropped, "the fixture should include negative weights, which are not similar books"


async def test_similar_of_an_edition_uses_its_work(client, world):
    fx = world["fx"]
    rel = Rel(fx)
    work = next(w for w in fx.works if len(w["editions"]) > 1 and w["work_key"] in rel.local)
    a = (await client.get(f"/books/{work['editions'][0]}/similar")).json()
    b = (await client.get(f"/books/{work['editions'][1]}/similar")).json()
    assert a["similar"] == b["similar"] and a["basis"] == "read_together" and a["similar"]


# --- versions without a relevance blob, or with a broken one -------------------------------------


def _republish(url: str, fx, relevance_blob: bytes | None) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **fx.serving_model)
    with open_store(url) as store:
        with store.begin_publish() as pub:
            pub.put_recommendations((u, orjson.dumps(p)) for u, p in fx.recommendations.items())
            pub.put_books((i, orjson.dumps(b)) for i, b in fx.books.items())
            pub.put_blob("meta", orjson.dumps(fx.meta))
            pub.put_blob("catalog", _catalog_parquet(fx.works))
            pub.put_blob("serving_model", buffer.getvalue())
            if relevance_blob is not None:
                pub.put_blob("relevance", relevance_blob)


def _npz(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _out_of_range(fx) -> bytes:
    arrays = dict(fx.relevance)
    arrays["neighbours"] = arrays["neighbours"].copy()
    arrays["neighbours"][0, 0] = len(arrays["item_keys"]) + 5
    return _npz(arrays)


def _pickled(fx) -> bytes:
    arrays = dict(fx.relevance)
    arrays["item_keys"] = np.array(arrays["item_keys"].tolist(), dtype=object)  # needs pickle to load
    return _npz(arrays)


@pytest.mark.parametrize(
    "name, blob",
    [("absent", lambda fx: None), ("garbage", lambda fx: b"PK\x03\x04 not an npz at all"),
     ("index out of range", _out_of_range), ("object array", _pickled)],
)
async def test_without_a_usable_relevance_blob_cold_start_and_similar_fall_back(tmp_path, world, name, blob):
    fx = world["fx"]
    url = f"sqlite:///{tmp_path}/fallback.sqlite3"
    _republish(url, fx, blob(fx))
    keys = _serving_keys(fx)
    rel = Rel(fx)
    # A relevance candidate of the rating model: with a usable blob it would feed relevance.
    work = _read_candidates(fx, rel, 1, in_serving=True)[0]
    async with serving(url) as c:
        assert (await c.get("/health")).status_code == 200
        r = await c.post("/recommend/cold-start", json={"ratings": [{"isbn": work["isbn"], "rating": 9}], "top_k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["basis"] == "folded_in" and "relevance model" in body["note"]
        recs = body["recommendations"]
        assert len(recs) == 5 and all(x["basis"] == "folded_in" and x["reason"] is None for x in recs)
        means = [x["predicted_rating"] for x in recs]
        assert means == sorted(means, reverse=True)
        # Read, not rated: nothing to use without relevance.
        r = await c.post("/recommend/cold-start", json={"ratings": [{"isbn": work["isbn"]}]})
        assert r.status_code == 400 and "not rated" in r.json()["unrecognized"][0]["reason"]
        r = await c.get(f"/books/{work['isbn']}/similar", params={"n": 4})
        assert r.status_code == 200 and r.json()["basis"] == "factor_cosine"
        assert all(s["work_key"] in keys for s in r.json()["similar"])
        for text in (r.text, body.__repr__()):
            assert "Error" not in text and "Traceback" not in text
