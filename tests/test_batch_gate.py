"""The publish gate: a worse model is refused with its reasons, the serving version stays, and
``force`` publishes anyway with the verdict in the meta."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from bookrec.batch.gate import GATE_SE, PublishRefused, converged_check, nll_check, recall_check
from bookrec.batch.pipeline import run_batch
from bookrec.config import Settings
from bookrec.data.io import write_dataset
from bookrec.data.synth import generate
from bookrec.store import open_store


def test_nll_check_refuses_a_clearly_worse_model_and_passes_an_equal_one():
    rng = np.random.default_rng(0)
    baseline = rng.normal(-2.0, 0.5, 4000)
    worse = baseline - 0.1 + rng.normal(0, 0.2, 4000)  # 0.1 nats worse, se ~0.003
    equal = baseline + rng.normal(0, 0.2, 4000)
    refused = nll_check(worse, baseline)
    assert not refused["passed"] and refused["nll_gap"] > GATE_SE * refused["se"]
    assert nll_check(equal, baseline)["passed"]
    assert nll_check(baseline + 0.1, baseline)["passed"]  # better is never refused


def test_a_passed_check_says_which_way_the_model_differs():
    rng = np.random.default_rng(1)
    baseline = rng.normal(-2.0, 0.5, 4000)
    better = nll_check(baseline + 0.05 + rng.normal(0, 0.2, 4000), baseline)
    assert better["passed"] and better["reason"] == f"validation NLL better than the bias baseline's by {-better['nll_gap']:.4f}"
    slightly_worse = nll_check(baseline - 0.001 + rng.normal(0, 0.2, 4000), baseline)
    assert slightly_worse["passed"] and "worse" in slightly_worse["reason"] and "allowed" in slightly_worse["reason"]
    assert "-" not in better["reason"]  # no negative "worse by"


def test_recall_check_pairs_readers_and_skips_other_data():
    readers = list(range(500))
    rng = np.random.default_rng(1)
    before = rng.random(500).round(3).tolist()
    previous = {"fingerprint": "a", "readers": readers, "recall@10": before}
    same = recall_check({"fingerprint": "a", "readers": readers[::-1], "recall@10": before[::-1]}, previous)
    assert same["passed"] and not same["skipped"] and same["recall_drop"] == pytest.approx(0.0)
    dropped = recall_check({"fingerprint": "a", "readers": readers, "recall@10": [max(x - 0.2, 0) for x in before]}, previous)
    assert not dropped["passed"] and dropped["n"] == 500
    other = recall_check({"fingerprint": "b", "readers": readers, "recall@10": [0.0] * 500}, previous)
    assert other["passed"] and other["skipped"]
    assert recall_check({"fingerprint": "a", "readers": readers, "recall@10": before}, None)["skipped"]


def test_converged_check_only_refuses_when_required():
    assert converged_check({"converged": False}, required=False)["passed"]
    assert not converged_check({"converged": False, "summary": "x"}, required=True)["passed"]
    assert converged_check({"converged": True}, required=True)["passed"]


def test_converged_check_reason_says_which_way_it_went():
    passed = converged_check({"converged": True, "summary": "slowest alpha: ESS 900"}, required=True)
    failed = converged_check({"converged": False, "summary": "slowest alpha: ESS 90"}, required=False)
    assert passed["reason"] == "the chains converged (slowest alpha: ESS 900)"
    assert failed["reason"] == "the chains did not converge (slowest alpha: ESS 90)"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate-data")
    write_dataset(generate("small", seed=5).dataset, out)
    return out


def settings(tmp_path, **kw) -> Settings:
    # Long enough that the model clearly beats the bias baseline (a few dozen sweeps sit at its level).
    return Settings(n_samples=100, burn_in=100, max_kept_samples=20, n_chains=2, top_n=10,
                    tuned_config_path=tmp_path / "absent.json", seed=4, **kw)


@pytest.fixture(scope="module")
def store_with_first(data_dir, tmp_path_factory):
    """A store holding one published version (the gate had nothing to compare it with)."""
    tmp = tmp_path_factory.mktemp("gate-store")
    url = f"sqlite:///{tmp}/store.sqlite3"
    first = run_batch(settings(tmp), data_dir, url, "development", show_progress=False)
    return url, tmp, first


def test_the_first_run_has_nothing_to_compare_and_passes_on_nll(store_with_first):
    _, _, first = store_with_first
    checks = first.meta["publish_gate"]["checks"]
    assert checks["recall"]["skipped"] and checks["nll"]["passed"]
    assert np.isfinite(checks["nll"]["nll_gap"]) and checks["nll"]["n"] > 100


def test_a_second_run_on_the_same_data_is_compared_and_published(data_dir, store_with_first):
    url, tmp, _ = store_with_first
    second = run_batch(settings(tmp), data_dir, url, "development", show_progress=False)
    recall = second.meta["publish_gate"]["checks"]["recall"]
    assert not recall["skipped"] and recall["passed"] and recall["n"] > 100
    assert recall["recall_drop"] == pytest.approx(0.0, abs=1e-9)  # same seed, same data: the same lists


def test_an_unconverged_model_is_refused_when_required_and_forced_through(data_dir, store_with_first):
    url, tmp, _ = store_with_first
    with open_store(url) as store:
        serving = store.current_version()
    strict = settings(tmp, require_converged=True)
    with pytest.raises(PublishRefused, match="did not converge"):
        run_batch(strict, data_dir, url, "development", show_progress=False)
    with open_store(url) as store:
        assert store.current_version() == serving  # the previous version keeps serving
    forced = run_batch(strict, data_dir, url, "development", show_progress=False, force=True)
    with open_store(url) as store:
        assert store.current_version() == forced.version
        gate = orjson.loads(store.get_blob("meta"))["publish_gate"]
    assert gate["forced"] and not gate["passed"] and not gate["checks"]["converged"]["passed"]


def _per_reader(recall: list[float]) -> dict:
    return {"fingerprint": "a", "readers": list(range(len(recall))), "recall@10": recall}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_version_published_while_the_batch_ran_is_compared_under_the_publish_lock(backend, tmp_path_factory, redis_server):
    """Two batches at once: the gate of the second compared against what served when it started
    (nothing), but a better version was published meanwhile. Under the lock it is compared again."""
    from functools import partial

    from bookrec.batch.pipeline import gate_again, publish
    from tests.support.publish import fresh_store_url

    url = fresh_store_url(backend, redis_server, tmp_path_factory, "race")
    good = [0.3] * 200
    with open_store(url) as store:
        first, _ = publish(store, [], [], {"meta": lambda v: orjson.dumps({"version": v, "ranking": {"per_reader": _per_reader(good)}})})
        worse = {"ranking": {"per_reader": _per_reader([0.1] * 200)}, "publish_gate": {"passed": True, "forced": False, "checks": {}}}
        with pytest.raises(PublishRefused, match="published while this batch ran"):
            publish(store, [], [], {"meta": b"{}"}, partial(gate_again, evaluation=worse, previous_meta=None, force=False))
        assert store.current_version() == first
        assert worse["publish_gate"]["checks"]["recall"]["against_version"] == first
        forced, _ = publish(store, [], [], {"meta": b"{}"}, partial(gate_again, evaluation=worse, previous_meta=None, force=True))
        assert store.current_version() == forced and not worse["publish_gate"]["passed"]
        # unchanged serving version: nothing to compare again
        same = {"ranking": {"per_reader": _per_reader([0.0] * 200)}}
        publish(store, [], [], {"meta": b"{}"}, partial(gate_again, evaluation=same, previous_meta={"version": forced}, force=False))
        assert "publish_gate" not in same
