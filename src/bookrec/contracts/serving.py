"""The serving model: the kept posterior draws the API needs to fold in a new reader and to compare
books, published by the batch as the ``serving_model`` blob (a plain npz, never pickled).

S kept samples, I works of the rating model, k factors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np


@dataclass
class ServingModel:
    item_factors: np.ndarray  # (S, I, k)
    item_bias: np.ndarray  # (S, I)
    mu: np.ndarray  # (S,) global mean
    alpha: np.ndarray  # (S,) noise precision
    mu_user: np.ndarray  # (S, k) mean of the reader factors' prior
    lambda_user: np.ndarray  # (S, k, k) precision of the reader factors' prior
    tau_user_bias: np.ndarray  # (S,) precision of the reader biases' prior
    rating_range: np.ndarray  # (2,) lowest and highest rating
    item_keys: np.ndarray  # (I,) str: the work key of each item
    item_isbns: np.ndarray | None = None  # (I,) str: each work's representative edition

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def number_fields(cls) -> tuple[str, ...]:
        """The numeric arrays (all but the work keys and ISBNs)."""
        return tuple(name for name in cls.field_names() if name not in ("item_keys", "item_isbns"))

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as a dict, in field order (absent optional ones left out)."""
        return {name: getattr(self, name) for name in self.field_names() if getattr(self, name) is not None}

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{name: np.asarray(value) for name, value in self.arrays().items()})
        return buf.getvalue()

    @classmethod
    def from_npz(cls, blob: bytes) -> ServingModel:
        """Read a blob written by :meth:`to_npz`. ValueError (or zipfile.BadZipFile, OSError) when unreadable;
        arrays the model does not know are ignored."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            found = {name: npz[name] for name in npz.files if name in cls.field_names()}
        missing = [f.name for f in fields(cls) if f.name not in found and f.default is not None]
        if missing:
            raise ValueError(f"the serving model lacks {', '.join(missing)}")
        return cls(**found)
