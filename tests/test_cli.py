"""The `bookrec` command: --help and --version everywhere, choices, exit codes, --json output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bookrec import __version__
from bookrec.cli import app
from bookrec.data.io import write_dataset
from bookrec.data.synth import generate
from bookrec.store import open_store

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



def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"}, terminal_width=200)


def flat(text: str) -> str:
    """Output without rich's box characters and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("module", ["bookrec", "bookrec.cli"])
def test_version(module):
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bookrec {__version__}"


def test_version_is_written_once():
    from importlib.metadata import version

    assert version("bookrec") == __version__
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert __version__ not in pyproject and 'dynamic = ["version"]' in pyproject


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["batch", "--preset", "bogus"], ["development", "staging", "production"]),
        (["run", "--data-preset", "bogus"], ["tiny", "small", "full"]),
        (["run", "--preset", "bogus"], ["tiny", "small", "full"]),
        (["run", "--batch-preset", "bogus"], ["development", "staging", "production"]),
        (["serve", "--log-level", "bogus"], ["critical", "error", "warning", "info", "debug", "trace"]),
        (["optimize", "--objective", "bogus"], ["nll", "crps"]),
        (["optimize", "--pruner", "bogus"], ["median", "hyperband", "none"]),
        (["data", "synth", "--out", "x", "--preset", "bogus"], ["tiny", "small", "full"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and "bogus" in v else "",
)
def test_unknown_choice_is_a_usage_error_naming_the_choices(args, choices):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "'bogus' is not one of " + ", ".join(f"'{c}'" for c in choices) in text, text


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    write_dataset(generate("tiny", seed=1).dataset, out)
    return out


def test_a_missing_data_folder_is_exit_code_2_everywhere(tmp_path, tiny_dir):
    missing = str(tmp_path / "nowhere")
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    commands = {
        "data stats": ["data", "stats", missing],
        "train": ["train", "--data", missing, "--out", str(tmp_path / "m.npz")],
        "evaluate": ["evaluate", "--data", missing, "--model", f"{missing}/m.npz"],
        "batch": ["batch", "--data", missing, "--store", store, "--quiet"],
        "optimize": ["optimize", "--data", missing, "--storage", f"sqlite:///{tmp_path}/optuna.db", "--trials", "1"],
    }
    codes = {name: invoke(*args) for name, args in commands.items()}
    assert {name: r.exit_code for name, r in codes.items()} == dict.fromkeys(commands, 2), {
        name: r.output for name, r in codes.items()}
    for name, result in codes.items():
        assert "nowhere" in flat(result.stderr) and "Traceback" not in result.output, (name, result.output)
    bad_store = invoke("store", "status", "--store", "mongodb://x")
    assert bad_store.exit_code == 2 and "unknown store URL scheme" in bad_store.stderr


def test_store_rollback_json(tmp_path):
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    versions = []
    for n in (3, 4):
        with open_store(url) as store, store.begin_publish() as pub:
            pub.put_recommendations((u, b"{}") for u in range(n))
            pub.put_blob("meta", b"{}")
        versions.append(pub.version)
    result = invoke("store", "rollback", "--store", url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"current": versions[0], "previous": versions[1]}


def test_train_json(tiny_dir, tmp_path, monkeypatch):
    from bookrec.config import get_settings

    monkeypatch.setenv("BOOKREC_MIN_USER_RATINGS", "3")
    monkeypatch.setenv("BOOKREC_MIN_BOOK_RATINGS", "3")
    get_settings.cache_clear()
    try:
        result = invoke("train", "--data", str(tiny_dir), "--out", str(tmp_path / "m.npz"), "--factors", "2",
                        "--samples", "10", "--burn-in", "5", "--json")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["artifact"] == str(tmp_path / "m.npz") and (tmp_path / "m.npz").exists()
    assert doc["parameters"]["n_factors"] == 2 and doc["kept_samples"] > 0
    assert isinstance(doc["convergence"]["converged"], bool) and doc["convergence"]["max_rhat"] > 0


def run_bookrec(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")} | env
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run([sys.executable, "-m", "bookrec", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=full)


def test_batch_quiet_json_prints_and_logs_the_summary_and_writes_the_textfile(tiny_dir, tmp_path):
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    textfile = tmp_path / "textfile" / "bookrec_batch.prom"
    env = dict(BOOKREC_N_FACTORS="2", BOOKREC_N_SAMPLES="6", BOOKREC_BURN_IN="2", BOOKREC_N_CHAINS="2",
               BOOKREC_MIN_USER_RATINGS="3", BOOKREC_MIN_BOOK_RATINGS="3", BOOKREC_METRICS_TEXTFILE=str(textfile),
               BOOKREC_TUNED_CONFIG_PATH=str(tmp_path / "none.json"))
    # --force: six sweeps are not meant to pass the publish gate; the summary is what is tested.
    result = run_bookrec(["batch", "--data", str(tiny_dir), "--store", store, "--preset", "development",
                          "--quiet", "--json", "--force"], tmp_path, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    with open_store(store) as st:
        assert summary["version"] == st.current_version()
    assert summary["preset"] == "development" and summary["readers_with_recommendations"] == summary["readers"] > 0
    assert isinstance(summary["converged"], bool) and summary["convergence"]
    assert {"rmse", "nll", "crps"} <= set(summary["test_metrics"])
    assert {"load", "train", "evaluate", "publish"} <= set(summary["stage_seconds"])
    logged = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    verdict = "converged" if summary["converged"] else "NOT converged"
    assert any(m.startswith(f"published version {summary['version']}") for m in logged), logged
    assert any(m.startswith(f"convergence: {verdict}") for m in logged), logged
    assert any(m.startswith("test metrics: ") and "rmse" in m for m in logged), logged
    assert any(m.startswith("stage times: load ") for m in logged), logged
    prom = textfile.read_text()
    assert re.search(r"^bookrec_batch_last_run_success 1\.0$", prom, re.M), prom
    assert re.search(r"^bookrec_batch_last_run_exit_code 0\.0$", prom, re.M), prom
    duration = float(re.search(r"^bookrec_batch_last_run_duration_seconds (\S+)$", prom, re.M).group(1))
    assert 0 < duration < 600

    failed = run_bookrec(["batch", "--data", str(tmp_path / "nowhere"), "--store", store, "--quiet"], tmp_path, **env)
    assert failed.returncode == 2, failed.stderr
    prom = textfile.read_text()
    assert re.search(r"^bookrec_batch_last_run_success 0\.0$", prom, re.M), prom
    assert re.search(r"^bookrec_batch_last_run_exit_code 2\.0$", prom, re.M), prom


def test_run_checks_the_port_given_by_port_before_preparing_data(tmp_path, monkeypatch):
    import socket

    from bookrec.config import get_settings

    monkeypatch.setenv("BOOKREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            result = invoke("run", "--host", "127.0.0.1", "--port", str(port))
        finally:
            get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert f"port {port} on 127.0.0.1 is in use" in flat(result.stderr)
    assert not (tmp_path / "data").exists()


# The console script (what operators and containers run) and `python -m bookrec` (what the other tests run).
CONSOLE_SCRIPT = [str(Path(sys.executable).with_name("bookrec"))]
MODULE = [sys.executable, "-m", "bookrec"]


@pytest.mark.parametrize("signum,code,launcher", [(signal.SIGTERM, 143, CONSOLE_SCRIPT), (signal.SIGTERM, 143, MODULE),
                                                  (signal.SIGINT, 130, MODULE)], ids=["term-script", "term-module", "int"])
def test_a_batch_stopped_by_a_signal_says_so_records_it_and_keeps_the_serving_version(tiny_dir, tmp_path, signum, code,
                                                                                      launcher):
    store = f"sqlite:///{tmp_path}/store.sqlite3"
    textfile = tmp_path / "bookrec_batch.prom"
    env = dict(BOOKREC_N_FACTORS="2", BOOKREC_BURN_IN="2", BOOKREC_MIN_USER_RATINGS="3", BOOKREC_MIN_BOOK_RATINGS="3",
               BOOKREC_METRICS_TEXTFILE=str(textfile), BOOKREC_TUNED_CONFIG_PATH=str(tmp_path / "none.json"))
    args = ["batch", "--data", str(tiny_dir), "--store", store, "--preset", "development", "--quiet", "--force"]
    first = run_bookrec(args, tmp_path, BOOKREC_N_SAMPLES="6", **env)
    assert first.returncode == 0, first.stderr[-3000:]
    with open_store(store) as st:
        serving = st.current_version()
    full = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")} | env | {"BOOKREC_N_SAMPLES": "1000000"}
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # A shell starts background jobs with SIGINT ignored and exec keeps that (a CI runner launched
    # with `&`): the child gets Ctrl-C's default back, as it has in a terminal.
    long_run = subprocess.Popen([*launcher, *args], cwd=tmp_path, env=full,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in long_run.stderr:  # JSON log lines; the chains start right after this one
            if "batch preset development" in line:
                break
        time.sleep(3)
        long_run.send_signal(signum)
        _, err = long_run.communicate(timeout=120)
    finally:
        long_run.kill()  # a million sweeps must not outlive a failed test
    crash = err.find("Fatal Python error")  # faulthandler's stacks come before its long module list
    said = f"exit {long_run.returncode}: {err[crash:crash + 12000] if crash >= 0 else err[-3000:]}"
    assert long_run.returncode == code, said
    assert "batch interrupted: nothing was published, the serving version is unchanged" in err, said
    assert "Traceback" not in err, said
    assert re.search(rf"^bookrec_batch_last_run_exit_code {code}\.0$", textfile.read_text(), re.M), textfile.read_text()
    with open_store(store) as st:
        assert st.current_version() == serving


def test_running_commands_in_process_leaves_the_hosts_sigterm_handler_alone(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    result = invoke("store", "status", "--store", f"sqlite:///{tmp_path}/s.sqlite3")
    assert result.exit_code == 0, result.output
    assert signal.getsignal(signal.SIGTERM) is before


CRASHING_COMMAND = """
import ctypes, sys
import bookrec.cli as cli

def crash_in_a_kernel():
    ctypes.string_at(0)  # a read of address 0, as a compiled kernel gone wrong would do

cli.app = lambda **_: crash_in_a_kernel()
cli.entry_point()
"""


def test_a_command_that_crashes_natively_says_where_on_stderr(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CRASHING_COMMAND], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    assert "Segmentation fault" in proc.stderr and "crash_in_a_kernel" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("env", "toml", "message"), [
    ({"BOOKREC_CORS_ORIGINS": "notjson"}, None, 'invalid settings (BOOKREC_* variables): error parsing value for field "cors_origins"'),
    ({"BOOKREC_RATING_MIN": "10", "BOOKREC_RATING_MAX": "1"}, None, "rating_min (10) must be below rating_max (1)"),
    ({"BOOKREC_OPTIMIZER_TIMEOUT": "-5"}, None, "optimizer_timeout: Input should be greater than 0"),
    ({}, 'store_url = "x\n', "bookrec.toml is not valid TOML"),
], ids=["unparsable", "scale", "timeout", "toml"])
def test_settings_that_cannot_work_stop_every_command_with_one_line(env, toml, message, tmp_path):
    if toml is not None:
        (tmp_path / "bookrec.toml").write_text(toml)
    result = run_bookrec(["store", "status", "--store", f"sqlite:///{tmp_path}/s.sqlite3"], tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert message in flat(result.stderr) and "Traceback" not in result.stderr


def test_an_unknown_log_level_is_named_in_a_warning(tmp_path):
    result = run_bookrec(["store", "status", "--store", f"sqlite:///{tmp_path}/s.sqlite3"], tmp_path, BOOKREC_LOG_LEVEL="LOUD")
    assert result.returncode == 0, result.stderr
    assert "log level 'LOUD' is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG: logging at INFO" in result.stderr
