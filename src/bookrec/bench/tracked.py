"""The tracked predictions of `bookrec bench model`: every model follows the same (reader, work) pairs
that BPMF traces, every post-burn-in sweep, and is judged by their ESS per second.

BPMF chooses its tracked pairs from the training ratings with the SeedSequence child that follows
its chains' (``bookrec.model.bpmf.tracked_pairs``), so a fit with one chain and one with two follow
different pairs. The peers run one chain and follow both sets: their figures on the pairs of
`bookrec` (2 chains) stand beside that row's, and on the pairs of `bookrec-1chain` beside that one's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from dataclasses import dataclass

import numpy as np

from bookrec.contracts.params import default
from bookrec.model import bpmf
from bookrec.model.diagnostics import convergence

# Our rows whose tracked pairs the peers follow, and the chain count each fits with.
PAIR_OWNERS = {"bookrec": 2, "bookrec-1chain": 1}

# ESS per second against the sampler without its moves is judged on these traced quantities, so
# that the scale quantities' near-zero ESS without the moves does not make the ratio trivial.
LEGACY_TRACES = ("alpha", "mu", "train_rmse")


def tracked_pairs(user_idx, item_idx, seed: int, n_chains: int, n_tracked: int = default("n_tracked")) -> np.ndarray:
    """The (user, item) rows of ``tracked_pairs_`` of a BPMF fitted with this seed and chain count on
    these training pairs (in this order), without fitting: the same draw from the same stream."""
    return bpmf.tracked_pairs(np.asarray(user_idx, dtype=np.int64), np.asarray(item_idx, dtype=np.int64), seed,
                              n_chains, n_tracked)


def bench_pairs(d: dict, seed: int) -> dict[str, np.ndarray]:
    """The tracked pairs of each of our rows in PAIR_OWNERS, on the bench's training split ``d``."""
    return {owner: tracked_pairs(d["tr_u"], d["tr_i"], seed, n_chains) for owner, n_chains in PAIR_OWNERS.items()}


def union_of(pair_sets: dict[str, np.ndarray]) -> np.ndarray:
    """Every pair of the sets once (the two sets may share pairs), sorted."""
    return np.unique(np.concatenate(list(pair_sets.values())), axis=0)


def columns_of(pairs: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Where each row of ``pairs`` sits in ``among``."""
    where = {(int(u), int(i)): n for n, (u, i) in enumerate(among)}
    return np.array([where[(int(u), int(i))] for u, i in pairs], dtype=np.int64)


@dataclass
class PeerTrace:
    """What a peer's fit recorded of the tracked pairs."""

    pairs: np.ndarray  # (n_pairs, 2): reader, work
    predictions: np.ndarray  # (n_samples, n_pairs): each post-burn-in sweep's prediction of each pair
    scalars: dict[str, np.ndarray]  # per-sweep "alpha" and "mu" where the peer exposes them
    posterior_mean: np.ndarray  # the peer's own posterior-mean prediction of each pair
    kept_sweeps: int  # how many of the last sweeps the peer's own mean averages


def ess_per_second(diagnostics: dict, seconds: float, groups=("all", "legacy", "predictions")) -> dict:
    """Effective samples per second of the fit: min over a set of traced quantities of min(bulk, tail)
    ESS, divided by the fit's time. "all": every traced quantity; "legacy": those of alpha, mu and
    the train RMSE that are traced, and the tracked predictions; "predictions": the tracked
    predictions alone."""
    ess = {n: min(diagnostics["ess_bulk"][n], diagnostics["ess_tail"][n]) for n in diagnostics["ess_bulk"]}
    preds = [n for n in ess if n.startswith("pred_")]
    members = {"all": list(ess), "legacy": [n for n in LEGACY_TRACES if n in ess] + preds, "predictions": preds}
    out = {}
    for label in groups:
        worst = min(members[label], key=lambda n: ess[n])
        out[label] = {"min_ess": ess[worst], "slowest": worst, "per_second": ess[worst] / seconds}
    return out


def peer_ess(trace: PeerTrace, pair_sets: dict[str, np.ndarray], wall: float, cpu: float) -> dict:
    """For each owner's pairs, the peer's ESS per wall and per CPU second, diagnosed as our one-chain
    fit is (``convergence`` on the chain's two halves). ``pred_n`` is the owner's n-th tracked pair,
    as in its ``traces_``. "legacy" only where the peer exposes its noise precision alpha."""
    groups = ("legacy", "predictions") if "alpha" in trace.scalars else ("predictions",)
    out = {}
    for owner, pairs in pair_sets.items():
        cols = columns_of(pairs, trace.pairs)
        traces = {f"pred_{n}": trace.predictions[None, :, col] for n, col in enumerate(cols)}
        traces.update({name: values[None, :] for name, values in trace.scalars.items()})
        diagnostics = convergence(traces)
        out[owner] = {"ess": ess_per_second(diagnostics, wall, groups),
                      "cpu_ess": ess_per_second(diagnostics, cpu, groups)}
    return out


def import_myfm():
    """myfm 0.4.0's ``__init__`` imports ``pkg_resources`` (and never uses it), which the locked
    setuptools no longer ships: a stand-in serves that one import and is removed again."""
    stand_in = None
    if importlib.util.find_spec("pkg_resources") is None:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.DistributionNotFound = importlib.metadata.PackageNotFoundError
        stand_in.get_distribution = importlib.metadata.distribution
        sys.modules["pkg_resources"] = stand_in
    try:
        import myfm
    finally:
        if stand_in is not None:
            del sys.modules["pkg_resources"]
    return myfm


class MyfmTracer:
    """myfm's fit callback. myfm keeps only its last ``n_kept_samples`` draws, so the tracked pairs'
    predictions w0 + w_u + w_i + <V_u, V_i>, alpha and w0 (its global intercept, our mu) are read
    off the sampler's state after every post-burn-in sweep."""

    def __init__(self, pairs: np.ndarray, n_users: int, burn_in: int, n_samples: int) -> None:
        self.users, self.items = pairs[:, 0], n_users + pairs[:, 1]  # one-hot columns: users, then items
        self.burn_in = burn_in
        self.predictions = np.empty((n_samples, len(pairs)))
        self.alpha = np.empty(n_samples)
        self.mu = np.empty(n_samples)
        self.seen = 0

    def __call__(self, iteration: int, fm, hyper, _history) -> tuple[bool, None]:
        d = iteration - self.burn_in
        if d >= 0:
            w, v = fm.w, fm.V
            self.predictions[d] = (fm.w0 + w[self.users] + w[self.items]
                                   + np.einsum("pk,pk->p", v[self.users], v[self.items]))
            self.alpha[d], self.mu[d] = hyper.alpha, fm.w0
            self.seen += 1
        return False, None  # (stop?, progress message)

    def trace(self, pairs: np.ndarray, posterior_mean: np.ndarray, kept_sweeps: int) -> PeerTrace:
        if self.seen != len(self.predictions):
            raise RuntimeError(f"myfm called back after {self.seen} of {len(self.predictions)} post-burn-in sweeps")
        return PeerTrace(pairs, self.predictions, {"alpha": self.alpha, "mu": self.mu}, posterior_mean, kept_sweeps)


def smurff_test_points(d: dict, pairs: np.ndarray, centre: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points smurff predicts at every sweep: the test ratings and the tracked training pairs
    (with their ratings), centred. smurff keeps each test point's prediction of every post-burn-in
    sweep (``pred_all``), so tracing the pairs costs smurff a few dozen predictions per sweep; its
    test figures are read off the test ratings' points alone."""
    n_items = int(d["n_items"])
    train_keys = d["tr_u"].astype(np.int64) * n_items + d["tr_i"]
    order = np.argsort(train_keys)
    rows = order[np.searchsorted(train_keys, pairs[:, 0] * n_items + pairs[:, 1], sorter=order)]
    u = np.concatenate([d["te_u"], pairs[:, 0]])
    i = np.concatenate([d["te_i"], pairs[:, 1]])
    r = np.concatenate([d["te_r"], d["tr_r"][rows]]).astype(np.float64)
    return u, i, r - centre


def smurff_trace(predictions, pairs: np.ndarray, centre: float) -> PeerTrace:
    """The tracked pairs' per-sweep predictions out of smurff's test predictions, uncentred."""
    by_coords = {p.coords: p for p in predictions}
    items = [by_coords[(int(a), int(b))] for a, b in pairs]
    per_sweep = np.array([p.pred_all for p in items], dtype=np.float64).T + centre
    own_mean = np.array([p.pred_avg for p in items]) + centre
    return PeerTrace(pairs, per_sweep, {}, own_mean, int(items[0].nsamples))
