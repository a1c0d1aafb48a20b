"""Quality presets of the batch (development / staging / production) and how the parameters
that a run actually uses are resolved.

Priority, lowest first: the preset -> the tuned parameters -> explicit ``BOOKREC_*`` settings.
The tuned parameters are those ``bookrec optimize`` recorded in its Optuna study when
``settings.tuned_from`` names the study's storage, else the tuner's local file
(``settings.tuned_config_path``). Each resolved value remembers where it came from, so the log and
the published ``meta`` can say so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bookrec.config import Settings
from bookrec.contracts.params import MODEL_PARAMS, PRESET_PARAMS, PRIOR_PARAMS, check_schedule
from bookrec.contracts.tuning import BEST_PARAMS_ATTR, open_optuna_storage

log = logging.getLogger(__name__)

# The parameters a preset fixes (the model's, from bookrec.contracts.params, plus the batch's top_n);
# the same names are fields of Settings (None there = "use preset").
PARAMETER_NAMES = (*PRESET_PARAMS, "top_n")


@dataclass(frozen=True)
class Preset:
    name: str
    n_factors: int
    n_samples: int  # post-burn-in sweeps per chain
    burn_in: int
    thin: int
    n_chains: int
    max_kept_samples: int  # kept (thinned) draws over all chains: what serving and top-N use
    warm_start: bool
    top_n: int
    description: str = ""

    def parameters(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMETER_NAMES}


PRESETS: dict[str, Preset] = {
    # Sized so that `bookrec run` (synthetic `small` data) finishes in well under a minute on 2 cores
    # once compiled. k=3 validates at least as well as k=4 or 5 on `small` and mixes far faster
    # (docs/BENCHMARKS.md, "Mixing on the quick start").
    "development": Preset(
        "development", n_factors=3, n_samples=6000, burn_in=300, thin=5, n_chains=2,
        max_kept_samples=50, warm_start=True, top_n=20,
        description="300 burn-in + 6,000 samples, 2 chains, k=3",
    ),
    # For real-sized data, where more factors validate better; each factor costs sweep time and
    # mixing, so these chains are sized for the data rather than for a quick start.
    "staging": Preset(
        "staging", n_factors=8, n_samples=5000, burn_in=500, thin=10, n_chains=2,
        max_kept_samples=100, warm_start=True, top_n=20,
        description="500 burn-in + 5,000 samples thinned by 10, 2 chains, k=8",
    ),
    # The spec's production run: long chains, kept draws thinned to a serving-sized set.
    "production": Preset(
        "production", n_factors=10, n_samples=8000, burn_in=1000, thin=10, n_chains=2,
        max_kept_samples=200, warm_start=True, top_n=30,
        description="1,000 burn-in + 8,000 samples thinned to 200 kept, 2 chains, k=10",
    ),
}


class PresetError(ValueError):
    """Unknown preset or unreadable tuned-parameter file (shown without a traceback)."""


class TunedStorageUnavailable(PresetError):
    """The Optuna storage holding the tuned parameters does not answer (exit code 1, not 2)."""


@dataclass(frozen=True)
class ResolvedParameters:
    """Parameters of one batch run plus where each came from ("preset:<name>", "tuned", "env")."""

    preset: str
    n_factors: int
    n_samples: int
    burn_in: int
    thin: int
    n_chains: int
    max_kept_samples: int
    warm_start: bool
    top_n: int
    sources: dict[str, str] = field(default_factory=dict)
    tuned: dict[str, Any] | None = None  # where from (file path, or redacted storage + study), trial, best value
    priors: dict[str, Any] = field(default_factory=dict)  # set by the tuned file or env (empty: model defaults)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`bookrec.model.BPMF` (top_n is the batch's own)."""
        kwargs = {name: getattr(self, name) for name in PARAMETER_NAMES if name != "top_n"}
        kwargs.update(self.priors)
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def read_tuned_file(path: Path) -> dict[str, Any] | None:
    """The tuner's file ``{"params": {...}, "study", "n_trials", "best_value"}``, or None if absent.

    Only known parameter names are taken from ``params`` (the tuner may also record things the
    batch does not set, such as prior strengths); a malformed file is an error, not a silent skip,
    because running with parameters other than the ones the operator tuned would be a surprise.
    """
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PresetError(f"tuned parameter file {path} is unreadable: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("params"), dict):
        raise PresetError(f"tuned parameter file {path} has no 'params' object")
    return document


# The study user attribute bookrec.optimize.study records the tuned-parameters document in.


def read_tuned_study(storage_url: str, study_name: str) -> dict[str, Any]:
    """The tuned-parameters document recorded in an Optuna study (same format as the tuner's file).

    A storage that does not answer, a missing study or a study without a record is an error: a
    batch asked for shared parameters must not quietly train with others.
    """
    from bookrec.contracts.tuning import storage_error_message
    from bookrec.store import redact_url

    where = f"study {study_name!r} in {redact_url(storage_url)}"
    try:
        storage = open_optuna_storage(storage_url, read_only=True, error=PresetError)
        study_id = storage.get_study_id_from_name(study_name)
        document = storage.get_study_user_attrs(study_id).get(BEST_PARAMS_ATTR)
    except KeyError:
        raise PresetError(f"no {where}") from None
    except PresetError:
        raise
    except Exception as exc:  # the storage's driver errors: connection refused, bad credentials, ...
        if type(exc).__module__.split(".")[0] not in {"sqlalchemy", "redis", "psycopg", "optuna"}:
            raise
        raise TunedStorageUnavailable(
            f"cannot read tuned parameters from {where}: {storage_error_message(exc, storage_url)}") from None
    if not isinstance(document, dict) or not isinstance(document.get("params"), dict):
        raise PresetError(f"{where} has no recorded best parameters (run `bookrec optimize` on it)")
    return document


def _coerce(name: str, value: Any, origin: str) -> Any:
    """A value as the model takes it (the contract's check and coercion); ``origin`` names the source."""
    if name == "top_n":
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, (bool, str)) or number != value or number < 1:
            raise PresetError(f"{origin}: top_n must be a positive integer, got {value!r}")
        return number
    try:
        return MODEL_PARAMS[name].coerce(value)
    except ValueError as exc:
        raise PresetError(f"{origin}: {exc}") from None


def resolve_parameters(settings: Settings, preset: str | None = None) -> ResolvedParameters:
    """Preset (default: ``settings.environment``) < tuned parameters (study or file) < explicit settings."""
    chosen = get_preset(preset or settings.environment)
    values: dict[str, Any] = chosen.parameters()
    sources = {name: f"preset:{chosen.name}" for name in PARAMETER_NAMES}

    tuned_info: dict[str, Any] | None = None
    priors: dict[str, Any] = {}
    if settings.tuned_from:
        from bookrec.store import redact_url

        study_name = settings.tuned_study or settings.optuna_study
        document = read_tuned_study(settings.tuned_from, study_name)
        origin = {"source": "study", "storage": redact_url(settings.tuned_from), "study": study_name}
        origin_text = f"study {study_name!r} in {origin['storage']}"
    else:
        tuned_path = Path(settings.tuned_config_path)
        document = read_tuned_file(tuned_path)
        origin = {"source": "file", "path": str(tuned_path), "study": document.get("study") if document else None}
        origin_text = str(tuned_path)
    if document is not None:
        used = {}
        for name, value in document["params"].items():
            if name in PARAMETER_NAMES:
                used[name] = values[name] = _coerce(name, value, origin_text)
                sources[name] = "tuned"
            elif name in PRIOR_PARAMS:
                used[name] = priors[name] = _coerce(name, value, origin_text)
                sources[name] = "tuned"
        tuned_info = {
            **origin,
            "trial_number": document.get("trial_number"),
            "n_trials": document.get("n_trials"),
            "best_value": document.get("best_value"),
            "data_fingerprint": document.get("data_fingerprint"),
            "params_used": used,
        }
        log.info(
            "using tuned parameters from %s (trial %s of %s, best value %s): %s",
            origin_text, document.get("trial_number"), document.get("n_trials"), document.get("best_value"),
            ", ".join(f"{k}={v}" for k, v in used.items()) or "none of them are batch parameters",
        )

    for name in (*PARAMETER_NAMES, *PRIOR_PARAMS):
        explicit = getattr(settings, name)
        if explicit is None:
            continue
        value = _coerce(name, explicit, f"BOOKREC_{name.upper()}")
        if name in PRIOR_PARAMS:
            priors[name] = value
        else:
            values[name] = value
        sources[name] = "env"
    overridden = [n for n in sources if sources[n] == "env"]
    if overridden:
        log.info("explicit settings override: %s", ", ".join(f"{n}={values.get(n, priors.get(n))}" for n in overridden))
    try:  # values from different sources can disagree
        check_schedule(values, sources)
    except ValueError as exc:
        raise PresetError(str(exc)) from None

    return ResolvedParameters(preset=chosen.name, sources=sources, tuned=tuned_info, priors=priors, **values)
