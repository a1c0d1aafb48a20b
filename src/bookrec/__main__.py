"""`python -m bookrec`: the `bookrec` command."""

from bookrec.cli import entry_point

entry_point()
