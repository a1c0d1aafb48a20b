"""bookrec.model: Bayesian matrix factorisation by Gibbs sampling, its metrics and baselines.

``BPMF`` and ``Recommender`` are imported lazily so that ``bookrec --help`` does not pay for numba.
"""

from __future__ import annotations

__all__ = ["BPMF", "Recommender", "ArtifactError", "NotFittedError"]


def __getattr__(name: str):
    if name == "BPMF":
        from bookrec.model.bpmf import BPMF

        return BPMF
    if name == "Recommender":
        from bookrec.model.recommender import Recommender

        return Recommender
    if name == "NotFittedError":
        from bookrec.model.params import NotFittedError

        return NotFittedError
    if name == "ArtifactError":
        from bookrec.model.artifact import ArtifactError

        return ArtifactError
    raise AttributeError(name)
