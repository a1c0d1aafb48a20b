"""Convergence diagnostics with ArviZ: rank-normalised split R-hat and bulk/tail ESS across chains."""

from __future__ import annotations

import math
import warnings

import numpy as np

# The defaults of the rule (Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021); the fitted model
# takes them from the settings (BOOKREC_RHAT_THRESHOLD, BOOKREC_MIN_ESS).
RHAT_THRESHOLD = 1.01
MIN_ESS = 400.0


def _as_chains(trace) -> np.ndarray:
    """A (chains, draws) array; a single chain becomes its first and second halves."""
    values = np.asarray(trace, dtype=np.float64)
    if values.ndim == 2 and values.shape[0] == 1 and values.shape[1] >= 8:
        half = values.shape[1] // 2
        values = np.stack([values[0, :half], values[0, half:2 * half]])
    return values


def convergence(traces: dict[str, np.ndarray], rhat_threshold: float = RHAT_THRESHOLD, min_ess: float = MIN_ESS) -> dict:
    """Diagnose every trace (``(chains, draws)`` arrays) and give a verdict.

    Converged iff every R-hat < ``rhat_threshold`` and every bulk and tail ESS >= ``min_ess``
    (total over chains); "slowest", "worst_rhat" and "summary" say what holds it back (``_slowest``). R-hat is ArviZ's rank-normalised split R-hat (Vehtari et al. 2021). ArviZ
    refuses a single chain, so one chain is passed as its two halves (what split R-hat compares
    anyway). NaN (e.g. a constant trace or too few draws) counts as not converged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        names = sorted(traces)
        data = {name: _as_chains(traces[name]) for name in names}
        dataset = az.convert_to_dataset(data)
        rhat = az.rhat(dataset, method="rank")
        ess_bulk = az.ess(dataset, method="bulk")
        ess_tail = az.ess(dataset, method="tail")
    out_rhat = {n: float(rhat[n].values) for n in names}
    out_bulk = {n: float(ess_bulk[n].values) for n in names}
    out_tail = {n: float(ess_tail[n].values) for n in names}

    def ok(value: float, good) -> bool:
        return not math.isnan(value) and good(value)

    failing = sorted(
        [n for n in names if not ok(out_rhat[n], lambda v: v < rhat_threshold)]
        + [n for n in names if not ok(min(out_bulk[n], out_tail[n]), lambda v: v >= min_ess)]
    )
    return {
        "converged": not failing and bool(names),
        **_slowest(names, out_rhat, out_bulk, out_tail, rhat_threshold, min_ess),
        "rhat": out_rhat,
        "ess_bulk": out_bulk,
        "ess_tail": out_tail,
        "rhat_threshold": rhat_threshold,
        "min_ess": min_ess,
        "max_rhat": max(out_rhat.values(), default=float("nan")),
        "min_ess_bulk": min(out_bulk.values(), default=float("nan")),
        "min_ess_tail": min(out_tail.values(), default=float("nan")),
        "failing": sorted(set(failing)),
        "predictions_pass": _predictions_pass(names, failing),
    }


def _predictions_pass(names, failing) -> bool | None:
    """Whether every traced prediction (``pred_*``) passes the rule, None when none is traced: the
    predictive intervals rest on these, so a verdict held back by global quantities alone (alpha,
    the train RMSE) still leaves the intervals usable."""
    predictions = [n for n in names if n.startswith("pred_")]
    if not predictions:
        return None
    return not any(n.startswith("pred_") for n in failing)


def _nan_last(value: float, worst: float) -> float:
    return worst if math.isnan(value) else value


def _slowest(names, rhat, bulk, tail, rhat_threshold, min_ess) -> dict:
    """Which quantity is slowest and how far it is from passing.

    "slowest" is the quantity with the smallest min(bulk, tail) ESS; ``ess_shortfall`` is
    min_ess / that ESS, roughly how many times longer the chains must run for it to pass (ESS
    grows in proportion to the draws once the chains have mixed). "worst_rhat" is the quantity
    with the largest R-hat. ``summary`` says both in one line for the page and the batch log.
    """
    if not names:
        return {"slowest": None, "worst_rhat": None, "summary": "nothing traced"}
    ess = {n: min(bulk[n], tail[n]) for n in names}
    slow = min(names, key=lambda n: _nan_last(ess[n], -math.inf))
    worst = max(names, key=lambda n: _nan_last(rhat[n], math.inf))
    slow_ess = ess[slow]
    shortfall = min_ess / slow_ess if slow_ess > 0 else math.inf
    slowest = {"name": slow, "ess": slow_ess, "ess_bulk": bulk[slow], "ess_tail": tail[slow], "rhat": rhat[slow],
               "min_ess": min_ess, "ess_shortfall": shortfall, "passes_ess": bool(slow_ess >= min_ess)}
    worst_rhat = {"name": worst, "rhat": rhat[worst], "rhat_threshold": rhat_threshold,
                  "passes_rhat": bool(rhat[worst] < rhat_threshold)}
    summary = (f"slowest {slow}: ESS {slow_ess:.0f} of {min_ess:.0f} needed"
               + (f" ({shortfall:.1f}x longer chains)" if shortfall > 1 else "")
               + f"; worst R-hat {worst} {rhat[worst]:.3f} (needs < {rhat_threshold:g})")
    return {"slowest": slowest, "worst_rhat": worst_rhat, "summary": summary}
