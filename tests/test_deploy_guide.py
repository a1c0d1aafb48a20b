"""docs/DEPLOYMENT.md tells the truth: its curl examples return what it shows, its commands exist,
and the messages it quotes are the ones the system prints.

The curl examples run, with the real `curl` binary, against the real API (`bookrec serve` through
`tests.support.live_server`) on a real redis-server holding a version published by a real
`bookrec batch` on the data the guide's examples were made with (`bookrec data synth --preset
small`, seed 42, the quick start's own). The batch runs shorter chains than the `development` preset (BOOKREC_BURN_IN /
BOOKREC_N_SAMPLES) to fit the test budget: readers, books, bases and the response shapes depend
on the data only, while predicted ratings, intervals and metrics, which the chains decide, are
compared by type. The convention is written at the top of the guide's "Test the API" section.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from bookrec.cli import app
from bookrec.config import Settings
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE_PATH = ROOT / "docs" / "DEPLOYMENT.md"
GUIDE = GUIDE_PATH.read_text()
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
GUIDE_BASE = "http://localhost:8000"

# Strings whose value the guide shows literally; every other string is compared by type.
STABLE_STRING_KEYS = {"status", "store", "reason", "detail", "basis", "rank_by", "environment", "preset", "backend", "input"}
# Payload fields that may be null for some books (ARCHITECTURE.md section 3).
NULLABLE_KEYS = {"year", "image_url", "publisher", "mean_rating", "note"}
VERSION_ID = re.compile(r"\b\d{8}T\d{6}-[0-9a-f]{4}\b")
CLI_ENV = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}  # rich must not wrap messages

EXAMPLE = re.compile(
    r"(?:<!--\s*example:(?P<attrs>[^>]*?)-->\s*\n)?"
    r"```bash\n(?P<command>curl [^\n]*)\n```\n```(?P<kind>json|text)\n(?P<body>.*?)\n```",
    re.S,
)


@dataclass
class Example:
    command: str
    kind: str
    body: str
    status: int
    store: str  # published | empty | down

    @property
    def id(self) -> str:
        return f"{self.store}:{self.status}:{self.command.split('localhost:8000', 1)[-1][:60]}"


def guide_examples() -> list[Example]:
    examples = []
    for match in EXAMPLE.finditer(GUIDE):
        attrs = dict(pair.split("=", 1) for pair in (match["attrs"] or "").split())
        examples.append(Example(match["command"], match["kind"], match["body"], int(attrs.get("status", 200)),
                                attrs.get("store", "published")))
    return examples


EXAMPLES = guide_examples()


def bash_lines() -> list[str]:
    """Every command line of the guide's ```bash blocks (comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)\n```", GUIDE, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def settings_env_names() -> set[str]:
    """Every environment variable the settings read (BOOKREC_<field> and the spec's aliases)."""
    names = {f"{Settings.model_config['env_prefix']}{name}".upper() for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        names.update(c.upper() for c in getattr(field.validation_alias, "choices", []) if isinstance(c, str))
    return names


# --- the convention itself -----------------------------------------------------------------------


def test_guide_has_the_spec_sections():
    headings = re.findall(r"^##+ (.+)$", GUIDE, re.M)
    for wanted in ("Quick start", "Build the base image", "Tune the hyperparameters", "Train and publish",
                   "Test the API", "Production mode", "Monitoring", "Scaling", "More than one machine",
                   "Resource requirements", "Troubleshooting"):
        assert any(wanted in h for h in headings), f"no section {wanted!r} in {headings}"


def test_every_curl_line_is_an_example():
    """A curl line outside the convention would go untested."""
    curl_lines = [line for line in bash_lines() if line.startswith("curl ")]
    assert sorted(curl_lines) == sorted(e.command for e in EXAMPLES)
    assert len(EXAMPLES) >= 10
    assert {e.store for e in EXAMPLES} == {"published", "empty", "down"}
    for path in ("/health", "/model/info", "/recommend/", "/users", "/recommend/cold-start", "/books/search", "/stats"):
        assert any(GUIDE_BASE + path in e.command for e in EXAMPLES), f"no curl example for {path}"


# --- running the examples ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """redis db 0: a version published by a real batch; db 1: nothing published."""
    workdir = tmp_path_factory.mktemp("guide")
    data = workdir / "normalized"
    subprocess.run([sys.executable, "-m", "bookrec.cli", "data", "synth", "--preset", "small", "--seed", "42",
                    "--out", str(data)], check=True, capture_output=True, env=CLI_ENV, cwd=workdir)
    server = RedisServer().start()
    try:  # stop the server even when the batch fails
        published = server.url
        env = {
            **CLI_ENV, "BOOKREC_TUNED_CONFIG_PATH": str(workdir / "no-tuned-params.json"),
            "ENVIRONMENT": "development", "BOOKREC_BURN_IN": "10", "BOOKREC_N_SAMPLES": "10",
        }
        result = subprocess.run([sys.executable, "-m", "bookrec.cli", "batch", "--data", str(data), "--store",
                                 published, "--quiet", "--force"],  # short chains: the gate would refuse them
                                capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        yield {"published": published, "empty": published[: -len("/0")] + "/1",
               "down": f"redis://127.0.0.1:{free_port()}/0", "workdir": workdir}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def servers(stores):
    started: dict[str, LiveServer] = {}

    def get(state: str) -> LiveServer:
        if state not in started:
            started[state] = LiveServer(stores[state], store_timeout_seconds=0.5).start()
        return started[state]

    yield get
    for server in started.values():
        server.stop()


def normalise(text: str) -> str:
    return VERSION_ID.sub("<version>", text)


def assert_matches(shown: Any, real: Any, path: str = "$", key: str | None = None) -> None:
    """`real` has the shape of `shown`: same keys and list lengths, stable strings equal, types elsewhere."""
    where = f"at {path}"
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{where}: expected an object, got {real!r}"
        assert set(real) == set(shown), f"{where}: keys differ: guide has {sorted(set(shown) - set(real))} " \
                                        f"that the API does not, the API has {sorted(set(real) - set(shown))}"
        for k in shown:
            assert_matches(shown[k], real[k], f"{path}.{k}", k)
    elif isinstance(shown, list):
        assert isinstance(real, list), f"{where}: expected a list, got {real!r}"
        assert len(real) == len(shown), f"{where}: {len(real)} items, the guide shows {len(shown)}"
        for i, (s, r) in enumerate(zip(shown, real)):
            assert_matches(s, r, f"{path}[{i}]", key)
    elif shown is None or real is None:
        assert shown is real or key in NULLABLE_KEYS, f"{where}: guide shows {shown!r}, the API answered {real!r}"
    elif isinstance(shown, bool):
        assert isinstance(real, bool), f"{where}: expected a boolean, got {real!r}"
    elif isinstance(shown, int):
        assert isinstance(real, int) and not isinstance(real, bool), f"{where}: expected an integer, got {real!r}"
    elif isinstance(shown, float):
        assert isinstance(real, (int, float)) and not isinstance(real, bool), f"{where}: expected a number, got {real!r}"
    elif isinstance(shown, str):
        assert isinstance(real, str), f"{where}: expected a string, got {real!r}"
        if key in STABLE_STRING_KEYS:
            assert normalise(real) == normalise(shown), f"{where}: the API says {real!r}, the guide {shown!r}"
    else:  # pragma: no cover - json.loads returns nothing else
        raise AssertionError(f"{where}: unexpected value {shown!r}")


def curl_status(command: str) -> int:
    """The HTTP status of the example's request: its curl part (before any pipe), re-run with -w."""
    words = shlex.split(command)
    curl_words = words[: words.index("|")] if "|" in words else words
    result = subprocess.run([*curl_words, "-s", "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_curl_is_installed():
    assert shutil.which("curl"), "the guide's examples need curl (apt-get install curl)"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_curl_example_returns_what_the_guide_shows(example: Example, servers):
    server = servers(example.store)
    assert GUIDE_BASE in example.command
    command = example.command.replace(GUIDE_BASE, server.url)
    # The exact line, through a shell, as a reader would paste it (quotes, pipes to jq and all).
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stderr}\n{server.log()}"
    assert curl_status(command) == example.status
    if example.kind == "json" and os.environ.get("BOOKREC_REGENERATE_GUIDE") == "1":
        _rewrite_example(example, json.loads(result.stdout))  # a maintainer's tool, never set in CI
    elif example.kind == "json":
        assert_matches(json.loads(example.body), json.loads(result.stdout))
    else:
        printed = set(result.stdout.splitlines())
        for line in example.body.splitlines():
            assert line in printed, f"{line!r} is not in the output of {command}:\n{result.stdout}"


def _rewrite_example(example: Example, real: Any) -> None:
    """Puts the real answer under the example's command in the guide (BOOKREC_REGENERATE_GUIDE=1)."""
    text = GUIDE_PATH.read_text()
    old = f"{example.command}\n```\n```json\n{example.body}\n```"
    assert text.count(old) == 1, f"cannot find the example {example.id} once in the guide"
    new = f"{example.command}\n```\n```json\n{json.dumps(real, indent=2, ensure_ascii=False)}\n```"
    GUIDE_PATH.write_text(text.replace(old, new))


def test_matching_rules_catch_differences():
    """The comparison itself can fail: a missing key, a changed status, a wrong type, a shorter list."""
    shown = {"status": "ok", "model_version": "20260101T000000-abcd", "items": [{"rating": 7.5, "n": 3}]}
    assert_matches(shown, {"status": "ok", "model_version": "20261126T090137-d964", "items": [{"rating": 8, "n": 4}]})
    for real in (
        {"status": "ok", "model_version": "x", "items": [{"rating": 7.5}]},
        {"status": "unavailable", "model_version": "x", "items": [{"rating": 7.5, "n": 3}]},
        {"status": "ok", "model_version": "x", "items": [{"rating": "7.5", "n": 3}]},
        {"status": "ok", "model_version": "x", "items": []},
        {"status": "ok", "model_version": None, "items": [{"rating": 7.5, "n": 3}]},
    ):
        with pytest.raises(AssertionError):
            assert_matches(shown, real)


# --- commands ------------------------------------------------------------------------------------


def bookrec_invocations() -> list[list[str]]:
    """The words from `bookrec` on, for every guide line that runs the bookrec CLI."""
    found = []
    for line in bash_lines():
        words = shlex.split(line, comments=True)
        if "bookrec" in words:
            words = words[words.index("bookrec") + 1:]
            if ">>" in words:
                words = words[: words.index(">>")]
            found.append(words)
    return found


def command_path(words: list[str]) -> list[str]:
    """The subcommand names at the start of `words` (e.g. ["data", "import"])."""
    command = get_command(app)
    path = []
    for word in words:
        # a group has `commands` (typer ships its own copy of click, so no isinstance check)
        if word in getattr(command, "commands", {}):
            command = command.commands[word]
            path.append(word)
        else:
            break
    return path


BOOKREC_LINES = bookrec_invocations()


def test_guide_runs_the_commands_it_should():
    paths = {" ".join(command_path(words)) for words in BOOKREC_LINES}
    assert {"data import", "data synth", "batch", "store rollback", "store status"} <= paths


@pytest.mark.parametrize("words", BOOKREC_LINES, ids=[" ".join(w) for w in BOOKREC_LINES])
def test_bookrec_command_lines_parse(words):
    path = command_path(words)
    assert path, f"`bookrec {' '.join(words)}` names no bookrec command"
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0, result.output
    for word in words[len(path):]:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.output), \
                f"{option} is not an option of `bookrec {' '.join(path)}`"


# Options of `docker compose` itself (before the subcommand) that take a value.
COMPOSE_GLOBAL_OPTIONS = {"--profile", "-f", "--file", "-p", "--project-name", "--env-file"}


def compose_invocations() -> list[tuple[dict[str, str], list[str], list[str]]]:
    """(host environment assignments, profiles given, words from the subcommand on) for every compose line."""
    found = []
    for line in bash_lines():
        words = shlex.split(line, comments=True)
        if "compose" not in words or "docker" not in words:
            continue
        start = words.index("docker")
        assignments = dict(w.split("=", 1) for w in words[:start] if "=" in w)
        rest = words[words.index("compose") + 1:]
        profiles = []
        while rest and rest[0].startswith("-"):
            assert rest[0] in COMPOSE_GLOBAL_OPTIONS, f"`{line}`: unknown docker compose option {rest[0]}"
            if rest[0] == "--profile":
                profiles.append(rest[1])
            rest = rest[2:]
        found.append((assignments, profiles, rest))
    return found


def compose_profiles() -> set[str]:
    return {profile for service in COMPOSE["services"].values() for profile in service.get("profiles", [])}


def test_compose_lines_name_real_services_and_settings():
    services = set(COMPOSE["services"])
    known_env = settings_env_names()
    seen_run = set()
    seen_profiles = set()
    for assignments, profiles, words in compose_invocations():
        # A variable set on the host only matters if docker-compose.yml interpolates it.
        for name in assignments:
            assert "${" + name in COMPOSE_TEXT, f"{name}=... has no effect: docker-compose.yml never reads ${{{name}}}"
        for profile in profiles:
            assert profile in compose_profiles(), f"no service carries the profile {profile!r}"
        seen_profiles.update(profiles)
        verb = words[0]
        if verb in {"run", "exec", "logs", "restart", "ps", "up"}:
            rest = words[1:]
            named = []
            i = 0
            while i < len(rest):
                word = rest[i]
                if word in {"-v", "-e", "--scale"}:
                    if word == "-e":
                        assert rest[i + 1].split("=", 1)[0] in known_env, f"{rest[i + 1]} is not a setting"
                    if word == "--scale":
                        scaled = rest[i + 1].split("=", 1)[0]
                        assert scaled in services, f"`--scale {rest[i + 1]}`: no service {scaled!r}"
                        assert "container_name" not in COMPOSE["services"][scaled], f"{scaled} cannot be scaled"
                    i += 2
                    continue
                if word.startswith("-"):
                    i += 1
                    continue
                named.append(word)
                if verb in {"run", "exec"}:
                    break  # what follows is the command run inside the container
                i += 1
            for service in named:
                assert service in services, f"`docker compose {' '.join(words)}`: no service {service!r}"
                # `up` starts a service of a profile only when its profile is given (run targets it directly)
                needed = COMPOSE["services"][service].get("profiles")
                if verb == "up" and needed:
                    assert set(needed) & set(profiles), f"`docker compose {' '.join(words)}`: {service} needs " \
                                                        f"--profile {needed[0]}"
            if verb == "run":
                seen_run.add(named[0])
    assert {"batch", "optimizer"} <= seen_run
    assert "cluster" in seen_profiles


def test_variables_the_guide_writes_to_env_are_read_by_compose():
    """`echo "NAME=..." >> .env` only matters if docker-compose.yml interpolates ${NAME}."""
    written = []
    for line in bash_lines():
        match = re.match(r"""echo ["']?([A-Z][A-Z0-9_]*)=.*>> \.env$""", line)
        if match:
            written.append(match.group(1))
    assert {"DRAGONFLY_PASSWORD", "POSTGRES_PASSWORD", "BOOKREC_OPTUNA_STORAGE", "BOOKREC_TUNED_FROM"} <= set(written)
    for name in written:
        assert "${" + name in COMPOSE_TEXT, f"the guide writes {name} to .env, which docker-compose.yml never reads"


def guide_section(title: str) -> str:
    start = GUIDE.index(f"\n## {title}\n")
    end = GUIDE.find("\n## ", start + 1)
    return GUIDE[start:end if end > 0 else None]


def test_cluster_section_names_real_variables_addresses_and_credentials():
    section = guide_section("More than one machine")
    # Every variable it names is a setting or a value docker-compose.yml interpolates.
    names = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", section))
    assert {"BOOKREC_DASK_SCHEDULER", "BOOKREC_N_CHAINS", "DASK_WORKER_THREADS", "DASK_WORKER_MEMORY"} <= names
    for name in names:
        assert name in settings_env_names() or "${" + name in COMPOSE_TEXT, f"{name} is neither a setting nor in Compose"
    services = COMPOSE["services"]
    # The scheduler address the guide gives the batch is the Compose scheduler's.
    port = services["dask-scheduler"]["command"][services["dask-scheduler"]["command"].index("--port") + 1]
    for host, found in re.findall(r"tcp://([\w.-]+):(\d+)", section):
        assert found == str(port), f"tcp://{host}:{found}: the scheduler listens on {port}"
        assert host in {"HOST", "dask-scheduler"} and (host != "dask-scheduler" or host in services)
    assert f"tcp://dask-scheduler:{port}" in " ".join(map(str, services["dask-worker"]["command"]))
    # The study's URL for the Compose database has that database's user and name.
    env = services["postgres"]["environment"]
    urls = re.findall(r"postgresql://([^:@\s]+):[^@\s]*@postgres:5432/([\w-]+)", section)
    assert urls
    for user, database in urls:
        assert (user, database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    # The worker's size the guide states is the one docker-compose.yml sets.
    assert "--memory-limit`, default `6GiB`" in section and "${DASK_WORKER_MEMORY:-6GiB}" in COMPOSE_TEXT
    assert "default `6800m`" in section and "${DASK_WORKER_MEM_LIMIT:-6800m}" in COMPOSE_TEXT


# --- the messages the guide quotes ---------------------------------------------------------------


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bookrec.cli", *args], capture_output=True, text=True,
                          env={**CLI_ENV, **env}, cwd=cwd, timeout=120)


def assert_quoted(printed: str) -> None:
    # Log records (JSON lines off a terminal) come before the message; the guide quotes the message.
    printed = "\n".join(x for x in printed.splitlines() if not x.startswith('{"time"'))
    line = " ".join(printed.split())  # as one line, however the terminal wrapped it
    assert line, "the command printed nothing"
    assert normalise(line) in normalise(GUIDE), f"the guide does not quote what the system prints:\n{line}"


def run_in_process(*args: str):
    """The CLI in this process (typer's runner; stderr kept apart), for commands that need no isolation."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400", "NO_COLOR": "1"}, terminal_width=400)


def test_rollback_messages_are_quoted_verbatim(stores):
    one_version = run_in_process("store", "rollback", "--store", stores["published"])
    assert one_version.exit_code == 1
    assert_quoted(one_version.stderr)
    nothing = run_in_process("store", "rollback", "--store", stores["empty"])
    assert nothing.exit_code == 1
    assert_quoted(nothing.stderr)


def test_store_unreachable_message_is_quoted_verbatim():
    port = free_port()
    result = run_in_process("store", "status", "--store", f"redis://127.0.0.1:{port}/0")
    assert result.exit_code == 1
    # The guide shows it for the default Redis port.
    assert_quoted(result.stderr.replace(f"127.0.0.1:{port}", "127.0.0.1:6379"))


def test_missing_data_message_is_quoted_verbatim(stores, tmp_path):
    # A subprocess: the batch reads its settings (tuned file, preset) from a clean environment.
    missing = tmp_path / "normalized"
    result = run_cli("batch", "--data", str(missing), "--store", stores["empty"], "--quiet", cwd=tmp_path,
                     BOOKREC_TUNED_CONFIG_PATH=str(tmp_path / "none.json"))
    assert result.returncode == 2  # bad input (README exit codes)
    # In the containers the data directory is /data/normalized.
    assert_quoted(result.stderr.replace(str(missing), "/data/normalized"))


def test_docker_build_lines_use_real_files_and_the_base_tag_compose_expects():
    builds = [shlex.split(line) for line in bash_lines() if line.startswith("docker build")]
    assert builds, "the guide shows no `docker build`"
    base_image = {s.get("build", {}).get("args", {}).get("BASE_IMAGE") for s in COMPOSE["services"].values()} - {None}
    for words in builds:
        dockerfile = words[words.index("-f") + 1]
        assert (ROOT / dockerfile).is_file(), f"{dockerfile} does not exist"
        if dockerfile == "Dockerfile.base":
            assert {words[words.index("-t") + 1]} == base_image, "the base image tag differs from docker-compose.yml"
