"""The deployment files agree with the code (Docker has no engine here, so we check them statically)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bookrec.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILES = sorted(ROOT.glob("Dockerfile.*"))
BOOKREC_SERVICES = ["api", "batch", "optimizer"]


def settings_env_names() -> set[str]:
    """Every environment variable the settings class reads."""
    names: set[str] = set()
    prefix = Settings.model_config["env_prefix"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        names.add(f"{prefix}{name}".upper())
    return names


def bookrec_help(args: list[str]) -> subprocess.CompletedProcess:
    # Strip options (and their values) so that `--help` applies to the command itself.
    words = []
    for word in args:
        if word.startswith("-"):
            break
        words.append(word)
    return subprocess.run(
        [sys.executable, "-m", "bookrec.cli", *words[1:], "--help"], capture_output=True, text=True, timeout=60
    )


def test_compose_has_the_five_services():
    assert set(SERVICES) == {"dragonfly", "api", "frontend", "batch", "optimizer"}
    assert SERVICES["dragonfly"]["image"].startswith("docker.dragonflydb.io/dragonflydb/dragonfly")


@pytest.mark.parametrize("service", BOOKREC_SERVICES)
def test_service_commands_are_real_cli_commands(service):
    command = SERVICES[service]["command"]
    assert command[0] == "bookrec"
    result = bookrec_help(command)
    assert result.returncode == 0, result.stderr
    # Every option the compose file passes must be one the command accepts.
    for option in [word for word in command if word.startswith("--")]:
        assert option in result.stdout, f"{service}: {option} is not an option of {' '.join(command[:2])}"


@pytest.mark.parametrize("service", BOOKREC_SERVICES)
def test_service_environment_is_read_by_settings(service):
    known = settings_env_names()
    for name in SERVICES[service].get("environment", {}):
        assert name in known, f"{service} sets {name}, which no setting reads"


def test_on_demand_services_carry_profiles():
    assert SERVICES["batch"]["profiles"] == ["batch"]
    assert SERVICES["optimizer"]["profiles"] == ["optimizer"]
    for service in ("api", "frontend", "dragonfly"):
        assert "profiles" not in SERVICES[service]


def test_dragonfly_port_is_not_published_and_password_is_supported():
    dragonfly = SERVICES["dragonfly"]
    assert "ports" not in dragonfly
    assert any("requirepass" in part for part in dragonfly["command"])
    assert "DRAGONFLY_PASSWORD" in SERVICES["api"]["environment"]["REDIS_URL"]


def test_ports_and_health_checks_match_the_api():
    from bookrec.api.main import create_app

    app = create_app(Settings(store_url="sqlite:///" + str(ROOT / "var" / "unused.sqlite3")))
    paths = set(app.openapi()["paths"])
    assert "/health" in paths
    api = SERVICES["api"]
    assert "8000:8000" in api["ports"]
    assert "--port" in api["command"] and api["command"][api["command"].index("--port") + 1] == "8000"
    health = " ".join(api["healthcheck"]["test"])
    assert "127.0.0.1:8000/health" in health
    assert "3000:3000" in SERVICES["frontend"]["ports"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "listen 3000;" in nginx and "proxy_pass http://api:8000/;" in nginx


def test_optimizer_config_is_shared_with_batch():
    batch_env = SERVICES["batch"]["environment"]
    optimizer_env = SERVICES["optimizer"]["environment"]
    assert batch_env["BOOKREC_TUNED_CONFIG_PATH"] == optimizer_env["BOOKREC_TUNED_CONFIG_PATH"]
    assert SERVICES["batch"]["volumes"] == SERVICES["optimizer"]["volumes"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_and_runs_a_real_command(dockerfile):
    text = dockerfile.read_text()
    for line in text.splitlines():
        if line.startswith("COPY"):
            sources = shlex.split(line)[1:-1]
            for source in sources:
                if source.startswith("--"):
                    continue
                assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
    cmd = re.search(r"^CMD (\[.*\])$", text, flags=re.M)
    if dockerfile.name == "Dockerfile.frontend":
        assert cmd is None  # nginx's own CMD
        return
    if dockerfile.name == "Dockerfile.base":
        assert "install_dependencies.py" in text
        return
    command = yaml.safe_load(cmd.group(1))
    assert command[0] == "bookrec"
    result = bookrec_help(command)
    assert result.returncode == 0, result.stderr
    # The service images compile the kernels at build time with a real command.
    assert "RUN bookrec warmup" in text
    assert bookrec_help(["bookrec", "warmup"]).returncode == 0
