"""bookrec.contracts: each contract is defined once, and its consumers derive from it (a consumer
that spelled its own parameter list, defaults or payload fields would fail here)."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from bookrec.api.schemas import Book
from bookrec.batch.payloads import PayloadEncoder
from bookrec.batch.presets import PARAMETER_NAMES, Preset, ResolvedParameters, resolve_parameters
from bookrec.config import Settings
from bookrec.contracts.params import (
    MODEL_PARAMS,
    OVERRIDABLE_PARAMS,
    PRESET_PARAMS,
    PRIOR_PARAMS,
    TUNABLE_PARAMS,
)
from bookrec.contracts.payloads import BOOK_FIELDS, BOOK_PAYLOAD_FIELDS, RecommendationItem, recommendation_item
from bookrec.contracts.serving import ServingModel
from bookrec.model import BPMF
from bookrec.model.sampler import Priors
from bookrec.optimize.space import SEARCHED, default_bpmf_kwargs

# --- model parameters ------------------------------------------------------------------------------


def test_bpmf_takes_the_contracts_parameters_and_defaults():
    signature = inspect.signature(BPMF.__init__).parameters
    names = [name for name in signature if name != "self"]
    assert names == list(MODEL_PARAMS) == list(BPMF.PARAM_NAMES)
    assert {name: signature[name].default for name in names} == {n: p.default for n, p in MODEL_PARAMS.items()}


def test_the_samplers_prior_defaults_are_the_models():
    """Priors() and BPMF() build the same hyperpriors (BPMF passes every one explicitly)."""
    assert BPMF()._priors(5.5) == Priors()


def test_bpmf_is_cloned_by_scikit_learn():
    from sklearn.base import clone

    model = BPMF(n_factors=3, mu_prior_precision=2.5, bias_prior=(2.0, 3.0))
    copy = clone(model)
    assert copy is not model and copy.get_params(deep=True) == model.get_params(deep=True)


@pytest.mark.parametrize(
    "name, bad",
    [("n_factors", 0), ("burn_in", -1), ("n_chains", 17), ("thin", 1.5), ("beta0", 0.0), ("w0_scale", -1.0),
     ("bias_prior", (0.0, 1.0)), ("alpha_prior", (1.0,)), ("mu_prior_precision", 0.0), ("rating_range", (5.0, 1.0)),
     ("warm_start", "yes"), ("chain_mode", "fast")],
)
def test_bpmf_refuses_what_the_contract_refuses(name, bad):
    with pytest.raises(ValueError, match=name):
        BPMF(**{name: bad})._check_params()
    with pytest.raises(ValueError, match=name):
        MODEL_PARAMS[name].coerce(bad)


def test_presets_fix_the_contracts_preset_parameters():
    assert PARAMETER_NAMES == (*PRESET_PARAMS, "top_n")
    for record in (Preset, ResolvedParameters):
        fields = {f.name for f in dataclasses.fields(record)}
        assert set(PARAMETER_NAMES) <= fields
        assert not (fields & set(MODEL_PARAMS)) - set(PRESET_PARAMS), f"{record.__name__} spells a parameter"


def _in_range(name: str):
    """A value inside the tuner's range that is not the default (a pair: its components)."""
    param = MODEL_PARAMS[name]
    values = [dim.low * 2 if dim.low > 0 else dim.low + 1 for _, dim in param.dimensions()]
    if param.kind == "bool":
        return not param.default
    if param.kind == "pair":
        return tuple(float(v) for v in values)
    return int(values[0]) if param.kind == "int" else float(values[0])


@pytest.mark.parametrize("name", PRIOR_PARAMS)
def test_every_tunable_prior_is_a_setting_that_reaches_the_model(name, tmp_path, monkeypatch):
    value = _in_range(name)
    assert name in Settings.model_fields
    monkeypatch.setenv(f"BOOKREC_{name.upper()}", json.dumps(value) if isinstance(value, tuple) else str(value))
    resolved = resolve_parameters(Settings(tuned_config_path=tmp_path / "none.json"), "development")
    assert resolved.model_kwargs()[name] == value and resolved.sources[name] == "env"


def test_the_tuned_file_carries_every_tunable_parameter(tmp_path):
    tuned = {name: _in_range(name) for name in TUNABLE_PARAMS}
    (tmp_path / "tuned.json").write_text(json.dumps({"params": tuned}))
    kwargs = resolve_parameters(Settings(tuned_config_path=tmp_path / "tuned.json"), "development").model_kwargs()
    assert {name: kwargs[name] for name in TUNABLE_PARAMS} == tuned
    assert set(OVERRIDABLE_PARAMS) == set(PRESET_PARAMS) | set(TUNABLE_PARAMS)


def test_mu_prior_precision_is_tuned_overridden_and_carried(tmp_path, monkeypatch):
    assert "mu_prior_precision" in SEARCHED and "mu_prior_precision" in PRIOR_PARAMS
    assert default_bpmf_kwargs()["mu_prior_precision"] == BPMF().mu_prior_precision
    (tmp_path / "tuned.json").write_text(json.dumps({"params": {"mu_prior_precision": 4.0}}))
    settings = Settings(tuned_config_path=tmp_path / "tuned.json")
    assert resolve_parameters(settings, "development").model_kwargs()["mu_prior_precision"] == 4.0
    monkeypatch.setenv("BOOKREC_MU_PRIOR_PRECISION", "0.5")
    assert resolve_parameters(Settings(tuned_config_path=tmp_path / "tuned.json"), "development").model_kwargs()[
        "mu_prior_precision"] == 0.5


# --- payloads ------------------------------------------------------------------------------------


def _catalog(n: int = 3):
    return SimpleNamespace(
        works=SimpleNamespace(values=np.array([f"title {w}|author" for w in range(n)], dtype=object)),
        isbn=np.array([f"00000000{w}X" for w in range(n)], dtype=object),
        title=np.array([f"Title {w}" for w in range(n)], dtype=object),
        author=np.array(["Author"] * n, dtype=object),
        year=np.array([1999, -1, 2005][:n]),
        image_url=np.array([None, "http://x/1.jpg", None][:n], dtype=object),
    )


def test_the_batchs_item_bytes_are_the_contracts_item():
    """The batch's fast encoder and the dict builder (API cold start, benches, fakes) give the same
    item: same fields, same order, same rounding; and it is the API's response model."""
    encoder = PayloadEncoder(_catalog())
    works = np.array([0, 1, 2])
    predicted, lower, upper = np.array([7.123456, 6.5, 8.0049]), np.array([5.0, 4.4444, 6.0]), np.array([9.0, 8.5, 9.98])
    score, relevance, sd, p_liked = np.array([0.123456, np.nan, 1e-7]), np.array([0.2, np.nan, 0.3]), \
        np.array([0.01, np.nan, 0.02]), np.array([0.876543, 0.5, 0.25])
    stored = orjson.loads(encoder.items(works, predicted, lower, upper, [b"personal"] * 3, score, relevance, sd,
                                        p_liked, reason=b'{"kind":"popular"}'))
    for row, item in enumerate(stored):
        book = {name: item[name] for name in BOOK_FIELDS}
        built = recommendation_item(row + 1, book, predicted[row], lower[row], upper[row], "personal",
                                    score=score[row], relevance=relevance[row], relevance_sd=sd[row],
                                    p_liked=p_liked[row], reason={"kind": "popular"})
        assert list(item.items()) == list(built.items())
        assert list(item) == list(RecommendationItem.model_fields)
        RecommendationItem.model_validate(item)


def test_the_book_payload_fields_are_the_api_models():
    assert tuple(Book.model_fields) == BOOK_PAYLOAD_FIELDS


# --- the serving model ---------------------------------------------------------------------------


def _serving(n_items: int = 4, n_samples: int = 3, k: int = 2) -> ServingModel:
    rng = np.random.default_rng(0)
    return ServingModel(
        item_factors=rng.normal(size=(n_samples, n_items, k)).astype(np.float32),
        item_bias=rng.normal(size=(n_samples, n_items)).astype(np.float32), mu=rng.normal(size=n_samples),
        alpha=rng.gamma(2.0, size=n_samples), mu_user=rng.normal(size=(n_samples, k)),
        lambda_user=np.stack([np.eye(k)] * n_samples), tau_user_bias=rng.gamma(2.0, size=n_samples),
        rating_range=np.array([1.0, 10.0]), item_keys=np.array([f"w{i}" for i in range(n_items)]),
        item_isbns=np.array([f"{i:010d}" for i in range(n_items)]),
    )


def test_the_serving_model_round_trips_through_its_npz():
    model = _serving()
    back = ServingModel.from_npz(model.to_npz())
    assert list(back.arrays()) == list(ServingModel.field_names())
    for name, value in model.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), value)
        assert getattr(back, name).dtype == value.dtype


def test_a_serving_model_missing_an_array_or_holding_objects_is_refused():
    arrays = _serving().arrays()
    del arrays["alpha"]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="alpha"):
        ServingModel.from_npz(buffer.getvalue())
    arrays = {**_serving().arrays(), "item_keys": np.array(["a", 1, None], dtype=object)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError):
        ServingModel.from_npz(buffer.getvalue())
