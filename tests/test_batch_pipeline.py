"""The whole batch against both real stores (a redis-server started by the suite, and SQLite):
every reader served, nothing already read recommended, payloads as documented, a repeated run
gives the same recommendations, and a publish that fails half-way leaves the previous version
serving, complete.

Training is kept short (20 + 20 sweeps): these tests check the pipeline, not the sampler.
"""

from __future__ import annotations

import re

import io

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from bookrec.batch.pipeline import TIERS, iter_recommendations, publish, run_batch
from bookrec.batch.payloads import PayloadEncoder, book_payloads
from bookrec.config import Settings
from bookrec.contracts.payloads import META_KEYS
from bookrec.contracts.serving import ServingModel
from bookrec.data.io import load_dataset, write_dataset
from bookrec.data.synth import generate
from bookrec.store import open_store

TOP_N = 10


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-data")
    write_dataset(generate("small", seed=3).dataset, out)
    return out


# Enough sweeps for the model to pass the publish gate's NLL check against the bias baseline.
QUICK_SWEEPS = 100


def quick_settings(tmp_path) -> Settings:
    return Settings(
        n_samples=QUICK_SWEEPS, burn_in=QUICK_SWEEPS, max_kept_samples=20, n_chains=2, top_n=TOP_N,
        tuned_config_path=tmp_path / "absent.json", seed=11,
    )


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def two_runs(request, small_dir, tmp_path_factory):
    """Two identical batches published into one store, the first kept as `previous`."""
    tmp = tmp_path_factory.mktemp(f"batch-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/store.sqlite3"
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    settings = quick_settings(tmp)
    first = run_batch(settings, small_dir, url, "development", show_progress=False, keep_context=True)
    second = run_batch(settings, small_dir, url, "development", show_progress=False)
    return url, first, second


def read_works(dataset) -> dict[int, set[str]]:
    """Every work each reader touched, in any edition, explicit or implicit (computed here, independently)."""
    joined = dataset.ratings.merge(dataset.books[["isbn", "work_key"]], on="isbn", how="inner")
    return joined.groupby("user_id")["work_key"].agg(set).to_dict()


def test_every_reader_is_served_and_nothing_read_is_recommended(two_runs, small_dir):
    url, first, second = two_runs
    dataset = load_dataset(small_dir)
    everyone = set(dataset.users["user_id"].tolist()) | set(dataset.ratings["user_id"].tolist())
    read = read_works(dataset)
    assert second.n_users == len(everyone) and second.users_published == len(everyone)
    assert sum(second.coverage_by_tier.values()) == len(everyone)
    assert all(second.coverage_by_tier[t] > 0 for t in TIERS), second.coverage_by_tier

    per_basis = {t: 0 for t in TIERS}
    with open_store(url) as store:
        assert store.current_version() == second.version
        assert store.count_users() == len(everyone)
        for uid in sorted(everyone):
            raw = store.get_recommendations(uid)
            assert raw is not None, f"reader {uid} has no recommendations"
            doc = orjson.loads(raw)
            assert doc["user_id"] == uid and doc["basis"] in TIERS
            per_basis[doc["basis"]] += 1
            recs = doc["recommendations"]
            assert len(recs) == TOP_N
            assert [r["rank"] for r in recs] == list(range(1, TOP_N + 1))
            keys = [r["work_key"] for r in recs]
            assert len(set(keys)) == TOP_N, "a work is recommended twice"
            assert not set(keys) & read.get(uid, set()), f"reader {uid} is offered a work already read"
            for r in recs:
                lo, hi = r["confidence_interval"]
                assert 1.0 <= lo <= r["predicted_rating"] <= hi <= 10.0
                assert r["uncertainty"] == pytest.approx((hi - lo) / 2, abs=0.011)
                assert r["isbn"] and r["title"] is not None and "image_url" in r and "year" in r and "author" in r
                assert r["basis"] in (doc["basis"], "popular")
                assert 0 <= r["p_liked"] <= 1
                reason = r["reason"]
                if reason["kind"] == "because_you_read":
                    assert reason["work_key"] in read[uid]  # the reason is a book the reader read
                else:
                    assert reason["kind"] in ("popular", "popular_in_segment")
            if doc["basis"] != "popular":  # the for_you ranking: sorted by its score
                scores = [r["score"] for r in recs]
                assert all(a >= b for a, b in zip(scores, scores[1:])), scores
                assert any(r["reason"]["kind"] == "because_you_read" for r in recs)
    assert per_basis == second.coverage_by_tier


def test_published_blobs_and_books(two_runs, small_dir):
    url, first, second = two_runs
    dataset = load_dataset(small_dir)
    with open_store(url) as store:
        meta = orjson.loads(store.get_blob("meta"))
        for key in ("version", "created_at", "code_version", "environment", "training_time_seconds", "parameters",
                    "n_samples", "burn_in", "n_chains", "thin", "n_kept", "convergence", "traces", "test_metrics",
                    "baselines", "calibration", "rating_distribution", "dataset", "coverage_by_tier", "top_n",
                    "interval_level", "stage_seconds", "ranking", "relevance"):
            assert key in meta, key
        assert meta["version"] == second.version
        assert set(META_KEYS) <= set(meta)
        # Only finished stages are published (the publish itself is still running when meta is written).
        assert meta["stage_seconds"] and all(value >= 0 for value in meta["stage_seconds"].values())
        assert meta["coverage_by_tier"] == second.coverage_by_tier
        assert set(meta["test_metrics"]["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}
        assert "ndcg@10" not in meta["test_metrics"] and len(meta["baselines"]) == 2
        ranking = meta["ranking"]
        assert ranking["n_readers"] > 0 and ranking["n_held_out"] >= ranking["n_readers"]
        rows = {row["model"]: row for row in ranking["rows"]}
        assert {"for_you", "mean", "lower", "sample", "popularity", "relevance", "rating"} <= set(rows)
        assert ranking["rows"][0]["model"] == "for_you" and rows["for_you"]["kind"] == "ours"
        for row in ranking["rows"]:
            assert 0 <= row["recall@10"] <= row["recall@20"] <= 1 and 0 < row["coverage"] <= 1
            assert row["model"] == "for_you" or row["recall@10_se"] > 0
        # The evaluated relevance model chose its own ridge without the held-out pairs (the serving
        # model's ridge was chosen with them): the best of its own grid.
        grid = ranking["relevance_l2_validation"]
        assert len(grid) > 1
        best = max(grid, key=lambda cell: (cell["recall@10"], -cell["l2"], -cell["popularity_l2"]))  # ties: least shrinkage
        assert (ranking["relevance_l2"], ranking["relevance_popularity_l2"]) == (best["l2"], best["popularity_l2"])

        with np.load(io.BytesIO(store.get_blob("relevance")), allow_pickle=False) as npz:
            rel = {k: npz[k] for k in npz.files}
        c = len(rel["item_keys"])
        assert c == meta["relevance"]["candidates"] and rel["neighbours"].shape[0] == c
        assert rel["weights"].shape == rel["weight_sd"].shape == rel["neighbours"].shape
        assert np.all(np.diff(rel["weights"], axis=1) <= 0) and np.all(rel["weight_sd"] >= 0)
        assert set(rel["item_isbns"]) <= set(dataset.books["isbn"])
        assert len(meta["traces"]["alpha"]) == 2 and len(meta["traces"]["alpha"][0]) == QUICK_SWEEPS
        assert {"rhat", "ess_bulk", "converged"} <= set(meta["convergence"])
        assert sum(meta["rating_distribution"].values()) == len(dataset.ratings)
        assert [c["nominal"] for c in meta["calibration"]] == sorted(c["nominal"] for c in meta["calibration"])

        arrays = ServingModel.from_npz(store.get_blob("serving_model")).arrays()
        n_items = meta["dataset"]["core_books"]
        assert arrays["item_factors"].shape[1] == n_items == len(arrays["item_keys"]) == len(arrays["item_isbns"])
        assert set(arrays["item_isbns"]) <= set(dataset.books["isbn"])

        catalog = pq.read_table(io.BytesIO(store.get_blob("catalog"))).to_pandas()
        assert len(catalog) == len(dataset.books) and int(catalog["in_model"].sum()) >= n_items
        popular = orjson.loads(store.get_blob("popular"))
        assert len(popular) >= TOP_N and all(p["basis"] == "popular" for p in popular)

        # a book of a work with several editions lists them all and knows it is in the model
        multi = dataset.books.groupby("work_key")["isbn"].agg(list)
        multi = multi[multi.map(len) > 1]
        work, isbns = multi.index[0], multi.iloc[0]
        book = orjson.loads(store.get_book(isbns[0]))
        assert book["work_key"] == work and set(book["editions"]) == set(isbns)
        assert book["n_ratings"] >= book["n_explicit"] and sum(book["rating_counts"].values()) == book["n_explicit"]
        assert store.count_books() == len(dataset.books)


def test_a_repeated_run_publishes_the_same_recommendations(two_runs, small_dir):
    url, first, second = two_runs
    assert first.version != second.version
    dataset = load_dataset(small_dir)
    with open_store(url) as store:
        assert store.previous_version() == first.version
        for uid in dataset.users["user_id"].tolist()[::7]:
            assert store.get_recommendations(uid, version=first.version) == store.get_recommendations(uid, version=second.version)


class Boom(RuntimeError):
    pass


def test_a_publish_failing_half_way_leaves_the_previous_version_serving(two_runs):
    url, first, second = two_runs
    ctx, pre = first.context, first.precomputed
    encoder = PayloadEncoder(ctx.catalog)
    everyone = ctx.interactions.users.values

    def dies_half_way():
        for n, item in enumerate(iter_recommendations(ctx, pre, encoder)):
            if n == len(everyone) // 2:
                raise Boom("the batch died while writing")
            # a poisoned half: if this leaked into the serving version, reads would show it
            yield item[0], b'{"poisoned": true}'

    with open_store(url) as store:
        before = store.current_version()
        with pytest.raises(Boom):
            publish(store, dies_half_way(), book_payloads(ctx.catalog, ctx.in_model), {"meta": b"{}"})
        assert store.current_version() == before == second.version
        assert store.count_users() == len(everyone)
        for uid in everyone[::5].tolist():
            raw = store.get_recommendations(int(uid))
            assert raw is not None and b"poisoned" not in raw
        assert orjson.loads(store.get_blob("meta"))["version"] == second.version
        assert before in [v["version"] for v in store.versions()]


def test_an_unusable_store_fails_the_batch_before_training(small_dir, tmp_path):
    """A store that cannot take the publish is reported at once, not after minutes of training."""
    from bookrec.batch.pipeline import BatchError

    settings = quick_settings(tmp_path)
    with pytest.raises(BatchError, match="nothing was trained") as err:
        run_batch(settings, small_dir, "redis://127.0.0.1:1/0", "development", show_progress=False)
    assert err.value.__cause__ is not None  # the store's own error, kept for the log
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with pytest.raises(BatchError, match="nothing was trained"):
        run_batch(settings, small_dir, f"sqlite:///{blocked}/store.sqlite3", "development", show_progress=False)


def test_the_batch_honours_the_store_compression_setting(small_dir, tmp_path):
    """BOOKREC_STORE_COMPRESS=false publishes plain payloads; the default compresses the large ones."""
    import sqlite3

    from bookrec.store.base import LZ4_MARK

    marks = {}
    for compress in (False, True):
        url = f"sqlite:///{tmp_path}/store-{compress}.sqlite3"
        settings = quick_settings(tmp_path).model_copy(update={"store_compress": compress})
        run_batch(settings, small_dir, url, "development", show_progress=False)
        with sqlite3.connect(tmp_path / f"store-{compress}.sqlite3") as conn:
            payloads = [row[0] for row in conn.execute("SELECT payload FROM recs LIMIT 200")]
        marks[compress] = sum(bytes(p).startswith(LZ4_MARK) for p in payloads)
        assert len(payloads) == 200
    assert marks[False] == 0
    assert marks[True] > 100


def test_the_stages_without_steps_still_log_that_they_run(small_dir, tmp_path, monkeypatch, caplog):
    """Off a terminal every stage logs while it runs (the interval shortened from 10 s for the test)."""
    import logging

    from bookrec.batch import pipeline
    from bookrec.logging import LogProgress

    monkeypatch.setattr(pipeline, "_progress", lambda enabled: LogProgress(logging.getLogger("bookrec.batch.progress"), 0.02))
    with caplog.at_level(logging.INFO, logger="bookrec.batch.progress"):
        run_batch(quick_settings(tmp_path), small_dir, f"sqlite:///{tmp_path}/s.sqlite3", "development", show_progress=False)
    messages = [r.getMessage() for r in caplog.records]
    for stage in ("relevance model", "evaluation"):
        assert any(re.match(rf"{stage}: working, \d+s elapsed$", m) for m in messages), (stage, messages[:20])
