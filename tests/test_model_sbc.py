"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of the Gibbs sampler.

Each replication draws every parameter from the prior, ratings from the model on a fixed pattern
of observed pairs, and runs one chain started as ``BPMF.fit`` starts it (the ridge warm start);
if the sampler leaves the posterior invariant and forgets its start, the rank of the true value
among the chain's thinned draws is uniform on 0..L, for every quantity. The priors are made
data-independent for the test (mu's prior mean fixed; ``BPMF`` centres it on the training mean).

Ranks are binned and tested by chi-square. Under uniformity each statistic is chi-square with
``N_BINS - 1`` degrees of freedom (N replications, expected N / N_BINS per bin, >= 10 here), so
the test rejects at family-wise level 0.001: p = 0.001 / 6 per quantity (Bonferroni). Thinning
keeps the draws nearly independent: correlated draws pile the ranks at both ends even when the
chain is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bookrec.model import kernels
from bookrec.model.sampler import Chain, Priors, RatingMatrix

N_USERS, N_ITEMS, K = 20, 15, 2
PER_USER = 8  # ratings per user: 160 of the 300 pairs observed
N_BINS = 10
QUANTITIES = ("mu", "log_alpha", "user_bias_0", "prediction_0_0", "norm_u_0", "log_det_Lambda_U")
FAMILY_P = 0.001
CRITICAL = stats.chi2.ppf(1.0 - FAMILY_P / len(QUANTITIES), N_BINS - 1)
# The estimator's default priors, with mu's prior mean fixed instead of the training mean.
PRIORS = Priors(beta0=100.0, w0_scale=1.0, a_bias=1.0, b_bias=1.0, a_alpha=1.0, b_alpha=1.0,
                mu_prior_mean=5.5, mu_prior_precision=1.0)


def observed_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    users = np.repeat(np.arange(N_USERS), PER_USER)
    items = np.concatenate([rng.choice(N_ITEMS, PER_USER, replace=False) for _ in range(N_USERS)])
    return users, items


def draw_prior(rng: np.random.Generator, p: Priors) -> dict:
    """Every parameter from the prior of ``sampler`` (module docstring there), W0 = w0_scale I, mu0 = 0."""
    nu0 = K + p.nu0_extra
    out = {}
    for side, n in (("U", N_USERS), ("V", N_ITEMS)):
        lam = stats.wishart(df=nu0, scale=p.w0_scale * np.eye(K)).rvs(random_state=rng).reshape(K, K)
        mean = rng.multivariate_normal(np.zeros(K), np.linalg.inv(p.beta0 * lam))
        out[side] = rng.multivariate_normal(mean, np.linalg.inv(lam), size=n)
        out[f"Lambda_{side}"] = lam
        tau = rng.gamma(p.a_bias, 1.0 / p.b_bias)
        out[f"bias_{side}"] = rng.standard_normal(n) / np.sqrt(tau)
    out["mu"] = p.mu_prior_mean + rng.standard_normal() / np.sqrt(p.mu_prior_precision)
    out["alpha"] = rng.gamma(p.a_alpha, 1.0 / p.b_alpha)
    return out


def quantities(mu, alpha, users, items, lambda_user) -> np.ndarray:
    """The checked quantities; ``users``/``items`` are (n, K + 1) rows [factors, bias]."""
    return np.array([
        mu, np.log(alpha), users[0, K], mu + users[0, K] + items[0, K] + users[0, :K] @ items[0, :K],
        np.linalg.norm(users[0, :K]), np.linalg.slogdet(lambda_user)[1],
    ])


def sbc_ranks(n_reps: int, n_draws: int, thin: int, burn_in: int, seed: int, priors: Priors = PRIORS,
              balance_move: bool = True, shear_move: bool = True) -> np.ndarray:
    """(n_reps, len(QUANTITIES)) ranks in 0..n_draws of the true values among a chain's thinned draws."""
    ranks = np.empty((n_reps, len(QUANTITIES)), dtype=np.int64)
    seeds = np.random.SeedSequence(seed).spawn(n_reps)
    users_idx, items_idx = observed_pairs(np.random.default_rng(seed))
    for rep, seq in enumerate(seeds):
        data_seq, chain_seq = seq.spawn(2)
        rng = np.random.default_rng(data_seq)
        truth = draw_prior(rng, priors)
        pred = (truth["mu"] + truth["bias_U"][users_idx] + truth["bias_V"][items_idx]
                + np.einsum("nk,nk->n", truth["U"][users_idx], truth["V"][items_idx]))
        ratings = pred + rng.standard_normal(pred.size) / np.sqrt(truth["alpha"])
        true_q = quantities(truth["mu"], truth["alpha"], np.column_stack([truth["U"], truth["bias_U"]]),
                            np.column_stack([truth["V"], truth["bias_V"]]), truth["Lambda_U"])
        chain = Chain(RatingMatrix.build(users_idx, items_idx, ratings, N_USERS, N_ITEMS), K, priors, chain_seq,
                      balance_move=balance_move, shear_move=shear_move)
        chain.initialise(warm_start=True)
        for _ in range(burn_in):
            chain.sweep(parallel=False)
        draws = np.empty((n_draws, len(QUANTITIES)))
        for d in range(n_draws):
            for _ in range(thin):
                st = chain.sweep(parallel=False)
            draws[d] = quantities(st.mu, st.alpha, st.users, st.items, st.lambda_user)
        ranks[rep] = (draws < true_q).sum(axis=0)
    return ranks


def chi_square(ranks: np.ndarray, n_draws: int) -> dict[str, float]:
    """Chi-square statistic of the binned ranks per quantity ((n_draws + 1) % N_BINS == 0: equal bins)."""
    per_bin = (n_draws + 1) // N_BINS
    out = {}
    for q, name in enumerate(QUANTITIES):
        counts = np.bincount(ranks[:, q] // per_bin, minlength=N_BINS)
        expected = ranks.shape[0] / N_BINS
        out[name] = float(((counts - expected) ** 2 / expected).sum())
    return out


def _failing(ranks: np.ndarray, n_draws: int) -> dict[str, float]:
    return {name: value for name, value in chi_square(ranks, n_draws).items() if value > CRITICAL}


def test_sbc_ranks_are_uniform_from_the_default_start():
    # 200 replications of 200 burn-in + 19 draws thinned by 10 (~20 s on one core), every default
    # move on (the balance and shear moves included). The scale quantities (||u_0||, log det Lambda_U)
    # came out chi2 101 and 112 without the balance move.
    ranks = sbc_ranks(n_reps=200, n_draws=19, thin=10, burn_in=200, seed=1)
    assert not _failing(ranks, 19), chi_square(ranks, 19)


def test_sbc_catches_a_balance_move_with_its_jacobian_power_off_by_one(monkeypatch):
    # s^2 ~ GIG(1, ...) instead of GIG(0, ...): one power of s too many, as if a normaliser or the
    # Haar measure ds / s were dropped. It pushes mass from V to U at every sweep: ||u_0|| and
    # log det Lambda_U fail by an order of magnitude (chi2 ~500-600 at 200 replications).
    monkeypatch.setattr(Chain, "_balance_power", 1.0)
    ranks = sbc_ranks(n_reps=100, n_draws=19, thin=10, burn_in=200, seed=1)
    failing = _failing(ranks, 19)
    assert {"norm_u_0", "log_det_Lambda_U"} <= set(failing), chi_square(ranks, 19)


@pytest.mark.slow
def test_sbc_ranks_are_uniform_without_the_shear_move():
    ranks = sbc_ranks(n_reps=200, n_draws=19, thin=10, burn_in=200, seed=1, shear_move=False)
    assert not _failing(ranks, 19), chi_square(ranks, 19)


def _shear_brute_force_error(var_factor: float, mean_sign: float) -> float:
    """Max over random states, every ordered pair and several h of |log pi(g_h x) - log pi(x) - q(h)|:
    pi the model's full density (rows, mean priors, Wisharts, likelihood), g_h the shear move with
    its hyperparameters carried along (``Chain._shear``), q the Normal log density (up to its
    constant) that ``kernels.shear_moves`` draws h from, read off the kernel with normals 0 and 1."""
    rng = np.random.default_rng(0)
    k, n_u, n_v, beta0, w0, nu0 = 3, 12, 9, 2.0, 1.7, 3.0

    def log_joint(U, V, mu_u, lam_u, mu_v, lam_v, r, rows, cols):
        out = 0.0
        for X, m, L in ((U, mu_u, lam_u), (V, mu_v, lam_v)):
            cov = np.linalg.inv(L)
            out += stats.multivariate_normal(m, cov).logpdf(X).sum()
            out += stats.multivariate_normal(np.zeros(k), cov / beta0).logpdf(m)
            out += stats.wishart(df=nu0, scale=w0 * np.eye(k)).logpdf(L)
        return out + stats.norm(np.einsum("nk,nk->n", U[rows], V[cols]), 0.5).logpdf(r).sum()

    def h_drawn(pair, normal, hyper):
        total = kernels.shear_moves(pair, np.array([normal]), *hyper, w0, var_factor, mean_sign)[0]
        a, b = pair[0]
        return total[b, a]

    worst = 0.0
    for _ in range(2):
        lam_u, lam_v = (stats.wishart(df=k + 2, scale=np.eye(k)).rvs(random_state=rng) for _ in range(2))
        mu_u, mu_v = rng.standard_normal(k), rng.standard_normal(k)
        U, V = rng.standard_normal((n_u, k)) + 0.3, 1.3 * rng.standard_normal((n_v, k)) - 0.2
        rows, cols = rng.integers(n_u, size=30), rng.integers(n_v, size=30)
        r = rng.standard_normal(30)
        hyper = (lam_u, mu_u, lam_v, mu_v)
        base = log_joint(U, V, mu_u, lam_u, mu_v, lam_v, r, rows, cols)
        for a in range(k):
            for b in range(k):
                if a == b:
                    continue
                pair = np.array([[a, b]])
                mean = h_drawn(pair, 0.0, hyper)
                prec = 1.0 / (h_drawn(pair, 1.0, hyper) - mean) ** 2
                for h in (-0.6, 0.2, 0.9):
                    A = np.eye(k)
                    A[b, a] = h
                    Ai = np.linalg.inv(A)
                    new = log_joint(U @ A, V @ Ai.T, A.T @ mu_u, Ai @ lam_u @ Ai.T, Ai @ mu_v, A.T @ lam_v @ A,
                                    r, rows, cols)
                    worst = max(worst, abs(new - base - (-0.5 * prec * (h - mean) ** 2 + 0.5 * prec * mean**2)))
    return worst


def test_shear_conditional_matches_the_brute_force_density():
    assert _shear_brute_force_error(1.0, 1.0) < 1e-8


@pytest.mark.parametrize("var_factor, mean_sign", [(2.0, 1.0), (1.0, -1.0), (1.0, 0.0)])
def test_shear_brute_force_catches_a_wrong_conditional(var_factor, mean_sign):
    # A factor 2 in the variance of h, the wrong sign of its mean, or its mean left out. SBC at this
    # size does not catch such errors reliably (100 replications: max chi2 28 with the mean dropped,
    # 26 with the variance 6x too large, critical 32.4).
    assert _shear_brute_force_error(var_factor, mean_sign) > 1.0


@pytest.mark.slow
def test_sbc_ranks_are_uniform_long():
    # 500 replications, 49 draws thinned by 10 after 300 sweeps (~2-3 min on one core): finer
    # ranks, more power against small errors.
    ranks = sbc_ranks(n_reps=500, n_draws=49, thin=10, burn_in=300, seed=2)
    assert not _failing(ranks, 49), chi_square(ranks, 49)


@pytest.mark.slow
def test_sbc_fails_without_the_balance_move():
    # The sampler without the moves between U and V: from the warm start the chain never settles along
    # (U[:, a], V[:, a]) -> (s U[:, a], V[:, a] / s), so the ranks of the scale quantities are U-shaped.
    # With the shear moves alone (det A = 1: they cannot scale U against V as a whole) ||u_0|| passes
    # (chi2 10) and log det Lambda_U still fails (46).
    ranks = sbc_ranks(n_reps=200, n_draws=19, thin=10, burn_in=200, seed=1, balance_move=False, shear_move=False)
    assert {"norm_u_0", "log_det_Lambda_U"} <= set(_failing(ranks, 19)), chi_square(ranks, 19)
