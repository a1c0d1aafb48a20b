"""Which parameters a batch runs with: preset < tuned parameters (local file or study) < explicit BOOKREC_* settings."""

from __future__ import annotations

import json
import logging

import pytest

from bookrec.batch.presets import PRESETS, PresetError, resolve_parameters
from bookrec.config import Settings
from bookrec.data.prep import prepare_training
from bookrec.data.synth import generate
from bookrec.model import BPMF


def _settings(tmp_path, **kw) -> Settings:
    return Settings(tuned_config_path=tmp_path / "tuned.json", **kw)


def _write_tuned(tmp_path, params: dict) -> None:
    (tmp_path / "tuned.json").write_text(
        json.dumps({"params": params, "study": "bookrec", "n_trials": 12, "best_value": 1.42})
    )


def test_preset_values_are_used_when_nothing_overrides(tmp_path, monkeypatch):
    for name in ("N_FACTORS", "N_SAMPLES", "BURN_IN", "THIN", "N_CHAINS", "MAX_KEPT_SAMPLES", "WARM_START", "TOP_N"):
        monkeypatch.delenv(f"BOOKREC_{name}", raising=False)
    for name, preset in PRESETS.items():
        resolved = resolve_parameters(_settings(tmp_path), name)
        assert resolved.preset == name
        assert resolved.model_kwargs() == {k: v for k, v in preset.parameters().items() if k != "top_n"}
        assert resolved.top_n == preset.top_n
        assert set(resolved.sources.values()) == {f"preset:{name}"}
        assert resolved.tuned is None


def test_preset_defaults_to_the_environment_setting(tmp_path):
    assert resolve_parameters(_settings(tmp_path, environment="staging")).preset == "staging"
    assert resolve_parameters(_settings(tmp_path, environment="production")).burn_in == PRESETS["production"].burn_in


def test_presets_grow_in_effort():
    dev, stg, prod = PRESETS["development"], PRESETS["staging"], PRESETS["production"]

    def effort(preset):  # a sweep costs at least linearly in k, so fewer factors buy more sweeps
        return (preset.burn_in + preset.n_samples) * preset.n_factors

    assert effort(dev) < effort(stg) < effort(prod)
    assert dev.n_factors < stg.n_factors < prod.n_factors
    assert prod.burn_in >= 500 and prod.n_samples >= 1000 and prod.max_kept_samples == 200


def test_tuned_file_overrides_preset_and_is_logged(tmp_path, caplog):
    _write_tuned(tmp_path, {"n_factors": 14, "n_samples": 321, "alpha_prior": [2, 3], "not_a_parameter": 5})
    with caplog.at_level(logging.INFO, logger="bookrec.batch.presets"):
        resolved = resolve_parameters(_settings(tmp_path), "development")
    assert resolved.n_factors == 14 and resolved.n_samples == 321
    assert resolved.sources["n_factors"] == "tuned" and resolved.sources["burn_in"] == "preset:development"
    assert resolved.burn_in == PRESETS["development"].burn_in
    assert resolved.tuned["study"] == "bookrec" and resolved.tuned["n_trials"] == 12
    # Prior strengths are passed to the model too; names neither the batch nor the model knows are ignored.
    assert resolved.tuned["params_used"] == {"n_factors": 14, "n_samples": 321, "alpha_prior": (2.0, 3.0)}
    assert resolved.model_kwargs()["alpha_prior"] == (2.0, 3.0)
    assert any("using tuned parameters from" in r.getMessage() and "tuned.json" in r.getMessage() for r in caplog.records)


def test_explicit_environment_variables_override_the_tuned_file(tmp_path, monkeypatch):
    _write_tuned(tmp_path, {"n_factors": 14, "burn_in": 250})
    monkeypatch.setenv("BOOKREC_N_FACTORS", "7")
    monkeypatch.setenv("BOOKREC_TOP_N", "15")
    resolved = resolve_parameters(_settings(tmp_path), "production")
    assert resolved.n_factors == 7 and resolved.sources["n_factors"] == "env"
    assert resolved.top_n == 15 and resolved.sources["top_n"] == "env"
    assert resolved.burn_in == 250 and resolved.sources["burn_in"] == "tuned"
    assert resolved.n_samples == PRESETS["production"].n_samples


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"n_factors": 3}), json.dumps({"params": {"n_factors": "many"}}),
     json.dumps({"params": {"burn_in": -5}}), json.dumps({"params": {"warm_start": "yes"}})],
)
def test_a_bad_tuned_file_is_a_clear_error(tmp_path, content):
    (tmp_path / "tuned.json").write_text(content)
    with pytest.raises(PresetError, match="tuned.json"):
        resolve_parameters(_settings(tmp_path), "development")


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(PresetError, match="unknown preset 'fast'"):
        resolve_parameters(_settings(tmp_path), "fast")


def _study_with_record(tmp_path, record: dict | None) -> str:
    """A SQLite Optuna study as `bookrec optimize` leaves it (its best parameters in a user attribute)."""
    import optuna

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(storage=url, study_name="shared")
    if record is not None:
        study.set_user_attr("best_params", record)
    return url


def test_tuned_parameters_from_a_study_override_the_preset_and_name_their_origin(tmp_path, caplog):
    _write_tuned(tmp_path, {"n_factors": 3})  # a local file is ignored when the study is named
    url = _study_with_record(tmp_path, {"params": {"n_factors": 9, "bias_prior": [1, 2]}, "study": "shared",
                                        "trial_number": 4, "n_trials": 6, "best_value": 1.3})
    settings = _settings(tmp_path, tuned_from=url, tuned_study="shared", burn_in=7)
    with caplog.at_level(logging.INFO, logger="bookrec.batch.presets"):
        resolved = resolve_parameters(settings, "development")
    assert resolved.n_factors == 9 and resolved.sources["n_factors"] == "tuned"
    assert resolved.priors["bias_prior"] == (1.0, 2.0)
    assert resolved.burn_in == 7 and resolved.sources["burn_in"] == "env"  # explicit settings still win
    assert resolved.tuned == {"source": "study", "storage": url, "study": "shared", "trial_number": 4, "n_trials": 6,
                              "best_value": 1.3, "data_fingerprint": None,
                              "params_used": {"n_factors": 9, "bias_prior": (1.0, 2.0)}}
    assert any("study 'shared'" in r.getMessage() for r in caplog.records)


def test_a_tuned_file_records_its_path_as_the_origin(tmp_path):
    _write_tuned(tmp_path, {"n_factors": 3})
    tuned = resolve_parameters(_settings(tmp_path), "development").tuned
    assert tuned["source"] == "file" and tuned["path"] == str(tmp_path / "tuned.json")


@pytest.mark.parametrize("case", ["no record", "no study", "no file", "bad scheme"])
def test_a_study_without_tuned_parameters_is_an_error_not_a_fallback(tmp_path, case):
    _write_tuned(tmp_path, {"n_factors": 3})
    url = _study_with_record(tmp_path, None) if case != "no file" else f"sqlite:///{tmp_path}/absent.db"
    if case == "bad scheme":
        url = "mongodb://host/db"
    study = "other" if case == "no study" else "shared"
    with pytest.raises(PresetError, match={"no record": "no recorded best parameters", "no study": "no study 'other'",
                                           "no file": "does not exist", "bad scheme": "unsupported"}[case]):
        resolve_parameters(_settings(tmp_path, tuned_from=url, tuned_study=study), "development")
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.slow
def test_development_preset_converges_on_the_quick_start_data(tmp_path, monkeypatch):
    """The quick start (`small`, seed 42, which seeds the data and the chains) passes the default
    rule (rank-normalised R-hat < 1.01, bulk and tail ESS >= 400 for every tracked quantity)."""
    for name in ("RHAT_THRESHOLD", "MIN_ESS"):
        monkeypatch.delenv(f"BOOKREC_{name}", raising=False)
    settings = _settings(tmp_path)
    resolved = resolve_parameters(settings, "development")
    training = prepare_training(generate("small", seed=settings.seed).dataset, settings)
    model = BPMF(**resolved.model_kwargs(), seed=settings.seed, show_progress=False)
    model.fit(*training.train, training.n_users, training.n_items)
    d = model.diagnostics_
    assert d["converged"], d["summary"]


def test_explicit_chain_length_below_the_presets_thinning_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("BOOKREC_THIN", raising=False)
    thin = PRESETS["production"].thin
    with pytest.raises(PresetError, match=rf"n_samples \({thin - 1}, env\) must be at least thin \({thin}, preset:production\)"):
        resolve_parameters(_settings(tmp_path, n_samples=thin - 1), "production")
    assert resolve_parameters(_settings(tmp_path, n_samples=thin - 1, thin=1), "production").thin == 1
