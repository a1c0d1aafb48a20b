"""The convergence verdict: ArviZ's split R-hat and ESS, also for a single chain."""

from __future__ import annotations

import numpy as np

from bookrec.model.diagnostics import convergence


def test_one_chain_is_diagnosed_by_its_halves():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((1, 2_000))
    # Independent draws: split R-hat is 1 + O(1/n) (far below 1.05) and ESS is about n.
    good = convergence({"x": iid}, min_ess=100)
    assert np.isfinite(good["rhat"]["x"]) and good["rhat"]["x"] < 1.05
    assert good["converged"]
    # A level shift of one standard deviation between the halves: segment means 0, 0, 1, 1 give
    # R-hat near sqrt(1 + 1/3) = 1.15, so a drifting single chain is caught.
    drifting = iid.copy()
    drifting[0, 1_000:] += 1.0
    bad = convergence({"x": drifting}, min_ess=100)
    assert bad["rhat"]["x"] > 1.1
    assert not bad["converged"] and bad["failing"] == ["x"]


def test_two_chains_are_compared_as_they_are():
    rng = np.random.default_rng(1)
    chains = rng.standard_normal((2, 1_000))
    assert convergence({"x": chains})["rhat"]["x"] < 1.05
    chains[1] += 1.0  # one chain elsewhere: between-chain variance 1/4 against within 1
    assert convergence({"x": chains})["rhat"]["x"] > 1.1


def test_the_verdict_names_the_slowest_quantity_and_its_shortfall():
    rng = np.random.default_rng(2)
    fast = rng.standard_normal((2, 1_000))
    # An AR(1) with phi = 0.95: ESS about n (1 - phi) / (1 + phi), ~50 of 2,000 draws.
    slow = np.zeros((2, 1_000))
    for t in range(1, 1_000):
        slow[:, t] = 0.95 * slow[:, t - 1] + rng.standard_normal(2) * np.sqrt(1 - 0.95**2)
    d = convergence({"fast": fast, "slow": slow}, rhat_threshold=1.01, min_ess=400)
    assert not d["converged"] and "slow" in d["failing"] and "fast" not in d["failing"]
    assert d["slowest"]["name"] == "slow"
    ess = min(d["ess_bulk"]["slow"], d["ess_tail"]["slow"])
    assert d["slowest"]["ess"] == ess and 20 < ess < 150
    assert d["slowest"]["ess_shortfall"] == 400 / ess
    assert d["summary"].startswith("slowest slow: ESS")


def test_the_verdict_says_whether_every_traced_prediction_passes():
    rng = np.random.default_rng(3)
    fast = {f"pred_{i}": rng.standard_normal((2, 1_000)) for i in range(3)}
    slow = np.zeros((2, 1_000))
    for t in range(1, 1_000):  # AR(1), phi = 0.95: ESS far below 400
        slow[:, t] = 0.95 * slow[:, t - 1] + rng.standard_normal(2) * np.sqrt(1 - 0.95**2)
    held_back = convergence({"alpha": slow, **fast}, rhat_threshold=1.01, min_ess=400)
    assert not held_back["converged"] and held_back["failing"] == ["alpha"]
    assert held_back["predictions_pass"] is True
    one_slow_prediction = convergence({"alpha": fast["pred_0"], **fast, "pred_2": slow}, rhat_threshold=1.01, min_ess=400)
    assert one_slow_prediction["predictions_pass"] is False
    assert convergence({"alpha": slow})["predictions_pass"] is None
