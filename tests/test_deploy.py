"""The deployment files agree with the code (Docker has no engine here, so we check them statically)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bookrec.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NGINX = (ROOT / "deploy" / "nginx.conf").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BOOKREC_SERVICES = ["api", "batch", "optimizer"]
DASK_SERVICES = ["dask-scheduler", "dask-worker"]


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


def test_compose_has_the_nine_services():
    assert set(SERVICES) == {"dragonfly", "api", "frontend", "batch", "optimizer", "jupyter", "postgres",
                             "dask-scheduler", "dask-worker"}
    assert SERVICES["dragonfly"]["image"].startswith("docker.dragonflydb.io/dragonflydb/dragonfly")
    assert SERVICES["postgres"]["image"].startswith("postgres:16.")


@pytest.mark.parametrize("service", BOOKREC_SERVICES)
def test_service_commands_are_real_cli_commands(service):
    command = SERVICES[service]["command"]
    assert command[0] == "bookrec"
    result = bookrec_help(command)
    assert result.returncode == 0, result.stderr
    # Every option the compose file passes must be one the command accepts.
    for option in [word for word in command if word.startswith("--")]:
        assert option in result.stdout, f"{service}: {option} is not an option of {' '.join(command[:2])}"


@pytest.mark.parametrize("service", [*BOOKREC_SERVICES, "dask-worker"])
def test_service_environment_is_read_by_settings(service):
    known = settings_env_names() | {"NUMBA_NUM_THREADS"}  # read by numba itself
    for name in SERVICES[service].get("environment", {}):
        assert name in known, f"{service} sets {name}, which no setting reads"


def test_on_demand_services_carry_profiles():
    assert SERVICES["batch"]["profiles"] == ["batch"]
    assert SERVICES["optimizer"]["profiles"] == ["optimizer"]
    for service in DASK_SERVICES:
        assert SERVICES[service]["profiles"] == ["cluster"], service
    # the tuner's shared study: with the optimizer alone, or with the cluster
    assert sorted(SERVICES["postgres"]["profiles"]) == ["cluster", "optimizer"]
    # jupyter too: the spec's development mode starts it with plain `docker compose up -d`.
    for service in ("api", "frontend", "dragonfly", "jupyter"):
        assert "profiles" not in SERVICES[service]


def test_dragonfly_port_is_not_published_and_password_is_supported():
    dragonfly = SERVICES["dragonfly"]
    assert "ports" not in dragonfly
    # Dragonfly reads DFLY_<flag> from its environment; the value comes from .env.
    assert dragonfly["environment"]["DFLY_requirepass"] == "${DRAGONFLY_PASSWORD:-}"
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
    # nginx listens on 3000 inside (a port an unprivileged user may bind), published as 3000.
    assert "3000:3000" in SERVICES["frontend"]["ports"]
    assert "listen 3000;" in NGINX
    assert "http://api:8000" in NGINX


# --- the Dask cluster and the tuner's database -------------------------------------------------------


def dask_help(command: list) -> str:
    """`dask scheduler --help` / `dask worker --help`, from the dask the images install."""
    result = subprocess.run([sys.executable, "-m", "dask", *command[1:2], "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def option_value(command: list, option: str) -> str:
    assert option in command, f"{option} not in {command}"
    return with_defaults(command[command.index(option) + 1])


@pytest.mark.parametrize("service", DASK_SERVICES)
def test_dask_services_run_the_batch_image_with_real_dask_commands(service):
    spec = SERVICES[service]
    # The workers unpickle the driver's tasks, so they import the very bookrec (and dask) of the batch.
    assert spec["build"] == SERVICES["batch"]["build"]
    assert spec["image"] == SERVICES["batch"]["image"]
    command = [str(word) for word in spec["command"]]
    assert command[0] == "dask"
    pins = locked()
    assert {"dask", "distributed"} <= set(pins), "the images need dask and distributed for `dask ...`"
    assert pins["dask"][0] == pins["distributed"][0], "dask and distributed are released together"
    usage = dask_help(command)
    for option in [word for word in command if word.startswith("--")]:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", usage), f"{service}: {option} is not an option of dask"


def test_scheduler_and_dashboard_ports_stay_on_the_compose_network():
    scheduler = [str(word) for word in SERVICES["dask-scheduler"]["command"]]
    assert scheduler[:2] == ["dask", "scheduler"]
    assert option_value(scheduler, "--port") == "8786"
    assert option_value(scheduler, "--dashboard-address") == ":8787"
    health = " ".join(SERVICES["dask-scheduler"]["healthcheck"]["test"])
    assert "8786" in health
    # Pickled tasks: nothing of the cluster, nor the database, is published to the host.
    for name in ("postgres", *DASK_SERVICES):
        assert "ports" not in SERVICES[name], f"{name} publishes a port"
    published = [str(port) for service in SERVICES.values() for port in service.get("ports", [])]
    for port in ("8786", "8787", "5432"):
        assert not [p for p in published if port in p], f"port {port} is published: {published}"


def test_workers_join_the_scheduler_and_reach_the_store():
    worker = SERVICES["dask-worker"]
    command = [str(word) for word in worker["command"]]
    assert command[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert "container_name" not in worker, "`--scale dask-worker=N` needs Compose to name the containers"
    # one worker process per container, sized by variables
    assert option_value(command, "--nworkers") == "1"
    threads = option_value(command, "--nthreads")
    assert int(threads) >= 1 and "${" in command[command.index("--nthreads") + 1]
    from dask.utils import parse_bytes

    limit = command[command.index("--memory-limit") + 1]
    assert "${" in limit
    dask_limit = parse_bytes(with_defaults(limit))
    assert dask_limit >= 4 * 2**30, "at least 4 GB per worker (docs/DEPLOYMENT.md, More than one machine)"
    # Dask's nanny acts at its limit, before the container's ceiling makes the kernel kill the worker.
    assert megabytes(with_defaults(worker["mem_limit"])) * 2**20 > dask_limit
    assert float(with_defaults(worker["cpus"])) == float(threads)
    assert worker["depends_on"]["dragonfly"]["condition"] == "service_healthy"
    assert worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    # with a redis:// store each worker writes its shard into the pending version: the batch's store
    assert worker["environment"]["REDIS_URL"] == SERVICES["batch"]["environment"]["REDIS_URL"]
    assert "networks" not in worker and "networks" not in SERVICES["dragonfly"], "one network for all"


def test_postgres_keeps_the_study_in_a_volume_behind_a_health_check():
    postgres = SERVICES["postgres"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in postgres["volumes"]}
    assert mounts.get("/var/lib/postgresql/data") in COMPOSE["volumes"]
    health = " ".join(postgres["healthcheck"]["test"])
    assert "pg_isready" in health
    env = postgres["environment"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:-[^}]+\}", env["POSTGRES_PASSWORD"]), "the password comes from .env"
    assert env["POSTGRES_USER"] and env["POSTGRES_DB"]


def test_batch_passes_the_scheduler_and_the_tuned_study():
    env = SERVICES["batch"]["environment"]
    # Empty unless set on the host: one process, and the local tuned file.
    assert env["BOOKREC_DASK_SCHEDULER"] == "${BOOKREC_DASK_SCHEDULER:-}"
    assert env["BOOKREC_TUNED_FROM"] == "${BOOKREC_TUNED_FROM:-}"
    assert "BOOKREC_OPTUNA_STORAGE" in SERVICES["optimizer"]["environment"]


def test_an_empty_tuned_from_means_the_local_tuned_file(tmp_path, monkeypatch):
    """Compose passes BOOKREC_TUNED_FROM="" when it is not set: the batch must read its tuned file, not fail."""
    from bookrec.batch.presets import resolve_parameters

    tuned = tmp_path / "tuned-params.json"
    tuned.write_text(json.dumps({"params": {"n_factors": 7}, "study": "bookrec"}))
    monkeypatch.setenv("BOOKREC_TUNED_FROM", "")
    monkeypatch.delenv("BOOKREC_N_FACTORS", raising=False)
    settings = Settings(tuned_config_path=str(tuned))
    assert settings.tuned_from == ""
    resolved = resolve_parameters(settings, "development")
    assert resolved.tuned["source"] == "file" and resolved.n_factors == 7


def test_optimizer_config_is_shared_with_batch():
    batch_env = SERVICES["batch"]["environment"]
    optimizer_env = SERVICES["optimizer"]["environment"]
    assert batch_env["BOOKREC_TUNED_CONFIG_PATH"] == optimizer_env["BOOKREC_TUNED_CONFIG_PATH"]
    assert "bookrec-data:/data" in SERVICES["batch"]["volumes"]
    assert "bookrec-data:/data" in SERVICES["optimizer"]["volumes"]


# --- the Dockerfile --------------------------------------------------------------------------------


def dockerfile_args() -> dict[str, str]:
    """Default values of the global ARGs (those before the first FROM)."""
    preamble = DOCKERFILE.split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", preamble, flags=re.M))


def dockerfile_stages() -> dict[str, dict]:
    """Each stage: its base (ARGs substituted), and its instructions in order (continuations joined)."""
    args = dockerfile_args()
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"FROM (\S+) AS (\w+)$", line)
        if match:
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = stages[match.group(2)] = {"base": base, "lines": []}
        elif current is not None:
            current["lines"].append(line)
    return stages


STAGES = dockerfile_stages()
PYTHON_TARGETS = {"api": ["bookrec", "serve"], "batch": ["bookrec", "batch"], "optimizer": ["bookrec", "optimize"]}


def stage_chain(name: str) -> list[str]:
    """The stage and the stages it is built on, base first."""
    chain = [name]
    while STAGES[chain[0]]["base"] in STAGES:
        chain.insert(0, STAGES[chain[0]]["base"])
    return chain


def lines_of(name: str) -> list[str]:
    return [line for stage in stage_chain(name) for line in STAGES[stage]["lines"]]


def test_compose_builds_every_image_from_the_dockerfile_targets():
    for service in ["api", "batch", "optimizer", "frontend", "jupyter"]:
        build = SERVICES[service]["build"]
        assert build["context"] == "."
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["target"] == service and service in STAGES
        assert "args" not in build, "no image has to be built by hand first"
    assert not list(ROOT.glob("Dockerfile.*")), "one Dockerfile, a target per service"


def test_dockerfile_copies_existing_files_only():
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY"):
            sources = [word for word in shlex.split(line)[1:-1] if not word.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
                assert not dockerignored(source), f"Dockerfile copies {source}, which .dockerignore excludes"


@pytest.mark.parametrize("target", PYTHON_TARGETS)
def test_python_targets_run_real_commands_as_a_user(target):
    lines = lines_of(target)
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    command = yaml.safe_load(cmd[len("CMD "):])
    assert command[:2] == PYTHON_TARGETS[target]
    result = bookrec_help(command)
    assert result.returncode == 0, result.stderr
    for option in [word for word in command if word.startswith("--")]:
        assert option in result.stdout
    # The kernels are compiled at build time with a real command, as root, before dropping to the user.
    assert "RUN bookrec warmup" in " ".join(lines)
    assert bookrec_help(["bookrec", "warmup"]).returncode == 0
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_jupyter_serves_the_notebooks_with_a_token_as_a_user():
    jupyter = SERVICES["jupyter"]
    assert "8888:8888" in jupyter["ports"]
    assert jupyter["environment"]["JUPYTER_TOKEN"].startswith("${JUPYTER_TOKEN")
    lines = lines_of("jupyter")
    assert stage_chain("jupyter")[:2] == ["deps", "app"], "bookrec from the locked dependencies"
    workdir = [line.split()[1] for line in lines if line.startswith("WORKDIR ")][-1]
    assert f"./notebooks:{workdir}" in jupyter["volumes"]
    assert (ROOT / "notebooks" / "quickstart.ipynb").exists()
    command = yaml.safe_load([line for line in lines if line.startswith("CMD ")][-1][len("CMD "):])
    assert command[:2] == ["jupyter", "lab"] and "--port=8888" in command and "--ip=0.0.0.0" in command
    # Nothing may switch the token off: an empty token means no login on a published port.
    assert not [word for word in command if "token" in word.lower() or "password" in word.lower()]
    assert "token" not in " ".join(map(str, jupyter.get("command", []))).lower()
    install = next(line for line in lines if "[notebook]" in line)
    assert "requirements.lock" in install and "pip check" in install
    assert "notebook" in PYPROJECT["project"]["optional-dependencies"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied():
    lines = lines_of("api")
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    lock_copy = next(i for i in copies if "requirements.lock" in lines[i])
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN ") and "-r requirements.lock" in line)
    assert lock_copy < install
    for flag in ("--require-hashes", "--no-deps", "--only-binary :all:"):
        assert flag in lines[install]
    # Nothing else reaches the image before the dependencies are installed, so a source or README
    # edit reuses the dependency layer.
    for i in copies:
        if i < install:
            assert shlex.split(lines[i])[1:-1] == ["requirements.lock"], lines[i]
    later = " ".join(lines[i] for i in copies if i > install)
    for path in ("pyproject.toml", "README.md", "src"):
        assert path in later
    package_install = next(line for line in lines if "pip install" in line and "--no-deps" in line and " ." in line)
    assert "--no-build-isolation" in package_install and "pip check" in package_install


# --- the lock file ---------------------------------------------------------------------------------


def locked(lock: str = "requirements.lock") -> dict[str, tuple[str, list[str]]]:
    """A lock file as {name: (version, hashes)}."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / lock).read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("--hash") else line
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)(\s*;.*)?", requirement.strip())
        assert match, f"{lock}: {line!r} is not an exact pin"
        assert not match.group(3), f"{lock} is made for one platform and Python: {line!r}"
        pins[canonicalize_name(match.group(1))] = (match.group(2), [h.strip() for h in options])
    return pins


def test_lock_pins_every_dependency_with_hashes():
    pins = locked()
    assert len(pins) > 30
    for name, (version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["postgres"],
              *PYPROJECT["build-system"]["requires"]]
    for spec in wanted:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run bash scripts/lock.sh"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name][0]}, outside pyproject.toml's {requirement.specifier}"
    # what the extras in the requirements (uvicorn[standard], redis[hiredis], psycopg[binary]) pull in
    assert {"uvloop", "httptools", "watchfiles", "hiredis", "psycopg-binary"} <= set(pins)


def test_the_test_lock_pins_the_test_extras_and_agrees_with_the_image_lock():
    """CI and the quick start install requirements-test.lock: the image's pins plus the test tools."""
    runtime, test = locked(), locked("requirements-test.lock")
    assert {name: pin for name, pin in test.items() if name in runtime} == runtime
    extras = PYPROJECT["project"]["optional-dependencies"]
    for spec in [*extras["test"], *extras["bench"], *extras["bench-peers"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in test, f"{requirement.name} is not in requirements-test.lock: run bash scripts/lock.sh"
        assert requirement.specifier.contains(test[name][0], prereleases=True), name


def test_install_script_installs_the_locks_with_their_hashes():
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "--require-hashes -r \"$LOCK\"" in script
    assert "LOCK=requirements.lock" in script and "LOCK=requirements-test.lock" in script
    assert "--no-deps --no-build-isolation -e ." in script
    assert "bash scripts/install.sh test" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_lock_is_made_by_the_lock_script_for_the_images_python():
    header = (ROOT / "requirements.lock").read_text().splitlines()[:2]
    assert "uv" in header[0] and "bash scripts/lock.sh" in header[1]
    script = (ROOT / "scripts" / "lock.sh").read_text()
    assert "uv pip compile" in script and "--generate-hashes" in script and "--extra postgres" in script
    python_image = dockerfile_args()["PYTHON_IMAGE"]
    version = re.search(r"--python-version (\S+)", script).group(1)
    assert python_image.startswith(f"python:{version}-"), f"the lock is made for Python {version}, the image is {python_image}"
    build_in = [line for line in (ROOT / "deploy" / "build-requirements.in").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert build_in == PYPROJECT["build-system"]["requires"]


# --- .dockerignore ---------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes `path` or a folder above it (Docker's rules without `!`)."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and (
                    fnmatch.fnmatch(prefix, pattern[3:]) or fnmatch.fnmatch(prefix, pattern))):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatch(Path(prefix).name, pattern[3:]):
                return True
    return False


@pytest.mark.parametrize("path", [".git", ".venv", "var", "var/bookrec.sqlite3", ".env", "artifacts/screenshots",
                                  ".pytest_cache", ".hypothesis", "src/bookrec/__pycache__/cli.cpython-311.pyc",
                                  "src/bookrec.egg-info", "tests", "bench-results"])
def test_dockerignore_excludes(path):
    assert dockerignored(path)


# --- pinned images ---------------------------------------------------------------------------------


def all_images() -> list[str]:
    images = [stage["base"] for stage in STAGES.values() if stage["base"] not in STAGES]
    images += [service["image"] for service in SERVICES.values() if "build" not in service]
    return images


@pytest.mark.parametrize("image", all_images())
def test_images_are_pinned_to_exact_versions(image):
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name and "/" not in tag, f"{image} has no tag"
    assert tag != "latest"
    # a full version: major.minor.patch (v1.23.2, 3.11.14-slim-bookworm, 1.27.5-alpine3.21); PostgreSQL's
    # releases have two numbers since version 10 (16.13-bookworm)
    full = r"\d+\.\d+" if name == "postgres" else r"v?\d+\.\d+\.\d+"
    assert re.match(rf"{full}(?:-[a-z0-9.]+)*$", tag), f"{image} is not pinned to an exact version"


def test_frontend_is_unprivileged_nginx_on_a_high_port():
    frontend = STAGES["frontend"]
    assert frontend["base"].startswith("nginxinc/nginx-unprivileged:")
    users = [line.split()[1] for line in frontend["lines"] if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    ports = [int(p) for p in re.findall(r"^\s*listen (\d+);", NGINX, flags=re.M)]
    assert ports and all(port >= 1024 for port in ports)


def test_nginx_re_resolves_the_api():
    assert re.search(r"^\s*resolver 127\.0\.0\.11 [^;]*valid=\d+s", NGINX, flags=re.M)
    proxy_passes = re.findall(r"^\s*proxy_pass (\S+);", NGINX, flags=re.M)
    assert proxy_passes and all(target.startswith("$") for target in proxy_passes), \
        "a literal host in proxy_pass is resolved once, at start"
    # the limit directives of the proxy stay in place
    for directive in ("client_header_timeout", "client_max_body_size", "proxy_read_timeout"):
        assert directive in NGINX


class _EchoPath(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx is not installed")
def test_nginx_config_is_valid_and_proxies_under_api():
    # Started as root, nginx's workers run as nobody, who cannot enter pytest's private tmp_path.
    with tempfile.TemporaryDirectory(prefix="bookrec-nginx-") as folder:
        tmp_path = Path(folder)
        tmp_path.chmod(0o755)
        _run_nginx_with_the_site(tmp_path)


def _run_nginx_with_the_site(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    upstream = HTTPServer(("127.0.0.1", 0), _EchoPath)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = _free_port()
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_text("page")
    # The same server block, with the api's address as an IP literal and paths a user may write.
    site = (NGINX.replace("listen 3000;", f"listen 127.0.0.1:{port};")
            .replace("http://api:8000", f"http://127.0.0.1:{upstream.server_port}")
            .replace("/usr/share/nginx/html", str(html)))
    (tmp_path / "site.conf").write_text(site)
    temp_paths = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; {temp_paths} include {tmp_path / 'site.conf'}; }}\n"
    )
    base = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    server = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import urllib.error
        import urllib.request

        def get(path: str) -> str:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                        return response.read().decode()
                except urllib.error.HTTPError:
                    raise
                except OSError:  # not listening yet
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)

        assert get("/api/health") == "/health"
        assert get("/api/books/search?q=bright%20storm&limit=2") == "/books/search?q=bright%20storm&limit=2"
        assert get("/api/recommend/8?top_k=2") == "/recommend/8?top_k=2"
        assert get("/") == "page"
    finally:
        server.terminate()
        server.wait(timeout=10)
        upstream.shutdown()


# --- Dragonfly -------------------------------------------------------------------------------------


def with_defaults(value) -> str:
    """A Compose value with ${NAME:-default} replaced by its default (and ${NAME} by nothing)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)\s*([kmgt]?)i?b?", size.strip().lower()).groups()
    return float(number) * {"": 2**-20, "k": 2**-10, "m": 1, "g": 2**10, "t": 2**20}[unit]


def test_dragonfly_flags_and_no_password_on_its_command_line():
    dragonfly = SERVICES["dragonfly"]
    command = [with_defaults(word) for word in dragonfly["command"]]
    flags = {word.split("=", 1)[0]: word.split("=", 1)[1] if "=" in word else "" for word in command[1:]}
    assert "--logtostderr" in flags
    assert megabytes(flags["--maxmemory"]) > 0
    assert len(flags["--snapshot_cron"].split()) == 5, "a cron expression"
    assert flags["--dir"] == "/data" and "dragonfly-data:/data" in dragonfly["volumes"]
    # one proactor thread per CPU it may use (else one per host core, each demanding 256 MB)
    assert float(flags["--proactor_threads"]) == float(with_defaults(dragonfly["cpus"]))
    assert megabytes(flags["--maxmemory"]) <= megabytes(with_defaults(dragonfly["mem_limit"])) - 512
    # The password never appears in an argument list: not Dragonfly's, not the health check's.
    raw = " ".join(map(str, dragonfly["command"]))
    assert "requirepass" not in raw and "PASSWORD" not in raw
    health = " ".join(dragonfly["healthcheck"]["test"])
    assert " -a " not in health and "REDISCLI_AUTH" in health


# --- limits ----------------------------------------------------------------------------------------

GUIDE = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
BENCHMARKS = (ROOT / "docs" / "BENCHMARKS.md").read_text()


def measured(table_heading: str, column: int, row_filter: str) -> float:
    """The largest MB figure in a column of the benchmarks' table that follows `table_heading`."""
    section = BENCHMARKS[BENCHMARKS.index(table_heading):]
    table = re.search(r"((?:^\|.*\|\n)+)", section, flags=re.M).group(1)
    values = []
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if row_filter in row:
            found = re.search(r"([\d,]+) MB", cells[column])
            if found:
                values.append(float(found.group(1).replace(",", "")))
    assert values, f"no figures under {table_heading!r}"
    return max(values)


def test_every_service_has_memory_and_cpu_limits():
    for name, service in SERVICES.items():
        assert "mem_limit" in service and "cpus" in service, f"{name} has no limits"
        assert megabytes(with_defaults(service["mem_limit"])) >= 64
        assert 0 < float(with_defaults(service["cpus"])) <= 8


def test_numba_threads_follow_the_cpu_limit():
    """numba sizes its pool by the host's cores, not the container's `cpus`: each numba service says."""
    for name in ("api", "batch", "optimizer", "dask-worker"):
        service = SERVICES[name]
        assert service["environment"]["NUMBA_NUM_THREADS"] == service["cpus"], name
        assert float(with_defaults(service["cpus"])).is_integer(), name


def test_limits_cover_the_measured_figures():
    batch_peak = measured("**Batch** (peak memory per run", 2, "| full |")
    api_rss = measured("**API** on the `full` data", 2, "")
    assert megabytes(with_defaults(SERVICES["batch"]["mem_limit"])) >= batch_peak * 1.2
    assert megabytes(with_defaults(SERVICES["api"]["mem_limit"])) >= api_rss * 1.2
    assert 1767 <= batch_peak  # the current development preset's peak on full (docs/BENCHMARKS.md)


def test_batch_writes_its_metrics_textfile_to_a_mounted_volume():
    batch = SERVICES["batch"]
    path = Path(batch["environment"]["BOOKREC_METRICS_TEXTFILE"])
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in batch["volumes"]}
    assert str(path.parent) in mounts and mounts[str(path.parent)] in COMPOSE["volumes"]
    # a fresh named volume takes the ownership of the image's directory: the bookrec user's
    assert re.search(rf"mkdir -p [^&]*{re.escape(str(path.parent))}\b.*chown bookrec [^&]*{re.escape(str(path.parent))}\b",
                     " ".join(lines_of("batch")))


def test_the_cron_line_in_the_docs_does_not_overlap_runs():
    cron_lines = [line for line in GUIDE.splitlines() if re.match(r"^[\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ ", line)]
    assert cron_lines
    for line in cron_lines:
        assert "flock -n" in line and line.index("flock") < line.index("docker compose run")


def test_nginx_bounds_requests_like_the_api_server():
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()

    def directive(name: str) -> str:
        found = re.findall(rf"^\s*{name}\s+([^;]+);", nginx, flags=re.M)
        assert len(found) == 1, f"{name}: {found}"
        return found[0]

    def seconds(text: str) -> float:
        assert text.endswith("s"), text
        return float(text[:-1])

    def size(text: str) -> int:
        return int(text[:-1]) * 1024 if text.endswith("k") else int(text)

    default = {name: field.default for name, field in Settings.model_fields.items()}
    assert seconds(directive("client_header_timeout")) == default["api_header_timeout_seconds"]
    assert seconds(directive("client_body_timeout")) == default["api_body_timeout_seconds"]
    assert seconds(directive("keepalive_timeout")) == default["api_keepalive_timeout_seconds"]
    assert seconds(directive("send_timeout")) > 0
    count, each = directive("large_client_header_buffers").split()
    assert int(count) * size(each) == default["api_max_header_bytes"]
    assert size(directive("client_max_body_size")) == default["max_request_bytes"]
    # The API port is published too: it must be the bounded server, not a bare uvicorn.
    assert SERVICES["api"]["command"][:2] == ["bookrec", "serve"]
    assert "uvicorn" not in " ".join(SERVICES["api"]["command"])
