"""The tuner as an operator meets it: a study resumed on other data, a trial that fails, the log of
a run without a progress bar, SIGTERM, and a malformed storage URL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from bookrec.config import Settings
from bookrec.data.io import write_dataset
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.optimize.objective import ObjectiveOptions, TuningData
from bookrec.optimize.space import SearchSpace
from bookrec.optimize.study import run_optimization

# Short chains: a trial takes well under a second on `tiny`.
SPACE = SearchSpace(n_factors=(2, 4), burn_in=(5, 10), n_samples=(10, 20))


def options(**overrides) -> ObjectiveOptions:
    values = dict(space=SPACE, eval_every=2, seed=5, fixed={"rating_range": (1.0, 10.0)})
    values.update(overrides)
    return ObjectiveOptions(**values)


def tuning_data(seed: int) -> TuningData:
    return TuningData.from_training(prepare_training(generate("tiny", seed=seed).dataset, Settings(seed=seed)))


@pytest.fixture(scope="module")
def data_a():
    return tuning_data(7)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(generate("tiny", seed=7).dataset, tmp_path_factory.mktemp("tiny") / "data")


def test_resuming_a_study_on_other_data_or_chains_is_refused(tmp_path, data_a):
    url = f"sqlite:///{tmp_path}/optuna.db"
    first = run_optimization(data_a, n_trials=1, storage_url=url, study_name="s", options=options(), sampler_seed=1)
    # The same data and setup resume the study.
    again = run_optimization(data_a, n_trials=1, storage_url=url, study_name="s", options=options(), sampler_seed=2)
    assert len(again.study.trials) == 2
    assert again.payload["data_fingerprint"] == first.payload["data_fingerprint"] == data_a.fingerprint()
    # Refreshed data: its scores would be ranked against the old ones and the winner recorded under
    # the new data's fingerprint.
    with pytest.raises(ValueError, match="data_fingerprint"):
        run_optimization(tuning_data(8), n_trials=1, storage_url=url, study_name="s", options=options())
    with pytest.raises(ValueError, match="n_chains"):
        run_optimization(data_a, n_trials=1, storage_url=url, study_name="s",
                         options=options(space=SearchSpace(n_chains=1, **{k: (r.low, r.high) for k, r in SPACE.ranges.items()})))
    study = optuna.load_study(study_name="s", storage=url)
    assert len(study.trials) == 2


def test_a_failed_trial_keeps_its_reason_in_the_study(tmp_path, data_a):
    url = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(ValueError, match="rating_range"):
        run_optimization(data_a, n_trials=1, storage_url=url, study_name="f",
                         options=options(fixed={"rating_range": (10.0, 1.0)}), sampler_seed=1)
    (trial,) = optuna.load_study(study_name="f", storage=url).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("ValueError: ") and "rating_range" in trial.user_attrs["fail_reason"]


def test_each_finished_trial_is_logged_without_a_progress_bar(tmp_path, data_a, caplog):
    caplog.set_level(logging.INFO, logger="bookrec.optimize.study")
    result = run_optimization(data_a, n_trials=2, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="log",
                              options=options(), sampler_seed=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "bookrec.optimize.study"]
    assert len(lines) == 2, lines
    for n, (line, trial) in enumerate(zip(lines, sorted(result.study.trials, key=lambda t: t.number)), start=1):
        assert line.startswith(f"trial {trial.number} {trial.state.name.lower()}") and f"({n}/2 here)" in line


def bookrec_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    return env | {"BOOKREC_SEED": "7", "BOOKREC_CONFIG": "/nonexistent/bookrec.toml", "PYTHONUNBUFFERED": "1"}


def test_sigterm_during_the_trials_records_the_best_and_exits_143(tmp_path, data_dir):
    out = tmp_path / "tuned.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bookrec", "optimize", "--storage", f"sqlite:///{tmp_path}/optuna.db", "--study", "t",
         "--data", str(data_dir), "--trials", "50", "--seed", "11", "--no-start-from-default", "--out", str(out)],
        # Seed 11 samples a short first trial (3 factors, 98 sweeps); one chain halves it.
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bookrec_env() | {"BOOKREC_N_CHAINS": "1"},
        cwd=tmp_path,
    )
    seen = []
    try:
        for line in proc.stderr:  # not a terminal: one log line per finished trial
            seen.append(line)
            if "trial 0 complete" in line:
                break
        assert seen and "trial 0 complete" in seen[-1], "".join(seen)[-3000:]
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stdout + stderr[-3000:]  # 128 + SIGTERM, as every bookrec command
    message = " ".join(stderr.split())
    assert "interrupted:" in message and "finished here" in message and "Traceback" not in stderr, stderr[-3000:]
    assert json.loads(out.read_text())["trial_counts"]["complete"] >= 1


@pytest.mark.parametrize("url, says", [
    ("sqlite://relative.db", "Invalid SQLite URL"),
    ("postgresql+nosuchdriver://tuner:s3cret@db.example/optuna", "nosuchdriver"),
])
def test_a_malformed_storage_url_is_a_usage_error(tmp_path, data_dir, url, says):
    proc = subprocess.run(
        [sys.executable, "-m", "bookrec", "optimize", "--storage", url, "--study", "m", "--data", str(data_dir),
         "--trials", "1", "--no-write"],
        capture_output=True, text=True, env=bookrec_env(), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr  # bad input, not a storage that failed
    assert says in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr, proc.stderr
    assert "s3cret" not in proc.stdout + proc.stderr
