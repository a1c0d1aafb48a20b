"""scikit-learn's parameter protocol for the estimators (``sklearn.base.clone`` works on them)."""

from __future__ import annotations


class ParamsMixin:
    """``get_params`` / ``set_params`` over the class's ``PARAM_NAMES`` (the ``__init__`` arguments)."""

    PARAM_NAMES: tuple[str, ...] = ()

    def get_params(self, deep: bool = True) -> dict:
        """The ``__init__`` arguments; with ``deep``, also those of nested estimators as ``name__param``."""
        params = {name: getattr(self, name) for name in self.PARAM_NAMES}
        if deep:
            for name, value in list(params.items()):
                if hasattr(value, "get_params") and not isinstance(value, type):
                    params.update({f"{name}__{key}": inner for key, inner in value.get_params(deep=True).items()})
        return params

    def set_params(self, **params):
        for name, value in params.items():
            if name not in self.PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}")
            setattr(self, name, value)
        return self


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit`` (scikit-learn's exception has
    the same bases, so ``except`` clauses written for it catch this one)."""
