"""`python -m bookrec`: the `bookrec` command."""

from bookrec.cli import app

app(prog_name="bookrec")
