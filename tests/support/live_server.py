"""The real API in a subprocess (`bookrec serve`, uvicorn) on a free loopback port, for tests that
need real HTTP: outage and version-flip tests, the web page's browser tests.

    from tests.support.live_server import LiveServer

    with LiveServer(store_url) as server:            # waits until the server answers
        httpx.get(server.url + "/health")            # server.url = "http://127.0.0.1:<port>"

    # or as a pytest fixture: `live_server_factory(store_url, **settings)` -> started LiveServer,
    # stopped at the end of the test
    def test_x(live_server_factory, redis_url):
        server = live_server_factory(redis_url, version_refresh_seconds=0.2)

Keyword settings become `BOOKREC_*` environment variables of the server (lists as JSON), so any
field of `bookrec.config.Settings` can be set (e.g. `cors_origins=["http://example.org"]`).
The server's log is kept in a temporary file; `server.log()` returns it (shown when startup fails).
Readiness is checked on `GET /` (not `/health`, which is 503 on purpose while the store is down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import stop_process
from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


class LiveServer:
    def __init__(
        self,
        store_url: str,
        *,
        port: int | None = None,
        workers: int = 1,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        **settings: Any,
    ) -> None:
        self.store_url = store_url
        self.host = host
        self.port = port or free_port()
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="bookrec-api-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["BOOKREC_STORE_URL"] = self.store_url
        for name, value in self.settings.items():
            env[f"BOOKREC_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env

    def start(self) -> "LiveServer":
        cmd = [
            sys.executable, "-m", "bookrec.cli", "serve", "--host", self.host, "--port", str(self.port),
            "--workers", str(self.workers), "--log-level", "warning",
        ]
        self.process = subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"API server did not answer on {self.url} within {self.startup_timeout} s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.process)  # uvicorn shuts down gracefully on SIGTERM (lifespan closes the store)
        self.process = None

    def log(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-5000:]

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)


@pytest.fixture()
def live_server_factory():
    """Start `LiveServer(store_url, **settings)` instances; all are stopped when the test ends."""
    servers: list[LiveServer] = []

    def start(store_url: str, **kwargs: Any) -> LiveServer:
        server = LiveServer(store_url, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
