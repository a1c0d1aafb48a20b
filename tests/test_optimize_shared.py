"""Tuned parameters travel through the study: two `bookrec optimize` workers share a study on the
PostgreSQL the tests start (tests/support/postgres_server.py), the study records the best
trial over both workers, and a batch in another working directory, with no local tuned file,
trains with those parameters read from the study (`--tuned-from`) and says so in its meta."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import optuna
import orjson
import pytest
from optuna.trial import TrialState

from bookrec.data.io import write_dataset
from bookrec.data.synth import generate
from bookrec.contracts.tuning import BEST_PARAMS_ATTR
from bookrec.optimize.study import choose_trial, make_storage
from bookrec.store import open_store

TRIALS_PER_WORKER = 2
# Short chains for the batch; n_factors, warm_start and the prior strengths stay the study's.
SHORT_CHAINS = dict(BOOKREC_N_SAMPLES="6", BOOKREC_BURN_IN="2", BOOKREC_THIN="1", BOOKREC_MAX_KEPT_SAMPLES="12")


@pytest.fixture(scope="module")
def postgres(postgres_server):
    """The storage URL in the form the tuner takes as given (make_storage maps postgresql:// to psycopg too)."""
    return postgres_server.url("psycopg")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(generate("tiny", seed=11).dataset, tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture
def study_name(postgres):
    name = f"bookrec-test-{uuid.uuid4().hex[:12]}"
    yield name
    storage = make_storage(postgres, heartbeat_seconds=None)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    finally:
        storage.engine.dispose()


def bookrec_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env | {"BOOKREC_SEED": "11", "BOOKREC_MIN_USER_RATINGS": "3", "BOOKREC_MIN_BOOK_RATINGS": "3"} | extra


def test_the_batch_trains_with_the_best_parameters_recorded_in_a_shared_study(tmp_path, data_dir, postgres, study_name):
    tuner_dir, batch_dir = tmp_path / "tuner", tmp_path / "batch"
    tuner_dir.mkdir()
    batch_dir.mkdir()
    # One chain per trial halves the tuning time; the batch then runs the tuned single chain too.
    env = bookrec_env(BOOKREC_CONFIG=str(tuner_dir / "absent.toml"), BOOKREC_N_CHAINS="1")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bookrec", "optimize", "--storage", postgres, "--study", study_name,
             "--data", str(data_dir), "--trials", str(TRIALS_PER_WORKER), "--seed", str(worker), "--no-write"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tuner_dir,
        )
        for worker in (1, 2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output

    # The record is the best over both workers' trials, not the last worker's own best.
    storage = make_storage(postgres, heartbeat_seconds=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2 * TRIALS_PER_WORKER
        best = choose_trial(study)
        recorded = study.user_attrs[BEST_PARAMS_ATTR]
    finally:
        storage.engine.dispose()
    assert recorded["trial_number"] == best.number and recorded["best_value"] == best.values[0]
    assert recorded["params"] == best.user_attrs["bpmf_params"] and recorded["data_fingerprint"]

    # The batch on another machine: its own working directory, no local tuned file.
    store = f"sqlite:///{batch_dir}/store.sqlite3"
    result = subprocess.run(
        [sys.executable, "-m", "bookrec", "batch", "--data", str(data_dir), "--store", store, "--preset", "development",
         "--tuned-from", postgres, "--study", study_name, "--quiet", "--json", "--force"],
        capture_output=True, text=True, timeout=600, cwd=batch_dir, env=bookrec_env(**SHORT_CHAINS),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (batch_dir / "var" / "tuned-params.json").exists()
    with open_store(store) as st:
        meta = orjson.loads(st.get_blob("meta"))
    tuned = meta["tuned"]
    assert tuned["source"] == "study" and tuned["study"] == study_name
    assert tuned["storage"] == postgres and tuned["trial_number"] == best.number
    params = recorded["params"]
    for name in ("n_factors", "warm_start", "alpha_prior"):
        assert meta["parameter_sources"][name] == "tuned", name
        assert meta["parameters"][name] == params[name], (name, meta["parameters"][name], params[name])
    assert meta["parameter_sources"]["n_samples"] == "env" and meta["n_samples"] == 6

    # `--export` writes the recorded document as the tuned file, running no trial.
    out = tmp_path / "exported.json"
    exported = subprocess.run(
        [sys.executable, "-m", "bookrec", "optimize", "--export", "--storage", postgres, "--study", study_name,
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tuner_dir, env=env,
    )
    assert exported.returncode == 0, exported.stderr
    assert json.loads(out.read_text())["params"] == params


def test_a_missing_study_is_a_clear_usage_error(tmp_path, data_dir, postgres, study_name):
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    batch = subprocess.run(
        [sys.executable, "-m", "bookrec", "batch", "--data", str(data_dir), "--store", store, "--quiet",
         "--tuned-from", postgres, "--study", study_name],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=bookrec_env(**SHORT_CHAINS),
    )
    assert batch.returncode == 2, batch.stderr
    message = " ".join(batch.stderr.split())
    assert f"no study '{study_name}'" in message and "Traceback" not in batch.stderr
    export = subprocess.run(
        [sys.executable, "-m", "bookrec", "optimize", "--export", "--storage", postgres, "--study", study_name,
         "--out", str(tmp_path / "tuned.json")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=bookrec_env(),
    )
    assert export.returncode == 2 and f"no study '{study_name}'" in " ".join(export.stderr.split()), export.stderr
    assert not (tmp_path / "tuned.json").exists()


def test_a_storage_that_does_not_answer_is_a_clear_failure(tmp_path, data_dir):
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    batch = subprocess.run(
        [sys.executable, "-m", "bookrec", "batch", "--data", str(data_dir), "--store", store, "--quiet",
         "--tuned-from", "postgresql://tuner:s3cret@127.0.0.1:1/optuna", "--study", "any"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=bookrec_env(),
    )
    assert batch.returncode == 1, batch.stderr  # does not answer: 1, as for a store (README, exit codes)
    assert "cannot read tuned parameters" in batch.stderr and "s3cret" not in batch.stderr
    assert "Connection refused" in batch.stderr or "connection" in batch.stderr.lower(), batch.stderr
    assert "Traceback" not in batch.stderr and len(batch.stderr.strip().splitlines()) == 1, batch.stderr
