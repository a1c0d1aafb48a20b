"""``bookrec bench data``: generation and import time and peak memory at full scale, and the
importer's exit code and peak memory on each kind of malformed input.

Each step runs in its own child process so its peak resident memory can be read on its own
(``ru_maxrss`` of the child, reported by the child itself). The command also checks that the
generated data reproduces the real counts and explicit-rating distribution. A benchmark, not
a test: it prints figures, it asserts nothing about time.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
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


# ---- importer cases: exit code and peak memory of the real CLI on malformed and valid input ---

MB = 1 << 20
BX_FILES = ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv")


def _expanded_mb(src: Path) -> float:
    """What the importer reads: the three CSV files' sizes, after decompression."""
    import zipfile

    if src.is_dir():
        return sum((src / f).stat().st_size for f in BX_FILES if (src / f).exists()) / MB
    if zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            return sum(i.file_size for i in zf.infolist() if Path(i.filename).name in BX_FILES) / MB
    return src.stat().st_size / MB


# The CLI with its own peak RSS written to argv[1] at exit. VmHWM belongs to the process's own
# memory map; ru_maxrss would also count the bench's memory, inherited through fork and exec.
_CLI_WITH_PEAK = """
import atexit, resource, sys
def _write_peak(path=sys.argv.pop(1)):
    try:
        with open("/proc/self/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(path, "w") as out:
        out.write(str(kb))
atexit.register(_write_peak)
sys.argv[0] = "bookrec"
from bookrec.cli import app
app()
"""


def _run_cli_import(src: Path, out: Path, env: dict[str, str]) -> dict:
    """``bookrec data import`` in a child process, with the child's own peak RSS."""
    peak_file = out.parent / f"{out.name}.peak"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_WITH_PEAK, str(peak_file), "data", "import", str(src), "--out", str(out)],
        capture_output=True, text=True, env=os.environ | env,
    )
    seconds = time.perf_counter() - t0
    peak_kb = int(peak_file.read_text()) if peak_file.exists() else 0
    peak_file.unlink(missing_ok=True)
    lines = proc.stderr.strip().splitlines()
    return {
        "exit_code": proc.returncode,
        "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024,
        "stderr_lines": len(lines),
        "message": lines[-1] if lines else "",
        "traceback": "Traceback" in proc.stderr,
    }


def _linked_copy(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in BX_FILES:
        try:
            os.link(src / f, dest / f)
        except OSError:
            shutil.copyfile(src / f, dest / f)
    return dest


def _zip(src: Path, archive: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in BX_FILES:
            zf.write(src / f, f)
    return archive


def _import_cases(bx: Path, work: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """Inputs built from the generated bx copy: valid ones at full size, and each malformed kind."""
    import zipfile

    cases: dict[str, tuple[Path, dict[str, str]]] = {"valid bx folder": (bx, {})}
    archive = _zip(bx, work / "bx.zip")
    cases["valid bx zip"] = (archive, {})
    wide = work / "utf16"
    wide.mkdir()
    for f in BX_FILES:
        (wide / f).write_bytes((bx / f).read_bytes().decode("latin-1").encode("utf-16"))
    cases["UTF-16 copy"] = (wide, {})
    rand = _linked_copy(bx, work / "random")
    (rand / BX_FILES[0]).unlink()
    (rand / BX_FILES[0]).write_bytes(os.urandom((bx / BX_FILES[0]).stat().st_size))
    cases["random bytes as ratings"] = (rand, {})
    blob = work / "random.zip"
    blob.write_bytes(os.urandom(MB))
    cases["random bytes as the zip"] = (blob, {})
    crlf = _linked_copy(bx, work / "backslash-cr")
    (crlf / BX_FILES[0]).unlink()
    shutil.copyfile(bx / BX_FILES[0], crlf / BX_FILES[0])
    with open(crlf / BX_FILES[0], "ab") as f:
        f.write(b'11\\\r;5\n"11";1\\\r2;5;7\n' * 1000)
    cases["backslash + CR rows"] = (crlf, {})
    header = _linked_copy(bx, work / "header-only")
    (header / BX_FILES[0]).unlink()
    (header / BX_FILES[0]).write_text('"User-ID";"ISBN";"Book-Rating"\n')
    cases["header-only ratings"] = (header, {})
    truncated = work / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cases["truncated zip"] = (truncated, {})
    bomb = work / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in BX_FILES[1:]:
            zf.write(bx / f, f)
        with zf.open(BX_FILES[0], "w") as member:
            member.write(b'"User-ID";"ISBN";"Book-Rating"\n')
            for _ in range(200):
                member.write(b'"1";"0195153448";"0"\n' * (MB // 21))
    cases["zip bomb (200 MB ratings)"] = (bomb, {})
    cases["same zip, ratio cap raised"] = (bomb, {"BOOKREC_IMPORT_MAX_RATIO": "1000"})
    cap = f"{_expanded_mb(archive) / 2:.3f}"
    cases["zip over the size cap"] = (archive, {"BOOKREC_IMPORT_MAX_EXPANDED_MB": cap})
    return cases


def bench_import_cases(bx: Path, work: Path) -> list[dict]:
    """Each importer case through the real CLI: exit code, message, peak RSS against the bound
    of 3x the expanded input plus 300 MB."""
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (src, env) in _import_cases(bx, work).items():
        out = work / f"out-{len(rows)}"
        expanded = _expanded_mb(src)
        result = _run_cli_import(src, out, env)
        bound = 3 * expanded + 300
        result["message"] = result["message"].removeprefix("error: ").replace(f"{work}{os.sep}", "")
        rows.append({"case": name, "expanded_mb": expanded, "rss_bound_mb": bound,
                     "within_bound": result["peak_rss_mb"] <= bound} | result)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _import_cases_table(rows: list[dict]):
    from rich.table import Table

    t = Table(title="bookrec data import on each kind of input (real CLI, one process per case)")
    for col in ("case", "exit", "peak RSS (MB)", "bound (MB)", "time (s)"):
        t.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        ok = r["within_bound"] and r["stderr_lines"] <= 1 and not r["traceback"]
        rss = f"{r['peak_rss_mb']:.0f}" + ("" if ok else " !")
        t.add_row(r["case"], str(r["exit_code"]), rss, f"{r['rss_bound_mb']:.0f}", f"{r['seconds']:.1f}")
    t.caption = "bound: 3x the expanded input + 300 MB; '!' marks a case over it, or with a traceback or several error lines"
    return t


def _import_case_messages(rows: list[dict]) -> list[str]:
    return [f"{r['case']}: {r['message']}" for r in rows if r["message"]]


def bench_data(preset: str = "full", seed: int = 42, workdir: Path | None = None, as_json: bool = False) -> dict:
    """Run the data benchmark and print a table (or JSON); returns the figures."""
    from rich.console import Console

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
        with console.status("importing malformed and valid copies"):
            cases = bench_import_cases(workdir / "bx", workdir / "import-cases")
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
        "import_cases": cases,
    }
    if as_json:
        print(json.dumps(figures, indent=2))
        return figures
    _print_report(console, figures, gen, raw, imp, seed)
    return figures


def _print_report(console, figures: dict, gen: dict, raw: dict, imp: dict, seed: int) -> None:
    from rich.table import Table

    c, stats_kcore, cases = figures["counts"], figures["kcore_5_10"], figures["import_cases"]
    counts_ok, max_dev_pp, preset = figures["counts_match_preset"], figures["explicit_share_max_deviation_pp"], figures["preset"]
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
        f"one {max_dev_pp:.2f} percentage points; {figures['share_isbn_not_in_books']:.1%} of ratings on ISBNs "
        f"absent from books; k-core 5/10: {stats_kcore['users']:,} users x {stats_kcore['works']:,} works, "
        f"{stats_kcore['ratings']:,} ratings"
    )
    console.print(_import_cases_table(cases))
    for line in _import_case_messages(cases):
        console.print(line, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2:]), default=str))
