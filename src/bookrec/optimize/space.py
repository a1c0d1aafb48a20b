"""The search space: every dimension is a :class:`bookrec.model.BPMF` constructor argument.

Nothing here is decorative: each value suggested by a trial ends up in the keyword arguments the
model is built with (``tests/test_optimize_space.py`` fits the model with two values of each
dimension and checks that the fitted posterior changes).

| trial parameter       | BPMF argument           | what it is                                         |
|-----------------------|-------------------------|----------------------------------------------------|
| n_factors             | n_factors               | latent dimensions k                                |
| beta0                 | beta0                   | Normal-Wishart: strength of the prior on mu_U/mu_V |
| w0_scale              | w0_scale                | Normal-Wishart: W0 = w0_scale * I (E[Lambda] = nu0 W0, so larger = factors pulled harder to the mean) |
| bias_prior_shape/rate | bias_prior = (a, b)     | Gamma(a, b) hyperprior on the bias precisions      |
| noise_prior_shape/rate| alpha_prior = (a, b)    | Gamma(a, b) prior on the noise precision alpha     |
| burn_in               | burn_in                 | discarded sweeps per chain                         |
| n_samples             | n_samples               | post-burn-in sweeps per chain                      |
| thin                  | thin                    | keep every thin-th draw                            |
| warm_start            | warm_start              | start chains from a MAP fit (True) or at random    |

``max_kept_samples`` is not searched: it is set to ``n_chains * ceil(n_samples / thin)`` so that
the model keeps exactly the draws the trial asked for (a smaller cap would thin further and make
``thin`` a no-op); it is written with the other parameters so the batch keeps the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of each dimension (inclusive). Positive scale parameters are searched on a log scale."""

    n_factors: tuple[int, int] = (2, 32)
    beta0: tuple[float, float] = (0.01, 1000.0)
    w0_scale: tuple[float, float] = (0.01, 10.0)
    bias_prior_shape: tuple[float, float] = (0.1, 100.0)
    bias_prior_rate: tuple[float, float] = (0.01, 100.0)
    noise_prior_shape: tuple[float, float] = (0.1, 100.0)
    noise_prior_rate: tuple[float, float] = (0.01, 100.0)
    burn_in: tuple[int, int] = (10, 150)
    n_samples: tuple[int, int] = (20, 200)
    thin: tuple[int, int] = (1, 4)
    warm_start: tuple[bool, ...] = (True, False)
    n_chains: int = 2

    @property
    def max_sweeps(self) -> int:
        """Most post-burn-in sweeps a trial can run (the step axis of the pruner)."""
        return self.n_samples[1]


#: Trial parameter names, in the order they are suggested.
SEARCHED = (
    "n_factors", "beta0", "w0_scale", "bias_prior_shape", "bias_prior_rate", "noise_prior_shape",
    "noise_prior_rate", "burn_in", "n_samples", "thin", "warm_start",
)


def kept_samples(n_samples: int, thin: int, n_chains: int) -> int:
    """``max_kept_samples`` that keeps every ``thin``-th of ``n_samples`` draws in each chain."""
    return n_chains * math.ceil(n_samples / thin)


def to_bpmf_kwargs(values: dict[str, Any], n_chains: int) -> dict[str, Any]:
    """Trial parameters -> BPMF keyword arguments (plain JSON types: the batch reads them back)."""
    out = {
        "n_factors": int(values["n_factors"]),
        "beta0": float(values["beta0"]),
        "w0_scale": float(values["w0_scale"]),
        "bias_prior": [float(values["bias_prior_shape"]), float(values["bias_prior_rate"])],
        "alpha_prior": [float(values["noise_prior_shape"]), float(values["noise_prior_rate"])],
        "burn_in": int(values["burn_in"]),
        "n_samples": int(values["n_samples"]),
        "thin": int(values["thin"]),
        "warm_start": bool(values["warm_start"]),
        "n_chains": int(n_chains),
    }
    out["max_kept_samples"] = kept_samples(out["n_samples"], out["thin"], n_chains)
    return out


def from_bpmf_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """BPMF keyword arguments -> trial parameters (to enqueue a known configuration, e.g. the default)."""
    out = {name: kwargs[name] for name in ("n_factors", "beta0", "w0_scale", "burn_in", "n_samples", "thin", "warm_start")}
    out["bias_prior_shape"], out["bias_prior_rate"] = (float(x) for x in kwargs["bias_prior"])
    out["noise_prior_shape"], out["noise_prior_rate"] = (float(x) for x in kwargs["alpha_prior"])
    return out


def suggest_params(trial: optuna.Trial, space: SearchSpace | None = None) -> dict[str, Any]:
    """Suggest one configuration and return it as BPMF keyword arguments."""
    s = space or SearchSpace()
    values = {
        "n_factors": trial.suggest_int("n_factors", *s.n_factors, log=True),
        "beta0": trial.suggest_float("beta0", *s.beta0, log=True),
        "w0_scale": trial.suggest_float("w0_scale", *s.w0_scale, log=True),
        "bias_prior_shape": trial.suggest_float("bias_prior_shape", *s.bias_prior_shape, log=True),
        "bias_prior_rate": trial.suggest_float("bias_prior_rate", *s.bias_prior_rate, log=True),
        "noise_prior_shape": trial.suggest_float("noise_prior_shape", *s.noise_prior_shape, log=True),
        "noise_prior_rate": trial.suggest_float("noise_prior_rate", *s.noise_prior_rate, log=True),
        "burn_in": trial.suggest_int("burn_in", *s.burn_in),
        "n_samples": trial.suggest_int("n_samples", *s.n_samples),
        "thin": trial.suggest_int("thin", *s.thin),
        "warm_start": trial.suggest_categorical("warm_start", list(s.warm_start)),
    }
    return to_bpmf_kwargs(values, s.n_chains)


def default_bpmf_kwargs(n_chains: int = 2, **overrides: Any) -> dict[str, Any]:
    """The model's own defaults (BPMF constructor) as searched keyword arguments, plus ``overrides``.

    Read from the constructor's signature so a change of default in the model shows up here.
    """
    import inspect

    from bookrec.model.bpmf import BPMF

    sig = inspect.signature(BPMF.__init__).parameters
    values = {name: sig[name].default for name in ("n_factors", "beta0", "w0_scale", "burn_in", "n_samples", "thin", "warm_start")}
    values["bias_prior_shape"], values["bias_prior_rate"] = sig["bias_prior"].default
    values["noise_prior_shape"], values["noise_prior_rate"] = sig["alpha_prior"].default
    values.update(overrides)
    return to_bpmf_kwargs(values, n_chains)
