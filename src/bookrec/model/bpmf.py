"""The BPMF estimator: Bayesian matrix factorisation with biases, fitted by blocked Gibbs sampling."""

from __future__ import annotations

import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from bookrec.contracts.params import MODEL_PARAMS, check_params, check_schedule, default
from bookrec.model import kernels, metrics
from bookrec.model.params import NotFittedError, ParamsMixin
from bookrec.model.chains import ChainPlan, ChainRun, chain_count_check, chain_summary, kept_draw, run_chain
from bookrec.model.sampler import Chain, Priors, RatingMatrix
from bookrec.model.similar import similar_items, unit_factors

RANK_MODES = {"mean": 0, "lower": 1, "sample": 2}

# The quantities traced every post-burn-in sweep (besides the tracked predictions) and judged by the
# convergence rule. The last four see the directions predictions cannot: the balance between the
# scales of U and V, and the factor precisions.
TRACED = ("alpha", "mu", "train_rmse", "log_norm_U", "log_norm_V", "log_det_Lambda_U", "log_det_Lambda_V")


def _as_index(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer indices")
        if np.abs(arr).max() >= 2**62:
            raise ValueError(f"{name} holds an index too large for any model")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return arr


class BPMF(ParamsMixin):
    """Bayesian probabilistic matrix factorisation with user/item biases (Salakhutdinov & Mnih 2008).

    ``n_samples`` post-burn-in sweeps run in each of ``n_chains`` chains; every ``thin``-th draw
    is kept (thinned further if needed so that at most ``max_kept_samples`` are kept in total,
    stored as float32). ``chain_mode``: "sweep" runs the chains in lock-step, each sweep using
    all cores (numba prange); "threads" runs each chain in its own thread with single-threaded
    GIL-free kernels; "auto" is "sweep" (as fast or faster, see ``_resolved_chain_mode``).
    ``balance_move=False`` leaves out the balance moves (``sampler.Chain._balance``) and
    ``shear_move=False`` the shear moves (``sampler.Chain._shear``), to measure what they buy.
    ``min_ess`` and ``rhat_threshold`` (None: the settings' ``min_ess`` and ``rhat_threshold``) set
    the convergence rule of ``diagnostics_``.
    """

    def __init__(
        self,
        n_factors: int = default("n_factors"),
        n_samples: int = default("n_samples"),
        burn_in: int = default("burn_in"),
        n_chains: int = default("n_chains"),
        thin: int = default("thin"),
        max_kept_samples: int = default("max_kept_samples"),
        seed: int = default("seed"),
        rating_range: tuple[float, float] = default("rating_range"),
        warm_start: bool = default("warm_start"),
        beta0: float = default("beta0"),
        w0_scale: float = default("w0_scale"),
        bias_prior: tuple[float, float] = default("bias_prior"),
        alpha_prior: tuple[float, float] = default("alpha_prior"),
        mu_prior_precision: float = default("mu_prior_precision"),
        n_tracked: int = default("n_tracked"),
        min_ess: float | None = default("min_ess"),
        rhat_threshold: float | None = default("rhat_threshold"),
        balance_move: bool = default("balance_move"),
        shear_move: bool = default("shear_move"),
        chain_mode: str = default("chain_mode"),
        show_progress: bool = default("show_progress"),
    ):
        self.n_factors = n_factors
        self.n_samples = n_samples
        self.burn_in = burn_in
        self.n_chains = n_chains
        self.thin = thin
        self.max_kept_samples = max_kept_samples
        self.seed = seed
        self.rating_range = rating_range  # as given: scikit-learn's clone checks parameters by identity
        self.warm_start = warm_start
        self.beta0 = beta0
        self.w0_scale = w0_scale
        self.bias_prior = bias_prior  # as given (clone's identity check); read as a pair in _priors
        self.alpha_prior = alpha_prior
        self.mu_prior_precision = mu_prior_precision
        self.n_tracked = n_tracked
        self.min_ess = min_ess
        self.rhat_threshold = rhat_threshold
        self.balance_move = balance_move
        self.shear_move = shear_move
        self.chain_mode = chain_mode
        self.show_progress = show_progress

    PARAM_NAMES = tuple(MODEL_PARAMS)  # the constructor's arguments (tests/test_contracts.py checks both agree)

    def _check_params(self) -> None:
        check_params(self.get_params())

    def _priors(self, train_mean: float) -> Priors:
        # mu's prior is centred on the training mean (see mu_prior_precision in bookrec.contracts.params).
        return Priors(
            beta0=self.beta0, w0_scale=self.w0_scale, a_bias=self.bias_prior[0], b_bias=self.bias_prior[1],
            a_alpha=self.alpha_prior[0], b_alpha=self.alpha_prior[1], mu_prior_mean=train_mean,
            mu_prior_precision=self.mu_prior_precision,
        )

    def _resolved_chain_mode(self) -> str:
        # "auto" sweeps: as fast as threaded chains on sparse data and faster on dense data, where
        # threaded chains contend for the GIL in the Python-side hyperparameter and move code.
        return "sweep" if self.chain_mode == "auto" else self.chain_mode

    # ------------------------------------------------------------------------------ fit
    def fit(self, user_idx, item_idx, ratings, n_users=None, n_items=None, eval_set=None,
            callback: Callable[[int, dict], None] | None = None, eval_every: int = 10,
            map_chains: Callable[[Callable, ChainPlan, list[int]], Iterable[ChainRun]] | None = None) -> BPMF:
        """Run the chains. ``eval_set=(u, i, r)``: every ``eval_every`` post-burn-in sweeps the running
        posterior-predictive metrics on it are computed and passed to ``callback(step, metrics)``;
        an exception raised by the callback propagates (and aborts the fit).

        ``map_chains(run_chain, plan, chain_numbers)``, when given, runs each chain on its own
        (a cluster's tasks, say) and returns their :class:`~bookrec.model.chains.ChainRun`; the
        fitted model is the same as the lock-step fit's. The callback then runs after the chains."""
        self._check_params()
        self._forget_fit()
        try:
            return self._fit(user_idx, item_idx, ratings, n_users, n_items, eval_set, callback, eval_every, map_chains)
        except BaseException:
            self._forget_fit()  # an aborted fit (a callback pruning it, Ctrl-C) leaves no half-filled model
            raise

    def _forget_fit(self) -> None:
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)

    def _fit(self, user_idx, item_idx, ratings, n_users, n_items, eval_set, callback, eval_every, map_chains) -> BPMF:
        started = time.perf_counter()
        u, i, r, n_users, n_items = self._fit_inputs(user_idx, item_idx, ratings, n_users, n_items, eval_every)
        # The order of the random streams below is part of the fixed-seed result.
        seqs = np.random.SeedSequence(self.seed).spawn(self.n_chains + 1)
        data = RatingMatrix.build(u, i, r, n_users, n_items)
        priors = self._priors(float(r.mean()))
        rec = _Recording(self, u, i)
        self._allocate(rec.n_kept, n_users, n_items, self.n_factors)
        rec.eval_set = _fit_eval_set(eval_set, n_users, n_items, rec.n_kept)
        self.eval_history_ = []
        if map_chains is None:
            chains = self._start_chains(data, priors, seqs[:-1])
            mode = self._resolved_chain_mode()
            self._sample(chains, mode, rec, eval_every, callback)
        else:
            mode = "tasks"
            plan = self._plan(data, priors, tuple(seqs[:-1]), rec, eval_every)
            self._assemble(list(map_chains(run_chain, plan, list(range(self.n_chains)))), rec, eval_every, callback)
        self._finish_fit(rec, mode, n_users, n_items, int(r.size), started)
        return self

    def _plan(self, data: RatingMatrix, priors: Priors, seeds: tuple, rec: _Recording, eval_every: int) -> ChainPlan:
        ev = rec.eval_set
        return ChainPlan(
            data, priors, seeds, self.n_factors, self.burn_in, self.n_samples, rec.step, rec.kept_per_chain,
            self.warm_start, self.balance_move, self.shear_move, rec.tracked_u, rec.tracked_i,
            None if ev is None else ev[0], None if ev is None else ev[1], eval_every,
        )

    def _assemble(self, runs: list[ChainRun], rec: _Recording, eval_every: int,
                  callback: Callable[[int, dict], None] | None) -> None:
        """Each chain's run in the places the lock-step fit fills: kept draw s = j * n_chains + chain."""
        chain_count_check(runs, self.n_chains)
        n_c = self.n_chains
        ev = rec.eval_set
        for run in runs:
            c = run.chain_no
            for name, values in run.traces.items():
                rec.traces[name][c] = values
            rec.tracked_traces[c] = run.tracked
            kept = slice(c, rec.n_kept, n_c)
            for name, values in run.kept.items():
                getattr(self, f"{name}_")[kept] = values
            self.sample_chain_[kept] = c
            if ev is not None:
                ev[3][kept] = run.eval_predictions
        rec.kept = rec.n_kept
        if ev is None:
            return
        runs = sorted(runs, key=lambda run: run.chain_no)
        for step in range(eval_every, self.n_samples + 1, eval_every):
            kept_so_far = n_c * min(step // rec.step, rec.kept_per_chain)
            m = self._running_eval(ev, kept_so_far, lambda at=step: [run.early_eval[at] for run in runs])
            self.eval_history_.append({"step": step, **m})
            if callback is not None:
                callback(step, m)

    def _fit_inputs(self, user_idx, item_idx, ratings, n_users, n_items, eval_every: int):
        """The training triples as arrays, and the matrix size, checked."""
        u = _as_index("user_idx", user_idx)
        i = _as_index("item_idx", item_idx)
        r = np.asarray(ratings, dtype=np.float64).ravel()
        if not (u.shape == i.shape == r.shape):
            raise ValueError("user_idx, item_idx and ratings must have the same length")
        if r.size == 0:
            raise ValueError("no ratings to fit")
        if not np.all(np.isfinite(r)):
            raise ValueError("ratings must be finite")
        lo, hi = self.rating_range
        if r.min() < lo or r.max() > hi:
            # Allowed (a continuous latent scale may overshoot it), but every prediction is clipped to it.
            warnings.warn(f"ratings run from {r.min():g} to {r.max():g}, outside rating_range [{lo:g}, {hi:g}], to "
                          "which predictions and intervals are clipped", UserWarning, stacklevel=4)
        check_schedule(self.get_params())
        n_users = int(u.max()) + 1 if n_users is None else int(n_users)
        n_items = int(i.max()) + 1 if n_items is None else int(n_items)
        if u.max() >= n_users or i.max() >= n_items:
            raise ValueError("an index is >= n_users / n_items")
        if eval_every < 1:
            raise ValueError("eval_every must be >= 1")
        return u, i, r, n_users, n_items

    def _start_chains(self, data: RatingMatrix, priors: Priors, seqs) -> list[Chain]:
        """The chains at their starting points; shown as progress because the first fit in a process
        also compiles the kernels here, which takes minutes on a busy machine."""
        chains = []
        with _progress(self.show_progress) as progress:
            task = progress.add_task("Starting chains", total=len(seqs), stats="warm start" if self.warm_start else "")
            for seq in seqs:
                chain = Chain(data, self.n_factors, priors, seq, balance_move=self.balance_move, shear_move=self.shear_move)
                chain.initialise(self.warm_start)
                chains.append(chain)
                progress.update(task, advance=1)
        return chains

    def _sample(self, chains: list[Chain], mode: str, rec: _Recording, eval_every: int,
                callback: Callable[[int, dict], None] | None) -> None:
        """Burn-in and sampling sweeps of every chain, recording each post-burn-in sweep."""
        n_c = self.n_chains
        parallel = mode == "sweep"
        pool = ThreadPoolExecutor(max_workers=n_c) if (mode == "threads" and n_c > 1) else None
        total = self.burn_in + self.n_samples
        progress = _progress(self.show_progress)
        # The sampler's BLAS calls are tiny (k x k, or one pass over an (n, k + 1) side): a second
        # BLAS thread only spins and steals the core the other chain runs on.
        try:
            with progress, threadpool_limits(limits=1, user_api="blas"):
                task = progress.add_task("Gibbs sampling", total=total, stats="")
                for t in range(total):
                    if pool is not None:
                        list(pool.map(lambda ch: ch.sweep(parallel=False), chains))
                    else:
                        for chain in chains:
                            chain.sweep(parallel=parallel)
                    d = t - self.burn_in
                    if d >= 0:
                        self._record_sweep(chains, d, rec, eval_every, callback)
                    st0 = chains[0].state
                    progress.update(task, advance=1, stats=f"{'burn-in' if d < 0 else 'sampling'} "
                                    f"rmse={st0.train_rmse:.3f} sd={1 / math.sqrt(st0.alpha):.3f}")
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _record_sweep(self, chains: list[Chain], d: int, rec: _Recording, eval_every: int,
                      callback: Callable[[int, dict], None] | None) -> None:
        """Post-burn-in sweep ``d``: traces, tracked predictions, kept draws and the running eval."""
        for c, chain in enumerate(chains):
            for name, value in chain_summary(chain).items():
                rec.traces[name][c, d] = value
            # A few pairs: a parallel launch would cost more than the loop.
            rec.tracked_traces[c, d] = chain.predict_pairs(rec.tracked_u, rec.tracked_i, parallel=False)
        ev = rec.eval_set
        if (d + 1) % rec.step == 0 and (d + 1) // rec.step <= rec.kept_per_chain:
            for c, chain in enumerate(chains):
                self._store(rec.kept, c, chain)
                if ev is not None:
                    ev[3][rec.kept] = chain.predict_pairs(ev[0], ev[1])
                rec.kept += 1
        if ev is not None and (d + 1) % eval_every == 0:
            m = self._running_eval(ev, rec.kept, lambda: [(ch.predict_pairs(ev[0], ev[1]), ch.state.alpha)
                                                          for ch in chains])
            self.eval_history_.append({"step": d + 1, **m})
            if callback is not None:
                callback(d + 1, m)

    def _finish_fit(self, rec: _Recording, mode: str, n_users: int, n_items: int, n_train: int,
                    started: float) -> None:
        """The fitted attributes besides the draws: traces, sizes and the convergence verdict."""
        from bookrec.model.diagnostics import convergence

        self.traces_ = dict(rec.traces)
        for n in range(rec.tracked_u.size):
            self.traces_[f"pred_{n}"] = rec.tracked_traces[:, :, n]
        self.tracked_pairs_ = np.stack([rec.tracked_u, rec.tracked_i], axis=1)
        self.n_users_, self.n_items_, self.n_kept_ = n_users, n_items, rec.n_kept
        self.n_train_ = n_train
        rhat_threshold, min_ess = self._thresholds()
        self.diagnostics_ = convergence(self.traces_, rhat_threshold=rhat_threshold, min_ess=min_ess)
        self.fit_seconds_ = time.perf_counter() - started
        self.chain_mode_ = mode

    def _thresholds(self) -> tuple[float, float]:
        """(R-hat threshold, minimum ESS): the estimator's own, else the settings'
        (BOOKREC_RHAT_THRESHOLD, BOOKREC_MIN_ESS)."""
        from bookrec.config import get_settings

        settings = get_settings()
        rhat = settings.rhat_threshold if self.rhat_threshold is None else float(self.rhat_threshold)
        ess = settings.min_ess if self.min_ess is None else float(self.min_ess)
        return rhat, ess

    def _allocate(self, n_kept, n_users, n_items, k) -> None:
        f32 = np.float32
        self.mu_ = np.empty(n_kept, f32)
        self.alpha_ = np.empty(n_kept, f32)
        self.user_factors_ = np.empty((n_kept, n_users, k), f32)
        self.item_factors_ = np.empty((n_kept, n_items, k), f32)
        self.user_bias_ = np.empty((n_kept, n_users), f32)
        self.item_bias_ = np.empty((n_kept, n_items), f32)
        self.mu_user_ = np.empty((n_kept, k), f32)
        self.lambda_user_ = np.empty((n_kept, k, k), f32)
        self.mu_item_ = np.empty((n_kept, k), f32)
        self.lambda_item_ = np.empty((n_kept, k, k), f32)
        self.tau_user_bias_ = np.empty(n_kept, f32)
        self.tau_item_bias_ = np.empty(n_kept, f32)
        self.sample_chain_ = np.empty(n_kept, np.int16)

    def _store(self, s: int, chain_no: int, chain: Chain) -> None:
        for name, value in kept_draw(chain).items():
            getattr(self, f"{name}_")[s] = value
        self.sample_chain_[s] = chain_no

    def _running_eval(self, ev, kept: int, current: Callable[[], list[tuple[np.ndarray, float]]]) -> dict:
        """The running metrics on the eval set from the first ``kept`` kept draws; before the first
        one, from each chain's ``current()`` (predictions, alpha)."""
        _, _, er, preds = ev
        if kept:
            means = preds[:kept].T
            sds = 1.0 / np.sqrt(self.alpha_[:kept].astype(np.float64))
        else:
            states = current()
            means = np.stack([p for p, _ in states], axis=1)
            sds = np.array([1.0 / math.sqrt(a) for _, a in states])
        means, sds = metrics._as_2d(means, sds)
        lo, hi = self.rating_range
        point = np.clip(means.mean(axis=1), lo, hi)
        iv = metrics.interval_metrics(er, means, sds, levels=(0.9,), rating_range=self.rating_range)
        return {"rmse": metrics.rmse(er, point), "nll": metrics.mixture_nll(er, means, sds),
                "coverage90": iv["coverage"]["0.9"], "n_kept": kept}

    # ------------------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "mu_"):
            raise NotFittedError("this BPMF is not fitted yet: call fit first")

    def _pairs(self, user_idx, item_idx):
        u = _as_index("user_idx", np.atleast_1d(user_idx))
        i = _as_index("item_idx", np.atleast_1d(item_idx))
        if u.shape != i.shape:
            u, i = np.broadcast_arrays(u, i)
            u, i = np.ascontiguousarray(u), np.ascontiguousarray(i)
        if u.size and (u.max() >= self.n_users_ or i.max() >= self.n_items_):
            raise IndexError("user or item index out of range")
        return u, i

    def predictive_components(self, user_idx, item_idx) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample predictive means (n, S) and noise sds (S,): the posterior predictive mixture."""
        self._check_fitted()
        u, i = self._pairs(user_idx, item_idx)
        means = kernels.predict_samples(self.user_factors_, self.user_bias_, self.item_factors_, self.item_bias_,
                                        self.mu_.astype(np.float64), u, i)
        return means, 1.0 / np.sqrt(self.alpha_.astype(np.float64))

    def predict(self, user_idx, item_idx) -> np.ndarray:
        """Posterior predictive mean, clipped to ``rating_range``."""
        means, _ = self.predictive_components(user_idx, item_idx)
        return np.clip(means.mean(axis=1), *self.rating_range)

    def predict_interval(self, user_idx, item_idx, level: float = 0.9, chunk: int = 50_000):
        """(mean, lower, upper) of the central ``level`` interval of the posterior predictive
        (parameter uncertainty across samples plus the noise 1/alpha), clipped to ``rating_range``."""
        if not 0 < level < 1:
            raise ValueError("level must be in (0, 1)")
        self._check_fitted()
        u, i = self._pairs(user_idx, item_idx)
        out = [np.empty(u.size) for _ in range(3)]
        for start in range(0, u.size, chunk):
            sl = slice(start, start + chunk)
            means, sds = self.predictive_components(u[sl], i[sl])
            for arr, part in zip(out, metrics.mixture_interval(means, sds, level, self.rating_range)):
                arr[sl] = part
        return tuple(out)

    # ------------------------------------------------------------------------------ recommend
    def recommend(self, user: int, n: int = 10, exclude=None, rank_by: str = "mean", level: float = 0.9,
                  seed: int | None = None):
        """Top-n items for one user: (items, mean, lower, upper). ``exclude``: item indices to skip."""
        self._check_fitted()
        excl = _as_index("exclude", np.asarray([] if exclude is None else exclude).ravel())
        user = int(_as_index("user", [user])[0])
        if user >= self.n_users_:
            raise IndexError("user index out of range")
        indptr = np.zeros(self.n_users_ + 1, dtype=np.int64)
        indptr[int(user) + 1:] = excl.size
        items, mean, lower, upper = self.recommend_all(np.array([user]), n, (indptr, excl), rank_by, level, seed)
        keep = items[0] >= 0
        return items[0][keep], mean[0][keep], lower[0][keep], upper[0][keep]

    def recommend_all(self, users, n: int = 10, exclude_csr=None, rank_by: str = "mean", level: float = 0.9,
                      seed: int | None = None, n_candidates: int | None = None):
        """Top-n for many users at once (compiled, parallel over users): arrays (n_users, n) of
        items (-1 when fewer than n remain), mean, lower, upper (clipped).

        exclude_csr: a scipy CSR matrix (users x items) or an (indptr, indices) pair indexed by
        user id, e.g. each user's training items. rank_by="lower" screens candidates by
        mean - z sd of the mixture and re-ranks the best ``n_candidates`` (default 4n + 50) by
        their exact lower bounds; "sample" ranks each user by one posterior draw (Thompson).
        """
        self._check_fitted()
        if rank_by not in RANK_MODES:
            raise ValueError("rank_by must be mean, lower or sample")
        if not 0 < level < 1:
            raise ValueError("level must be in (0, 1)")
        users = _as_index("users", np.atleast_1d(users))
        if users.size and users.max() >= self.n_users_:
            raise IndexError("user index out of range")
        if int(n) < 1:
            raise ValueError("n must be at least 1")
        if n_candidates is not None and int(n_candidates) < 1:
            raise ValueError("n_candidates must be at least 1")
        indptr, indices = _exclusions(exclude_csr, self.n_users_, self.n_items_)
        z = metrics.central_z(level)
        rng = np.random.default_rng(seed)
        choice = rng.integers(0, self.mu_.shape[0], size=users.size)
        # Never fewer candidates than the list holds: the screen would leave slots empty.
        n_cand = 4 * int(n) + 50 if n_candidates is None else max(int(n), int(n_candidates))
        samples = kernels.StoredSamples(self.user_factors_, self.user_bias_, self.item_factors_, self.item_bias_,
                                        self.mu_.astype(np.float64), 1.0 / np.sqrt(self.alpha_.astype(np.float64)))
        items, mean, lower, upper = kernels.recommend_block(
            users, samples, kernels.Exclusions(indptr, indices), int(n), RANK_MODES[rank_by], z,
            np.array([(1 - level) / 2, (1 + level) / 2]), choice, n_cand,
        )
        lo, hi = self.rating_range
        return items, np.clip(mean, lo, hi), np.clip(lower, lo, hi), np.clip(upper, lo, hi)

    def similar_items(self, item: int, n: int = 10):
        """Items most similar to ``item``: cosine of factor vectors per sample -> (items, mean, sd)."""
        self._check_fitted()
        item = int(item)
        if not 0 <= item < self.n_items_:
            raise IndexError("item index out of range")
        return similar_items(unit_factors(self.item_factors_.astype(np.float64)), item, n)

    # ------------------------------------------------------------------------------ fold-in / serving
    def serving_arrays(self) -> dict[str, np.ndarray]:
        """The compact serving model (plain arrays; the batch adds item_keys / item_isbns)."""
        self._check_fitted()
        return {
            "item_factors": self.item_factors_, "item_bias": self.item_bias_, "mu": self.mu_,
            "alpha": self.alpha_, "mu_user": self.mu_user_, "lambda_user": self.lambda_user_,
            "tau_user_bias": self.tau_user_bias_, "rating_range": np.asarray(self.rating_range, dtype=np.float64),
        }

    def fold_in(self, item_idx, ratings, seed: int | None = None):
        """Exact per-sample posterior of a new reader's factors and bias from a few ratings
        (``bookrec.model.foldin.fold_in_from_arrays``). Each kept sample keeps its equal weight rather
        than being reweighted by p(new ratings | sample): exact given each sample, and only an
        approximation of the full posterior given the new ratings."""
        from bookrec.model.foldin import fold_in_from_arrays

        return fold_in_from_arrays(self.serving_arrays(), item_idx, ratings, seed=seed)

    # ------------------------------------------------------------------------------ persistence
    def save(self, path, metadata: dict | None = None):
        """Write ``<path>.npz`` and its ``.json`` manifest (sha256 of the npz). Returns both paths."""
        from bookrec.model.artifact import save_model

        return save_model(self, path, metadata)

    @classmethod
    def load(cls, path) -> BPMF:
        from bookrec.model.artifact import load_model

        return load_model(path)


def _exclusions(exclude_csr, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of the items to exclude per user, checked: the compiled ranking reads them
    without bounds checks, so a bad index would read or write outside its arrays."""
    if exclude_csr is None:
        return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if hasattr(exclude_csr, "tocsr"):
        csr = exclude_csr.tocsr()
        if csr.shape[0] > n_users or csr.shape[1] > n_items:
            raise ValueError(f"exclude_csr has shape {csr.shape}; the model has {n_users} users x {n_items} items")
        indptr, indices = csr.indptr, csr.indices
    else:
        indptr, indices = exclude_csr
    indptr = np.asarray(indptr)
    indices = _as_index("exclude_csr indices", np.asarray(indices).ravel())
    if indptr.ndim != 1 or indptr.size < 1 or not np.issubdtype(indptr.dtype, np.integer):
        raise ValueError("exclude_csr's indptr must be a one-dimensional integer array with at least one entry")
    indptr = indptr.astype(np.int64)
    if indptr.size > n_users + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.size:
        raise ValueError("exclude_csr's indptr must start at 0, never decrease, end at len(indices) and have "
                         f"at most n_users + 1 = {n_users + 1} entries")
    if indices.size and indices.max() >= n_items:
        raise ValueError(f"exclude_csr holds item index {indices.max()}; the model has {n_items} items")
    if indptr.size < n_users + 1:  # fewer rows than users: the rest exclude nothing
        indptr = np.concatenate([indptr, np.full(n_users + 1 - indptr.size, indptr[-1])])
    return indptr, indices


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bookrec.logging import progress

    # Outside a terminal: a log line every 10 s instead of a bar (see bookrec.logging.progress).
    return progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), enabled=enabled, transient=False,
    )


def tracked_pairs(user_idx: np.ndarray, item_idx: np.ndarray, seed, n_chains: int, n_tracked: int) -> np.ndarray:
    """The (user, item) rows of ``tracked_pairs_`` of a fit with this seed and chain count on these
    training pairs (in this order): drawn from the SeedSequence child that follows the chains'."""
    aux_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(n_chains + 1)[-1])
    rows = aux_rng.choice(user_idx.size, size=min(n_tracked, user_idx.size), replace=False)
    return np.stack([user_idx[rows], item_idx[rows]], axis=1)


class _Recording:
    """What a fit records while sampling: the keep plan and the kept-draw count, every chain's
    traces, the tracked pairs' predictions and, with an eval set, each kept draw's predictions."""

    def __init__(self, model: BPMF, u: np.ndarray, i: np.ndarray) -> None:
        # Keep plan: each chain keeps every `step`-th post-burn-in draw, at most max_kept in total.
        per_chain = max(1, model.max_kept_samples // model.n_chains)
        self.step = max(model.thin, math.ceil(model.n_samples / per_chain))
        self.kept_per_chain = model.n_samples // self.step
        self.n_kept = self.kept_per_chain * model.n_chains
        self.kept = 0
        self.tracked_u, self.tracked_i = tracked_pairs(u, i, model.seed, model.n_chains, model.n_tracked).T
        n_c, n_d = model.n_chains, model.n_samples
        self.traces = {name: np.empty((n_c, n_d)) for name in TRACED}
        self.tracked_traces = np.empty((n_c, n_d, self.tracked_u.size))
        self.eval_set: tuple | None = None  # (users, items, ratings, predictions of each kept draw)


def _fit_eval_set(eval_set, n_users: int, n_items: int, n_kept: int) -> tuple | None:
    if eval_set is None:
        return None
    eu, ei, er = (np.asarray(a) for a in eval_set)
    eu, ei = _as_index("eval users", eu), _as_index("eval items", ei)
    er = np.asarray(er, dtype=np.float64).ravel()
    if not (eu.shape == ei.shape == er.shape):
        raise ValueError("eval_set's users, items and ratings must have the same length")
    if not np.all(np.isfinite(er)):
        raise ValueError("eval_set's ratings must be finite")
    if eu.size and (eu.max() >= n_users or ei.max() >= n_items):
        raise ValueError("eval_set index out of range")
    return (eu, ei, er, np.empty((n_kept, eu.size), dtype=np.float32))
