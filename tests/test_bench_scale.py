"""`bookrec bench scale`'s pure parts on made-up figures: the per-run figures and the projection
(no batch runs here)."""

from __future__ import annotations

from bookrec.bench.scale import SCHEDULE_SECONDS, add_ratios, project, run_figures

SUMMARY = {"version": "v1", "readers": 1_000, "readers_with_recommendations": 900,
           "stage_seconds": {"load": 1.0, "prepare": 2.0, "train": 30.0, "relevance": 1.0, "evaluate": 2.0,
                             "precompute": 10.0, "publish": 4.0, "encode (within publish)": 3.0}}
META = {
    "dataset": {"ratings": 100_000, "books": 2_000, "users": 1_000, "train": 40_000, "core_users": 500, "core_books": 800},
    "burn_in": 300, "n_samples": 3_500, "n_chains": 2,
    "engine": {"name": "dask", "workers": 2, "tasks": {"chains": 2, "shards": 8},
               "bytes_to_workers": {"chains": 1_000_000}, "bytes_from_workers": {"shards": 500_000},
               "peak_rss_bytes": {"train": {"driver": 300e6, "worker tcp://a": 200e6, "worker tcp://b": 250e6},
                                  "precompute": {"driver": 400e6, "worker tcp://a": 350e6, "worker tcp://b": 260e6}}},
}
STORED = {"version": "v1", "users": 900, "bytes": 9_000_000}


def measured(workers: int = 2, scale: float = 1.0) -> dict:
    summary = {**SUMMARY, "stage_seconds": {k: v * scale for k, v in SUMMARY["stage_seconds"].items()}}
    return {"data_preset": "xl", "workers": workers, "threads_per_worker": 1,
            **run_figures(summary, META, STORED, 60.0 * scale, {"driver": 410e6, "worker_max": 360e6})}


def test_run_figures_from_a_summary_and_a_meta():
    run = measured()
    assert run["ratings"] == 100_000 and run["train_ratings"] == 40_000 and run["sweeps"] == 3_800
    assert run["wall_per_rating_us"] == 600.0 and run["wall_per_reader_ms"] == 60.0
    assert run["peak_rss_bytes"]["precompute"] == {"driver": 400e6, "worker_max": 350e6}
    assert run["stored_bytes_per_reader"] == 10_000
    assert run["bytes_to_workers"] == {"chains": 1_000_000}


def test_ratio_to_the_one_process_run_of_the_same_data():
    runs = [measured(workers=0), measured(workers=2, scale=1.2), {"data_preset": "xl", "workers": 1, "error": "exit 1"}]
    add_ratios(runs)
    assert runs[0]["wall_per_rating_vs_one_process"] == 1.0
    assert abs(runs[1]["wall_per_rating_vs_one_process"] - 1.2) < 1e-9
    assert runs[2]["wall_per_rating_vs_one_process"] is None


def test_projection_shrinks_with_workers_but_train_stops_at_one_chain_per_worker():
    p = project(measured())
    by = {int(w): f["stage_seconds"] for w, f in p["by_workers"].items()}
    assert by[1]["precompute"] > by[2]["precompute"] > by[4]["precompute"] > by[8]["precompute"]
    assert by[1]["train"] == 2 * by[2]["train"] and by[2]["train"] == by[4]["train"] == by[8]["train"]
    assert by[1]["load"] == by[8]["load"]  # on the driver
    assert "encode (within publish)" not in by[1]
    totals = [f["total_seconds"] for f in p["by_workers"].values()]
    assert totals == sorted(totals, reverse=True)
    assert p["worker_peak_bytes"] == 350e6 * 2_290 and p["store_bytes"] == 10_000 * 876_000


def test_the_six_hour_verdict_flips_when_the_measured_figures_grow():
    fast = project(measured(scale=0.01))
    assert fast["workers_needed"] == 1 and fast["by_workers"]["1"]["fits"]
    slow = project(measured(scale=100.0))
    assert slow["workers_needed"] is None and not slow["by_workers"]["8"]["fits"]
    assert slow["limit_stage"] == "train"  # it stops shrinking at one chain per worker
    assert slow["by_workers"]["8"]["total_seconds"] > SCHEDULE_SECONDS


def test_the_projection_trains_as_many_sweeps_as_asked_and_nothing_else_changes():
    basis = measured()
    as_measured = project(basis)
    twice = project(basis, sweeps=2 * basis["sweeps"])
    for workers, stages in as_measured["by_workers"].items():
        other = twice["by_workers"][workers]["stage_seconds"]
        assert other["train"] == 2 * stages["stage_seconds"]["train"]
        assert {s: v for s, v in other.items() if s != "train"} == \
            {s: v for s, v in stages["stage_seconds"].items() if s != "train"}
    assert twice["target"]["sweeps"] == 2 * basis["sweeps"]
