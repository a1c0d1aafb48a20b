"""Data flows one way (data -> model -> batch -> store -> api -> web): no part imports a later one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bookrec"

# What each part may import besides itself and the shared modules (config, logging, exitcodes).
ALLOWED = {
    "contracts": set(),
    "data": {"contracts"},
    "model": {"contracts", "data"},
    "optimize": {"contracts", "data", "model"},
    "batch": {"contracts", "data", "model", "store"},
    "store": {"contracts"},
    "api": {"contracts", "data", "model", "store"},
    "web": {"contracts"},
}
SHARED = {"config", "logging", "exitcodes"}


def imported_modules(node: ast.AST) -> list[str]:
    """The absolute module names an import statement imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        for name in imported_modules(node):
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


def test_contracts_import_nothing_else_of_bookrec():
    """The bottom layer: not even the shared modules (config imports the contracts, not the reverse)."""
    offenders = {}
    for path in sorted((PACKAGE / "contracts").rglob("*.py")):
        wrong = imported_parts(path) - {"contracts"}
        if wrong:
            offenders[str(path.relative_to(PACKAGE))] = sorted(wrong)
    assert not offenders, offenders


def test_one_definition_of_the_recommendation_item():
    """The item's fields are spelled in bookrec.contracts.payloads only: a class named like it, or a
    literal naming its rating fields, anywhere else in src is a second definition."""
    classes, literals = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "RecommendationItem":
                classes.append(where)
            elif _names_the_item_fields(node):
                literals.append(where)
    assert classes == ["contracts/payloads.py"], classes
    assert set(literals) <= {"contracts/payloads.py"}, literals


def _names_the_item_fields(node: ast.AST) -> bool:
    """A JSON template, a dict literal or a call's keywords that spell an item's rating fields."""
    fields = {"predicted_rating", "confidence_interval"}
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
        return all(name in text for name in fields)
    if isinstance(node, ast.Dict):
        return fields <= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    if isinstance(node, ast.Call):
        return fields <= {k.arg for k in node.keywords}
    return False


def test_the_api_reads_the_store_through_its_interface_only():
    """The API imports `bookrec.store` (the interface both backends implement), never a module inside
    it: no backend (redis_store, sqlite_store), so no key layout or backend client."""
    offenders = {}
    for path in sorted((PACKAGE / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            inside = [n for n in imported_modules(node) if n.startswith("bookrec.store.")]
            if inside:
                offenders.setdefault(str(path.relative_to(PACKAGE)), []).extend(inside)
    assert not offenders, offenders


MAX_FUNCTION_LINES = 80


def test_no_function_outside_the_kernels_is_over_80_lines():
    """Long functions hide their steps; only a numba kernel may stay longer (where splitting it costs speed)."""
    kernels = PACKAGE / "model" / "kernels"
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(kernels):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)


def test_no_numba_kernel_outside_the_model():
    """Every compiled kernel lives in bookrec.model (bookrec/model/kernels): nothing else imports numba."""
    model = PACKAGE / "model"
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(model):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = imported_modules(node) + [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
            if any(n == "numba" or n.startswith(("numba.", "njit")) for n in names):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


MAX_KERNEL_POSITIONAL = 10


def kernel_calls(tree: ast.AST):
    """Calls to names imported from bookrec.model.kernels (``kernels.x(...)`` or ``x(...)``)."""
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bookrec.model":
                modules |= {a.asname or a.name for a in node.names if a.name == "kernels"}
            elif node.module.startswith("bookrec.model.kernels"):
                names |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id in names) or (
            isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules
        ):
            yield node


def test_no_kernel_call_passes_more_than_10_positional_arguments():
    """Kernels take small named tuples (a side's CSR arrays, a prior's forms, scratch buffers) and
    named flags, not long argument lists. A starred argument hides its count, so it is refused too."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in kernel_calls(ast.parse(path.read_text(), filename=str(path))):
            starred = any(isinstance(a, ast.Starred) for a in call.args)
            if starred or len(call.args) > MAX_KERNEL_POSITIONAL:
                offenders.append(f"{path.relative_to(PACKAGE)}:{call.lineno} {ast.unparse(call.func)} "
                                 f"({'starred' if starred else len(call.args)})")
    assert not offenders, "kernel calls with long argument lists:\n" + "\n".join(offenders)


# Arguments that a framework's callback signature requires but the body does not use.
VULTURE_KNOWN = {
    ("config.py", "dotenv_settings"),  # pydantic-settings' settings_customise_sources
    ("config.py", "file_secret_settings"),
    ("prefetch.py", "typingctx"),  # numba's @intrinsic signature
}


def test_vulture_finds_no_dead_code_beyond_the_known_callback_arguments():
    import re
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vulture", "--min-confidence", "80", str(PACKAGE)],
                         capture_output=True, text=True).stdout
    found = {(Path(m.group(1)).name, m.group(2)) for m in re.finditer(r"^(\S+?):\d+: unused \w+ '(\w+)'", out, re.M)}
    assert found == VULTURE_KNOWN, out
