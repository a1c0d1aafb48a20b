"""`bookrec bench model`: every model follows the tracked pairs BPMF traces, the peers at every
post-burn-in sweep, and their ESS figures are computed as our model's are.

The peers (myfm, smurff) are in the test lock: these tests require them."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings

import numpy as np
import pytest

from bookrec.bench.model import _fit_myfm, _fit_smurff, _print_set, _run_bookrec, _with_peer_ess, with_per_iteration
from bookrec.bench.tracked import PAIR_OWNERS, bench_pairs, union_of

SEED, K, BURN_IN, N_SAMPLES = 11, 2, 50, 150
# A Gibbs chain's ESS above twice its draws would mean strongly antithetic draws: a wrong ESS.
MAX_ESS_PER_DRAW = 2.0


def tiny_split(seed: int = 5, n_users: int = 40, n_items: int = 30, n: int = 520, n_test: int = 60) -> dict:
    """A rank-2 rating matrix with biases and noise on 1..10, split into train and test in the layout of
    ``prepare_sets``."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(n_users * n_items, size=n, replace=False)
    u, i = cells // n_items, cells % n_items
    a, b = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    signal = 6 + rng.normal(0, 0.7, n_users)[u] + rng.normal(0, 0.7, n_items)[i] + (a[u] * b[i]).sum(axis=1)
    r = np.clip(np.round(signal + rng.normal(0, 1, n)), 1, 10).astype(np.float32)
    test = np.zeros(n, dtype=bool)
    test[rng.choice(n, n_test, replace=False)] = True
    return {"tr_u": u[~test], "tr_i": i[~test], "tr_r": r[~test], "te_u": u[test], "te_i": i[test], "te_r": r[test],
            "n_users": np.int64(n_users), "n_items": np.int64(n_items)}


@pytest.fixture(scope="module")
def data() -> dict:
    return tiny_split()


@pytest.fixture(scope="module")
def peer_fits(data) -> dict:
    # One thread: smurff's draws repeat only then.
    return {"myfm": _fit_myfm(data, K, BURN_IN, N_SAMPLES, SEED),
            "smurff": _fit_smurff(data, K, BURN_IN, N_SAMPLES, SEED, threads=1)}


@contextlib.contextmanager
def one_numba_thread():
    """Our sampler on one numba thread: on a busy machine each parallel sweep of this tiny set would
    wait for a second thread's time slice, for no gain."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


@pytest.fixture(scope="module")
def our_runs(data) -> dict:
    """Our runner's figures for each of our rows the peers follow, each run once, when first asked for."""
    runs = {}

    def run(owner: str) -> dict:
        if owner not in runs:
            with one_numba_thread():
                runs[owner] = _run_bookrec(data, K, BURN_IN, N_SAMPLES, SEED, n_chains=PAIR_OWNERS[owner])
        return runs[owner]

    return run


def _ess(trace: np.ndarray, method: str = "bulk") -> float:
    """ArviZ's ESS of one chain, split into its halves as ``convergence`` splits it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        half = trace.size // 2
        return float(az.ess(np.stack([trace[:half], trace[half:2 * half]]), method=method))


def test_the_bench_pairs_are_the_pairs_bpmf_tracks(data):
    from bookrec.model import BPMF

    pairs = bench_pairs(data, SEED)
    for owner, n_chains in PAIR_OWNERS.items():
        model = BPMF(n_factors=K, burn_in=1, n_samples=4, seed=SEED, n_chains=n_chains, show_progress=False)
        with one_numba_thread():
            model.fit(data["tr_u"], data["tr_i"], data["tr_r"], int(data["n_users"]), int(data["n_items"]))
        np.testing.assert_array_equal(pairs[owner], model.tracked_pairs_)
    # The chain count changes BPMF's choice: why the peers follow both sets.
    assert not np.array_equal(pairs["bookrec"], pairs["bookrec-1chain"])


@pytest.mark.parametrize("peer", ["myfm", "smurff"])
def test_a_peer_traces_each_tracked_pair_at_every_post_burn_in_sweep(peer, peer_fits, data):
    _, trace = peer_fits[peer]
    np.testing.assert_array_equal(trace.pairs, union_of(bench_pairs(data, SEED)))
    assert trace.predictions.shape == (N_SAMPLES, len(trace.pairs))
    assert np.all(np.isfinite(trace.predictions))
    assert np.all(np.diff(trace.predictions, axis=0) != 0), "a sweep repeated the previous one's predictions"
    for name, values in trace.scalars.items():
        assert values.shape == (N_SAMPLES,), name
    assert set(trace.scalars) == ({"alpha", "mu"} if peer == "myfm" else set())


@pytest.mark.parametrize("peer", ["myfm", "smurff"])
def test_a_peers_traced_predictions_are_the_draws_of_its_own_posterior_mean(peer, peer_fits, data):
    _, trace = peer_fits[peer]
    predictions = trace.predictions
    # The peer's own mean averages its last kept draws: exactly the traced sweeps' mean there ...
    np.testing.assert_allclose(predictions[-trace.kept_sweeps:].mean(axis=0), trace.posterior_mean, rtol=0, atol=1e-9)
    # ... and the whole trace's mean agrees within its Monte-Carlo error.
    ess = np.array([_ess(predictions[:, n]) for n in range(predictions.shape[1])])
    mc_error = predictions.std(axis=0) / np.sqrt(ess)
    assert np.all(np.abs(predictions.mean(axis=0) - trace.posterior_mean) <= 4 * mc_error + 1e-9)
    # They predict those training pairs: far closer to their ratings than the training mean is.
    rating = {(int(u), int(i)): float(r) for u, i, r in zip(data["tr_u"], data["tr_i"], data["tr_r"])}
    y = np.array([rating[(int(u), int(i))] for u, i in trace.pairs])
    fitted = np.sqrt(np.mean((predictions.mean(axis=0) - y) ** 2))
    assert fitted < 0.7 * np.sqrt(np.mean((y - data["tr_r"].mean()) ** 2))


def _check_ess_groups(ess: dict, cpu_ess: dict, groups: set[str], draws: int, seconds: tuple[float, float]) -> None:
    assert set(ess) == set(cpu_ess) == groups
    for group in groups:
        figures = ess[group]
        assert 0 < figures["min_ess"] <= MAX_ESS_PER_DRAW * draws, (group, figures)
        assert math.isfinite(figures["per_second"]) and figures["per_second"] > 0
        assert figures["per_second"] == pytest.approx(figures["min_ess"] / seconds[0])
        assert cpu_ess[group]["min_ess"] == figures["min_ess"]
        assert cpu_ess[group]["per_second"] == pytest.approx(figures["min_ess"] / seconds[1])


@pytest.mark.parametrize("peer", ["myfm", "smurff"])
def test_a_peers_ess_is_on_the_pairs_of_each_of_our_rows(peer, peer_fits, data):
    result, trace = peer_fits[peer]
    out = _with_peer_ess((dict(result), trace), data, SEED)
    assert out["ess_draws"] == N_SAMPLES
    groups = {"legacy", "predictions"} if peer == "myfm" else {"predictions"}
    for owner, pairs in bench_pairs(data, SEED).items():
        figures = out["ess_by_pairs"][owner]
        _check_ess_groups(figures["ess"], figures["cpu_ess"], groups, N_SAMPLES,
                          (result["fit_seconds"], result["cpu_seconds"]))
        # pred_n is the owner's n-th pair, as in its traces_: the figures are that pair's trace's.
        columns = [next(c for c, traced in enumerate(trace.pairs) if tuple(traced) == tuple(pair)) for pair in pairs]
        per_pair = [min(_ess(trace.predictions[:, c]), _ess(trace.predictions[:, c], "tail")) for c in columns]
        slowest = figures["ess"]["predictions"]["slowest"]
        assert figures["ess"]["predictions"]["min_ess"] == pytest.approx(min(per_pair))
        assert per_pair[int(slowest.removeprefix("pred_"))] == pytest.approx(min(per_pair))


@pytest.mark.parametrize("owner", list(PAIR_OWNERS))
def test_our_runs_track_the_peers_pairs_and_report_their_ess(owner, our_runs):
    run = our_runs(owner)
    assert run["pairs_as_peers"]
    assert run["ess_draws"] == PAIR_OWNERS[owner] * N_SAMPLES
    _check_ess_groups(run["ess"], run["cpu_ess"], {"all", "legacy", "predictions"}, run["ess_draws"],
                      (run["fit_seconds"], run["cpu_seconds"]))


def test_the_table_and_the_json_carry_the_peers_prediction_ess(peer_fits, our_runs, data):
    from rich.console import Console

    rows = {owner: with_per_iteration(dict(our_runs(owner)), BURN_IN + N_SAMPLES) for owner in PAIR_OWNERS}
    for peer, (result, trace) in peer_fits.items():
        rows[peer] = with_per_iteration(_with_peer_ess((dict(result), trace), data, SEED), BURN_IN + N_SAMPLES)
    for r in rows.values():
        r["peak_mb"] = 1.0
    rows = json.loads(json.dumps(rows))  # what `--json` prints, and what the child process hands back
    block = {"results": rows, "n_users": int(data["n_users"]), "n_items": int(data["n_items"]),
             "n_train": len(data["tr_r"]), "n_test": len(data["te_r"])}
    console = Console(file=io.StringIO(), width=400, record=True)
    _print_set(console, "tiny", block, ("myfm", "smurff"), K, BURN_IN, N_SAMPLES)
    text = console.export_text()
    lines = [line.strip() for line in text.splitlines()]
    for owner in PAIR_OWNERS:
        line = next(line for line in lines if line.startswith(f"prediction ESS on the pairs {owner} "))
        for name in (owner, "myfm", "smurff"):
            figures = rows[name]["ess"] if name == owner else rows[name]["ess_by_pairs"][owner]["ess"]
            assert f"{name} {figures['predictions']['per_second']:.2f}/s" in line
    # The peer's row of the table: its figures on the pairs of bookrec (2 chains).
    table_row = next(line for line in lines if line.startswith("│ myfm "))
    on_ours = rows["myfm"]["ess_by_pairs"]["bookrec"]["ess"]
    assert f"{on_ours['predictions']['per_second']:.3g}" in table_row
    assert f"{on_ours['legacy']['per_second']:.3g}" in table_row
    for peer in ("myfm", "smurff"):
        versus = next(line for line in lines if line.startswith(f"vs {peer}:"))
        for owner, n_chains in PAIR_OWNERS.items():
            ratio = (rows[owner]["ess"]["predictions"]["per_second"]
                     / rows[peer]["ess_by_pairs"][owner]["ess"]["predictions"]["per_second"])
            assert f"{n_chains} chain{'s' if n_chains > 1 else ''} {ratio:.2f}" in versus
