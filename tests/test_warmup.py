"""`bookrec warmup` compiles every kernel that a later batch run and the API's model loading use."""

from __future__ import annotations

import os
import re
import subprocess
import sys

# Run in a fresh process after the warm-up: the published version is loaded as the API loads it.
LOAD_AS_THE_API_DOES = """
import sys, orjson
from bookrec.api.serving import ServingBundle
from bookrec.store import open_store
with open_store(sys.argv[1]) as store:
    v = store.current_version()
    meta = orjson.loads(store.get_blob("meta", v))
    bundle = ServingBundle.build(v, store.get_blob("catalog", v), store.get_blob("serving_model", v), meta)
assert bundle.model is not None and not bundle.problems, bundle.problems
print("bundle loaded")
"""


def _run(args, env, cwd):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def _cache_events(output: str) -> tuple[int, int]:
    """(kernels loaded from numba's cache, kernels compiled and saved to it) per NUMBA_DEBUG_CACHE's log."""
    return len(re.findall(r"\[cache\] data loaded", output)), len(re.findall(r"\[cache\] data saved", output))


def test_after_warmup_a_real_batch_and_the_api_compile_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOOKREC_", "NUMBA_"))}
    # An empty cache of its own: the warm-up must compile everything itself (the test suite's own
    # runs fill the cache next to the sources, which would hide a kernel the warm-up missed).
    env.update({"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"), "COLUMNS": "120",
                "BOOKREC_TUNED_CONFIG_PATH": str(tmp_path / "absent.json")})
    warm = _run(["-m", "bookrec.cli", "warmup"], env, tmp_path)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "kernels ready" in warm.stdout
    assert any((tmp_path / "numba-cache").rglob("*.nbc")), "the warm-up wrote no compiled kernels"

    # Real use, with other data and other sizes than the warm-up's: every kernel must come from the cache.
    env.update({"NUMBA_DEBUG_CACHE": "1", "BOOKREC_N_FACTORS": "4", "BOOKREC_N_SAMPLES": "20",
                "BOOKREC_BURN_IN": "5", "BOOKREC_MAX_KEPT_SAMPLES": "10"})
    data_dir = tmp_path / "data"
    synth = _run(["-m", "bookrec.cli", "data", "synth", "--out", str(data_dir), "--preset", "tiny", "--seed", "3"],
                 env, tmp_path)
    assert synth.returncode == 0, synth.stderr[-3000:]
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    batch = _run(["-m", "bookrec.cli", "batch", "--preset", "development", "--data", str(data_dir),
                  "--store", store_url, "--quiet"], env, tmp_path)
    assert batch.returncode == 0, batch.stderr[-3000:]
    api = _run(["-c", LOAD_AS_THE_API_DOES, store_url], env, tmp_path)
    assert api.returncode == 0, api.stderr[-3000:]
    assert "bundle loaded" in api.stdout

    loaded, saved = _cache_events(batch.stdout + batch.stderr)
    assert loaded >= 10 and saved == 0, (loaded, saved)
    loaded, saved = _cache_events(api.stdout + api.stderr)
    assert loaded >= 1 and saved == 0, (loaded, saved)
