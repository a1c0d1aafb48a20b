"""One chain of a fit, run on its own: the unit a cluster runs as a task.

``BPMF.fit(map_chains=...)`` hands :func:`run_chain` and a :class:`ChainPlan` to the caller's
map (a Dask client, say) and assembles the :class:`ChainRun` of every chain exactly as the
lock-step fit records them. A chain's random stream is its own ``SeedSequence`` child, chosen by
chain number, so where a chain runs never changes its draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from bookrec.model.sampler import Chain, Priors, RatingMatrix

def kept_draw(chain: Chain) -> dict[str, np.ndarray | float]:
    """The fields of one kept draw, read off the chain's current state; BPMF stores each as its
    attribute of the same name plus "_"."""
    st = chain.state
    k = chain.k
    return {
        "mu": st.mu, "alpha": st.alpha,
        "user_factors": st.users[:, :k], "user_bias": st.users[:, k],
        "item_factors": st.items[:, :k], "item_bias": st.items[:, k],
        "mu_user": st.mu_user, "lambda_user": st.lambda_user, "tau_user_bias": st.tau_user_bias,
        "mu_item": st.mu_item, "lambda_item": st.lambda_item, "tau_item_bias": st.tau_item_bias,
    }


def chain_summary(chain: Chain) -> dict[str, float]:
    """The traced quantities of a chain's current state. ||U|| is the Frobenius norm of the factors,
    read off the tracked side moments (the trace of the factor block of X^T X): no pass over the rows."""
    st = chain.state
    k = chain.k
    out = {"alpha": st.alpha, "mu": st.mu, "train_rmse": st.train_rmse}
    for side, label in (("users", "U"), ("items", "V")):
        _, _, gram = chain.moments[side]
        out[f"log_norm_{label}"] = 0.5 * math.log(max(float(np.trace(gram[:k, :k])), 1e-300))
    out["log_det_Lambda_U"] = float(np.linalg.slogdet(st.lambda_user)[1])
    out["log_det_Lambda_V"] = float(np.linalg.slogdet(st.lambda_item)[1])
    return out


@dataclass(frozen=True)
class ChainPlan:
    """What every chain of one fit shares: the data, the priors, the sweeps and what to record."""

    data: RatingMatrix
    priors: Priors
    seeds: tuple[np.random.SeedSequence, ...]  # one per chain
    n_factors: int
    burn_in: int
    n_samples: int
    step: int  # every step-th post-burn-in draw is kept ...
    kept_per_chain: int  # ... this many times
    warm_start: bool
    balance_move: bool
    shear_move: bool
    tracked_u: np.ndarray
    tracked_i: np.ndarray
    eval_u: np.ndarray | None  # the eval set's pairs (predicted at every kept draw), or None
    eval_i: np.ndarray | None
    eval_every: int


@dataclass
class ChainRun:
    """Everything one chain recorded after burn-in."""

    chain_no: int
    traces: dict[str, np.ndarray]  # name -> (n_samples,)
    tracked: np.ndarray  # (n_samples, n_tracked): the tracked pairs' predictions
    kept: dict[str, np.ndarray]  # kept_draw's fields -> (kept_per_chain, ...) float32
    eval_predictions: np.ndarray | None  # (kept_per_chain, n_eval) float32
    # Before the first kept draw, the running evaluation uses each chain's current state:
    # eval step -> (predictions, alpha).
    early_eval: dict[int, tuple[np.ndarray, float]]

    @property
    def nbytes(self) -> int:
        arrays = [*self.traces.values(), self.tracked, *self.kept.values()]
        if self.eval_predictions is not None:
            arrays.append(self.eval_predictions)
        return int(sum(a.nbytes for a in arrays))


def run_chain(plan: ChainPlan, chain_no: int) -> ChainRun:
    """Burn-in and sampling sweeps of chain ``chain_no``, recording what the lock-step fit records."""
    chain = Chain(plan.data, plan.n_factors, plan.priors, plan.seeds[chain_no], balance_move=plan.balance_move,
                  shear_move=plan.shear_move)
    chain.initialise(plan.warm_start)
    n_d = plan.n_samples
    traces: dict[str, np.ndarray] = {}
    tracked = np.empty((n_d, plan.tracked_u.size))
    kept: dict[str, np.ndarray] = {}
    has_eval = plan.eval_u is not None
    eval_predictions = np.empty((plan.kept_per_chain, plan.eval_u.size), np.float32) if has_eval else None
    early_eval: dict[int, tuple[np.ndarray, float]] = {}
    with threadpool_limits(limits=1, user_api="blas"):  # the same BLAS setting as the lock-step fit
        for t in range(plan.burn_in + n_d):
            chain.sweep(parallel=True)
            d = t - plan.burn_in
            if d < 0:
                continue
            for name, value in chain_summary(chain).items():
                traces.setdefault(name, np.empty(n_d))[d] = value
            tracked[d] = chain.predict_pairs(plan.tracked_u, plan.tracked_i, parallel=False)
            j = (d + 1) // plan.step
            if (d + 1) % plan.step == 0 and j <= plan.kept_per_chain:
                _keep(kept, j - 1, plan.kept_per_chain, kept_draw(chain))
                if has_eval:
                    eval_predictions[j - 1] = chain.predict_pairs(plan.eval_u, plan.eval_i)
            if has_eval and min(j, plan.kept_per_chain) == 0 and (d + 1) % plan.eval_every == 0:
                early_eval[d + 1] = (chain.predict_pairs(plan.eval_u, plan.eval_i), float(chain.state.alpha))
    return ChainRun(chain_no, traces, tracked, kept, eval_predictions, early_eval)


def _keep(kept: dict[str, np.ndarray], j: int, n: int, draw: dict) -> None:
    for name, value in draw.items():
        value = np.asarray(value)
        if name not in kept:
            kept[name] = np.empty((n, *value.shape), np.float32)
        kept[name][j] = value


def chain_count_check(runs: list[ChainRun], n_chains: int) -> None:
    got = sorted(run.chain_no for run in runs)
    if got != list(range(n_chains)):
        raise RuntimeError(f"expected the runs of chains 0..{n_chains - 1}, got {got}")

