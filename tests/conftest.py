"""Shared fixtures: real redis-server and PostgreSQL processes for the test run, synthetic data built once."""

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


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the tests that need it, started only when one asks."""
    from tests.support.postgres_server import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()
