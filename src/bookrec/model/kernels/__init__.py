"""Compiled (numba) kernels of the Gibbs sampler and of prediction.

Layout used everywhere: one side of the rating matrix (users or items) is an ``(n, k + 1)``
float64 array whose first ``k`` columns are the latent factors and whose last column is the bias.
With that layout one kernel samples both sides: for a user, the "features" of a rating are
``[v_j, 1]`` and its target is ``r_ij - mu - c_j``, so the factors and the bias are drawn
*jointly* from their Gaussian conditional (better mixing than two separate blocks, same cost).

Randomness inside the kernels comes from a counter-based generator (SplitMix64 keyed by a
per-block seed and the row number) turned into normals by a ziggurat: every row gets its own
stream, so results are identical whatever the number of threads and however ``prange``
distributes rows, and a normal costs a few nanoseconds (NumPy's generator: 11-14 ns here).
Many kernels exist twice: ``*_par`` (prange over rows, both cores) and ``*_ser`` (one thread,
releases the GIL) for running chains in parallel threads.

Modules, in the order a sweep uses them: ``normals`` (random numbers), ``prefetch``, ``lanes``
(many short rows at once), ``rows`` (one long row), ``block`` (a whole side), ``moves`` (group
moves and moments; ``partials`` holds their per-task sums), ``hyper`` (hyperparameter draws); then
``predict`` (predictions, mixture quantiles and scores), ``topn`` (the top-n selection), ``ranking``
and ``foldin`` for serving and the batch, and ``relevance`` for the relevance model. ``compile``
builds the parallel and serial twins; ``arrays`` holds the named tuples kernels take.
"""

from bookrec.model.kernels.arrays import Csr, Exclusions, FoldInModel, PriorForms, RowGroups, StoredSamples
from bookrec.model.kernels.block import sample_block_par, sample_block_ser
from bookrec.model.kernels.compile import kernel_threads
from bookrec.model.kernels.foldin import fold_readers, fold_top_components, known_top_components, pair_components
from bookrec.model.kernels.hyper import (
    block_prior_forms,
    normal_wishart_params,
    normal_wishart_sample,
    shift_draw,
    side_prior_draw,
)
from bookrec.model.kernels.lanes import LANES, few_rating_groups, mid_rating_rows
from bookrec.model.kernels.moves import (
    affine_move,
    affine_rows_full_par,
    affine_rows_full_ser,
    affine_rows_par,
    affine_rows_ser,
    balance_scales,
    gig_draw,
    move_stats_par,
    move_stats_ser,
    scale_moves,
    shear_moves,
    side_moments_par,
    side_moments_ser,
)
from bookrec.model.kernels.normals import ZIG_R, fill_normals, row_state
from bookrec.model.kernels.predict import (
    mixture_crps,
    mixture_logpdf,
    mixture_quantiles,
    mixture_quantiles_ser,
    predict_pairs_par,
    predict_pairs_ser,
    predict_samples,
)
from bookrec.model.kernels.ranking import recommend_block
from bookrec.model.kernels.topn import top_n, top_n_csr, top_n_rows

__all__ = [
    "kernel_threads",
    "LANES", "ZIG_R", "Csr", "Exclusions", "FoldInModel", "PriorForms", "RowGroups", "StoredSamples", "affine_move",
    "affine_rows_full_par", "affine_rows_full_ser", "affine_rows_par", "affine_rows_ser", "balance_scales",
    "block_prior_forms", "few_rating_groups", "fill_normals", "fold_readers", "fold_top_components", "gig_draw",
    "known_top_components", "mid_rating_rows", "mixture_crps", "mixture_logpdf", "mixture_quantiles",
    "mixture_quantiles_ser", "move_stats_par", "move_stats_ser", "normal_wishart_params", "normal_wishart_sample",
    "pair_components", "predict_pairs_par", "predict_pairs_ser", "predict_samples", "recommend_block", "row_state",
    "sample_block_par", "sample_block_ser", "scale_moves", "shear_moves", "shift_draw", "side_moments_par",
    "side_moments_ser", "side_prior_draw", "top_n", "top_n_csr", "top_n_rows",
]
