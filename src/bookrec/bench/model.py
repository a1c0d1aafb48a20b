"""`bookrec bench model`: BPMF against the Gibbs-sampling peers myfm and smurff.

Data: the `full` synthetic preset's explicit ratings (works, editions averaged) and its
k-core (5 per user, 10 per book); one seeded per-user split (10% test) shared by every model.
Every model runs in its own subprocess so that its peak memory (ru_maxrss) is its own.
Peers (`pip install bookrec[bench-peers]`): myfm 0.4.0 (Bayesian FM, user + item one-hot,
rank k) and smurff 1.1 (BPMF on centred ratings, sampled noise). A peer that is not installed
is reported as such, never silently skipped. Every model traces the predictions of the same
training pairs each post-burn-in sweep (``bookrec.bench.tracked``), so ESS per second compares
like with like.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bookrec.bench.tracked import (
    PAIR_OWNERS, MyfmTracer, PeerTrace, bench_pairs, ess_per_second, import_myfm, peer_ess, smurff_test_points,
    smurff_trace, tracked_pairs, union_of,
)

Z90 = 1.6448536269514722


def _peak_mb() -> float:
    """Peak resident memory of this process. VmHWM belongs to the process's own address space;
    ru_maxrss would also carry the parent's peak across fork + exec (the data generation)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Clock:
    """Wall and CPU seconds (all threads of this process) of a block: the machine is shared, so
    CPU time is the fairer measure of work when other jobs compete for the two cores."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def _coverage90_gaussian(y, mean, var):
    half = Z90 * np.sqrt(var)
    return float(np.mean((y >= np.clip(mean - half, 1, 10)) & (y <= np.clip(mean + half, 1, 10))))


def _run_bookrec(d, k, burn_in, n_samples, seed, n_chains=2, moves=True):
    from bookrec.model import BPMF

    # The default chain mode sweeps each chain over both cores, one chain after the other (one
    # chain: as smurff runs its one chain).
    options = {"n_chains": n_chains, "balance_move": moves, "shear_move": moves}
    # Load the compiled kernels (numba's on-disk cache) before timing: a one-off cost per process.
    BPMF(n_factors=k, burn_in=1, n_samples=8, show_progress=False, **options).fit(
        d["tr_u"][:500], d["tr_i"][:500], d["tr_r"][:500])
    model = BPMF(n_factors=k, burn_in=burn_in, n_samples=n_samples, seed=seed, show_progress=False, **options)
    with _Clock() as clock:
        model.fit(d["tr_u"], d["tr_i"], d["tr_r"], int(d["n_users"]), int(d["n_items"]))
    fit = clock.wall
    mean, lo, hi = model.predict_interval(d["te_u"], d["te_i"], level=0.9)
    y = d["te_r"]
    # The peers follow the pairs the bench computes for this chain count: a fit that tracked others
    # would make the comparison of their ESS one of different quantities.
    peers_follow = tracked_pairs(d["tr_u"], d["tr_i"], seed, n_chains)
    return {"fit_seconds": fit, "cpu_seconds": clock.cpu, "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
            "coverage90": float(np.mean((y >= lo) & (y <= hi))), "chains": model.n_chains,
            "converged": bool(model.diagnostics_["converged"]), "max_rhat": model.diagnostics_["max_rhat"],
            "ess": ess_per_second(model.diagnostics_, fit), "cpu_ess": ess_per_second(model.diagnostics_, clock.cpu),
            "ess_draws": model.n_chains * n_samples,
            "pairs_as_peers": bool(np.array_equal(model.tracked_pairs_, peers_follow))}


def _onehot(u, i, n_users: int, n_items: int):
    """myfm's design matrix: a reader's one-hot column, then a work's."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(u.size), 2)
    cols = np.column_stack([u, n_users + i]).ravel()
    return sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(u.size, n_users + n_items))


def _fit_myfm(d, k, burn_in, n_samples, seed) -> tuple[dict, PeerTrace]:
    myfm = import_myfm()
    n_users, n_items = int(d["n_users"]), int(d["n_items"])
    x_train, x_test = _onehot(d["tr_u"], d["tr_i"], n_users, n_items), _onehot(d["te_u"], d["te_i"], n_users, n_items)
    pairs = union_of(bench_pairs(d, seed))
    tracer = MyfmTracer(pairs, n_users, burn_in, n_samples)
    # myfm keeps every kept sample in memory (n_features x k doubles each), so it keeps the
    # last 100 of its burn_in + n_samples iterations (same iteration count, bounded memory:
    # BPMF keeps 100 samples too).
    kept = min(100, n_samples)
    fm = myfm.MyFMRegressor(rank=k, random_seed=seed)
    with _Clock() as clock:
        fm.fit(x_train, d["tr_r"].astype(np.float64), n_iter=burn_in + n_samples, n_kept_samples=kept,
               callback=tracer)
    y = d["te_r"]
    mean = np.clip(fm.predict(x_test), 1, 10)
    # Posterior predictive per kept sample: w0 + w_u + w_i + <V_u, V_i>, noise 1/alpha.
    w0, w, v = np.asarray(fm.w0_samples), np.asarray(fm.w_samples), np.asarray(fm.V_samples)
    uu, ii = d["te_u"], n_users + d["te_i"]
    preds = (w0[:, None] + w[:, uu] + w[:, ii] + np.einsum("suk,suk->su", v[:, uu], v[:, ii]))
    alpha = fm.get_hyper_trace()["alpha"].to_numpy()[-preds.shape[0]:]
    var = preds.var(axis=0) + np.mean(1.0 / alpha)
    result = {"fit_seconds": clock.wall, "cpu_seconds": clock.cpu, "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
              "coverage90": _coverage90_gaussian(y, preds.mean(axis=0), var), "chains": 1,
              "coverage_note": "Gaussian approximation of the mixture"}
    own_mean = fm.predict(_onehot(pairs[:, 0], pairs[:, 1], n_users, n_items))
    return result, tracer.trace(pairs, own_mean, kept)


def _fit_smurff(d, k, burn_in, n_samples, seed, threads: int = 2) -> tuple[dict, PeerTrace]:
    """smurff's fit on both cores by default; its draws then depend on the OpenMP schedule, with one
    thread they repeat."""
    import scipy.sparse as sp
    import smurff

    n_users, n_items = int(d["n_users"]), int(d["n_items"])
    centre = float(d["tr_r"].mean())
    pairs = union_of(bench_pairs(d, seed))
    y_train = sp.coo_matrix((d["tr_r"].astype(np.float64) - centre, (d["tr_u"], d["tr_i"])), shape=(n_users, n_items))
    u, i, r = smurff_test_points(d, pairs, centre)
    y_test = sp.coo_matrix((r, (u, i)), shape=(n_users, n_items))
    trainer = smurff.TrainSession(priors=["normal", "normal"], num_latent=k, burnin=burn_in, nsamples=n_samples,
                                  seed=seed, verbose=0, num_threads=threads)
    trainer.addTrainAndTest(y_train.tocsr(), y_test.tocsr(), smurff.SampledNoise())
    with _Clock() as clock:
        trainer.init()
        while trainer.step():
            pass
    preds = trainer.getTestPredictions()
    lookup = {p.coords: p.pred_avg + centre for p in preds}
    mean = np.clip(np.array([lookup[(int(a), int(b))] for a, b in zip(d["te_u"], d["te_i"])]), 1, 10)
    y = d["te_r"]
    result = {"fit_seconds": clock.wall, "cpu_seconds": clock.cpu, "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
              "coverage90": None, "chains": 1,
              "coverage_note": "smurff exposes no noise samples: no predictive interval"}
    return result, smurff_trace(preds, pairs, centre)


def _with_peer_ess(fitted: tuple[dict, PeerTrace], d, seed) -> dict:
    """A peer's figures with its ESS per second on the tracked pairs of each of our rows."""
    result, trace = fitted
    result["ess_by_pairs"] = peer_ess(trace, bench_pairs(d, seed), result["fit_seconds"], result["cpu_seconds"])
    result["ess_draws"] = len(trace.predictions)
    return result


def _run_myfm(d, k, burn_in, n_samples, seed):
    return _with_peer_ess(_fit_myfm(d, k, burn_in, n_samples, seed), d, seed)


def _run_smurff(d, k, burn_in, n_samples, seed):
    return _with_peer_ess(_fit_smurff(d, k, burn_in, n_samples, seed), d, seed)


def _run_bookrec_one_chain(d, k, burn_in, n_samples, seed):
    return _run_bookrec(d, k, burn_in, n_samples, seed, n_chains=1)


def _run_bookrec_no_moves(d, k, burn_in, n_samples, seed):
    return _run_bookrec(d, k, burn_in, n_samples, seed, moves=False)


def _run_bookrec_one_chain_no_moves(d, k, burn_in, n_samples, seed):
    return _run_bookrec(d, k, burn_in, n_samples, seed, n_chains=1, moves=False)


# "-no-moves": the sampler without its balance and shear moves, the baseline of their ESS per second.
RUNNERS = {"bookrec": _run_bookrec, "bookrec-1chain": _run_bookrec_one_chain,
           "bookrec-no-moves": _run_bookrec_no_moves, "bookrec-1chain-no-moves": _run_bookrec_one_chain_no_moves,
           "myfm": _run_myfm, "smurff": _run_smurff}
OURS = ("bookrec", "bookrec-1chain", "bookrec-no-moves", "bookrec-1chain-no-moves")


def _child(name, path, k, burn_in, n_samples, seed, queue):
    import os

    os.environ["TQDM_DISABLE"] = "1"  # myfm's progress bar would flood the table
    try:
        with np.load(path, allow_pickle=False) as f:
            d = {key: f[key] for key in f.files}
        base = _peak_mb()
        out = RUNNERS[name](d, k, burn_in, n_samples, seed)
        out["peak_mb"] = _peak_mb()
        out["baseline_mb"] = base
        queue.put(json.dumps(out))
    except ImportError as exc:
        queue.put(json.dumps({"error": f"not installed ({exc}); pip install 'bookrec[bench-peers]'"}))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        queue.put(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


def run_one(name, path, k, burn_in, n_samples, seed) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, str(path), k, burn_in, n_samples, seed, queue))
    proc.start()
    try:
        result = json.loads(queue.get())
    finally:
        proc.join()
    return with_per_iteration(result, burn_in + n_samples)


def with_per_iteration(result: dict, n_sweeps: int) -> dict:
    """A run's figures with its wall and CPU seconds per sweep (none for a run that failed)."""
    if "fit_seconds" in result:
        result["seconds_per_iteration"] = result["fit_seconds"] / n_sweeps
        result["cpu_seconds_per_iteration"] = result["cpu_seconds"] / n_sweeps
    return result


def prepare_sets(seed: int, test_fraction: float = 0.1, min_user: int = 5, min_item: int = 10, progress=print,
                 data_preset: str = "full"):
    from bookrec.data.prep import attach_work_keys, average_per_work, explicit, kcore, split_per_user
    from bookrec.data.synth import generate

    t0 = time.perf_counter()
    dataset = generate(data_preset, seed=seed).dataset
    progress(f"generated the {data_preset} preset in {time.perf_counter() - t0:.0f} s")
    per_work = average_per_work(attach_work_keys(explicit(dataset.ratings), dataset.books))
    sets = {}
    for label, frame in (("explicit", per_work), (f"{min_user}/{min_item}-core", kcore(per_work, min_user, min_item))):
        split = split_per_user(frame.reset_index(drop=True), 0.0, test_fraction, seed)
        users = np.unique(frame["user_id"].to_numpy())
        items = np.unique(frame["work_key"].to_numpy().astype(str))

        def enc(df):
            return (np.searchsorted(users, df["user_id"].to_numpy()),
                    np.searchsorted(items, df["work_key"].to_numpy().astype(str)),
                    df["rating"].to_numpy(dtype=np.float32))

        tr, te = enc(split.train), enc(split.test)
        sets[label] = {"tr_u": tr[0], "tr_i": tr[1], "tr_r": tr[2], "te_u": te[0], "te_i": te[1], "te_r": te[2],
                       "n_users": np.int64(users.size), "n_items": np.int64(items.size)}
    return sets


def bench_model(k: int = 10, burn_in: int = 200, n_samples: int = 500, seed: int = 42,
                peers: tuple[str, ...] = ("myfm", "smurff"), as_json: bool = False, data_preset: str = "full") -> dict:
    from rich.console import Console

    console = Console(width=max(Console().width, 140))  # the table is wide; keep it readable in logs
    say = (lambda *_, **__: None) if as_json else console.print
    sets = prepare_sets(seed, progress=say, data_preset=data_preset)
    report = {"k": k, "burn_in": burn_in, "n_samples": n_samples, "data_preset": data_preset, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, d in sets.items():
            path = Path(tmp) / f"{label.replace('/', '_')}.npz"
            np.savez(path, **d)
            rows = {}
            for name in (*OURS, *peers):
                say(f"({label}) {name}: {len(d['tr_r']):,} train / {len(d['te_r']):,} test ratings ...", markup=False)
                rows[name] = run_one(name, path, k, burn_in, n_samples, seed)
                say(f"  {rows[name]}", markup=False)
            report["sets"][label] = {"n_train": int(len(d["tr_r"])), "n_test": int(len(d["te_r"])),
                                     "n_users": int(d["n_users"]), "n_items": int(d["n_items"]), "results": rows}
    if as_json:
        print(json.dumps(report, indent=1))
        return report
    for label, block in report["sets"].items():
        _print_set(console, label, block, peers, k, burn_in, n_samples)
    return report


def _print_set(console, label: str, block: dict, peers: tuple[str, ...], k: int, burn_in: int, n_samples: int) -> None:
    from rich.table import Table

    rows = block["results"]
    ok_peers = [p for p in peers if "fit_seconds" in rows[p]]
    table = Table(title=f"{label}: {block['n_users']:,} readers x {block['n_items']:,} works, "
                        f"{block['n_train']:,} train / {block['n_test']:,} test; k={k}, {burn_in}+{n_samples} sweeps")
    for col in ("model", "s/iter", "CPU s/iter", "total s", "peak MB", "test RMSE", "90% cover",
                "ESS/s all", "ESS/s legacy", "ESS/s preds", "note"):
        table.add_column(col, justify="right" if col not in ("model", "note") else "left")
    for name, r in rows.items():
        if "error" in r:
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", "-", "-", r["error"])
            continue
        ess = _ess_cells(r)
        cov = "n/a" if r.get("coverage90") is None else f"{r['coverage90']:.3f}"
        note = r.get("coverage_note", "")
        if name.startswith("bookrec"):
            how = f"{r['chains']} chains per iteration" if r["chains"] > 1 else "1 chain over both cores"
            note = f"{how}; R-hat max {r['max_rhat']:.3f}"
        elif "ess_by_pairs" in r:
            note = f"{note}; ESS/s on bookrec's tracked pairs"
        table.add_row(name, f"{r['seconds_per_iteration']:.4f}", f"{r['cpu_seconds_per_iteration']:.4f}",
                      f"{r['fit_seconds']:.1f}", f"{r['peak_mb']:.0f}",
                      f"{r['rmse']:.4f}", cov, *ess, note)
    console.print(table)
    for name, r in rows.items():
        if r.get("pairs_as_peers") is False:
            console.print(f"  {name} tracked other pairs than the bench computes for it: its prediction ESS "
                          "is not comparable with the peers'", markup=False, style="yellow")
    _print_moves(console, rows)
    _print_comparison(console, rows, ok_peers)
    for p in peers:
        if "error" in rows[p]:
            console.print(f"  {p} did not run: {rows[p]['error']}", markup=False, style="yellow")


def _ess_cells(r: dict) -> list[str]:
    """The ESS/s columns (all, legacy, predictions): our rows on their own tracked pairs, a peer's
    on the pairs of bookrec (2 chains); "-" where a row has no such figure."""
    ess = r["ess"] if "ess" in r else r.get("ess_by_pairs", {}).get("bookrec", {}).get("ess", {})
    return [f"{ess[g]['per_second']:.3g}" if g in ess else "-" for g in ("all", "legacy", "predictions")]


def _print_moves(console, rows: dict) -> None:
    for chains, on, off in (("2 chains", "bookrec", "bookrec-no-moves"),
                            ("1 chain", "bookrec-1chain", "bookrec-1chain-no-moves")):
        if "ess" in rows.get(on, {}) and "ess" in rows.get(off, {}):
            a, b = rows[on], rows[off]
            console.print(
                f"  ESS/s with the balance and shear moves vs without ({chains}): legacy quantities "
                f"{a['ess']['legacy']['per_second']:.2f} vs {b['ess']['legacy']['per_second']:.2f} "
                f"({a['ess']['legacy']['per_second'] / max(b['ess']['legacy']['per_second'], 1e-12):.2f}x; per CPU s "
                f"{a['cpu_ess']['legacy']['per_second'] / max(b['cpu_ess']['legacy']['per_second'], 1e-12):.2f}x), "
                f"slowest {a['ess']['legacy']['slowest']} vs {b['ess']['legacy']['slowest']}; every quantity "
                f"{a['ess']['all']['per_second']:.2f} ({a['ess']['all']['slowest']}) vs "
                f"{b['ess']['all']['per_second']:.2f} ({b['ess']['all']['slowest']}); predictions "
                f"{a['ess']['predictions']['per_second']:.2f} vs {b['ess']['predictions']['per_second']:.2f}",
                markup=False)


def _print_comparison(console, rows: dict, ok_peers: list[str]) -> None:
    ours = rows["bookrec"]
    if ok_peers and "fit_seconds" in ours:
        fastest = min(ok_peers, key=lambda p: rows[p]["seconds_per_iteration"])
        best = min(ok_peers, key=lambda p: rows[p]["rmse"])
        speedup = rows[fastest]["seconds_per_iteration"] / ours["seconds_per_iteration"]
        cpu_fastest = min(ok_peers, key=lambda p: rows[p]["cpu_seconds_per_iteration"])
        cpu_speedup = rows[cpu_fastest]["cpu_seconds_per_iteration"] / ours["cpu_seconds_per_iteration"]
        console.print(f"  CPU time per iteration: {cpu_speedup:.2f}x the leanest peer ({cpu_fastest})", markup=False)
        console.print(
            f"  speed: {speedup:.1f}x the faster peer ({fastest}) per iteration "
            f"[{'ok' if speedup >= 5 else 'below'} target 5x]; RMSE {ours['rmse']:.4f} vs best peer "
            f"{best} {rows[best]['rmse']:.4f} [{'ok' if ours['rmse'] <= rows[best]['rmse'] else 'worse'}]; "
            f"90% coverage {ours['coverage90']:.3f} [{'ok' if 0.88 <= ours['coverage90'] <= 0.92 else 'outside'} 88-92%]; "
            f"peak {ours['peak_mb']:.0f} MB [{'ok' if ours['peak_mb'] <= 2048 else 'over'} 2 GB]", markup=False)
        one = rows.get("bookrec-1chain", {})
        if "fit_seconds" in one:
            console.print(f"  one chain over both cores (as smurff runs): "
                          f"{rows[fastest]['seconds_per_iteration'] / one['seconds_per_iteration']:.1f}x the faster "
                          f"peer ({fastest}) per iteration; RMSE {one['rmse']:.4f}", markup=False)
        for p in ok_peers:
            console.print(f"  vs {p}: time/iteration ratio {rows[p]['seconds_per_iteration'] / ours['seconds_per_iteration']:.2f} "
                          f"(CPU {rows[p]['cpu_seconds_per_iteration'] / ours['cpu_seconds_per_iteration']:.2f}), "
                          f"RMSE ratio {ours['rmse'] / rows[p]['rmse']:.3f}{_ess_ratios(rows, p)}", markup=False)
    _print_tracked_ess(console, rows, ok_peers)


def _chains_label(owner: str) -> str:
    n = PAIR_OWNERS[owner]
    return f"{n} chain{'s' if n > 1 else ''}"


def _prediction_ess(rows: dict, name: str, owner: str) -> tuple[dict, dict] | None:
    """(per wall second, per CPU second) ESS groups of a row on ``owner``'s tracked pairs, if it has them."""
    r = rows.get(name, {})
    if name == owner:
        return (r["ess"], r["cpu_ess"]) if "ess" in r else None
    figures = r.get("ess_by_pairs", {}).get(owner)
    return (figures["ess"], figures["cpu_ess"]) if figures else None


def _ess_ratios(rows: dict, peer: str) -> str:
    """Our tracked-prediction ESS/s over the peer's on the same pairs, for one chain and for two."""
    parts = []
    for owner in PAIR_OWNERS:
        ours, theirs = _prediction_ess(rows, owner, owner), _prediction_ess(rows, peer, owner)
        if ours and theirs:
            ratio = ours[0]["predictions"]["per_second"] / max(theirs[0]["predictions"]["per_second"], 1e-12)
            cpu = ours[1]["predictions"]["per_second"] / max(theirs[1]["predictions"]["per_second"], 1e-12)
            parts.append(f"{_chains_label(owner)} {ratio:.2f} (CPU {cpu:.2f})")
    return f", prediction ESS/s ratio {', '.join(parts)}" if parts else ""


def _print_tracked_ess(console, rows: dict, ok_peers: list[str]) -> None:
    """ESS of the tracked predictions of our row and of every peer on the same pairs."""
    for owner in PAIR_OWNERS:
        cells = []
        for name in (owner, *ok_peers):
            figures = _prediction_ess(rows, name, owner)
            if figures is None:
                continue
            wall, cpu = figures[0]["predictions"], figures[1]["predictions"]
            cells.append(f"{name} {wall['per_second']:.2f}/s (CPU {cpu['per_second']:.2f}/s; "
                         f"min ESS {wall['min_ess']:.0f} of {rows[name]['ess_draws']:,} draws, {wall['slowest']})")
        if len(cells) > 1:
            console.print(f"  prediction ESS on the pairs {owner} ({_chains_label(owner)}) tracks: "
                          + "; ".join(cells), markup=False)
