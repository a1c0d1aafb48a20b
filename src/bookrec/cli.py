"""The `bookrec` command: wires together each part's own CLI module."""

from __future__ import annotations

import typer

from bookrec.api import cli as api_cli
from bookrec.batch import cli as batch_cli
from bookrec.bench import cli as bench_cli
from bookrec.data import cli as data_cli
from bookrec.model import cli as model_cli
from bookrec.optimize import cli as optimize_cli
from bookrec.store import cli as store_cli
from bookrec import quickstart, warmup

app = typer.Typer(
    name="bookrec",
    help="Book recommendations with honest uncertainty (Bayesian matrix factorisation by Gibbs sampling).",
    no_args_is_help=True,
    add_completion=False,
)

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


if __name__ == "__main__":  # pragma: no cover
    app()
