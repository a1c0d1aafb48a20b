"""The parameters of the rating model (:class:`bookrec.model.BPMF`), defined once.

Each :class:`Param` holds a name, its default, what values it admits, how a value read from a
file or the environment is coerced, its tuner search range (``search``; None = not tuned) and one
line of help. Everything else derives from :data:`MODEL_PARAMS`: the BPMF constructor's defaults
and checks, the sampler's ``Priors`` defaults, the batch presets' names, the tuner's space, and
the ``BOOKREC_*`` overrides of the settings. Making a parameter tunable is giving it a ``search``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

INT, FLOAT, BOOL, PAIR, CHOICE = "int", "float", "bool", "pair", "choice"


@dataclass(frozen=True)
class Search:
    """One tuner dimension: inclusive bounds, searched on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False


BOTH_VALUES = Search(0, 1)  # the dimension of a BOOL parameter: the tuner tries True and False


@dataclass(frozen=True)
class Param:
    """One constructor argument of BPMF. Numbers must lie in [low, high] (None = unbounded) and be
    > 0 when ``positive``; a ``PAIR`` is two positive numbers (shape, rate) unless ``ordered``
    (then low < high); ``optional`` admits None."""

    name: str
    kind: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    positive: bool = False
    ordered: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    preset: bool = False  # a batch preset fixes it
    search: Search | tuple[Search, Search] | None = None  # a pair: one dimension per component
    trial_names: tuple[str, str] = ()  # a searched pair: the tuner's names of its two components

    @property
    def tunable(self) -> bool:
        return self.search is not None

    @property
    def overridable(self) -> bool:
        """Set by the tuner's file or a ``BOOKREC_*`` variable: the preset's parameters and the tuned ones."""
        return self.preset or self.tunable

    def dimensions(self) -> tuple[tuple[str, Search], ...]:
        """The tuner's (trial name, range) of this parameter: one, or one per component of a pair."""
        if self.search is None:
            return ()
        if self.kind == PAIR:
            return tuple(zip(self.trial_names, self.search))  # type: ignore[arg-type]
        return ((self.name, self.search),)  # type: ignore[return-value]

    def check(self, value: Any) -> None:
        """Raise ValueError when ``value`` is not admitted (no conversion: estimators keep what they get)."""
        if value is None and self.optional:
            return
        if self.kind == BOOL:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
        elif self.kind == CHOICE:
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        elif self.kind == PAIR:
            self._check_pair(value)
        else:
            self._check_number(value)

    def coerce(self, value: Any) -> Any:
        """A value read from JSON or the environment, checked and as the model takes it; ValueError if bad."""
        self.check(value)
        if value is None or self.kind in (BOOL, CHOICE):
            return value
        if self.kind == PAIR:
            return (float(value[0]), float(value[1]))
        if self.kind == INT:
            return int(value)
        return float(value)

    def _check_number(self, value: Any) -> None:
        expected = "an integer" if self.kind == INT else "a number"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be {expected}{self._range_text()}, got {value!r}") from None
        if isinstance(value, (bool, str)) or (self.kind == INT and number != int(number)) or not self._in_range(number):
            raise ValueError(f"{self.name} must be {expected}{self._range_text()}, got {value!r}")

    def _check_pair(self, value: Any) -> None:
        what = "(low, high) with low < high" if self.ordered else "a pair of positive numbers (shape, rate)"
        try:
            first, second = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be {what}, got {value!r}") from None
        good = first < second if self.ordered else (first > 0 and second > 0)
        if not good:
            raise ValueError(f"{self.name} must be {what}, got {value!r}")

    def _in_range(self, number: float) -> bool:
        if self.positive and not number > 0:
            return False
        return (self.low is None or number >= self.low) and (self.high is None or number <= self.high)

    def _range_text(self) -> str:
        if self.positive:
            return " > 0"
        if self.low is not None and self.high is not None:
            return f" in [{self.low:g}, {self.high:g}]"
        return f" >= {self.low:g}" if self.low is not None else ""

    def settings_field(self) -> tuple[Any, Any]:
        """(type, pydantic Field) of this parameter's ``BOOKREC_*`` override (None = not overridden)."""
        bounds: dict[str, Any] = {"gt": 0} if self.positive else {"ge": self.low, "le": self.high}
        bounds = {k: v for k, v in bounds.items() if v is not None}
        if self.kind == BOOL:
            kind: Any = bool
        elif self.kind == PAIR:
            component = Annotated[float, Field(gt=0)]
            kind = tuple[component, component]  # type: ignore[valid-type]
            bounds = {}
        else:
            kind = int if self.kind == INT else float
        return kind | None, Field(None, description=f"{self.help} (None = the preset's or the model's)", **bounds)


_PARAMS = (
    Param("n_factors", INT, 10, "Latent factors k", low=1, high=200, preset=True, search=Search(2, 32, log=True)),
    Param("n_samples", INT, 200, "Post-burn-in sweeps per chain", low=1, preset=True, search=Search(20, 200)),
    Param("burn_in", INT, 100, "Discarded sweeps per chain", low=0, preset=True, search=Search(10, 150)),
    Param("n_chains", INT, 2, "Markov chains", low=1, high=16, preset=True),
    Param("thin", INT, 1, "Keep every thin-th post-burn-in draw", low=1, preset=True, search=Search(1, 4)),
    Param("max_kept_samples", INT, 100, "Kept draws over all chains (thinned further to fit)", low=1, preset=True),
    Param("seed", INT, 0, "Random seed of the chains"),
    Param("rating_range", PAIR, (1.0, 10.0), "(lowest, highest) rating; predictions are clipped to it", ordered=True),
    Param("warm_start", BOOL, True, "Start the chains from a MAP fit (else at random)", preset=True,
          search=BOTH_VALUES),
    # Normal-Wishart prior of (mu_U, Lambda_U) and (mu_V, Lambda_V): beta0 is the strength of the prior on
    # the means; W0 = w0_scale * I, so E[Lambda] = nu0 W0 and a larger scale pulls factors harder to the mean.
    Param("beta0", FLOAT, 100.0, "Normal-Wishart: strength of the prior on mu_U and mu_V", positive=True,
          search=Search(0.01, 1000.0, log=True)),
    Param("w0_scale", FLOAT, 1.0, "Normal-Wishart: W0 = w0_scale * I", positive=True,
          search=Search(0.01, 10.0, log=True)),
    Param("bias_prior", PAIR, (1.0, 1.0), "Gamma(shape, rate) hyperprior on the bias precisions",
          search=(Search(0.1, 100.0, log=True), Search(0.01, 100.0, log=True)),
          trial_names=("bias_prior_shape", "bias_prior_rate")),
    Param("alpha_prior", PAIR, (1.0, 1.0), "Gamma(shape, rate) prior on the noise precision alpha",
          search=(Search(0.1, 100.0, log=True), Search(0.01, 100.0, log=True)),
          trial_names=("noise_prior_shape", "noise_prior_rate")),
    # mu ~ N(training mean, 1 / mu_prior_precision), an empirical-Bayes prior: mu trades places with
    # mu_U . mu_V along a flat ridge of the likelihood, and this prior decides where on the ridge it sits.
    Param("mu_prior_precision", FLOAT, 1.0, "Precision of the prior on the global mean mu (around the training mean)",
          positive=True, search=Search(0.01, 100.0, log=True)),
    Param("n_tracked", INT, 20, "Training ratings whose predictions are traced for convergence", low=0),
    Param("min_ess", FLOAT, None, "Converged: bulk and tail ESS at least this (None = the settings')",
          positive=True, optional=True),
    Param("rhat_threshold", FLOAT, None, "Converged: R-hat below this (None = the settings')", optional=True),
    Param("balance_move", BOOL, True, "Run the balance moves between the scales of U and V"),
    Param("shear_move", BOOL, True, "Run the pairwise shear moves between the factor columns of U and V"),
    Param("chain_mode", CHOICE, "auto", "auto | sweep (chains in lock-step, parallel kernels) | threads",
          choices=("auto", "sweep", "threads")),
    Param("show_progress", BOOL, True, "Show a progress bar while sampling"),
)

#: Every BPMF constructor argument, in the constructor's order.
MODEL_PARAMS: dict[str, Param] = {p.name: p for p in _PARAMS}

#: What a batch preset fixes (besides the batch's own ``top_n``).
PRESET_PARAMS: tuple[str, ...] = tuple(p.name for p in _PARAMS if p.preset)

#: What the tuner searches, in the order it suggests them.
TUNABLE_PARAMS: tuple[str, ...] = tuple(p.name for p in _PARAMS if p.tunable)

#: What the tuner's file and the ``BOOKREC_*`` settings may set.
OVERRIDABLE_PARAMS: tuple[str, ...] = tuple(p.name for p in _PARAMS if p.overridable)

#: The prior strengths among them: the presets leave them at the model's defaults.
PRIOR_PARAMS: tuple[str, ...] = tuple(name for name in OVERRIDABLE_PARAMS if not MODEL_PARAMS[name].preset)


def default(name: str) -> Any:
    return MODEL_PARAMS[name].default


def check_params(values: dict[str, Any]) -> None:
    """Check every value (ValueError naming the first bad one)."""
    for name, value in values.items():
        MODEL_PARAMS[name].check(value)


def check_schedule(values: dict[str, Any], source: dict[str, str] | None = None) -> None:
    """Check the chain parameters against each other (ValueError); ``source`` names where each value
    came from, for a message that says which setting to change."""
    def shown(name: str) -> str:
        return f"{values[name]}, {source[name]}" if source and name in source else f"{values[name]}"

    if values["n_samples"] // values["thin"] < 1:
        raise ValueError(f"n_samples ({shown('n_samples')}) must be at least thin ({shown('thin')}): no draw would be kept")
    if values["max_kept_samples"] < values["n_chains"]:
        raise ValueError(f"max_kept_samples ({shown('max_kept_samples')}) must be at least n_chains "
                         f"({shown('n_chains')}): every chain keeps at least one draw")


def settings_fields() -> dict[str, tuple[Any, Any]]:
    """The ``BOOKREC_*`` override fields of the settings, one per overridable parameter."""
    return {name: MODEL_PARAMS[name].settings_field() for name in OVERRIDABLE_PARAMS}
