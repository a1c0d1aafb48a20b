"""One Markov chain of the blocked Gibbs sampler (Salakhutdinov & Mnih 2008, plus biases and noise).

Model, on the original rating scale:

    r_ij ~ N(mu + b_i + c_j + u_i . v_j, 1/alpha)
    u_i ~ N(mu_U, Lambda_U^-1),  (mu_U, Lambda_U) ~ NW(mu0, beta0, W0, nu0)     (same for v_j)
    b_i ~ N(0, 1/tau_b),  tau_b ~ Gamma(a_bias, b_bias)                          (same for c_j)
    mu ~ N(mu_prior_mean, 1/mu_prior_precision),  alpha ~ Gamma(a_alpha, b_alpha)

One sweep: (mu_U, Lambda_U, tau_b) | U, b;  (U, b) | rest  [compiled, joint per user];
(mu_V, Lambda_V, tau_c) | V, c;  (V, c) | rest;  then the exact group moves (Liu & Sabatti 2000)
along the directions the blocks cannot travel: the scale moves (``Chain._rescale``), the balance
moves (``Chain._balance``), the pairwise shear moves (``Chain._shear``), the shift of the factors
(``Chain._shift_factors``) and the translation of the biases (``Chain._translate_biases``);
mu | rest;  alpha | rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bookrec.contracts.params import default
from bookrec.model import kernels

# Rows with at most FEW_RATINGS ratings are drawn in the conditioning form, lanes at a time; rows with
# up to MID_RATINGS in precision form, lanes at a time; longer rows one at a time, where the F^T F
# sums are long vector loops already. 3 rather than 5: at k = 10 the precision lanes draw rows with 4
# or 5 ratings faster.
FEW_RATINGS = 3
MID_RATINGS = 32
SCALE_MH_STEPS = 2  # independence Metropolis-Hastings steps per scale move (acceptance is high: a Laplace fit)
# draw=False: every row one at a time in precision form
NO_GROUPS = kernels.RowGroups(np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int64),
                              kernels.LANES)


def lane_groups(indptr: np.ndarray) -> kernels.RowGroups:
    """The rows of one side grouped for the block kernel."""
    few_rows, few_ptr = kernels.few_rating_groups(indptr, FEW_RATINGS)
    return kernels.RowGroups(few_rows, few_ptr, kernels.mid_rating_rows(indptr, FEW_RATINGS, MID_RATINGS), kernels.LANES)


@dataclass(frozen=True)
class Priors:
    """Hyperprior constants, by default the model's (bookrec.contracts.params). Gamma distributions are (shape, rate)."""

    beta0: float = default("beta0")
    nu0_extra: float = 0.0  # nu0 = k + nu0_extra (must keep nu0 >= k)
    w0_scale: float = default("w0_scale")  # W0 = w0_scale * I
    a_bias: float = default("bias_prior")[0]
    b_bias: float = default("bias_prior")[1]
    a_alpha: float = default("alpha_prior")[0]
    b_alpha: float = default("alpha_prior")[1]
    mu_prior_mean: float = 5.5
    mu_prior_precision: float = default("mu_prior_precision")


@dataclass
class RatingMatrix:
    """The training ratings in both compressed layouts, built once per fit."""

    n_users: int
    n_items: int
    user_indptr: np.ndarray
    user_items: np.ndarray
    user_ratings: np.ndarray
    item_indptr: np.ndarray
    item_users: np.ndarray
    item_ratings: np.ndarray
    user_groups: kernels.RowGroups  # rows drawn in lanes (lane_groups)
    item_groups: kernels.RowGroups

    @classmethod
    def build(cls, user_idx, item_idx, ratings, n_users, n_items) -> RatingMatrix:
        by_user = np.argsort(user_idx, kind="stable")
        by_item = np.argsort(item_idx, kind="stable")
        user_indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(user_idx, minlength=n_users), out=user_indptr[1:])
        item_indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(item_idx, minlength=n_items), out=item_indptr[1:])
        r = ratings.astype(np.float64)
        return cls(
            n_users, n_items,
            user_indptr, np.ascontiguousarray(item_idx[by_user]), np.ascontiguousarray(r[by_user]),
            item_indptr, np.ascontiguousarray(user_idx[by_item]), np.ascontiguousarray(r[by_item]),
            lane_groups(user_indptr), lane_groups(item_indptr),
        )

    @property
    def n_ratings(self) -> int:
        return int(self.user_ratings.shape[0])

    @property
    def by_user(self) -> kernels.Csr:
        """Each reader's ratings, columns index the items."""
        return kernels.Csr(self.user_indptr, self.user_items, self.user_ratings)

    @property
    def by_item(self) -> kernels.Csr:
        """Each item's ratings, columns index the readers."""
        return kernels.Csr(self.item_indptr, self.item_users, self.item_ratings)


def side_moments(side: np.ndarray, parallel: bool = True) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, column sums, X^T X) of one side's (n, k + 1) array: one pass gives every statistic the
    hyperparameter draws and the group moves need."""
    rows = np.ascontiguousarray(side, dtype=np.float64)
    total, square = (kernels.side_moments_par if parallel else kernels.side_moments_ser)(rows)
    return rows.shape[0], total, square


def normal_wishart_posterior(factors: np.ndarray, mu0: np.ndarray, beta0: float, w0_inv: np.ndarray, nu0: float):
    """Parameters (mu_n, beta_n, W_n, nu_n) of the Normal-Wishart conditional given the rows of ``factors``."""
    n, total, gram = side_moments(factors)
    return normal_wishart_from_moments(n, total, gram, mu0, beta0, w0_inv, nu0)


def normal_wishart_from_moments(n, total, gram, mu0, beta0, w0_inv, nu0):
    """The Normal-Wishart update from (n, sum x, sum x x^T), with the centred scatter
    (``kernels.normal_wishart_params``)."""
    total, gram, mu0, beta0, w0_inv, nu0 = _dense(total, gram, mu0, w0_inv, beta0=beta0, nu0=nu0)
    return kernels.normal_wishart_params(float(n), total, gram, mu0, beta0, w0_inv, nu0)


def sample_normal_wishart(factors, mu0, beta0, w0_inv, nu0, rng):
    return sample_normal_wishart_from_moments(*side_moments(factors), mu0, beta0, w0_inv, nu0, rng)


def sample_normal_wishart_from_moments(n, total, gram, mu0, beta0, w0_inv, nu0, rng):
    """(mean, Lambda) from the Normal-Wishart conditional (``kernels.normal_wishart_sample``)."""
    chi2, normals = normal_wishart_randoms(rng, mu0.shape[0], n, nu0)
    total, gram, mu0, beta0, w0_inv, nu0 = _dense(total, gram, mu0, w0_inv, beta0=beta0, nu0=nu0)
    return kernels.normal_wishart_sample(float(n), total, gram, mu0, beta0, w0_inv, nu0, chi2, normals)


def normal_wishart_randoms(rng, k: int, n, nu0):
    """The random numbers a Normal-Wishart draw of dimension k given n rows consumes: Bartlett's
    chi-squares (nu_n - i degrees of freedom) and the normals below its diagonal, then the mean's."""
    return rng.chisquare(nu0 + n - np.arange(k)), rng.standard_normal(k * (k - 1) // 2 + k)


def _dense(total, gram, mu0, w0_inv, *, beta0, nu0):
    """The kernels' argument order and types: contiguous float64 arrays (one compiled signature)."""
    def dense(a):
        return np.ascontiguousarray(a, dtype=np.float64)

    return dense(total), dense(gram), dense(mu0), float(beta0), dense(w0_inv), float(nu0)


def block_prior(lam: np.ndarray, mean: np.ndarray, tau: float):
    """The prior of one row [factors, bias] in the forms the block kernel reads:
    (precision P0, P0 m0, mean m0, C, C^T) with C lower-triangular and C C^T = P0^-1."""
    return kernels.block_prior_forms(np.ascontiguousarray(lam, dtype=np.float64),
                                     np.ascontiguousarray(mean, dtype=np.float64), float(tau))


@dataclass
class ChainState:
    users: np.ndarray  # (n_users, k + 1): factors, bias
    items: np.ndarray  # (n_items, k + 1)
    mu: float
    alpha: float
    mu_user: np.ndarray
    lambda_user: np.ndarray
    tau_user_bias: float
    mu_item: np.ndarray
    lambda_item: np.ndarray
    tau_item_bias: float
    train_rmse: float = float("nan")


class Chain:
    """State and random streams of one chain; ``sweep()`` does one full Gibbs sweep."""

    # The power lambda of the balance move's GIG; 0 is the derived one. Tests set it wrong on purpose
    # to show that simulation-based calibration catches a wrong move.
    _balance_power = 0.0

    def __init__(self, data: RatingMatrix, n_factors: int, priors: Priors, seed_sequence: np.random.SeedSequence,
                 balance_move: bool = True, shear_move: bool = True):
        self.data = data
        self.balance_move = balance_move
        self.shear_move = shear_move
        self.k = n_factors
        self.priors = priors
        self.rng = np.random.default_rng(seed_sequence)
        k = n_factors
        self.mu0 = np.zeros(k)
        self.w0_inv = np.eye(k) / priors.w0_scale
        self.nu0 = k + priors.nu0_extra
        self.identity = np.eye(k + 1)
        self.bias_unit = self.identity[k].copy()
        # The scale moves in order: each user dimension, the user biases, each item dimension, the
        # item biases (see ``_rescale``); their statistic and prior power never change.
        self.scale_stat_index = np.r_[np.arange(k), k, np.arange(k), k + 1]
        self.scale_power = np.r_[np.full(k, self.nu0), 2.0 * priors.a_bias, np.full(k, self.nu0), 2.0 * priors.a_bias]
        self.w0_inv_half_diag = 0.5 * np.diag(self.w0_inv)
        # The shear moves' ordered pairs (a, b), a != b, drawn in a random order each sweep.
        self.shear_pairs = np.array([(a, b) for a in range(k) for b in range(k) if a != b],
                                    dtype=np.int64).reshape(-1, 2)
        self.state: ChainState | None = None
        # side_moments of each side, kept up to date through the moves (which are affine maps of
        # the rows) so that a sweep passes over each side once for them, after its block.
        self.moments: dict[str, tuple] = {}
        # The moves of a sweep, composed per side into one map x -> T x + e, applied in one pass at the end.
        self.pending: dict[str, tuple] = {}

    # ------------------------------------------------------------------ initialisation
    def initialise(self, warm_start: bool, warm_start_sweeps: int = 8) -> None:
        d = self.data
        k = self.k
        r_mean = float(d.user_ratings.mean()) if d.n_ratings else self.priors.mu_prior_mean
        r_var = float(d.user_ratings.var()) if d.n_ratings > 1 else 1.0
        users = np.zeros((d.n_users, k + 1))
        items = np.zeros((d.n_items, k + 1))
        users[:, :k] = 0.1 * self.rng.standard_normal((d.n_users, k))
        items[:, :k] = 0.1 * self.rng.standard_normal((d.n_items, k))
        alpha = 1.0 / max(r_var, 1e-6)
        eye = np.eye(k)
        if warm_start:
            # MAP by alternating ridge regressions (the same kernel, returning the conditional mode),
            # with fixed moderate priors: it lands the chain near the posterior bulk in a few sweeps.
            prior = block_prior(2.0 * eye, np.zeros(k), 1.0)
            map_alpha = 2.0 / max(r_var, 1e-6)
            for _ in range(warm_start_sweeps):
                kernels.sample_block_par(d.by_user, items, r_mean, map_alpha, prior, users, 0, NO_GROUPS, draw=False,
                                         with_stats=False)
                kernels.sample_block_par(d.by_item, users, r_mean, map_alpha, prior, items, 0, NO_GROUPS, draw=False,
                                         with_stats=False)
            *_, sse = kernels.move_stats_par(d.user_indptr, d.user_items, d.user_ratings, users, items, r_mean)
            alpha = 1.0 / max(sse / max(d.n_ratings, 1), 1e-6)
        self.moments, self.pending = {}, {}
        self.state = ChainState(
            users=users, items=items, mu=r_mean, alpha=alpha,
            mu_user=np.zeros(k), lambda_user=eye.copy(), tau_user_bias=1.0,
            mu_item=np.zeros(k), lambda_item=eye.copy(), tau_item_bias=1.0,
        )

    # ------------------------------------------------------------------ one sweep
    def _side_hyper(self, moments):
        k = self.k
        p = self.priors
        n, total, gram = moments
        # sample_normal_wishart_from_moments and block_prior in one compiled call.
        chi2, normals = normal_wishart_randoms(self.rng, k, n, self.nu0)
        tau = self.rng.gamma(p.a_bias + 0.5 * n, 1.0 / (p.b_bias + 0.5 * gram[k, k]))
        mean, lam, prior = kernels.side_prior_draw(float(n), total, gram, self.mu0, float(p.beta0), self.w0_inv,
                                                   float(self.nu0), chi2, normals, float(tau))
        return mean, lam, tau, prior

    def sweep(self, parallel: bool = True) -> ChainState:
        st = self.state
        d = self.data
        p = self.priors
        block = kernels.sample_block_par if parallel else kernels.sample_block_ser

        moments = self.moments
        if not moments:
            moments.update(users=side_moments(st.users, parallel), items=side_moments(st.items, parallel))
        st.mu_user, st.lambda_user, st.tau_user_bias, prior = self._side_hyper(moments["users"])
        block(d.by_user, st.items, st.mu, st.alpha, prior, st.users, int(self.rng.integers(2**63)), d.user_groups,
              draw=True, with_stats=False)
        moments["users"] = side_moments(st.users, parallel)
        st.mu_item, st.lambda_item, st.tau_item_bias, prior = self._side_hyper(moments["items"])
        # The book block also returns the statistics of the group moves for the new state.
        move_stats = block(d.by_item, st.users, st.mu, st.alpha, prior, st.items, int(self.rng.integers(2**63)),
                           d.item_groups, draw=True, with_stats=True)
        moments["items"] = side_moments(st.items, parallel)

        sum_e, sum_e2 = self._rescale(*move_stats)
        if self.balance_move:
            self._balance()
        if self.shear_move:
            self._shear()
        self._shift_factors()
        self._translate_biases()
        self._apply_moves(parallel)
        # The shift and translation moves leave every prediction mu + b + c + u.v unchanged, so
        # the residuals e (mu included) after the scale moves are final; only mu moved.
        n = d.n_ratings
        s1 = sum_e + n * st.mu  # sums of r - (b + c + u.v), mu left out
        s2 = sum_e2 + 2.0 * st.mu * sum_e + n * st.mu**2
        mu_prec = p.mu_prior_precision + st.alpha * n
        mu_mean = (p.mu_prior_precision * p.mu_prior_mean + st.alpha * s1) / mu_prec
        st.mu = float(mu_mean + self.rng.standard_normal() / np.sqrt(mu_prec))
        sse = max(s2 - 2.0 * st.mu * s1 + n * st.mu**2, 0.0)
        st.alpha = float(self.rng.gamma(p.a_alpha + 0.5 * n, 1.0 / (p.b_alpha + 0.5 * sse)))
        st.train_rmse = float(np.sqrt(sse / max(n, 1)))
        return st

    def _move(self, side: str, transform: np.ndarray, offset: np.ndarray) -> None:
        """Record the move x -> T x + e of every row of one side: its moments now, the rows at the end
        of the sweep (``_apply_moves``). The moves only read moments and statistics, never the rows."""
        n, total, gram = self.moments[side]
        composed, shift = self.pending.get(side, (self.identity, np.zeros(self.k + 1)))
        total, gram, composed, shift = kernels.affine_move(float(n), total, gram, composed, shift, transform, offset)
        self.moments[side] = (n, total, gram)
        self.pending[side] = (composed, shift)

    def _apply_moves(self, parallel: bool) -> None:
        # Without the shear moves every move is a scale of each column, a shift of the factors, or a
        # change of the bias linear in the row: the composed map has a diagonal factor block and the
        # cheaper kernel reads only its diagonal and bias row. With them the factor block is full and
        # the whole map is applied (the tracked moments would disagree with the rows otherwise).
        k = self.k
        for side, (transform, offset) in self.pending.items():
            rows = getattr(self.state, side)  # "users" or "items"
            factor_block = transform[:k, :k]
            if np.any(factor_block != np.diag(np.diag(factor_block))) or np.any(transform[:k, k]):
                apply_full = kernels.affine_rows_full_par if parallel else kernels.affine_rows_full_ser
                apply_full(rows, np.ascontiguousarray(transform), np.ascontiguousarray(offset))
                continue
            apply = kernels.affine_rows_par if parallel else kernels.affine_rows_ser
            apply(rows, np.ascontiguousarray(np.diag(transform)), np.ascontiguousarray(transform[k]), offset)
        self.pending.clear()

    def _rescale(self, gram: np.ndarray, resid: np.ndarray, sum_e2: float) -> tuple[float, float]:
        """Exact group moves along the slow "signal strength" directions of the model.

        For each latent dimension a of the users: (U[:, a], mu_U[a], Lambda_U[a, :], Lambda_U[:, a])
        -> (s U[:, a], s mu_U[a], Lambda_U[a, :] / s, Lambda_U[:, a] / s); the same for the items;
        and for the biases (b, tau_b) -> (s b, tau_b / s^2), (c, tau_c) -> (s c, tau_c / s^2).
        Each prior given its hyperparameters is invariant under these maps (the Jacobian cancels
        the normaliser), so with t = log s the conditional is (Liu & Sabatti 2000)
            log pi(t) = -alpha/2 (A e^2t - 2 B e^t) - p t - d e^-2t,
        A = sum z_m^2, B = sum (e + z_m) z_m over the ratings (z_m the part of a prediction being
        scaled, e the residual), p = nu0 and d = (W0^-1)_aa Lambda_aa / 2 for a factor dimension,
        p = 2 a_bias and d = b_bias tau for a bias. Drawn by independence Metropolis-Hastings with
        a Laplace proposal, all 2 (k + 1) moves in one compiled call (``kernels.scale_moves``). The
        statistics come from one pass and are updated exactly after each move. Without these moves
        the scales and their precisions random-walk together and the chains drift for hundreds of
        sweeps (R-hat of alpha and of the train RMSE >> 1.05).
        (gram, resid, sum_e2) are ``kernels.move_stats_par`` of the current state (updated in place);
        returns the sums of the residuals and of their squares after the moves.
        """
        st = self.state
        k = self.k
        p = self.priors
        # A move's prior term d reads only its own Lambda_aa (or tau), which earlier moves leave alone.
        half_w0 = self.w0_inv_half_diag
        prior_d = np.concatenate((half_w0 * np.diag(st.lambda_user), [p.b_bias * st.tau_user_bias],
                                  half_w0 * np.diag(st.lambda_item), [p.b_bias * st.tau_item_bias]))
        shape = (prior_d.size, SCALE_MH_STEPS)
        scales, sum_e2 = kernels.scale_moves(gram, resid, float(sum_e2), float(st.alpha), self.scale_stat_index,
                                             self.scale_power, prior_d, self.rng.standard_normal(shape),
                                             self.rng.random(shape))
        # (U[:, a], mu_U[a], Lambda_U[a, :], Lambda_U[:, a]) -> (s U[:, a], s mu_U[a], Lambda_U[a, :] / s, ...)
        user_scales, item_scales = scales[:k + 1], scales[k + 1:]
        st.mu_user = st.mu_user * user_scales[:k]
        st.lambda_user = st.lambda_user / np.outer(user_scales[:k], user_scales[:k])
        st.tau_user_bias /= user_scales[k] ** 2
        st.mu_item = st.mu_item * item_scales[:k]
        st.lambda_item = st.lambda_item / np.outer(item_scales[:k], item_scales[:k])
        st.tau_item_bias /= item_scales[k] ** 2
        self._move("users", np.diag(user_scales), np.zeros(k + 1))
        self._move("items", np.diag(item_scales), np.zeros(k + 1))
        return float(resid[k + 2]), float(max(sum_e2, 0.0))

    def _balance(self) -> None:
        """Exact group move along the direction no prediction can see: for each latent dimension a,
        (U[:, a], V[:, a]) -> (s U[:, a], V[:, a] / s), every u_i . v_j unchanged, with the
        hyperparameters carried along as in the scale moves: mu_U[a] -> s mu_U[a],
        Lambda_U -> D^-1 Lambda_U D^-1 and mu_V[a] -> mu_V[a] / s, Lambda_V -> D Lambda_V D, where D is
        the identity with s at (a, a).

        Liu & Sabatti (2000): drawing s from pi(g_s x) |J_s(x)| ds / s (ds / s the Haar measure of
        the multiplicative group) leaves pi invariant. The factors of pi(g_s x) |J_s(x)|:
          likelihood                          unchanged (predictions unchanged)
          Jacobian of U[:, a], V[:, a]        s^n_users s^-n_items
          prod_i N(u_i; mu_U, Lambda_U^-1)    exponent unchanged (u_i - mu_U scales with D, Lambda_U
                                              with D^-1); normaliser |Lambda_U|^(n_users/2) -> s^-n_users
          prod_j N(v_j; mu_V, Lambda_V^-1)    the same with s^+n_items: cancels the factors' Jacobian
          N(mu_U; mu0, (beta0 Lambda_U)^-1)   exponent unchanged because mu0 = 0; normaliser s^-1,
                                              cancelled by the Jacobian s of mu_U[a] (s^+1 against s^-1 for V)
          Wishart(Lambda_U; W0, nu0)          |Lambda_U|^((nu0-k-1)/2) -> s^-(nu0-k-1); the map
                                              Lambda -> D^-1 Lambda D^-1 has Jacobian |D|^-(k+1) = s^-(k+1);
                                              tr(W0^-1 Lambda_U) loses d_U (1 - s^-2), W0 diagonal
          Wishart(Lambda_V; W0, nu0)          s^+nu0 and d_V (1 - s^2) the same way
        with d = (W0^-1)_aa Lambda_aa / 2 on each side. The powers of s all cancel (both sides share
        nu0), so s has density proportional to s^-1 exp(-d_U s^-2 - d_V s^2); with x = s^2, ds / s =
        dx / (2x) and
            x ~ x^-1 exp(-d_V x - d_U / x) = GIG(lambda = 0, a = 2 d_V, b = 2 d_U),
        drawn exactly (``kernels.balance_scales``). A move's terms read only its own Lambda_aa, which
        the other dimensions' moves leave alone, so the k moves are drawn at once. Without this move
        the trade between the scales of U and V is made only through the hyperparameter draws and
        the scale moves, each pinned by the likelihood on one side: log ||U|| drifted for tens of
        thousands of sweeps from the warm start.
        """
        st = self.state
        k = self.k
        scales = kernels.balance_scales(np.ascontiguousarray(np.diag(st.lambda_user)),
                                        np.ascontiguousarray(np.diag(st.lambda_item)),
                                        np.ascontiguousarray(np.diag(self.w0_inv)), float(self._balance_power),
                                        int(self.rng.integers(2**63)))
        st.mu_user = st.mu_user * scales
        st.lambda_user = st.lambda_user / np.outer(scales, scales)
        st.mu_item = st.mu_item / scales
        st.lambda_item = st.lambda_item * np.outer(scales, scales)
        self._move("users", np.diag(np.append(scales, 1.0)), np.zeros(k + 1))
        self._move("items", np.diag(np.append(1.0 / scales, 1.0)), np.zeros(k + 1))

    def _shear(self) -> None:
        """Exact group moves along the non-diagonal directions no prediction can see: for an ordered
        pair (a, b), a != b, U -> U A and V -> V A^-T with A = I + h e_b e_a^T, i.e. u_.a += h u_.b and
        v_.b -= h v_.a (each row: u_i -> A^T u_i, v_j -> A^-1 v_j), so every u_i . v_j is unchanged.
        {A(h)} is an additive one-parameter group (e_a^T e_b = 0: A(h) A(g) = A(h + g)) with Haar
        measure dh, and det A = 1 (Liu & Sabatti 2000: h ~ pi(g_h x) |J_h(x)|).

        The hyperparameters are carried along so that every row prior's exponent is unchanged:
        mu_U -> A^T mu_U, Lambda_U -> A^-1 Lambda_U A^-T, mu_V -> A^-1 mu_V, Lambda_V -> A^T Lambda_V A.
        The factors of pi(g_h x) |J_h(x)|:
          likelihood                          unchanged (predictions unchanged)
          prod_i N(u_i; mu_U, Lambda_U^-1)    (A^T r_i)^T A^-1 Lambda_U A^-T (A^T r_i) = r_i^T Lambda_U r_i,
                                              |Lambda_U| unchanged (det A = 1); the same for V
          N(mu_U; mu0, (beta0 Lambda_U)^-1)   unchanged because mu0 = 0; the same for V
          Wishart(Lambda; W0, nu0)            |Lambda|^((nu0-k-1)/2) unchanged; only the traces move
                                              (W0 = w0_scale I):
              tr(A^-1 Lambda_U A^-T) = tr Lambda_U - 2 h Lambda_U,ab + h^2 Lambda_U,aa
              tr(A^T Lambda_V A)     = tr Lambda_V + 2 h Lambda_V,ab + h^2 Lambda_V,bb
          Jacobians                           det A^T = 1 per row and for mu; |det M|^(k+1) = 1 for
                                              Lambda -> M Lambda M^T
        so with -tr(W0^-1 Lambda) / 2 from each Wishart,
            h ~ N((Lambda_U,ab - Lambda_V,ab) / (Lambda_U,aa + Lambda_V,bb), w0_scale / (Lambda_U,aa + Lambda_V,bb)),
        O(1) per pair and independent of the data. All k (k - 1) ordered pairs in a random order, drawn
        in one compiled call (``kernels.shear_moves``), composed into one map of each side's rows.
        Without them the factor basis turns only through the row and hyperparameter draws, and
        log ||U|| and log det Lambda_U are the slowest quantities of the quick start.
        """
        st = self.state
        k = self.k
        if k < 2:
            return
        pairs = self.shear_pairs[self.rng.permutation(len(self.shear_pairs))]
        total, st.lambda_user, st.mu_user, st.lambda_item, st.mu_item = kernels.shear_moves(
            pairs, self.rng.standard_normal(len(pairs)), np.ascontiguousarray(st.lambda_user),
            np.ascontiguousarray(st.mu_user), np.ascontiguousarray(st.lambda_item), np.ascontiguousarray(st.mu_item),
            float(self.priors.w0_scale), 1.0, 1.0)  # 1.0, 1.0: the derived variance and mean (see the kernel)
        user_map = self.identity.copy()
        user_map[:k, :k] = total.T  # u_i -> A^T u_i
        item_map = self.identity.copy()
        item_map[:k, :k] = np.linalg.inv(total)  # v_j -> A^-1 v_j
        self._move("users", user_map, np.zeros(k + 1))
        self._move("items", item_map, np.zeros(k + 1))

    def _shift_factors(self) -> None:
        """Exact group move along the ridge where mu trades places with the factor means:
        u_i -> u_i + a (all users), mu_U -> mu_U + a, c_j -> c_j - a . (v_j - vbar), mu -> mu - a . vbar.

        Every prediction mu + b_i + c_j + u_i . v_j is unchanged and so is the prior of the u_i
        given (mu_U, Lambda_U); what is left is Gaussian in a (Liu & Sabatti 2000, translation group):
            P = tau_mu0 vbar vbar^T + beta0 Lambda_U + tau_c W^T W,       W rows w_j = v_j - vbar
            h = tau_mu0 (mu - m0) vbar - beta0 Lambda_U (mu_U - mu0) + tau_c W^T c
        Then the same with users and items swapped (a drawn by ``kernels.shift_draw``). Without it
        mu random-walks along this ridge in steps of 1/sqrt(alpha N) and never reaches R-hat < 1.05.
        """
        st = self.state
        k = self.k
        p = self.priors
        beta0 = p.beta0
        tau0 = p.mu_prior_precision
        for side, other_side in (("users", "items"), ("items", "users")):
            if side == "users":
                lam, own_mean, tau_other = st.lambda_user, st.mu_user, st.tau_item_bias
            else:
                lam, own_mean, tau_other = st.lambda_item, st.mu_item, st.tau_user_bias
            n_other, total, gram = self.moments[other_side]
            a, vbar = kernels.shift_draw((float(n_other), total, gram), lam, own_mean, self.mu0, float(tau_other),
                                         float(beta0), float(tau0), float(st.mu - p.mu_prior_mean),
                                         self.rng.standard_normal(k))
            self._move(side, self.identity, np.append(a, 0.0))
            bias_row = self.identity.copy()
            bias_row[k, :k] = -a  # other's bias -= other_f . a - a . vbar
            self._move(other_side, bias_row, float(vbar @ a) * self.bias_unit)
            st.mu -= float(a @ vbar)
            if side == "users":
                st.mu_user = st.mu_user + a
            else:
                st.mu_item = st.mu_item + a

    def _translate_biases(self) -> None:
        """Exact group move (Liu & Sabatti 2000) along the direction the likelihood cannot see:
        b_i -> b_i + g for every user, mu -> mu - g (and likewise for the item biases).

        Predictions are unchanged, so g's conditional involves only the priors of mu and of the
        biases: precision tau_mu0 + n tau_b, mean (tau_mu0 (mu - m0) - tau_b sum_i b_i) / precision.
        Without it mu and the mean bias random-walk in steps of 1/sqrt(alpha N) (R-hat of mu >> 1).
        """
        st = self.state
        p = self.priors
        k = self.k
        for side, tau in (("users", st.tau_user_bias), ("items", st.tau_item_bias)):
            n, total, _ = self.moments[side]
            prec = p.mu_prior_precision + n * tau
            mean = (p.mu_prior_precision * (st.mu - p.mu_prior_mean) - tau * float(total[k])) / prec
            g = mean + self.rng.standard_normal() / np.sqrt(prec)
            self._move(side, self.identity, g * self.bias_unit)
            st.mu -= g

    def predict_pairs(self, users: np.ndarray, items: np.ndarray, parallel: bool = True) -> np.ndarray:
        out = np.empty(users.shape[0])
        fn = kernels.predict_pairs_par if parallel else kernels.predict_pairs_ser
        fn(self.state.users, self.state.items, self.state.mu, users, items, out)
        return out
