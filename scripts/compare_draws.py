"""Fingerprint what a fixed seed produces, to show that a refactor changed no number.

    python scripts/compare_draws.py record OUT.npz     # at one commit
    python scripts/compare_draws.py compare A.npz B.npz

``record`` generates `tiny` data (seed 42), fits BPMF from Python with a fixed seed, runs the
development batch into a fresh SQLite store, and saves every kept draw plus a SHA-256 per stored
table (recommendations, reader ranks, books, blobs; meta excluded because it holds timings).
``compare`` exits 1 unless every draw and table is bitwise equal. The traces are float64 sums that
numba reduces across threads, so their last bits vary from run to run: they are compared to 1e-9.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 42
DRAW_ATTRIBUTES = (
    "mu_", "alpha_", "user_factors_", "item_factors_", "user_bias_", "item_bias_",
    "mu_user_", "lambda_user_", "mu_item_", "lambda_item_", "tau_user_bias_", "tau_item_bias_",
)
TABLE_QUERIES = {
    "recs": "SELECT user_id, payload FROM recs ORDER BY user_id",
    "user_ranks": "SELECT rank, user_id FROM user_ranks ORDER BY rank",
    "books": "SELECT isbn, payload FROM books ORDER BY isbn",
    "blobs": "SELECT name, data FROM blobs WHERE name != 'meta' ORDER BY name",
}


def bookrec(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "bookrec", *args], check=True, env=env)


def fitted_draws() -> dict[str, np.ndarray]:
    from bookrec.data.synth import generate
    from bookrec.model.bpmf import BPMF

    ratings = generate("tiny", seed=SEED).dataset.ratings
    explicit = ratings[ratings["rating"] > 0]
    users = explicit["user_id"].astype("category").cat.codes.to_numpy()
    items = explicit["isbn"].astype("category").cat.codes.to_numpy()
    model = BPMF(n_factors=4, burn_in=30, n_samples=40, n_chains=2, seed=SEED, show_progress=False)
    model.fit(users, items, explicit["rating"].to_numpy())
    draws = {f"draw.{name}": np.asarray(getattr(model, name)) for name in DRAW_ATTRIBUTES}
    draws.update({f"trace.{name}": np.asarray(values) for name, values in model.traces_.items()})
    return draws


def stored_tables(workdir: Path) -> dict[str, np.ndarray]:
    env = {**os.environ, "BOOKREC_SEED": str(SEED), "BOOKREC_LOG_LEVEL": "WARNING"}
    data, store = workdir / "data", workdir / "store.db"
    bookrec("data", "synth", "--preset", "tiny", "--seed", str(SEED), "--out", str(data), env=env)
    bookrec("batch", "--preset", "development", "--data", str(data), "--store", f"sqlite:///{store}",
            "--quiet", "--force", env=env)
    digests = {}
    with sqlite3.connect(store) as db:
        for table, query in TABLE_QUERIES.items():
            digest = hashlib.sha256()
            for row in db.execute(query):
                for value in row:
                    digest.update(value if isinstance(value, bytes) else str(value).encode())
                    digest.update(b"\x00")
            digests[f"table.{table}"] = np.frombuffer(digest.digest(), dtype=np.uint8)
    return digests


def record(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {**fitted_draws(), **stored_tables(Path(tmp))}
    np.savez(out, **arrays)
    print(f"recorded {len(arrays)} arrays in {out}")


def same(a, b, name: str) -> bool:
    if name not in a.files or name not in b.files or a[name].shape != b[name].shape:
        return False
    if name.startswith("trace."):
        return bool(np.allclose(a[name], b[name], rtol=1e-9, atol=0.0))
    return a[name].tobytes() == b[name].tobytes()


def compare(a_path: Path, b_path: Path) -> int:
    a, b = np.load(a_path), np.load(b_path)
    differing = sorted(name for name in set(a.files) | set(b.files) if not same(a, b, name))
    for name in differing:
        print(f"DIFFERS: {name}")
    print(f"{len(set(a.files) | set(b.files)) - len(differing)} arrays identical, {len(differing)} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
