"""The named tuples kernels take instead of long argument lists (numba compiles them as plain
tuples: no cost in nopython mode)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Csr(NamedTuple):
    """One side of a sparse matrix: row i holds ``indices[indptr[i]:indptr[i + 1]]`` with ``values``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray


class Exclusions(NamedTuple):
    """Per row, the columns never to return (CSR pattern without values)."""

    indptr: np.ndarray
    indices: np.ndarray


class StoredSamples(NamedTuple):
    """Kept posterior samples for prediction: (S, U, k), (S, U), (S, I, k), (S, I), (S,), (S,)."""

    user_factors: np.ndarray
    user_bias: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    mu: np.ndarray
    noise_sd: np.ndarray


class PriorForms(NamedTuple):
    """A side's Gaussian prior in the forms the block needs: precision P0, P0 m0, mean m0, and
    C, C^T with C C^T = P0^-1."""

    precision: np.ndarray
    h: np.ndarray
    mean: np.ndarray
    chol: np.ndarray
    chol_t: np.ndarray


class RowGroups(NamedTuple):
    """How a side's rows are drawn (``lanes.few_rating_groups`` / ``mid_rating_rows``): rows with
    few ratings grouped by count (``few_rows`` sliced by ``few_ptr``), mid-length rows, lane width."""

    few_rows: np.ndarray
    few_ptr: np.ndarray
    mid_rows: np.ndarray
    lanes: int


class FoldInModel(NamedTuple):
    """Serving arrays as the fold-in kernels read them (float64): per sample item factors and
    biases, also item-major, mu, alpha, the user prior's precision Lambda_U, its linear term
    Lambda_U mu_U and the user-bias precision."""

    item_factors: np.ndarray  # (S, I, k)
    item_bias: np.ndarray  # (S, I)
    factors_by_item: np.ndarray  # (I, S, k)
    bias_by_item: np.ndarray  # (I, S)
    mu: np.ndarray
    alpha: np.ndarray
    lambda_user: np.ndarray  # (S, k, k)
    prior_h: np.ndarray  # (S, k)
    tau_user_bias: np.ndarray


class Likelihood(NamedTuple):
    """What one side's rows are conditioned on: the other side's rows [factors, bias], the global
    mean, the noise precision alpha and its sd and variance."""

    other: np.ndarray
    mu: float
    alpha: float
    noise_sd: float
    noise_var: float


class RowScratch(NamedTuple):
    """One long row's buffers (``rows.draw_row_many``): its features feature-major, targets, the
    other side's biases, precision, linear term, F^T F and F^T y."""

    feats: np.ndarray
    target: np.ndarray
    other_bias: np.ndarray
    prec: np.ndarray
    lin: np.ndarray
    ftf: np.ndarray
    fty: np.ndarray


class StatScratch(NamedTuple):
    """Buffers of one row's move statistics (``rows.stats_from_sums``); for lanes ``sums`` holds
    the per-lane sums (``lanes.lane_stats``) where a row has its sum w w^T."""

    cf: np.ndarray
    fx: np.ndarray
    sums: np.ndarray
    syw: np.ndarray
    scale: np.ndarray


class LaneScratch(NamedTuple):
    """The buffers of ``lanes.draw_lanes`` (conditioning form)."""

    z: np.ndarray
    zs: np.ndarray
    feats: np.ndarray
    resid: np.ndarray
    hmat: np.ndarray
    small: np.ndarray
    g: np.ndarray
    target: np.ndarray
    other_bias: np.ndarray


class LaneColumns(NamedTuple):
    """Per kept rating its move statistics z (a column of ``z_rows``) and e (``e_rows``)."""

    z_rows: np.ndarray
    e_rows: np.ndarray
