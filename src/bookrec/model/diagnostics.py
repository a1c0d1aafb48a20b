"""Convergence diagnostics with ArviZ: rank-normalised split R-hat and bulk/tail ESS across chains."""

from __future__ import annotations

import math
import warnings

import numpy as np

RHAT_THRESHOLD = 1.05


def _as_chains(trace) -> np.ndarray:
    """A (chains, draws) array; a single chain becomes its first and second halves."""
    values = np.asarray(trace, dtype=np.float64)
    if values.ndim == 2 and values.shape[0] == 1 and values.shape[1] >= 8:
        half = values.shape[1] // 2
        values = np.stack([values[0, :half], values[0, half:2 * half]])
    return values


def convergence(traces: dict[str, np.ndarray], rhat_threshold: float = RHAT_THRESHOLD, min_ess: float = 100.0) -> dict:
    """Diagnose every trace (``(chains, draws)`` arrays) and give a verdict.

    Converged iff every R-hat < ``rhat_threshold`` and every bulk and tail ESS >= ``min_ess``
    (total over chains). R-hat is ArviZ's rank-normalised split R-hat (Vehtari et al. 2021). ArviZ
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
        "rhat": out_rhat,
        "ess_bulk": out_bulk,
        "ess_tail": out_tail,
        "rhat_threshold": rhat_threshold,
        "min_ess": min_ess,
        "max_rhat": max(out_rhat.values(), default=float("nan")),
        "min_ess_bulk": min(out_bulk.values(), default=float("nan")),
        "min_ess_tail": min(out_tail.values(), default=float("nan")),
        "failing": sorted(set(failing)),
    }
