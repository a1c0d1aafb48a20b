"""docs/CLI.md is the CLI's own --help: the test fails when a command, an option or a help text
changes without the reference being regenerated (scripts/cli_reference.py --write)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_commands():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_cli_reference_lists_every_command():
    text = (ROOT / "docs" / "CLI.md").read_text()
    for command in ("batch", "run", "serve", "warmup", "data import", "data synth", "store rollback",
                    "bench ranking", "bench faults", "bench slowclients", "optimize"):
        assert f"## `bookrec {command}`" in text, command
    assert "--require-converged" in text and "--force" in text
