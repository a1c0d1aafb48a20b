"""docs/CLI.md, generated from the CLI itself (every command, its help and its options).

    .venv/bin/python scripts/cli_reference.py            # print the reference
    .venv/bin/python scripts/cli_reference.py --write    # rewrite docs/CLI.md
    .venv/bin/python scripts/cli_reference.py --check    # exit 1 if docs/CLI.md differs

Each section is the command's `--help`, rendered at a fixed width without colour, so the file
does not depend on the terminal; tests/test_docs_cli.py fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer.main

from bookrec.cli import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"
HEADER = (
    "# Command-line reference\n\n"
    "Generated from the CLI by `scripts/cli_reference.py --write`; `bookrec COMMAND --help` prints the same.\n"
    "Exit codes: 0 ok, 1 failure, 2 bad input or usage, 3 the batch refused to publish.\n"
)


WIDTH = 120


def _help(path: list[str]) -> str:
    from typer.testing import CliRunner

    env = {"COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb", "_TYPER_FORCE_DISABLE_TERMINAL": "1"}
    result = CliRunner().invoke(app, [*path, "--help"], env=env, terminal_width=WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"bookrec {' '.join(path)} --help failed: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip().splitlines())


def _commands(command, path: list[str]):
    """Every command path under ``command``, depth first (Typer ships its own click: duck typing)."""
    yield path
    for name in sorted(getattr(command, "commands", {})):
        sub = command.commands[name]
        if not sub.hidden:
            yield from _commands(sub, [*path, name])


def reference() -> str:
    out = [HEADER]
    for path in _commands(typer.main.get_command(app), []):
        out.append(f"\n## `{' '.join(['bookrec', *path])}`\n\n```text\n{_help(path)}\n```")
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = reference()
    if args.write:
        DOC.write_text(text)
    elif args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is stale: run scripts/cli_reference.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
