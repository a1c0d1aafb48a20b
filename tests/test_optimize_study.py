"""Studies on the `tiny` preset: the config file, the batch reading it, multi-objective mode,
pruning, and the test split being out of the optimizer's reach."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from bookrec.config import Settings
from bookrec.contracts.params import PRESET_PARAMS, PRIOR_PARAMS
from bookrec.data.io import write_dataset
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.model import BPMF
from bookrec.optimize.objective import ObjectiveOptions, TuningData
from bookrec.optimize.space import SearchSpace, default_bpmf_kwargs, from_bpmf_kwargs
from bookrec.optimize.study import read_tuned_config, redact_url, run_optimization, summary_tables

# Short chains keep a trial well under a second on `tiny`; the noise-prior bounds are wide so the
# pruning test can enqueue a deliberately bad prior from inside the space.
SPACE = SearchSpace(
    n_factors=(2, 8), burn_in=(5, 20), n_samples=(10, 30),
    noise_prior_shape=(0.1, 1e5), noise_prior_rate=(0.01, 1e4),
)


def options(**overrides) -> ObjectiveOptions:
    values = dict(space=SPACE, eval_every=2, seed=5, fixed={"rating_range": (1.0, 10.0)})
    values.update(overrides)
    return ObjectiveOptions(**values)


@pytest.fixture(scope="module")
def tiny_dataset():
    return generate("tiny", seed=7).dataset


@pytest.fixture(scope="module")
def tiny_training(tiny_dataset):
    return prepare_training(tiny_dataset, Settings(seed=7))


@pytest.fixture(scope="module")
def tiny_data(tiny_training):
    return TuningData.from_training(tiny_training)


def test_short_study_completes_and_writes_the_config(tmp_path, tiny_data):
    config = tmp_path / "tuned.json"
    result = run_optimization(
        tiny_data, n_trials=4, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="short",
        options=options(), sampler_seed=1, config_path=config,
    )
    payload = read_tuned_config(config)
    trials = result.study.get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    assert payload["study"] == "short" and payload["n_trials"] == 4 and payload["objective"] == "nll"
    assert payload["best_value"] == pytest.approx(best.value)
    assert payload["trial_number"] == best.number
    assert payload["params"] == best.user_attrs["bpmf_params"]
    assert payload["validation_metrics"]["nll"] == pytest.approx(best.value)
    assert 0.0 <= payload["validation_metrics"]["coverage90"] <= 1.0
    assert payload["storage"] == f"sqlite:///{tmp_path}/optuna.db" and payload["written_at"]
    # Every key is a BPMF constructor argument: the model accepts the file as it is.
    assert set(payload["params"]) <= set(BPMF.PARAM_NAMES)
    BPMF(**payload["params"])._check_params()
    # The recorded attributes are the ones the issue asks for.
    for t in complete:
        assert {"rmse", "nll", "crps", "coverage90", "train_seconds"} <= set(t.user_attrs)
    # The summary names every finished trial and the chosen parameters.
    assert result.trials_run_here == 4
    console = Console(file=io.StringIO(), width=200)
    for table in summary_tables(result):
        console.print(table)
    text = console.file.getvalue()
    assert f"chosen parameters (trial {best.number})" in text and "4 trials" in text
    assert all(f"{t.number}" in text for t in complete)


def _tuned_and_resolved(tmp_path, tiny_data):
    from bookrec.batch import presets
    config = tmp_path / "tuned.json"
    run_optimization(
        tiny_data, n_trials=2, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="for-batch",
        options=options(), sampler_seed=2, config_path=config,
    )
    params = read_tuned_config(config)["params"]
    resolved = presets.resolve_parameters(Settings(tuned_config_path=config, environment="development"))
    model_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.model_kwargs().items()}
    return params, model_kwargs, resolved


SCHEDULE = PRESET_PARAMS  # what a preset fixes; the tuner writes every one of them
PRIORS = PRIOR_PARAMS  # the tuned prior strengths


def test_the_batch_trains_with_the_tuned_schedule(tmp_path, tiny_data):
    params, model_kwargs, resolved = _tuned_and_resolved(tmp_path, tiny_data)
    assert set(params) == set(SCHEDULE) | set(PRIORS)
    for name in SCHEDULE:
        assert model_kwargs[name] == params[name], f"batch uses {name}={model_kwargs[name]!r}, tuned {params[name]!r}"
        assert resolved.sources[name] == "tuned"


def test_the_batch_trains_with_the_tuned_prior_strengths(tmp_path, tiny_data):
    params, model_kwargs, _ = _tuned_and_resolved(tmp_path, tiny_data)
    for name in PRIORS:
        assert model_kwargs.get(name) == params[name], f"batch uses {name}={model_kwargs.get(name)!r}, tuned {params[name]!r}"


def test_cli_honours_optimizer_n_calls_and_writes_the_config(tmp_path, tiny_dataset):
    data_dir = write_dataset(tiny_dataset, tmp_path / "data")
    env = {
        **os.environ, "OPTIMIZER_N_CALLS": "2", "BOOKREC_TUNED_CONFIG_PATH": str(tmp_path / "out" / "tuned.json"),
        "BOOKREC_SEED": "7", "BOOKREC_CONFIG": str(tmp_path / "absent.toml"),
    }
    storage = f"sqlite:///{tmp_path}/cli.db"
    proc = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", "optimize", "--storage", storage, "--study", "cli",
         "--data", str(data_dir), "--seed", "3"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads((tmp_path / "out" / "tuned.json").read_text())
    assert payload["n_trials"] == 2 and payload["study"] == "cli"
    assert len(optuna.load_study(study_name="cli", storage=storage).trials) == 2
    assert "optuna-dashboard" in proc.stdout


def test_multi_objective_mode_reports_the_pareto_front(tmp_path, tiny_data):
    config = tmp_path / "tuned.json"
    result = run_optimization(
        tiny_data, n_trials=5, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="pareto",
        options=options(multi_objective=True), sampler_seed=3, config_path=config,
    )
    payload = read_tuned_config(config)
    done = [t for t in result.study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5  # Optuna cannot prune multi-objective studies: every trial runs to the end
    front = {t.number for t in result.pareto_front}
    assert front and {p["trial"] for p in payload["pareto_front"]} == front
    assert payload["trial_number"] in front and payload["multi_objective"] is True

    def dominates(a, b):
        return all(x <= y for x, y in zip(a.values, b.values)) and a.values != b.values

    for t in done:
        dominated = any(dominates(o, t) for o in done)
        assert dominated == (t.number not in front)
    for t in done:  # second objective is the measured training time
        assert t.values[1] == pytest.approx(t.user_attrs["train_seconds"])
    console = Console(file=io.StringIO(), width=200)
    for table in summary_tables(result):
        console.print(table)
    text = console.file.getvalue()
    assert "pareto" in text and text.count(" yes ") == len(front)


def test_pruning_stops_a_bad_trial(tmp_path, tiny_data):
    # Five reasonable configurations (the pruner's start-up trials), then one whose noise prior
    # pins the noise precision near 1e5 / (1e3 + SSE/2) ~ 40 (sd ~ 0.16 rating points, versus
    # residuals ~ 1.5): its predictive density is far too narrow, so its running validation NLL is
    # many nats above the median of the finished trials at every reported sweep, and MedianPruner
    # stops it right after the warm-up (4 reports).
    good = from_bpmf_kwargs(default_bpmf_kwargs(2, n_factors=3, beta0=2.0, burn_in=10, n_samples=30, thin=1))
    bad = {**good, "noise_prior_shape": 1e5, "noise_prior_rate": 1e3}
    enqueue = [{**good, "n_factors": k} for k in (2, 3, 4, 5, 6)] + [bad]
    result = run_optimization(
        tiny_data, n_trials=6, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="prune",
        options=options(), sampler_seed=0, enqueue=enqueue, config_path=None,
    )
    trials = sorted(result.study.trials, key=lambda t: t.number)
    assert [t.state for t in trials[:5]] == [TrialState.COMPLETE] * 5
    pruned = trials[5]
    assert pruned.params["noise_prior_shape"] == 1e5
    assert pruned.state == TrialState.PRUNED
    # it stopped early: fewer sweeps than its n_samples were reported
    last_step = max(pruned.intermediate_values)
    assert last_step == pruned.user_attrs["pruned_at_sweep"] < bad["n_samples"]
    assert max(trials[0].intermediate_values) == good["n_samples"]
    assert result.chosen.number in range(5)


class Poison:
    """Stands in for the test split: any use of it fails the test."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("the optimizer touched the test split")

    __getattr__ = __getitem__ = __iter__ = __len__ = __array__ = __bool__ = _fail


def test_no_code_path_of_the_optimizer_touches_the_test_split(tmp_path, tiny_training):
    # The test part (and the k-core frame it was cut from) is replaced by objects that raise on
    # any access; the whole path - TuningData, objective, pruning callback, study, config - must
    # run without noticing.
    poisoned = dataclasses.replace(tiny_training, test=Poison(), ratings=Poison())
    data = TuningData.from_training(poisoned)
    assert {f.name for f in dataclasses.fields(TuningData)} == {"train", "validation", "n_users", "n_items"}
    config = tmp_path / "tuned.json"
    result = run_optimization(
        data, n_trials=3, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="poison",
        options=options(), sampler_seed=4, config_path=config,
    )
    values = [t.value for t in result.study.trials if t.state == TrialState.COMPLETE]
    assert values and all(math.isfinite(v) for v in values)
    assert math.isfinite(read_tuned_config(config)["best_value"])


def test_the_objective_score_is_the_validation_score(tmp_path, tiny_training, tiny_data):
    # Refit the chosen configuration with the same seed and score it on validation by hand: the
    # study's value is that number (and not the test score, which differs).
    from bookrec.optimize.objective import validation_metrics

    result = run_optimization(
        tiny_data, n_trials=1, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="same",
        options=options(), sampler_seed=6, config_path=None,
    )
    trial = result.study.best_trial
    model = BPMF(**trial.user_attrs["bpmf_params"], rating_range=(1.0, 10.0), seed=5, show_progress=False)
    model.fit(*tiny_training.train, n_users=tiny_training.n_users, n_items=tiny_training.n_items)
    on_validation = validation_metrics(model, tiny_training.validation)["nll"]
    on_test = validation_metrics(model, tiny_training.test)["nll"]
    assert trial.value == pytest.approx(on_validation, rel=1e-9)
    assert on_test != pytest.approx(on_validation, rel=1e-6)


def test_a_long_enqueued_trial_reports_a_bounded_number_of_times(tiny_data, tmp_path):
    # 400 sweeps reported every 2 would be 200 storage writes, each followed by a pruner read of the
    # whole history; the cadence stretches to a multiple of eval_every so that it stays near max_reports.
    opts = options(max_reports=10)
    long_trial = from_bpmf_kwargs(default_bpmf_kwargs(2, n_factors=3, burn_in=5, n_samples=400, thin=1))
    result = run_optimization(
        tiny_data, n_trials=1, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="long",
        options=opts, enqueue=[long_trial], config_path=None,
    )
    steps = sorted(result.study.trials[0].intermediate_values)
    assert len(steps) == 10 and steps[-1] == 400
    assert all(step % opts.eval_every == 0 for step in steps)
    assert np.all(np.diff(steps) == 40)


def test_enqueued_default_round_trips(tiny_data, tmp_path):
    # from_bpmf_kwargs is the inverse of the mapping a trial goes through.

    defaults = default_bpmf_kwargs(2, burn_in=10, n_samples=20, n_factors=4)
    result = run_optimization(
        tiny_data, n_trials=1, storage_url=f"sqlite:///{tmp_path}/optuna.db", study_name="rt",
        options=options(), enqueue=[from_bpmf_kwargs(defaults)], config_path=None,
    )
    assert result.study.trials[0].user_attrs["bpmf_params"] == defaults


def test_storage_urls(tmp_path):
    assert redact_url("postgresql://tuner:s3cret@db.example:5432/optuna") == "postgresql://tuner:***@db.example:5432/optuna"
    assert "s3cret" not in redact_url("redis://:s3cret@cache:6379/0")
    assert redact_url("sqlite:///var/optuna.db") == "sqlite:///var/optuna.db"
    from bookrec.optimize.study import make_storage

    with pytest.raises(ValueError, match="unsupported Optuna storage URL"):
        make_storage("mongodb://u:s3cret@h/db")
    # a fresh checkout: the sqlite file's folder is created
    make_storage(f"sqlite:///{tmp_path}/new/dir/optuna.db", heartbeat_seconds=None)
    assert (tmp_path / "new" / "dir" / "optuna.db").exists()
    # a journal file on a shared file system
    journal = make_storage(f"journal://{tmp_path}/journal/optuna.log")
    optuna.create_study(storage=journal, study_name="j").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="j", storage=make_storage(f"journal://{tmp_path}/journal/optuna.log")).trials) == 2


def test_reopening_a_study_with_another_objective_is_refused(tmp_path, tiny_data):
    url = f"sqlite:///{tmp_path}/optuna.db"
    run_optimization(tiny_data, n_trials=1, storage_url=url, study_name="s", options=options(), config_path=None)
    with pytest.raises(ValueError, match="optimises validation nll"):
        run_optimization(tiny_data, n_trials=1, storage_url=url, study_name="s", options=options(objective="crps"))
    with pytest.raises(ValueError, match="objective"):
        run_optimization(tiny_data, n_trials=1, storage_url=url, study_name="s", options=options(multi_objective=True))


def test_empty_validation_split_is_a_clear_error(tiny_training):
    empty = tuple(np.asarray(a)[:0] for a in tiny_training.validation)
    with pytest.raises(ValueError, match="validation split is empty"):
        TuningData(tiny_training.train, empty, tiny_training.n_users, tiny_training.n_items)
