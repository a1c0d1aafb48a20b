"""CLI commands of bookrec.data: ``synth``, ``import``, ``stats``.

Heavy imports happen inside the commands so ``bookrec --help`` stays instant. Expected
failures (unusable input, missing directory) print one clear line and exit with code 2.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # pragma: no cover
    from bookrec.config import Settings
    from bookrec.data.io import Dataset

app = typer.Typer(help="Data: import a BookCrossing copy, generate synthetic data, show statistics.", no_args_is_help=True)


class PresetName(str, Enum):
    tiny = "tiny"
    small = "small"
    full = "full"
    xl = "xl"


class OutputFormat(str, Enum):
    normalized = "normalized"
    bx = "bx"
    kaggle = "kaggle"


def _fail(message: str) -> None:
    from bookrec.exitcodes import USAGE, fail

    fail(message, code=USAGE)


def _os_error(exc: OSError, target: Path) -> str:
    """An OSError as one line naming the file (the strerror, never the traceback)."""
    return f"cannot write {exc.filename or target}: {exc.strerror or exc}"


def _check_writable_dir(out: Path) -> None:
    """Fail before generating (minutes for the large presets) when ``out`` cannot be written."""
    import tempfile

    if out.exists() and not out.is_dir():
        _fail(f"{out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        _fail(_os_error(exc, out))


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory"),
    preset: PresetName = typer.Option(
        PresetName.small, help="Size: tiny (unit tests), small (dense k-core), full (real counts), xl (10x full, written in chunks)"
    ),
    seed: int = typer.Option(42, help="Random seed (same seed, same data)"),
    fmt: OutputFormat = typer.Option(OutputFormat.normalized, "--format", help="normalized directory, or raw bx / kaggle CSV files"),
    continuous: bool = typer.Option(False, "--continuous", help="Keep explicit ratings unrounded (mean + Gaussian noise)"),
) -> None:
    """Generate BookCrossing-shaped data with a known ground truth (truth.npz + truth.json)."""
    from bookrec.logging import console as make_console

    from bookrec.data.synth import CHUNKED_READERS

    console = make_console()
    if preset.value in CHUNKED_READERS and fmt is not OutputFormat.normalized:
        _fail(f"--preset {preset.value} is written in chunks as a normalized directory only")
        return
    _check_writable_dir(out)
    try:
        _synth(console, out, preset, seed, fmt, continuous)
    except OSError as exc:  # the disk filled up, or the directory changed while writing
        _fail(_os_error(exc, out))


def _synth(console, out: Path, preset: PresetName, seed: int, fmt: OutputFormat, continuous: bool) -> None:
    from bookrec.data.synth import CHUNKED_READERS, generate, write_in_chunks, write_synthetic

    if preset.value in CHUNKED_READERS:
        with console.status("generating") as status:
            c, seconds = write_in_chunks(preset.value, out, seed=seed, continuous=continuous,
                                         progress=lambda s: status.update(f"generating: {s}"))
        console.print(
            f"wrote normalized data to {out}: {c['users']:,} users, {c['books']:,} books, "
            f"{c['ratings']:,} ratings ({c['implicit']:,} implicit) in {seconds:.1f} s"
        )
        return
    with console.status("generating") as status:
        result = generate(preset.value, seed=seed, continuous=continuous, progress=lambda s: status.update(f"generating: {s}"))
        status.update(f"writing {fmt.value}")
        write_synthetic(result, out, fmt.value)
    c = result.dataset.counts()
    console.print(
        f"wrote {fmt.value} data to {out}: {c['users']:,} users, {c['books']:,} books, "
        f"{c['ratings']:,} ratings ({c['implicit']:,} implicit) in {result.seconds:.1f} s"
    )


@app.command("import")
def import_(
    path: Path = typer.Argument(..., help="BX-CSV-Dump.zip, the Kaggle zip, or a folder with either layout"),
    out: Path = typer.Option(..., "--out", help="Output directory (normalised tables)"),
    as_json: bool = typer.Option(False, "--json", help="Print the import report as JSON"),
) -> None:
    """Import a BookCrossing copy (layout detected), repair what is clear, report the rest."""
    from bookrec.logging import console as make_console

    from bookrec.data.importer import DataImportError, import_path, report_table
    from bookrec.data.io import DatasetError, publish_dataset

    console = make_console()
    try:
        with console.status("importing") as status:
            dataset = import_path(path, progress=lambda s: status.update(f"importing: {s}"))
            status.update(f"writing {out}")
            publish_dataset(dataset, out)
    except (DataImportError, DatasetError) as exc:
        _fail(str(exc))
        return
    except MemoryError:
        _fail(f"{path}: out of memory while importing (BOOKREC_IMPORT_MAX_EXPANDED_MB caps the input size)")
        return
    except OSError as exc:
        _fail(f"{exc.filename or out}: {exc.strerror or exc}")
        return
    if as_json:
        typer.echo(json.dumps(dataset.manifest["report"], indent=2, sort_keys=True))
    else:
        console.print(report_table(dataset.manifest["report"]))
        console.print(f"wrote normalised data to {out}")


@app.command("stats")
def stats(
    directory: Path = typer.Argument(..., help="A normalised data directory"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables"),
    min_user: int = typer.Option(5, "--min-user", help="k-core preview: explicit ratings per user"),
    min_book: int = typer.Option(10, "--min-book", help="k-core preview: explicit ratings per work"),
) -> None:
    """Counts, rating distribution, activity/popularity quantiles, sparsity, k-core preview."""
    from bookrec.logging import console as make_console

    from bookrec.data.io import DatasetError, load_dataset
    from bookrec.data.stats import compute_stats, stats_tables

    try:
        dataset = load_dataset(directory, with_truth=False)
    except DatasetError as exc:
        _fail(str(exc))
        return
    result = compute_stats(dataset, min_user=min_user, min_book=min_book)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = make_console()
    for table in stats_tables(result):
        console.print(table)


def ensure_data_and_report(settings: "Settings", preset: str) -> "Dataset":
    """Use the data set in ``settings.data_dir`` (imported real data wins), else synthesise
    ``preset`` there; print its statistics as rich tables and return it."""
    from bookrec.logging import console as make_console

    from bookrec.data.io import DatasetError, is_dataset_dir, load_dataset, write_dataset
    from bookrec.data.stats import compute_stats, stats_tables
    from bookrec.data.synth import generate

    console = make_console()
    data_dir = Path(settings.data_dir)
    if is_dataset_dir(data_dir):
        try:
            dataset = load_dataset(data_dir)
        except DatasetError as exc:
            _fail(f"{exc} (BOOKREC_DATA_DIR)")
        console.print(f"using {dataset.source} data in {data_dir}")
    else:
        _check_writable_dir(data_dir)
        with console.status(f"generating synthetic data ({preset})") as status:
            result = generate(preset, seed=settings.seed, progress=lambda s: status.update(f"generating: {s}"))
            try:
                write_dataset(result.dataset, data_dir)
            except OSError as exc:
                _fail(_os_error(exc, data_dir))
        dataset = result.dataset
        console.print(f"generated synthetic {preset} data in {data_dir} ({result.seconds:.1f} s)")
    for table in stats_tables(compute_stats(dataset, settings.min_user_ratings, settings.min_book_ratings)):
        console.print(table)
    return dataset
