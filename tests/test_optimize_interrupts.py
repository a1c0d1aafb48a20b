"""Ctrl-C that arrives while Optuna writes to its storage: the write finishes, then the worker stops
with its finished trials kept (a SQLite transaction cut in half used to leave its lock held, and
the worker ended with "database is locked")."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from bookrec.config import Settings
from bookrec.exitcodes import Terminated
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.optimize.interrupts import InterruptGuard
from bookrec.optimize.objective import ObjectiveOptions, TuningData
from bookrec.optimize.space import SearchSpace
from bookrec.optimize.study import OptimizationInterrupted, make_storage, run_optimization

SPACE = SearchSpace(n_factors=(2, 3), burn_in=(2, 4), n_samples=(4, 6))


@pytest.fixture(scope="module")
def tiny_data():
    return TuningData.from_training(prepare_training(generate("tiny", seed=7).dataset, Settings(seed=7)))


def interrupt_inside_the_nth_completion(engine, n: int) -> list[int]:
    """Send SIGINT to this process right after the statement that marks the n-th trial complete,
    before its transaction commits; returns the completed trial ids seen (filled as they come)."""
    completed: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _after(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("UPDATE TRIALS") and "COMPLETE" in map(str, parameters):
            completed.append(parameters[-1])
            if len(completed) == n:
                os.kill(os.getpid(), signal.SIGINT)

    return completed


@pytest.mark.parametrize("n", [1, 3])
def test_ctrl_c_inside_a_storage_write_lets_it_commit_and_keeps_the_trials(tmp_path, tiny_data, n):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = make_storage(url)
    completed = interrupt_inside_the_nth_completion(storage.engine, n)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(OptimizationInterrupted) as stopped:
            run_optimization(tiny_data, n_trials=20, storage_url=url, study_name="s", storage=storage,
                             options=ObjectiveOptions(space=SPACE, eval_every=2, seed=5,
                                                      fixed={"rating_range": (1.0, 10.0)}))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(completed) == n
    trials = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    states = [trial.state for trial in trials]
    # The write the signal arrived in committed, no trial is left running, none ran after it.
    assert states == [TrialState.COMPLETE] * n, states
    assert stopped.value.result.trials_run_here == n
    assert stopped.value.result.chosen is not None and stopped.value.result.chosen.state == TrialState.COMPLETE


class Storage:
    """A stand-in with the shape the guard wraps: public methods, called from the objective."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def write(self, name: str, signals: tuple[int, ...] = ()) -> None:
        for signum in signals:
            os.kill(os.getpid(), signum)
        self.finished.append(name)


def test_an_interrupt_in_a_storage_call_is_raised_when_the_call_returns_to_the_objective():
    storage, guard = Storage(), InterruptGuard()
    after: list[str] = []

    def objective():
        storage.write("a", (signal.SIGTERM,))
        after.append("objective went on")

    with pytest.raises(Terminated), guard.installed(storage):
        guard.objective(objective)()
    assert storage.finished == ["a"] and after == []
    assert Storage.write is storage.write.__func__  # the class's method again


def test_outside_the_objective_an_interrupt_waits_for_the_next_safe_point_and_a_second_one_does_not():
    storage, guard = Storage(), InterruptGuard()
    with pytest.raises(KeyboardInterrupt), guard.installed(storage):
        storage.write("told", (signal.SIGINT,))  # as Optuna's tell would, between trials
        storage.write("asked")
        with pytest.raises(KeyboardInterrupt):
            guard.raise_held()  # the callback after the trial
        storage.write("stuck", (signal.SIGINT, signal.SIGINT))
    assert storage.finished == ["told", "asked"]
