"""Every command answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [
    [], ["data"], ["train"], ["evaluate"], ["batch"], ["store"], ["serve"], ["optimize"], ["bench"], ["run"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "bookrec")
def test_help_exits_zero(command):
    result = subprocess.run(
        [sys.executable, "-m", "bookrec.cli", *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
