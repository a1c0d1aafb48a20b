"""The publish gate: a batch refuses to replace the serving version with a worse model.

Three checks, each on paired per-item differences, so that the verdict carries its own noise:

- ``nll``: the rating model's predictive NLL on the validation ratings against the user + book
  bias baseline's, fitted on the same training ratings. Refused when the model is worse by more
  than ``GATE_SE`` paired standard errors.
- ``recall``: top-N recall@10 of the default ranking against the previous published version's, for
  the same evaluated readers on the same data (the data fingerprint and the reader sample must
  match; otherwise the check is skipped and says why). Refused when it fell by more than
  ``GATE_SE`` paired standard errors.
- ``converged``: only when required (``BOOKREC_REQUIRE_CONVERGED`` / ``--require-converged``).

``force`` publishes anyway; the published meta records the verdict either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

GATE_SE = 2.0  # two standard errors: a ~2.3% one-sided false-refusal rate for an equal model


class PublishRefused(RuntimeError):
    """The gate refused the new model; the previous version keeps serving."""

    def __init__(self, reasons: list[str]):
        super().__init__("refused to publish: " + "; ".join(reasons) + " (--force publishes anyway)")
        self.reasons = reasons


@dataclass
class GateVerdict:
    checks: dict[str, dict] = field(default_factory=dict)
    forced: bool = False

    @property
    def reasons(self) -> list[str]:
        return [c["reason"] for c in self.checks.values() if not c["passed"]]

    def as_meta(self) -> dict:
        return {"passed": not self.reasons, "forced": self.forced, "checks": self.checks}


def paired_gap(worse_by: np.ndarray) -> tuple[float, float]:
    """Mean of per-item differences (positive = the new model is worse) and its standard error."""
    d = np.asarray(worse_by, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def nll_check(model_logpdf: np.ndarray, baseline_logpdf: np.ndarray) -> dict:
    gap, se = paired_gap(baseline_logpdf - model_logpdf)
    passed = not (np.isfinite(gap) and gap > GATE_SE * se)
    return {"passed": passed, "nll_gap": gap, "se": se, "n": int(len(model_logpdf)),
            "reason": _gap_reason(passed, "validation NLL", "the bias baseline's", "worse than", "better than", gap, se)}


def _gap_reason(passed: bool, what: str, against: str, bad: str, good: str, gap: float, se: float) -> str:
    """Why a check refused, or how it passed (``gap`` > 0 is the bad direction)."""
    if not passed:
        return f"{what} {bad} {against} by {gap:.4f} (> {GATE_SE:g} x se {se:.4f})"
    if not np.isfinite(gap):
        return f"{what}: no paired difference to judge"
    if gap > 0:
        return f"{what} {bad} {against} by {gap:.4f}, within the {GATE_SE:g} x se ({se:.4f}) allowed"
    return f"{what} {good} {against} by {-gap:.4f}"


def recall_check(current: dict, previous: dict | None) -> dict:
    """``current`` / ``previous``: the ``per_reader`` block of meta.ranking (fingerprint, readers, recall@10)."""
    skipped = {"passed": True, "skipped": True, "reason": ""}
    if not current:
        return {**skipped, "why": "no top-N evaluation in this run"}
    if not previous:
        return {**skipped, "why": "no previous version with a per-reader evaluation"}
    if previous.get("fingerprint") != current.get("fingerprint"):
        return {**skipped, "why": "the previous version was evaluated on other data"}
    prev = dict(zip(previous.get("readers", []), previous.get("recall@10", [])))
    pairs = [(prev[u], r) for u, r in zip(current["readers"], current["recall@10"]) if u in prev]
    if len(pairs) < 2:
        return {**skipped, "why": "the evaluated readers do not overlap"}
    before, now = np.array(pairs, dtype=np.float64).T
    gap, se = paired_gap(before - now)
    passed = not (np.isfinite(gap) and gap > GATE_SE * se)
    return {"passed": passed, "skipped": False, "recall_drop": gap, "se": se, "n": len(pairs),
            "reason": _gap_reason(passed, "top-N recall@10", "the serving version's", "fell below", "rose above", gap, se)}


def converged_check(diagnostics: dict, required: bool) -> dict:
    ok = bool(diagnostics.get("converged"))
    verdict = "the chains converged" if ok else "the chains did not converge"
    return {"passed": ok or not required, "required": required, "converged": ok,
            "reason": f"{verdict} ({diagnostics.get('summary', 'see meta.convergence')})"}


def data_fingerprint(*arrays: np.ndarray) -> str:
    """A short hash of the interaction arrays: equal exactly when the data are."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
