"""The commands, as a user runs them: `bookrec run --no-serve` (quick start) then `bookrec batch`."""

from __future__ import annotations

import os
import subprocess
import sys

from bookrec.data.io import load_dataset
from bookrec.store import open_store


def _bookrec(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "bookrec.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_quick_start_then_batch_command_serve_every_reader(tmp_path):
    data_dir = tmp_path / "var" / "data"
    store_url = f"sqlite:///{tmp_path}/var/bookrec.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOKREC_")}
    env.update({
        "BOOKREC_DATA_DIR": str(data_dir), "BOOKREC_STORE_URL": store_url,
        "BOOKREC_TUNED_CONFIG_PATH": str(tmp_path / "absent.json"),
        # short chains: this checks the wiring, not the sampler
        "BOOKREC_N_SAMPLES": "10", "BOOKREC_BURN_IN": "10", "BOOKREC_MAX_KEPT_SAMPLES": "10",
        "BOOKREC_MIN_BOOK_RATINGS": "5", "COLUMNS": "120",
    })
    run = _bookrec(["run", "--preset", "tiny", "--no-serve", "--force"], env, tmp_path)  # short chains: the gate refuses
    assert run.returncode == 0, run.stderr[-3000:]
    dataset = load_dataset(data_dir)
    everyone = set(dataset.users["user_id"]) | set(dataset.ratings["user_id"])
    assert f"{len(everyone):,} of {len(everyone):,} readers (100.0%) have recommendations" in run.stdout

    again = _bookrec(["batch", "--preset", "staging", "--quiet", "--force"], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "published version" in again.stdout
    with open_store(store_url) as store:
        assert store.count_users() == len(everyone)
        assert store.previous_version() is not None
        assert store.get_recommendations(int(dataset.users["user_id"].iloc[0])) is not None

    missing = _bookrec(["batch", "--data", str(tmp_path / "nowhere"), "--quiet"], env, tmp_path)
    assert missing.returncode == 2 and "batch failed" in missing.stderr  # bad input (README exit codes)
