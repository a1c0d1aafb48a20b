"""Data flows one way (data -> model -> batch -> store -> api -> web): no part imports a later one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bookrec"

# What each part may import besides itself and the shared modules (config, logging, exitcodes).
ALLOWED = {
    "data": set(),
    "model": {"data"},
    "optimize": {"data", "model"},
    "batch": {"data", "model", "store"},
    "store": set(),
    "api": {"data", "model", "store"},
    "web": set(),
}
SHARED = {"config", "logging", "exitcodes"}


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("bookrec."):
                parts.add(name.split(".")[1])
    return parts


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_part_imports_only_what_comes_before_it(part):
    offenders = {}
    for path in sorted((PACKAGE / part).rglob("*.py")):
        wrong = imported_parts(path) - ALLOWED[part] - SHARED - {part}
        if wrong:
            offenders[str(path.relative_to(PACKAGE))] = sorted(wrong)
    assert not offenders, offenders
