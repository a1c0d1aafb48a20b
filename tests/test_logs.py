"""Logs an operator can read (bookrec.logging) and the API's build/model metrics.

The log tests run bookrec in subprocesses whose stderr is a pipe or a file, as under cron,
Compose or `> log 2>&1`: that is where the JSON format and the progress lines apply.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from bookrec import __version__
from bookrec.api.metrics import version_timestamp
from bookrec.logging import LogProgress
from tests.support.live_server import REPO, live_server_factory  # noqa: F401 - a fixture
from tests.support.publish import publish_fixture
from tests.support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)


def parse_lines(text: str) -> list[dict]:
    """Every line as JSON (a line that is not JSON fails the test with the line shown)."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return records


def assert_iso_time(value: str) -> None:
    stamp = datetime.fromisoformat(value)
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$", value), value
    assert abs(stamp.timestamp() - time.time()) < 600


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_LOG")} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full_env, cwd=REPO)


LOGGING_SCRIPT = """
import logging
from bookrec.logging import setup_logging
setup_logging()
log = logging.getLogger("bookrec.example")
log.info("a long record: %s", "word " * 60)
log.debug("not shown at INFO")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it failed")
logging.getLogger("arviz").info("library chatter is quiet")
"""


def test_json_lines_outside_a_terminal_with_iso_timestamps():
    result = run_python(LOGGING_SCRIPT)  # BOOKREC_LOG_FORMAT unset: auto, and stderr is a pipe
    assert result.returncode == 0, result.stderr
    records = parse_lines(result.stderr)
    assert [r["message"][:14] for r in records] == ["a long record:", "it failed"]
    assert len(records[0]["message"]) > 300  # one line however long
    for record in records:
        assert_iso_time(record["time"])
        assert record["logger"] == "bookrec.example" and record["pid"] > 0
    assert [r["level"] for r in records] == ["INFO", "ERROR"]
    assert "ZeroDivisionError" in records[1]["exception"]
    assert result.stdout == ""  # logs never mix with a command's output


def test_log_level_and_text_format_from_the_environment():
    result = run_python(LOGGING_SCRIPT, BOOKREC_LOG_LEVEL="debug", BOOKREC_LOG_FORMAT="text")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines  # the traceback folded into its record's line
    assert "not shown at INFO" in lines[1] and " DEBUG " in lines[1]
    assert "ZeroDivisionError" in lines[2]
    for line in lines:
        assert_iso_time(line.split(" ", 1)[0])


def test_progress_lines_while_a_step_runs(caplog):
    logger = logging.getLogger("bookrec.test_progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with LogProgress(logger, interval=0.05) as progress:
            task = progress.add_task("Gibbs sampling", total=10, stats="")
            progress.update(task, advance=3, stats="burn-in rmse=1.234")
            time.sleep(0.4)  # one slow step: the lines keep coming
        logged_while_running = len(caplog.records)
        time.sleep(0.2)
    assert logged_while_running >= 3
    assert len(caplog.records) == logged_while_running  # nothing after the stage ended
    assert all(re.match(r"Gibbs sampling: 3/10 \(30%\), \d+s elapsed, about \d+s left; burn-in rmse=1\.234$",
                        r.getMessage()) for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_gibbs_progress_is_a_log_line_outside_a_terminal():
    result = run_python("from bookrec.model.bpmf import _progress; print(type(_progress(True)).__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LogProgress"


# ------------------------------------------------------------------------------------ serve


def wait_for(predicate, timeout: float, poke=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if poke is not None:
            poke()
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_serve_logs_json_lines_with_bookrecs_own_records(tmp_path):
    store_url = f"sqlite:///{tmp_path}/store.sqlite3"
    first = publish_fixture(store_url, n_users=60, n_books=40).version
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env |= {"BOOKREC_LOG_FORMAT": "json", "BOOKREC_LOG_LEVEL": "INFO", "BOOKREC_STORE_URL": store_url,
            "BOOKREC_VERSION_REFRESH_SECONDS": "0.2"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bookrec", "serve", "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def poke() -> None:
        try:
            httpx.get(url + "/health", timeout=1)
        except httpx.HTTPError:
            pass

    try:
        assert wait_for(lambda: f"loaded serving bundle for version {first}" in log_path.read_text(), 60, poke), \
            log_path.read_text()[-3000:]
        second = publish_fixture(store_url, n_users=60, n_books=40, seed=1).version
        assert wait_for(lambda: f"published version changed: {first} -> {second}" in log_path.read_text(), 30, poke), \
            log_path.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    records = parse_lines(log_path.read_text())
    for record in records:
        assert_iso_time(record["time"])
    loggers = {r["logger"] for r in records}
    assert {"bookrec.api.serving", "bookrec.api.deps", "uvicorn.error"} <= loggers, loggers
    assert any(r["message"].startswith(f"bookrec API on {url}") for r in records)


# ---------------------------------------------------------------------------------- metrics


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_show_build_and_one_model_series_after_two_publishes(live_server_factory, tmp_path, workers):  # noqa: F811
    store_url = f"sqlite:///{tmp_path}/store.sqlite3"
    first = publish_fixture(store_url, n_users=60, n_books=40).version
    server = live_server_factory(store_url, workers=workers, version_refresh_seconds=0.2)

    def metrics() -> str:
        for _ in range(2 * workers):  # every worker sees the current version
            httpx.get(server.url + "/health", timeout=5)
        return httpx.get(server.url + "/metrics", timeout=5).text

    assert wait_for(lambda: f'bookrec_model_version_info{{version="{first}"}} 1.0' in metrics(), 30)
    time.sleep(1.1)  # version ids are stamped to the second
    second = publish_fixture(store_url, n_users=60, n_books=40, seed=1).version
    assert wait_for(lambda: f'version="{second}"' in metrics() and f'version="{first}"' not in metrics(), 30)
    text = metrics()
    assert series(text, "bookrec_model_version_info") == [f'bookrec_model_version_info{{version="{second}"}} 1.0']
    published = series(text, "bookrec_model_published_timestamp_seconds")
    assert len(published) == 1
    assert float(published[0].split()[-1]) == pytest.approx(version_timestamp(second))
    assert version_timestamp(second) > version_timestamp(first)
    build = series(text, "bookrec_build_info")
    assert len(build) == 1 and f'version="{__version__}"' in build[0] and build[0].endswith(" 1.0")


def test_version_timestamp_reads_the_id():
    assert version_timestamp("20261126T083000-3f2a") == datetime.fromisoformat("2026-11-26T08:30:00+00:00").timestamp()
    assert version_timestamp("not-a-stamped-id") is None
