"""Shared fixtures: one real redis-server for the whole test run, synthetic data sets built once."""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server):
    """A clean database on the test run's redis-server."""
    redis_server.flush()
    return redis_server.url
