"""`bookrec train` and `bookrec evaluate` end to end on the `tiny` synthetic preset."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bookrec.cli import app
from bookrec.data.io import write_dataset
from bookrec.data.synth import generate


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    write_dataset(generate("tiny", seed=1).dataset, out)
    return out


def test_train_then_evaluate(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BOOKREC_MIN_USER_RATINGS", "3")
    monkeypatch.setenv("BOOKREC_MIN_BOOK_RATINGS", "3")
    from bookrec.config import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    artifact = tmp_path / "model.npz"
    result = runner.invoke(app, ["train", "--data", str(tiny_dir), "--out", str(artifact), "--factors", "3",
                                 "--samples", "30", "--burn-in", "20", "--seed", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert artifact.exists() and artifact.with_suffix(".json").exists()
    assert "convergence" in result.output
    result = runner.invoke(app, ["evaluate", "--data", str(tiny_dir), "--model", str(artifact), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"bpmf", "bias", "global_mean", "convergence"}
    for name in ("bpmf", "bias", "global_mean"):
        assert report[name]["n"] > 0 and 0 < report[name]["rmse"] < 5
        assert set(report[name]["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}
    assert 0 < report["bpmf"]["catalogue_coverage"] <= 1
    table = runner.invoke(app, ["evaluate", "--data", str(tiny_dir), "--model", str(artifact)])
    assert table.exit_code == 0 and "crps" in table.output and "catalogue coverage" in table.output
    # A damaged artifact gives a clear error, not a traceback.
    artifact.write_bytes(artifact.read_bytes()[:100])
    bad = runner.invoke(app, ["evaluate", "--data", str(tiny_dir), "--model", str(artifact)])
    assert bad.exit_code == 2 and "truncated or altered" in bad.output  # bad input
    get_settings.cache_clear()


def test_help_is_available():
    runner = CliRunner()
    for cmd in (["train", "--help"], ["evaluate", "--help"]):
        result = runner.invoke(app, cmd)
        assert result.exit_code == 0 and "--data" in result.output
