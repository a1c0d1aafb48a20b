"""The `bookrec` command: wires together each part's own CLI module.

A command line enters at `entry_point`, which turns SIGTERM into a clean stop. Every command goes
through `main` first: it answers `--version` and sets up logging once (`bookrec.logging`,
BOOKREC_LOG_LEVEL and BOOKREC_LOG_FORMAT). Exit codes: `bookrec.exitcodes`.
"""

from __future__ import annotations

import sys

import typer

from bookrec import __version__, quickstart, warmup
from bookrec.api import cli as api_cli
from bookrec.batch import cli as batch_cli
from bookrec.bench import cli as bench_cli
from bookrec.data import cli as data_cli
from bookrec.model import cli as model_cli
from bookrec.optimize import cli as optimize_cli
from bookrec.store import cli as store_cli

app = typer.Typer(
    name="bookrec",
    help="Book recommendations with honest uncertainty (Bayesian matrix factorisation by Gibbs sampling).",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"bookrec {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    from bookrec.exitcodes import USAGE, fail
    from bookrec.logging import setup_logging

    # click has consumed the arguments by now; a subcommand's --help must work whatever the
    # environment holds, so it is looked for in the process's own arguments.
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        return
    import tomllib

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from bookrec.config import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        fail(f"invalid settings (BOOKREC_* variables or bookrec.toml): {problems}", code=USAGE)
    except SettingsError as exc:  # a value that does not parse, e.g. a list variable that is not JSON
        fail(f"invalid settings (BOOKREC_* variables): {exc}", code=USAGE)
    except tomllib.TOMLDecodeError as exc:
        fail(f"bookrec.toml is not valid TOML: {exc}", code=USAGE)
    setup_logging()


app.add_typer(data_cli.app, name="data")
app.command("train")(model_cli.train)
app.command("evaluate")(model_cli.evaluate)
app.command("batch")(batch_cli.batch)
app.add_typer(store_cli.app, name="store")
app.command("serve")(api_cli.serve)
app.command("optimize")(optimize_cli.optimize)
app.add_typer(bench_cli.app, name="bench")
app.command("run")(quickstart.run)
app.command("warmup")(warmup.warmup)


def entry_point() -> None:
    """The console script and ``python -m bookrec``. SIGTERM becomes a clean stop here, in a real
    command process only: a host that runs ``app`` in-process (a test runner) keeps its own handler.
    A native crash (a compiled kernel, a driver) prints every thread's Python stack to stderr, so
    that a log says where a process died rather than only that it did."""
    import faulthandler

    from bookrec.exitcodes import handle_sigterm

    faulthandler.enable()
    handle_sigterm()
    app(prog_name="bookrec")


if __name__ == "__main__":  # pragma: no cover
    entry_point()
