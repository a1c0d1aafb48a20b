"""Every reader's interactions with the works of a data set (built by :mod:`bookrec.batch.catalog`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bookrec.data.prep import IndexMap


@dataclass
class Interactions:
    users: IndexMap  # every user id of the data set
    seen: sp.csr_matrix  # (n_users, n_works) bool-ish float32, 1 where the user touched the work
    explicit_user: np.ndarray  # explicit ratings averaged per (user, work): user index
    explicit_work: np.ndarray  # work index
    explicit_rating: np.ndarray  # float32
    n_unjoined: int  # ratings whose ISBN is not a known book (kept as interactions, unusable)

    @property
    def n_users(self) -> int:
        return len(self.users)
