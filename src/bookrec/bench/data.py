"""``bookrec bench data``: generation and import time and peak memory at full scale.

Each step runs in its own child process so its peak resident memory can be read on its own
(``ru_maxrss`` of the child, reported by the child itself). The command also checks that the
generated data reproduces the real counts and explicit-rating distribution. A benchmark, not
a test: it prints figures, it asserts nothing about time.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Steps run in the child: python -m bookrec.bench.data STEP ARGS... -> one JSON line on stdout


def _child(step: str, args: list[str]) -> dict:
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    t0 = time.perf_counter()
    if step == "synth":
        preset, seed, out, fmt = args
        from bookrec.data.synth import generate, write_synthetic

        result = generate(preset, seed=int(seed))
        t_gen = time.perf_counter() - t0
        u = resource.getrusage(resource.RUSAGE_SELF)
        cpu_gen = u.ru_utime + u.ru_stime - cpu0
        write_synthetic(result, out, fmt)
        extra = {"generate_seconds": t_gen, "generate_cpu_seconds": cpu_gen}
    elif step == "import":
        src, out = args
        from bookrec.data.importer import import_path
        from bookrec.data.io import write_dataset

        dataset = import_path(src)
        t_read = time.perf_counter() - t0
        u = resource.getrusage(resource.RUSAGE_SELF)
        cpu_read = u.ru_utime + u.ru_stime - cpu0
        write_dataset(dataset, out)
        extra = {"import_seconds": t_read, "import_cpu_seconds": cpu_read, "report": dataset.manifest["report"]}
    elif step == "stats":
        (src,) = args
        from bookrec.data.io import load_dataset
        from bookrec.data.stats import compute_stats

        extra = {"stats": compute_stats(load_dataset(src, with_truth=False))}
    else:  # pragma: no cover
        raise SystemExit(f"unknown step {step}")
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds tell the work apart from waiting when other jobs share the 2 cores
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return {"step": step, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024} | extra


def _run_step(step: str, *args: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bookrec.bench.data", step, *map(str, args)], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bench step {step} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall  # includes interpreter start and imports
    return out


def bench_data(preset: str = "full", seed: int = 0, workdir: Path | None = None, as_json: bool = False) -> dict:
    """Run the data benchmark and print a table (or JSON); returns the figures."""
    from rich.console import Console
    from rich.table import Table

    from bookrec.data.synth import PRESETS, REAL_COUNTS, REAL_EXPLICIT_SHARE

    console = Console(stderr=as_json)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bookrec-bench-data-")
        workdir = Path(tmp.name)
    workdir = Path(workdir)
    try:
        with console.status("generating (normalized)"):
            gen = _run_step("synth", preset, seed, workdir / "normalized", "normalized")
        with console.status("generating (bx layout)"):
            raw = _run_step("synth", preset, seed, workdir / "bx", "bx")
        with console.status("importing the bx layout"):
            imp = _run_step("import", workdir / "bx", workdir / "imported")
        with console.status("computing statistics"):
            st = _run_step("stats", workdir / "normalized")
    finally:
        if tmp is not None:
            tmp.cleanup()

    stats = st["stats"]
    shares = [stats["explicit_share_by_value"][str(v)] for v in range(1, 11)]
    max_dev_pp = max(abs(a - b) for a, b in zip(shares, REAL_EXPLICIT_SHARE)) * 100
    p = PRESETS[preset]
    c = stats["counts"]
    counts_ok = (c["users"], c["books"], c["ratings"], c["implicit"]) == (p.n_users, p.n_books, p.n_ratings, p.n_implicit)
    figures = {
        "preset": preset,
        "generate_seconds": gen["generate_seconds"],
        "generate_cpu_seconds": gen["generate_cpu_seconds"],
        "generate_and_write_seconds": gen["seconds"],
        "generate_and_write_cpu_seconds": gen["cpu_seconds"],
        "generate_peak_rss_mb": gen["peak_rss_mb"],
        "write_bx_seconds": raw["seconds"],
        "write_bx_peak_rss_mb": raw["peak_rss_mb"],
        "import_bx_seconds": imp["import_seconds"],
        "import_bx_cpu_seconds": imp["import_cpu_seconds"],
        "import_bx_and_write_seconds": imp["seconds"],
        "import_bx_and_write_cpu_seconds": imp["cpu_seconds"],
        "import_bx_peak_rss_mb": imp["peak_rss_mb"],
        "load_average": os.getloadavg()[0],
        "counts": c,
        "counts_match_preset": counts_ok,
        "counts_match_real": preset == "full" and counts_ok and p.n_users == REAL_COUNTS["users"],
        "explicit_share_max_deviation_pp": max_dev_pp,
        "share_isbn_not_in_books": stats["share_isbn_not_in_books"],
        "kcore_5_10": stats["kcore"],
        "import_report": imp["report"],
    }
    if as_json:
        print(json.dumps(figures, indent=2))
        return figures
    t = Table(title=f"bookrec bench data ({preset}, seed {seed})")
    t.add_column("step")
    t.add_column("time (s)", justify="right")
    t.add_column("CPU (s)", justify="right")
    t.add_column("peak RSS (MB)", justify="right")
    t.add_column("target")
    t.add_row("generate (in memory)", f"{gen['generate_seconds']:.1f}", f"{gen['generate_cpu_seconds']:.1f}", "", "<= 30 s")
    t.add_row("generate + write normalized", f"{gen['seconds']:.1f}", f"{gen['cpu_seconds']:.1f}", f"{gen['peak_rss_mb']:.0f}", "<= 2048 MB")
    t.add_row("generate + write bx layout", f"{raw['seconds']:.1f}", f"{raw['cpu_seconds']:.1f}", f"{raw['peak_rss_mb']:.0f}", "")
    t.add_row("import bx (read + normalise)", f"{imp['import_seconds']:.1f}", f"{imp['import_cpu_seconds']:.1f}", "", "<= 60 s")
    t.add_row("import bx + write", f"{imp['seconds']:.1f}", f"{imp['cpu_seconds']:.1f}", f"{imp['peak_rss_mb']:.0f}", "<= 2048 MB")
    console.print(t)
    console.print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    console.print(
        f"counts {c['users']:,} users, {c['books']:,} books, {c['ratings']:,} ratings, {c['implicit']:,} implicit: "
        f"{'match' if counts_ok else 'DO NOT match'} the preset; explicit distribution max deviation from the real "
        f"one {max_dev_pp:.2f} percentage points; {stats['share_isbn_not_in_books']:.1%} of ratings on ISBNs "
        f"absent from books; k-core 5/10: {stats['kcore']['users']:,} users x {stats['kcore']['works']:,} works, "
        f"{stats['kcore']['ratings']:,} ratings"
    )
    return figures


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2:]), default=str))
