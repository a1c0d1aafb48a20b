"""The API over real HTTP (uvicorn in a subprocess, `tests/support/live_server.py`) against a real
redis-server: the store going down and coming back, and a new version published while serving.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.live_server import LiveServer, live_server_factory  # noqa: F401 - fixture
from tests.support.publish import publish_fixture
from tests.support.redis_server import RedisServer


def _wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")


@pytest.fixture()
def own_redis():
    """A redis-server of this test alone, so stopping it cannot disturb other tests."""
    server = RedisServer().start()
    yield server
    server.stop()


def test_store_down_gives_503_with_retry_after_then_recovers_by_itself(own_redis, live_server_factory):
    fx = publish_fixture(own_redis.url, n_users=60, n_books=40, seed=1)
    api = live_server_factory(own_redis.url, store_timeout_seconds=0.5, version_refresh_seconds=0.2)
    user = fx.user_ids[0]
    with httpx.Client(base_url=api.url, timeout=5.0) as http:
        assert http.get(f"/recommend/{user}").status_code == 200

        own_redis.stop()
        started = time.monotonic()
        r = http.get(f"/recommend/{user}", params={"top_k": 3})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json() == {"detail": "the recommendation store is unavailable; retry shortly"}
        assert time.monotonic() - started < 3.0  # answered within the store timeout, never hangs
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["store"] == "unavailable"
        assert http.get("/users").status_code == 503
        assert http.get("/").status_code == 200  # what needs no store keeps working

        # Same port again (an empty server: Redis here keeps nothing on disk), then a publish.
        own_redis.start()
        _wait_for(lambda: http.get("/health").json().get("reason", "").startswith("no model version"), 10)
        fx2 = publish_fixture(own_redis.url, n_users=60, n_books=40, seed=2)
        _wait_for(lambda: http.get("/health").status_code == 200, 10)
        r = http.get(f"/recommend/{fx2.user_ids[0]}")
        assert r.status_code == 200 and r.json()["model_version"] == fx2.version
        metrics = http.get("/metrics").text
        assert 'bookrec_store_errors_total{route="/recommend/{user_id}"}' in metrics
    assert api.process is not None and api.process.poll() is None  # the server never died


def test_version_flip_is_picked_up_while_serving_without_errors(own_redis, live_server_factory):
    old = publish_fixture(own_redis.url, n_users=80, n_books=40, seed=4)
    # No cold-start rate limit: the hammering below is one client sending hundreds of them.
    api = live_server_factory(own_redis.url, version_refresh_seconds=0.3, rate_limit_cold_start_per_minute=0)
    user = old.user_ids[3]
    in_model = [w for w in old.works if w["in_model"]]
    cold = {"ratings": [{"isbn": in_model[0]["isbn"], "rating": 9}, {"isbn": in_model[1]["isbn"], "rating": 4}]}

    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=api.url, timeout=5.0) as c:
            while not stop.is_set():
                statuses.append(c.get(f"/recommend/{old.user_ids[len(statuses) % 80]}").status_code)
                statuses.append(c.post("/recommend/cold-start", json=cold).status_code)

    with httpx.Client(base_url=api.url, timeout=5.0) as http:
        assert http.get(f"/recommend/{user}").json()["model_version"] == old.version
        assert http.post("/recommend/cold-start", json=cold).json()["model_version"] == old.version
        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            time.sleep(0.3)
            # Same users and books (seed 4 again), other recommendations: a retrain.
            new = publish_fixture(own_redis.url, n_users=80, n_books=40, seed=4, top_n=15)
            assert new.version != old.version
            body = _wait_for(
                lambda: (b := http.get(f"/recommend/{user}").json())["model_version"] == new.version and b, 5
            )
            assert body["total_available"] == 15
            assert body["recommendations"] == new.recommendations[user]["recommendations"][:10]
            # The model behind cold start is reloaded in the background and then used.
            _wait_for(lambda: http.post("/recommend/cold-start", json=cold).json()["model_version"] == new.version, 10)
            assert http.get("/model/info").json()["version"] == new.version
            assert http.get("/health").json()["model_version"] == new.version
        finally:
            stop.set()
            worker.join()
    assert len(statuses) > 10
    assert set(statuses) == {200}, f"errors during the flip: {sorted(set(statuses))}"


def test_real_http_limits_and_static_page(own_redis, live_server_factory):
    publish_fixture(own_redis.url, n_users=30, n_books=30, seed=5)
    api = live_server_factory(own_redis.url, max_request_bytes=4096, cors_origins=["http://page.example"])
    with httpx.Client(base_url=api.url, timeout=5.0) as http:
        # Declared too large: refused before the body is read.
        r = http.post("/books/search", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 413
        # Chunked (no Content-Length): counted while reading.
        r = http.post("/recommend/cold-start", content=iter([b'{"ratings": [' + b" " * 3000, b" " * 3000 + b"]}"]),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = http.get("/", headers={"Origin": "http://page.example"})
        assert r.headers["access-control-allow-origin"] == "http://page.example"
        page = http.get("/app/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert http.get("/app/no-such-file.js").status_code == 404
        docs = http.get("/openapi.json").json()
        assert "/recommend/cold-start" in docs["paths"] and "/books/{isbn}/similar" in docs["paths"]


def test_two_workers_serve_and_share_metrics(own_redis, live_server_factory):
    fx = publish_fixture(own_redis.url, n_users=30, n_books=30, seed=6)
    api = live_server_factory(own_redis.url, workers=2)
    with httpx.Client(base_url=api.url, timeout=5.0) as http:
        for i in range(40):  # new connections: the kernel spreads them over both workers
            with httpx.Client(base_url=api.url, timeout=5.0) as one:
                assert one.get(f"/recommend/{fx.user_ids[i % 30]}").status_code == 200
        text = http.get("/metrics").text
    line = next(ln for ln in text.splitlines()
                if ln.startswith('bookrec_http_requests_total{method="GET",route="/recommend/{user_id}",status="200"}'))
    assert float(line.split()[-1]) == 40.0  # every request counted, whichever worker answered


@pytest.mark.parametrize("trusted", [True, False], ids=["behind-trusted-proxy", "no-trusted-proxy"])
def test_rate_limits_follow_the_client_a_trusted_proxy_names(redis_url, live_server_factory, trusted):
    """Behind the page's proxy every reader would share the proxy's bucket; a trusted proxy's
    X-Forwarded-For names the client. Without trust the header is the client's own word: ignored."""
    publish_fixture(redis_url, n_users=20, n_books=30, seed=8)
    limits = dict(rate_limit_search_burst=2, rate_limit_search_per_minute=1)
    api = live_server_factory(redis_url, forwarded_allow_ips="127.0.0.1" if trusted else "", **limits)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        def search(client: str) -> int:
            return http.get("/books/search", params={"q": "a"}, headers={"X-Forwarded-For": client}).status_code

        assert [search("203.0.113.7") for _ in range(3)] == [200, 200, 429]
        assert search("198.51.100.9") == (200 if trusted else 429)
