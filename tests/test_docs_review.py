"""The user documentation and the deployment files name only what exists, with the values it has.

Checked against the real parts: the settings class, the command line's own `--help`, the API's
OpenAPI document, the install and CI scripts. Each test names the document and the line to fix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from bookrec.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "CONFIGURATION.md").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VARIABLE = re.compile(r"\bBOOKREC_[A-Z0-9_]*[A-Z0-9]\b")
SETTING_NAMES = {f"BOOKREC_{name.upper()}": name for name in Settings.model_fields}


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


@lru_cache(maxsize=None)
def help_text(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bookrec.cli", *words, "--help"], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "TERM": "dumb"})


# --- settings -------------------------------------------------------------------------------------


def test_every_setting_is_in_the_configuration_reference():
    named = set(VARIABLE.findall(CONFIGURATION))
    missing = sorted(variable for variable in SETTING_NAMES if variable not in named)
    assert not missing, f"docs/CONFIGURATION.md ('Every setting') leaves out {missing}"


@pytest.mark.parametrize("path", ["docs/DEPLOYMENT.md", "docker-compose.yml", "Dockerfile", "deploy/nginx.conf"])
def test_every_variable_the_deployment_files_name_is_a_setting(path):
    named = set(VARIABLE.findall((ROOT / path).read_text()))
    unknown = sorted(named - set(SETTING_NAMES) - {"BOOKREC_CONFIG"})
    assert not unknown, f"{path} names {unknown}, which no setting reads"


def table_rows(text: str) -> list[tuple[list[str], str]]:
    """(variables, default cell) of every row of the reference tables that starts with a variable."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| `BOOKREC_"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append((re.findall(r"`(BOOKREC_[A-Z0-9_]+)`", cells[0]), cells[1]))
    return rows


def same_value(documented: str, actual) -> bool:
    if isinstance(actual, bool):
        return documented == str(actual).lower()
    if isinstance(actual, (int, float)):
        try:
            return float(documented) == float(actual)
        except ValueError:
            return False
    if isinstance(actual, list):
        return [item.strip().strip('"') for item in documented.strip("[]").split(",")] == actual
    return documented.strip('"') == str(actual) if actual == "" else documented == str(actual)


def test_the_defaults_the_configuration_reference_gives_are_the_settings_defaults():
    rows = table_rows(CONFIGURATION)
    assert len(rows) > 40, "the reference tables were not found"
    checked = 0
    for variables, cell in rows:
        values = re.findall(r"`([^`]*)`", cell)
        fields = [Settings.model_fields[SETTING_NAMES[variable]] for variable in variables]
        defaults = [field.default_factory() if field.default_factory else field.default for field in fields]
        if any(default is None for default in defaults):
            # Unset by default: the cell says so in words (unset, the preset's, the tuner's file).
            assert re.search(r"unset|preset|tuner", cell), f"{variables}: default {cell!r}, but the setting is unset"
            continue
        if len(values) < len(variables):
            values = values * len(variables) if len(values) == 1 else values
        assert len(values) == len(variables), f"{variables}: cannot read the defaults in {cell!r}"
        for variable, value, default in zip(variables, values, defaults):
            assert same_value(value, default), f"docs/CONFIGURATION.md: {variable} defaults to {default!r}, not {value}"
            checked += 1
    assert checked > 40


def reads_of(name: str) -> int:
    """How many source files outside the settings themselves mention the setting's name."""
    count = 0
    for path in (ROOT / "src" / "bookrec").rglob("*.py"):
        if path.name == "config.py" or "contracts" in path.parts:
            continue
        # An attribute (settings.name) or a name in quotes (getattr, model_copy(update=...)); a local
        # variable of the same name is no read.
        if re.search(rf"(?<!Path)\.{name}\b|[\"']{name}[\"']", path.read_text()):
            count += 1
    return count


def test_every_documented_setting_is_read_by_the_code():
    """A setting no code reads would be sold as doing something (BOOKREC_HOME once was)."""
    for variables, _ in table_rows(CONFIGURATION):
        for variable in variables:
            assert reads_of(SETTING_NAMES[variable]) > 0, f"no code reads {variable}: remove the setting"


def test_the_unread_setting_check_sees_a_read_setting():
    assert reads_of("store_url") > 0 and reads_of("api_port") > 0
    assert reads_of("no_such_setting_anywhere") == 0


# --- the README's commands --------------------------------------------------------------------------


def test_the_quick_start_is_two_scripts_and_ci_runs_the_second():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = fenced_blocks(quick)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/run.sh", "bash scripts/test.sh"]
    run, test = (ROOT / "scripts" / "run.sh").read_text(), (ROOT / "scripts" / "test.sh").read_text()
    assert "exec .venv/bin/bookrec run" in run
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh\b", ci, flags=re.M), ".ci/run must run the README's test command"


def test_the_readme_names_every_package_the_test_script_installs():
    test = (ROOT / "scripts" / "test.sh").read_text()
    packages = set(re.findall(r"missing\+=\((\S+)\)", test))
    assert {"redis-server", "postgresql", "chromium"} <= packages
    for package in packages:
        assert f"`{package}`" in README, f"scripts/test.sh installs {package}; the README must say so"


def test_no_test_relies_on_a_server_it_did_not_start():
    """The machine's own PostgreSQL is not part of a fresh machine: the suite starts its own (as it
    does redis-server, whose default port appears in the store-URL parsing tests only as text)."""
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name != "test_docs_review.py":
            assert not re.search(r"(127\.0\.0\.1|localhost):5432\b|port=5432\b", path.read_text()), path.name


def readme_command_lines() -> list[str]:
    lines = []
    for block in fenced_blocks(README):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(("bookrec ", ".venv/bin/bookrec ")):
                lines.append(line.removeprefix(".venv/bin/"))
    return lines


def command_words(line: str) -> list[str]:
    words = []
    for word in line.split()[1:]:
        if not re.fullmatch(r"[a-z][a-z|.]*", word):
            break
        words.append(word)
    return words


def test_the_readme_shows_command_lines():
    lines = readme_command_lines()
    assert len(lines) >= 10
    assert command_words("bookrec store status | rollback") == ["store", "status"]
    assert command_words("bookrec data import BX-CSV-Dump.zip --out var/data") == ["data", "import"]


@pytest.mark.parametrize("line", readme_command_lines())
def test_every_command_option_and_choice_the_readme_shows_exists(line):
    words = command_words(line)
    *parents, last = words
    alternatives = [word for word in last.split("|") if word != "..."]
    for command in alternatives:
        result = help_text(*parents, command)
        assert result.returncode == 0, f"README: `bookrec {' '.join([*parents, command])}` is no command: {result.stderr}"
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", result.stdout), f"README: {option} is no option of {command}"
        for values in re.findall(r"--[a-z-]+ ([a-z]+(?:\|[a-z]+)+)", line):
            for value in values.split("|"):
                assert re.search(rf"\b{value}\b", result.stdout), f"README: {value} is no choice in `{line}`"


# --- images ---------------------------------------------------------------------------------------------


def test_the_image_health_check_asks_a_route_the_api_has_on_the_port_it_serves():
    from bookrec.api.main import create_app

    app = create_app(Settings(store_url="sqlite:///" + str(ROOT / "var" / "unused.sqlite3")))
    paths = set(app.openapi()["paths"])
    api_stage = DOCKERFILE.split("AS api\n", 1)[1].split("\nFROM ", 1)[0]
    checks = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", api_stage)
    assert checks, "the api image has no HTTP health check"
    port = re.search(r'"--port", "(\d+)"', api_stage).group(1)
    assert re.search(rf"^EXPOSE {port}$", api_stage, flags=re.M)
    for checked_port, path in checks:
        assert checked_port == port, f"the health check asks port {checked_port}, the API serves {port}"
        assert path in paths, f"the health check asks {path}, which is no route"


def test_the_image_paths_are_where_compose_mounts_the_shared_volume():
    """The image's defaults and the compose services' environment name the same files on /data."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    image_env = dict(re.findall(r"(BOOKREC_[A-Z_]+)=(\S+)", DOCKERFILE.split("AS app\n", 1)[1].split("\nFROM ", 1)[0]))
    for service in ("batch", "optimizer"):
        env = services[service]["environment"]
        mounts = {volume.split(":")[1] for volume in services[service]["volumes"]}
        assert "/data" in mounts
        for variable in ("BOOKREC_DATA_DIR", "BOOKREC_TUNED_CONFIG_PATH"):
            assert env[variable] == image_env[variable], f"{service}: {variable} differs from the image's"
            assert env[variable].startswith("/data/")
    storage = services["optimizer"]["environment"]["BOOKREC_OPTUNA_STORAGE"]
    assert image_env["BOOKREC_OPTUNA_STORAGE"] in storage and "sqlite:////data/" in storage
