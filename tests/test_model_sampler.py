"""The Gibbs blocks sample the right conditional distributions (closed forms computed here, independently)."""

from __future__ import annotations

import numpy as np
import pytest

from bookrec.model import kernels
from bookrec.model.sampler import (
    Chain, Priors, RatingMatrix, block_prior, normal_wishart_posterior, sample_normal_wishart, side_moments,
)

# Tolerances: a Monte Carlo estimate from N independent draws is within 4.5 standard errors of
# its expectation except with probability ~7e-6 per checked quantity; with at most ~360
# quantities per test (30 readers x 12) the chance of a false failure is < 3e-3 (and the seeds are fixed).
Z_TOL = 4.5


def _tiny_problem(seed=3, n_users=4, n_items=6, k=2, keep=0.8):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), n_items)
    items = np.tile(np.arange(n_items), n_users)
    keep = rng.random(users.size) < keep
    users, items = users[keep], items[keep]
    ratings = rng.normal(6.0, 2.0, users.size)
    data = RatingMatrix.build(users, items, ratings, n_users, n_items)
    item_side = np.column_stack([rng.normal(0, 0.8, (n_items, k)), rng.normal(0, 0.5, n_items)])
    a = rng.normal(size=(k, k))
    lam = a @ a.T + np.eye(k)
    mean_u = rng.normal(0, 0.3, k)
    tau = 2.5
    prior_prec = np.zeros((k + 1, k + 1))
    prior_prec[:k, :k] = lam
    prior_prec[k, k] = tau
    prior_mean = np.r_[mean_u, 0.0]
    return data, users, items, ratings, item_side, prior_prec, prior_mean


def _closed_form(user, users, items, ratings, item_side, prior_prec, prior_mean, mu, alpha):
    """Textbook Bayesian linear regression for x = [u, b]: y = r - mu - c_j = [v_j, 1] . x + noise."""
    k = item_side.shape[1] - 1
    mine = users == user
    feats = np.column_stack([item_side[items[mine], :k], np.ones(mine.sum())])
    y = ratings[mine] - mu - item_side[items[mine], k]
    precision = prior_prec + alpha * feats.T @ feats
    cov = np.linalg.inv(precision)
    mean = cov @ (prior_prec @ prior_mean + alpha * feats.T @ y)
    return mean, cov


def _groups(indptr, few, mid):
    """Rows with <= few ratings drawn in conditioning lanes, few < m <= mid in precision lanes, longer
    rows one at a time (what ``lane_groups`` builds with the sampler's thresholds)."""
    few_rows, few_ptr = kernels.few_rating_groups(indptr, few)
    return kernels.RowGroups(few_rows, few_ptr, kernels.mid_rating_rows(indptr, few, mid), kernels.LANES)


def _run_block(kernel, data, item_side, mu, alpha, prior, out, seed, draw, few, mid):
    kernel(data.by_user, item_side, mu, alpha, prior, out, seed, _groups(data.user_indptr, few, mid), draw=draw,
           with_stats=False)


def test_mid_rating_rows_are_the_rows_in_range_sorted_by_count():
    counts = np.array([3, 7, 0, 5, 7, 4, 12, 6, 5])
    indptr = np.r_[0, np.cumsum(counts)]
    rows = kernels.mid_rating_rows(indptr, 4, 7)
    np.testing.assert_array_equal(rows, [3, 8, 7, 1, 4])
    assert kernels.mid_rating_rows(indptr, 4, 4).size == 0


# (few, mid) = (0, 0): every row one at a time in precision form; (99, 99): every row by
# conditioning a prior draw (Matheron), in lanes; (0, 99): every row in precision form, in lanes;
# mixed thresholds: several forms in one call. The "ragged" problem has readers with 0 to 6
# ratings, so that groups hold several blocks of lanes and partly filled ones.
@pytest.mark.parametrize(("parallel", "few", "mid", "problem"), [
    (False, 0, 0, "tiny"), (True, 0, 0, "tiny"), (False, 99, 99, "tiny"), (True, 99, 99, "tiny"),
    (False, 5, 5, "tiny"), (False, 0, 99, "tiny"), (True, 99, 99, "ragged"), (False, 3, 3, "ragged"),
    (True, 0, 99, "ragged"), (False, 2, 4, "ragged"), (True, 2, 4, "ragged"),
])
def test_user_block_matches_analytic_gaussian(parallel, few, mid, problem):
    if problem == "tiny":
        data, users, items, ratings, item_side, prior_prec, prior_mean = _tiny_problem()
        counts = np.diff(data.user_indptr)
        assert few in (0, 99) or counts.min() <= few < counts.max()  # so that few=5 exercises both forms
    else:
        data, users, items, ratings, item_side, prior_prec, prior_mean = _tiny_problem(seed=0, n_users=30, keep=0.5)
        per_row = np.diff(data.user_indptr)
        counts = np.bincount(per_row)
        assert counts[0] >= 1 and counts.max() > kernels.LANES and counts.size > 5
        # (2, 4) puts rows in all three forms
        assert (per_row <= 2).any() and ((per_row > 2) & (per_row <= 4)).any() and (per_row > 4).any()
    mu, alpha = 6.1, 0.7
    kernel = kernels.sample_block_par if parallel else kernels.sample_block_ser
    n_users, dim = data.n_users, item_side.shape[1]
    k = dim - 1
    prior = block_prior(prior_prec[:k, :k], prior_mean[:k], prior_prec[k, k])
    out = np.zeros((n_users, dim))
    n_draws = 20_000
    draws = np.empty((n_draws, n_users, dim))
    for t in range(n_draws):
        _run_block(kernel, data, item_side, mu, alpha, prior, out, 1_000 + t, True, few, mid)
        draws[t] = out
    # With draw=False the kernel returns the conditional mean exactly (the ALS/MAP step).
    mode = np.zeros_like(out)
    _run_block(kernel, data, item_side, mu, alpha, prior, mode, 0, False, few, mid)
    for user in range(n_users):
        mean, cov = _closed_form(user, users, items, ratings, item_side, prior_prec, prior_mean, mu, alpha)
        np.testing.assert_allclose(mode[user], mean, rtol=1e-9, atol=1e-9)
        sample = draws[:, user, :]
        se_mean = np.sqrt(np.diag(cov) / n_draws)
        assert np.all(np.abs(sample.mean(axis=0) - mean) < Z_TOL * se_mean)
        # SE of a sample covariance entry (Gaussian data): sqrt((S_aa S_bb + S_ab^2) / N).
        emp_cov = np.cov(sample, rowvar=False)
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n_draws)
        assert np.all(np.abs(emp_cov - cov) < Z_TOL * se_cov)


def test_block_prior_forms_agree():
    _, _, _, _, _, prior_prec, prior_mean = _tiny_problem()
    k = prior_mean.size - 1
    prec, h, mean, chol, chol_t = block_prior(prior_prec[:k, :k], prior_mean[:k], prior_prec[k, k])
    np.testing.assert_allclose(prec, prior_prec)
    np.testing.assert_allclose(h, prior_prec @ prior_mean)
    np.testing.assert_allclose(chol @ chol.T, np.linalg.inv(prior_prec), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(chol_t, chol.T)
    assert np.allclose(np.triu(chol, 1), 0.0)


def test_kernel_streams_do_not_depend_on_threads():
    data, _, _, _, item_side, prior_prec, prior_mean = _tiny_problem(n_users=300, n_items=40)
    k = item_side.shape[1] - 1
    prior = block_prior(prior_prec[:k, :k], prior_mean[:k], prior_prec[k, k])
    args = (data.by_user, item_side, 6.0, 0.8, prior)
    a = np.zeros((data.n_users, item_side.shape[1]))
    b = np.zeros_like(a)
    # Readers have 23 to 39 ratings: some in each of the three forms.
    per_row = np.diff(data.user_indptr)
    few, mid = 30, 33
    assert (per_row <= few).any() and ((per_row > few) & (per_row <= mid)).any() and (per_row > mid).any()
    groups = _groups(data.user_indptr, few, mid)
    kernels.sample_block_par(*args, a, 42, groups, draw=True, with_stats=False)
    kernels.sample_block_ser(*args, b, 42, groups, draw=True, with_stats=False)
    np.testing.assert_array_equal(a, b)
    kernels.sample_block_ser(*args, b, 43, groups, draw=True, with_stats=False)
    assert not np.allclose(a, b)


def test_ziggurat_normals_are_standard_normal():
    """The kernels' N(0, 1) generator: distribution (KS), moments, and the rare paths (tail, wedges)."""
    from scipy import stats

    n = 4_000_000
    x = np.empty(n)
    kernels.fill_normals(kernels.row_state(7, 0), x, n)
    # KS: the 1e-4 critical value of the statistic is ~2.0 / sqrt(n) (asymptotic Kolmogorov law).
    assert stats.kstest(x, "norm").statistic < 2.0 / np.sqrt(n)
    assert abs(x.mean()) < Z_TOL / np.sqrt(n)
    assert abs(x.var() - 1.0) < Z_TOL * np.sqrt(2.0 / n)
    assert abs(stats.skew(x)) < Z_TOL * np.sqrt(6.0 / n)
    assert abs(stats.kurtosis(x)) < Z_TOL * np.sqrt(24.0 / n)
    # Beyond the base edge R only the tail method produces draws; between the top layers' edges
    # mostly the wedge test does. Binomial counts against the exact probabilities.
    for lo, hi in ((kernels.ZIG_R, np.inf), (3.0, kernels.ZIG_R), (0.0, 0.3), (1.0, 1.02)):
        p = 2 * (stats.norm.cdf(hi) - stats.norm.cdf(lo))
        count = np.count_nonzero((np.abs(x) >= lo) & (np.abs(x) < hi))
        assert abs(count - n * p) < Z_TOL * np.sqrt(n * p * (1 - p)), (lo, hi)


def test_move_statistics_match_direct_sums():
    """The group moves' statistics (G = sum z z^T, R = sum e z, sum e^2) against a direct computation."""
    data, users, items, ratings, item_side, _, _ = _tiny_problem(n_users=30, n_items=12, k=3)
    rng = np.random.default_rng(8)
    k = item_side.shape[1] - 1
    user_side = np.column_stack([rng.normal(0, 0.7, (data.n_users, k)), rng.normal(0, 0.4, data.n_users)])
    mu = 5.9
    order = np.argsort(users, kind="stable")
    u, i, r = users[order], items[order], ratings[order]
    z = np.column_stack([user_side[u, :k] * item_side[i, :k], user_side[u, k], item_side[i, k], np.ones(u.size)])
    e = r - mu - z[:, :k + 2].sum(axis=1)
    for kernel in (kernels.move_stats_ser, kernels.move_stats_par):
        _assert_move_stats(kernel(data.user_indptr, data.user_items, data.user_ratings, user_side, item_side, mu), z, e)


def _assert_move_stats(stats, z, e):
    """(sum z z^T, sum e z, sum e^2) equal direct sums over the per-rating rows z and residuals e."""
    gram, resid, sum_e2 = stats
    np.testing.assert_allclose(gram, z.T @ z, rtol=1e-10)
    np.testing.assert_allclose(resid, z.T @ e, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sum_e2, e @ e, rtol=1e-12)


def test_normal_wishart_update_uses_centred_scatter():
    rng = np.random.default_rng(5)
    k, n = 3, 40
    # Factors far from the prior mean 0: an uncentred scatter would be wrong by n * xbar xbar^T.
    factors = rng.normal(2.0, 0.5, (n, k))
    mu0, beta0, nu0 = np.zeros(k), 2.0, float(k)
    w0_inv = np.eye(k)
    # Independent closed form (Bishop 2006, eq. 2.154ff / Salakhutdinov & Mnih 2008, eq. 14).
    xbar = factors.mean(axis=0)
    s_bar = (factors - xbar).T @ (factors - xbar) / n
    w_n = np.linalg.inv(w0_inv + n * s_bar + beta0 * n / (beta0 + n) * np.outer(mu0 - xbar, mu0 - xbar))
    nu_n, beta_n = nu0 + n, beta0 + n
    mu_n = (beta0 * mu0 + n * xbar) / beta_n
    got = normal_wishart_posterior(factors, mu0, beta0, w0_inv, nu0)
    np.testing.assert_allclose(got[0], mu_n, rtol=1e-12)
    np.testing.assert_allclose(got[2], w_n, rtol=1e-10)
    assert got[1] == beta_n and got[3] == nu_n

    n_draws = 20_000
    lams = np.empty((n_draws, k, k))
    means = np.empty((n_draws, k))
    for t in range(n_draws):
        means[t], lams[t] = sample_normal_wishart(factors, mu0, beta0, w0_inv, nu0, rng)
    # Wishart(W, nu): E = nu W, Var(L_ab) = nu (W_ab^2 + W_aa W_bb).
    expected = nu_n * w_n
    se = np.sqrt(nu_n * (w_n**2 + np.outer(np.diag(w_n), np.diag(w_n))) / n_draws)
    assert np.all(np.abs(lams.mean(axis=0) - expected) < Z_TOL * se)
    # mu_U | Lambda ~ N(mu_n, (beta_n Lambda)^-1): marginally centred on mu_n, with covariance
    # E[(beta_n Lambda)^-1] = W_n^-1 / (beta_n (nu_n - k - 1)).
    marg_cov = np.linalg.inv(w_n) / (beta_n * (nu_n - k - 1))
    assert np.all(np.abs(means.mean(axis=0) - mu_n) < Z_TOL * np.sqrt(np.diag(marg_cov) / n_draws))


@pytest.mark.parametrize(("few", "mid"), [(0, 0), (3, 3), (99, 99), (0, 99), (2, 4)])
def test_block_returns_the_move_statistics_of_its_draw(few, mid):
    """The statistics a block gathers while drawing equal a separate pass over the new state,
    whichever form (precision, lanes of conditioning draws, both) drew each row."""
    # Rows with 0 to 5 ratings. In the sampler the block that returns statistics is the books';
    # here the drawn rows are the tiny problem's readers, so the reference pass runs over the
    # other side's rows: z = [v u, c_other, b_drawn, 1].
    data, _, _, _, other_side, prior_prec, prior_mean = _tiny_problem(seed=0, n_users=30, keep=0.5)
    k = other_side.shape[1] - 1
    prior = block_prior(prior_prec[:k, :k], prior_mean[:k], prior_prec[k, k])
    mu = 5.9
    drawn = np.zeros((data.n_users, k + 1))
    groups = _groups(data.user_indptr, few, mid)
    for kernel, stats_kernel in ((kernels.sample_block_ser, kernels.move_stats_ser),
                                 (kernels.sample_block_par, kernels.move_stats_par)):
        gram, resid, sum_e2 = kernel(data.by_user, other_side, mu, 0.8, prior, drawn, 7, groups, draw=True,
                                     with_stats=True)
        ref = stats_kernel(data.item_indptr, data.item_users, data.item_ratings, other_side, drawn, mu)
        np.testing.assert_allclose(gram, ref[0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(resid, ref[1], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(sum_e2, ref[2], rtol=1e-10)


@pytest.mark.parametrize("parallel", [False, True])
def test_tracked_side_moments_equal_a_pass_over_the_rows(parallel):
    """A sweep keeps each side's moments (n, sum x, sum x x^T) up to date through the scale, shift and
    translation moves as affine maps of the rows, and applies the composed maps to the rows in one
    pass at the end: the moments must equal a fresh pass over the final state."""
    rng = np.random.default_rng(5)
    n_users, n_items, n = 60, 40, 900
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    ratings = np.clip(np.round(rng.normal(6.5, 2.0, n)), 1, 10)
    data = RatingMatrix.build(users, items, ratings, n_users, n_items)
    chain = Chain(data, 3, Priors(mu_prior_mean=6.5), np.random.SeedSequence(11))
    chain.initialise(warm_start=True)
    for _ in range(5):
        chain.sweep(parallel=parallel)
        for name, side in (("users", chain.state.users), ("items", chain.state.items)):
            tracked, direct = chain.moments[name], side_moments(side)
            assert tracked[0] == direct[0]
            # Relative to the size of the moments: a few affine maps lose a few ulps, not more.
            for t, d in zip(tracked[1:], direct[1:]):
                np.testing.assert_allclose(t, d, rtol=0, atol=1e-10 * (1.0 + np.abs(d).max()))


def test_affine_move_composes_two_maps_exactly():
    """Two moves x -> T x + e applied one after the other to the moments and the pending map equal the
    moments of the moved rows and the composed map, for general (not only diagonal) T."""
    rng = np.random.default_rng(8)
    rows = rng.normal(0.5, 1.0, (50, 4))
    n, total, gram = side_moments(rows)
    composed, shift = np.eye(4), np.zeros(4)
    moved = rows
    for _ in range(2):
        transform, offset = rng.normal(size=(4, 4)), rng.normal(size=4)
        total, gram, composed, shift = kernels.affine_move(float(n), total, gram, composed, shift, transform, offset)
        moved = moved @ transform.T + offset
    np.testing.assert_allclose(total, moved.sum(axis=0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(gram, moved.T @ moved, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(rows @ composed.T + shift, moved, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n_rows", [0, 1, 255, 257, 70_001])
def test_side_moments_match_numpy(parallel, n_rows):
    rows = np.random.default_rng(n_rows).normal(0.3, 1.0, (n_rows, 6))
    n, total, square = side_moments(rows, parallel)
    assert n == n_rows
    np.testing.assert_allclose(total, rows.sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(square, rows.T @ rows, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(("alpha", "big_a", "big_b", "power", "d"), [
    (0.8, 400.0, 380.0, 10.0, 2.0),  # a well-identified scale (many ratings)
    (0.5, 3.0, 1.0, 2.0, 0.5),  # a weak one: the prior terms matter, the target is skewed
])
def test_scale_move_leaves_its_target_invariant(alpha, big_a, big_b, power, d):
    """The scale move's Metropolis-Hastings kernel keeps log pi(t) = -alpha/2 (A e^2t - 2 B e^t) - p t - d e^-2t
    invariant: starting from t0 ~ pi (drawn on a fine grid), t0 + log s is again ~ pi (KS test).
    The kernel always starts from t = 0, the current state; starting at t0 is the same move with
    the statistics of the state e^t0: A e^2t0, B e^t0 and d e^-2t0."""
    from scipy import stats

    grid = np.linspace(-6.0, 6.0, 200_001)
    log_pi = -0.5 * alpha * (big_a * np.exp(2 * grid) - 2 * big_b * np.exp(grid)) - power * grid - d * np.exp(-2 * grid)
    pdf = np.exp(log_pi - log_pi.max())
    cdf = np.cumsum(pdf)
    cdf /= cdf[-1]
    rng = np.random.default_rng(17)
    n = 20_000
    t0 = np.interp(rng.random(n), cdf, grid)
    normals = rng.standard_normal((n, 2))
    uniforms = rng.random((n, 2))
    t1 = np.array([
        t + np.log(kernels.moves._draw_scale(alpha, big_a * np.exp(2 * t), big_b * np.exp(t), power,
                                             d * np.exp(-2 * t), normals[q], uniforms[q]))
        for q, t in enumerate(t0)])
    assert np.mean(t1 != t0) > 0.3  # the kernel does move
    # A correct kernel fails this with probability 1e-3 (and the seed is fixed); dropping the prior term
    # or the proposal correction gives p-values below 1e-10 here.
    assert stats.kstest(t1, lambda x: np.interp(x, grid, cdf)).pvalue > 1e-3


def test_scale_moves_update_the_statistics_exactly():
    """After the moves, (gram, resid, sum e^2) are the statistics of the rescaled parts z_m -> s z_m."""
    rng = np.random.default_rng(2)
    n_stats, n = 6, 500
    z = rng.normal(size=(n, n_stats))
    e = rng.normal(size=n)
    gram, resid, sum_e2 = z.T @ z, z.T @ e, float(e @ e)
    stat_index = np.array([0, 3, 0, 5])
    shape = (stat_index.size, 2)
    scales, new_e2 = kernels.scale_moves(gram, resid, sum_e2, 1.0, stat_index, np.full(4, 2.0), np.full(4, 0.5),
                                         rng.standard_normal(shape), rng.random(shape))
    assert np.any(scales != 1.0)
    for m, s in zip(stat_index, scales):  # e + z_m is unchanged: e -> e - (s - 1) z_m, z_m -> s z_m
        e = e - (s - 1.0) * z[:, m]
        z[:, m] *= s
    _assert_move_stats((gram, resid, new_e2), z, e)


def test_shift_draw_is_the_gaussian_of_the_shift_move():
    """kernels.shift_draw against the shift move's Gaussian written out with NumPy: same normals, same a."""
    rng = np.random.default_rng(8)
    k, n = 4, 300
    other = rng.normal(size=(n, k + 1))  # rows [v_j, c_j]
    a_mat = rng.normal(size=(k, k))
    lam = a_mat @ a_mat.T + np.eye(k)
    own_mean, mu0 = rng.normal(size=k), np.zeros(k)
    tau_other, beta0, tau0, mu_offset = 1.7, 100.0, 0.01, 0.4
    z = rng.normal(size=k)
    n_other, total, gram = side_moments(other)
    got, vbar = kernels.shift_draw((float(n_other), total, gram), lam, own_mean, mu0, tau_other, beta0, tau0,
                                   mu_offset, z)
    v, c = other[:, :k], other[:, k]
    w = v - v.mean(axis=0)
    prec = tau0 * np.outer(v.mean(axis=0), v.mean(axis=0)) + beta0 * lam + tau_other * w.T @ w
    lin = tau0 * mu_offset * v.mean(axis=0) - beta0 * lam @ (own_mean - mu0) + tau_other * w.T @ c
    chol = np.linalg.cholesky(prec)
    np.testing.assert_allclose(vbar, v.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got, np.linalg.solve(prec, lin) + np.linalg.solve(chol.T, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("lam", "omega"), [(0.0, 1.0), (0.0, 0.01), (0.0, 80.0), (1.0, 0.5), (-1.0, 3.0), (2.5, 0.1)])
def test_gig_draws_follow_scipys_geninvgauss(lam, omega):
    """The compiled GIG sampler of the balance move against scipy's distribution function (KS test),
    over the regimes a balance move meets: omega = 2 sqrt(d_U d_V) from tiny (vague precisions) to
    large (sharp ones), and the powers a wrong Jacobian would give."""
    from numba import njit
    from scipy import stats

    @njit
    def draws(lam, omega, n, seed):
        state = kernels.row_state(seed, 0)
        out = np.empty(n)
        for q in range(n):
            out[q], state = kernels.gig_draw(lam, omega, state)
        return out

    sample = draws(lam, omega, 20_000, 7)
    # A correct sampler fails with probability 1e-3 per case (fixed seed); a wrong power shifts log y
    # by about its variance (~1 at omega = 1) and gives p-values far below that.
    assert stats.kstest(sample, stats.geninvgauss(lam, omega).cdf).pvalue > 1e-3


def test_balance_move_keeps_predictions_and_moves_the_scales():
    """The balance move changes U and V (and their hyperparameters) but no prediction mu + b + c + u . v,
    and its hyperparameters stay those of the rows they belong to (mu_U scaled with U[:, a])."""
    data, *_ = _tiny_problem(n_users=12, n_items=9)
    chain = Chain(data, 2, Priors(mu_prior_mean=6.0), np.random.SeedSequence(4))
    chain.initialise(warm_start=True)
    chain.sweep(parallel=False)
    st = chain.state
    users, items = np.repeat(np.arange(12), 9), np.tile(np.arange(9), 12)
    before = chain.predict_pairs(users, items, parallel=False)
    u0, mu_u0, lam_u0, lam_v0 = st.users.copy(), st.mu_user.copy(), st.lambda_user.copy(), st.lambda_item.copy()
    chain._balance()
    chain._apply_moves(parallel=False)
    scales = st.users[0, :2] / u0[0, :2]
    assert np.all(np.abs(np.log(scales)) > 1e-6)
    np.testing.assert_allclose(chain.predict_pairs(users, items, parallel=False), before, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.users[:, :2], u0[:, :2] * scales, rtol=1e-12)
    np.testing.assert_allclose(st.mu_user, mu_u0 * scales, rtol=1e-12)
    np.testing.assert_allclose(st.lambda_user, lam_u0 / np.outer(scales, scales), rtol=1e-12)
    np.testing.assert_allclose(st.lambda_item, lam_v0 * np.outer(scales, scales), rtol=1e-12)


def test_shear_move_keeps_predictions_and_carries_the_hyperparameters():
    """The shear moves mix the factor columns of U and V but change no prediction, and carry the
    hyperparameters along: every row's (x - mu)^T Lambda (x - mu), mu^T Lambda mu and det Lambda
    stay as they were on both sides, and the tracked moments stay those of the rows."""
    data, *_ = _tiny_problem(n_users=12, n_items=9)
    chain = Chain(data, 3, Priors(mu_prior_mean=6.0), np.random.SeedSequence(4))
    chain.initialise(warm_start=True)
    chain.sweep(parallel=False)
    st = chain.state
    users, items = np.repeat(np.arange(12), 9), np.tile(np.arange(9), 12)
    before = chain.predict_pairs(users, items, parallel=False)

    def invariants():
        out = []
        for rows, mean, lam in ((st.users, st.mu_user, st.lambda_user), (st.items, st.mu_item, st.lambda_item)):
            centred = rows[:, :3] - mean
            out += [np.einsum("na,ab,nb->n", centred, lam, centred), [mean @ lam @ mean, np.linalg.det(lam)]]
        return np.concatenate(out)

    u0, invariants0 = st.users.copy(), invariants()
    chain._shear()
    chain._apply_moves(parallel=False)
    assert np.abs(st.users[:, :3] - u0[:, :3]).max() > 1e-3
    np.testing.assert_array_equal(st.users[:, 3], u0[:, 3])
    np.testing.assert_allclose(chain.predict_pairs(users, items, parallel=False), before, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invariants(), invariants0, rtol=1e-9)
    for side in ("users", "items"):
        _, total, gram = side_moments(getattr(st, side), parallel=False)
        np.testing.assert_allclose(chain.moments[side][1], total, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(chain.moments[side][2], gram, rtol=1e-10, atol=1e-10)
