"""Command-line failures that reviewers found: each must be one line and the README's exit code,
never a traceback, a silent default or a misleading code."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bookrec.cli import app
from bookrec.data.io import DatasetError, load_dataset, write_dataset
from bookrec.data.synth import generate
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.timeout(180)
runner = CliRunner()


def one_error_line(result) -> str:
    """The single `error: ...` line a failed command printed (asserts there is exactly one)."""
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_dataset(generate("tiny", seed=3).dataset, tmp_path_factory.mktemp("tiny") / "data")


# --- bookrec serve ---------------------------------------------------------------------------


@pytest.fixture()
def server_calls(monkeypatch):
    """Replaces uvicorn: records the arguments instead of serving (a wrong default would hang)."""
    calls: list[dict] = []
    monkeypatch.setattr("bookrec.api.server.run", lambda settings, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("port", ["0", "-1", "70000"])
def test_serve_refuses_a_port_out_of_range(server_calls, port):
    result = runner.invoke(app, ["serve", f"--port={port}"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--port'" in result.stderr
    assert server_calls == []


def test_serve_uses_the_port_it_was_given(server_calls):
    with socket.socket() as probe:  # a port known to be free
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["serve", "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert [(c["host"], c["port"]) for c in server_calls] == [("127.0.0.1", port)]


def test_serve_on_a_port_in_use_fails_in_one_line_with_exit_code_2(server_calls):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = runner.invoke(app, ["serve", "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is in use" in one_error_line(result)
    assert server_calls == []


def test_serve_that_cannot_start_is_not_exit_code_3(monkeypatch):
    # uvicorn exits 3 when it cannot start; bookrec's 3 means "refused to publish".
    def fails_to_start(settings, **kwargs):
        raise SystemExit(3)

    monkeypatch.setattr("bookrec.api.server.run", fails_to_start)
    result = runner.invoke(app, ["serve", "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.exit_code == 1, result.output
    assert "did not start" in one_error_line(result)


# --- bookrec store status ----------------------------------------------------------------------


def test_store_status_of_a_missing_sqlite_file_says_so_and_shows_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["store", "status", "--store", "sqlite:///nonexist/typo.sqlite3"])
    assert result.exit_code == 0, result.output
    assert "no store file at nonexist/typo.sqlite3 yet" in result.stdout
    assert str(tmp_path.resolve() / "nonexist" / "typo.sqlite3") in result.stdout
    assert not (tmp_path / "nonexist").exists()  # status creates nothing


# --- data directories ------------------------------------------------------------------------


@pytest.fixture()
def misplaced_dir(tiny_dir, tmp_path) -> Path:
    """A data directory whose ratings.parquet is a copy of books.parquet."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "ratings.parquet").write_bytes((tiny_dir / "books.parquet").read_bytes())
    return bad


def test_a_table_with_the_wrong_columns_is_named_with_its_missing_columns(misplaced_dir):
    with pytest.raises(DatasetError, match=r"ratings\.parquet: missing column\(s\) user_id, rating"):
        load_dataset(misplaced_dir)
    result = runner.invoke(app, ["data", "stats", str(misplaced_dir)])
    assert result.exit_code == 2, result.output
    assert "ratings.parquet" in one_error_line(result)


def test_a_column_of_the_wrong_type_is_refused(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    users = pd.read_parquet(tiny_dir / "users.parquet")
    users["user_id"] = "u" + users["user_id"].astype(str)
    users.to_parquet(bad / "users.parquet")
    with pytest.raises(DatasetError, match=r"users\.parquet: wrong column type\(s\): user_id is"):
        load_dataset(bad)


def test_bookrec_run_on_a_broken_data_directory_fails_in_one_line(misplaced_dir):
    import typer

    from bookrec.config import Settings
    from bookrec.data.cli import ensure_data_and_report

    with pytest.raises(typer.Exit) as stopped:
        ensure_data_and_report(Settings(data_dir=misplaced_dir), "tiny")
    assert stopped.value.exit_code == 2


def test_synth_into_an_unwritable_place_fails_before_generating(tmp_path, monkeypatch):
    # Root can write into read-only folders: a file where a folder should be fails for everyone.
    (tmp_path / "afile").write_text("")

    def generate_must_not_run(*args, **kwargs):
        raise AssertionError("generated before finding that --out cannot be written")

    monkeypatch.setattr("bookrec.data.synth.generate", generate_must_not_run)
    result = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "afile" / "sub")])
    assert result.exit_code == 2, result.output
    assert "cannot write" in one_error_line(result)


def test_synth_onto_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["data", "synth", "--preset", "tiny", "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2, result.output
    assert "is a file, not a directory" in one_error_line(result)


# --- bookrec optimize ------------------------------------------------------------------------


def test_optimize_checks_the_output_path_before_the_first_trial(tiny_dir, tmp_path):
    (tmp_path / "afile").write_text("")
    storage = tmp_path / "optuna.db"
    result = runner.invoke(app, ["optimize", "--data", str(tiny_dir), "--storage", f"sqlite:///{storage}",
                                 "--trials", "1", "--out", str(tmp_path / "afile" / "tuned.json")])
    assert result.exit_code == 2, result.output
    assert "afile is not a directory" in one_error_line(result)
    assert not storage.exists()  # no study was opened, so no trial ran


def test_an_unreachable_optuna_storage_says_why_without_the_password(tiny_dir):
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    result = runner.invoke(app, ["optimize", "--data", str(tiny_dir), "--storage", url, "--trials", "1", "--no-write"])
    assert result.exit_code == 1, result.output  # README: a dependency that does not answer
    line = one_error_line(result)
    assert "Connection refused" in line and "redis://:***@127.0.0.1" in line
    assert "s3cret-pw" not in result.output


def test_a_wrong_optuna_storage_password_is_told_apart_from_an_unreachable_host(tiny_dir):
    server = RedisServer(password="right-pw").start()
    try:
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        result = runner.invoke(app, ["optimize", "--data", str(tiny_dir), "--storage", url, "--trials", "1",
                                     "--no-write"])
        export = runner.invoke(app, ["optimize", "--export", "--storage", url])
    finally:
        server.stop()
    for attempt in (result, export):
        assert attempt.exit_code == 1, attempt.output
        line = one_error_line(attempt)
        assert "password" in line and "Connection refused" not in line
        assert "wrong-pw" not in attempt.output


def test_storage_error_messages_never_show_the_password():
    from bookrec.contracts.tuning import storage_error_message

    class DriverError(Exception):
        pass

    class WrappedError(Exception):
        pass

    DriverError.__module__ = "psycopg"
    WrappedError.__module__ = "sqlalchemy.exc"
    url = "postgresql://tuner:p%40ss@db.example:5432/optuna"
    wrapped = WrappedError(f"(psycopg.OperationalError) cannot parse {url}\n(Background on this error at: https://x)")
    wrapped.orig = DriverError(f"connection to {url} failed: password 'p@ss' rejected\n\tcheck it")
    message = storage_error_message(wrapped, url)
    assert message == "connection to postgresql://tuner:***@db.example:5432/optuna failed: password '***' rejected check it"


# A fast stand-in for the BPMF objective, so that trials finish within a second; "compiled" raises
# what a numba kernel raises when Ctrl-C arrives inside it.
INTERRUPTIBLE_OPTIMIZE = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    import bookrec.optimize.study as study

    def make_objective(data, options):
        def objective(trial):
            x = trial.suggest_float("x", 0.0, 1.0)
            trial.set_user_attr("bpmf_params", {"n_factors": 3, "x": x})
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                if sys.argv[1] == "compiled":
                    raise SystemError("CPUDispatcher(<function>) returned a result with an exception set")
                raise
            return x
        return objective

    study.make_objective = make_objective
    from bookrec.cli import app
    sys.argv = ["bookrec", *sys.argv[2:]]
    app()
""")


def completed_trials(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # the worker has not created the tables yet
        return 0


@pytest.mark.parametrize("where, write", [("python", True), ("compiled", True), ("python", False)])
def test_ctrl_c_keeps_the_finished_trials_and_says_how_many(tiny_dir, tmp_path, where, write):
    db, out = tmp_path / "optuna.db", tmp_path / "tuned.json"
    args = ["optimize", "--data", str(tiny_dir), "--storage", f"sqlite:///{db}", "--study", "s", "--trials", "10000",
            "--out", str(out), "--no-start-from-default", *([] if write else ["--no-write"])]
    env = {**os.environ, "BOOKREC_CONFIG": str(tmp_path / "absent.toml"), "BOOKREC_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE_OPTIMIZE, where, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # Three in the study: Optuna commits a trial before its callbacks count it, so only the
        # third's commit proves that the first two were counted here.
        while completed_trials(db) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and "exception set" not in stderr
    last = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"interrupted: (\d+) trial\(s\) finished here, (\d+) completed in study 's'; (.*)", last)
    assert found, stderr
    assert int(found[1]) >= 2 and int(found[2]) >= 2
    if write:
        payload = json.loads(out.read_text())
        assert payload["trial_counts"]["complete"] == int(found[2])
        assert f"(trial {payload['trial_number']}) is written to {out}" in found[3]
    else:
        assert not out.exists() and "--export" in found[3]
        export = runner.invoke(app, ["optimize", "--export", "--storage", f"sqlite:///{db}", "--study", "s",
                                     "--out", str(out)])
        assert export.exit_code == 0, export.output
        assert json.loads(out.read_text())["trial_counts"]["complete"] == int(found[2])
