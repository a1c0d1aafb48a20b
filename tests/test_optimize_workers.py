"""Two `bookrec optimize` worker processes sharing one storage complete the requested trials,
with no duplicated and no lost trial: SQLite file, the machine's PostgreSQL, a Redis journal."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from bookrec.data.io import write_dataset
from bookrec.data.synth import generate
from bookrec.optimize.space import default_bpmf_kwargs, from_bpmf_kwargs
from bookrec.optimize.study import make_storage

TRIALS_PER_WORKER = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(generate("tiny", seed=9).dataset, tmp_path_factory.mktemp("tiny") / "data")


def run_two_workers(tmp_path, data_dir, storage_url: str, study: str) -> None:
    """Start both workers at once (two OS processes) and wait for both."""
    env = {**os.environ, "BOOKREC_SEED": "9", "BOOKREC_CONFIG": str(tmp_path / "absent.toml")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bookrec.cli", "optimize", "--storage", storage_url, "--study", study,
             "--data", str(data_dir), "--trials", str(TRIALS_PER_WORKER), "--seed", str(worker),
             "--output", str(tmp_path / f"tuned-{worker}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        )
        for worker in (1, 2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out


def assert_complete_and_unique(storage, study_name: str) -> None:
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    expected = 2 * TRIALS_PER_WORKER
    # nothing lost, nothing extra: each worker's trials are all there, numbered 0..n-1 once each
    assert len(trials) == expected
    assert sorted(t.number for t in trials) == list(range(expected))
    assert len({t._trial_id for t in trials}) == expected
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    # no trial ran the same configuration twice: each worker sampled its own points, and the
    # default configuration was enqueued once, by the worker that created the study
    configs = {tuple(sorted(t.params.items())) for t in trials}
    assert len(configs) == expected
    default = from_bpmf_kwargs(default_bpmf_kwargs(2))
    assert sum(t.params == default for t in trials) == 1
    assert any(t.state == TrialState.COMPLETE for t in trials)


def test_two_workers_share_a_sqlite_file(tmp_path, data_dir):
    url = f"sqlite:///{tmp_path}/shared.db"
    run_two_workers(tmp_path, data_dir, url, "shared")
    assert_complete_and_unique(url, "shared")


def test_two_workers_share_a_redis_journal(tmp_path, data_dir, redis_url):
    run_two_workers(tmp_path, data_dir, redis_url, "journal")
    assert_complete_and_unique(make_storage(redis_url), "journal")


def test_two_workers_share_a_postgresql_database(tmp_path, data_dir, postgres_server):
    # A schema of its own: the workers start on an *empty* database (both race to create Optuna's
    # tables, as a fresh deployment does), and dropping the schema leaves the shared db clean.
    import psycopg

    schema = f"bookrec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{postgres_server.url()}?options=-csearch_path%3D{schema}"
    storage = None
    try:
        run_two_workers(tmp_path, data_dir, url, "shared")
        storage = make_storage(url, heartbeat_seconds=None)
        assert_complete_and_unique(storage, "shared")
    finally:
        if storage is not None:
            storage.engine.dispose()
        with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
