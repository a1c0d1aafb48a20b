"""scikit-learn's parameter protocol for the estimators (``sklearn.base.clone`` works on them)."""

from __future__ import annotations


class ParamsMixin:
    """``get_params`` / ``set_params`` over the class's ``PARAM_NAMES`` (the ``__init__`` arguments)."""

    PARAM_NAMES: tuple[str, ...] = ()

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self.PARAM_NAMES}

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self.PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}")
            setattr(self, name, value)
        return self
