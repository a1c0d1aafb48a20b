"""Model artifact: an npz of arrays (never pickled) plus a JSON manifest holding its sha256.

``model.npz`` + ``model.json`` (the manifest sits beside the npz, same stem). Loading checks
the checksum before parsing anything, so a truncated or altered file is refused with a clear
``ArtifactError`` instead of a confusing zip/numpy traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bookrec.contracts.params import MODEL_PARAMS, PAIR

FORMAT = "bookrec-bpmf"
FORMAT_VERSION = 1

ARRAYS = ("mu_", "alpha_", "user_factors_", "item_factors_", "user_bias_", "item_bias_", "mu_user_",
          "lambda_user_", "mu_item_", "lambda_item_", "tau_user_bias_", "tau_item_bias_", "sample_chain_",
          "tracked_pairs_")


class ArtifactError(Exception):
    """The model artifact is missing, truncated, altered or not a bookrec model."""


def artifact_paths(path) -> tuple[Path, Path]:
    """``model``, ``model.npz`` and ``model.json`` all name the pair model.npz + model.json."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".npz")
    npz = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    return npz, npz.with_suffix(".json")


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_model(model, path, metadata: dict | None = None) -> tuple[Path, Path]:
    model._check_fitted()
    npz_path, manifest_path = artifact_paths(path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name.rstrip("_"): getattr(model, name) for name in ARRAYS}
    for name, trace in model.traces_.items():
        arrays[f"trace__{name}"] = trace
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "npz": npz_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "params": _jsonable(model.get_params()),
        "n_users": model.n_users_,
        "n_items": model.n_items_,
        "n_kept": model.n_kept_,
        "n_train": model.n_train_,
        "fit_seconds": model.fit_seconds_,
        "chain_mode": model.chain_mode_,
        "diagnostics": _jsonable(model.diagnostics_),
        "eval_history": _jsonable(model.eval_history_),
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
        "metadata": _jsonable(metadata or {}),
    }
    try:  # before anything is written: a manifest that cannot be written must not break the saved model
        text = json.dumps(manifest, indent=1, allow_nan=True).encode()
    except TypeError as exc:
        raise ArtifactError(f"cannot save the model: its metadata or parameters are not JSON ({exc})") from None
    _atomic_write(npz_path, data)
    _atomic_write(manifest_path, text)
    return npz_path, manifest_path


def read_manifest(path) -> dict:
    npz_path, manifest_path = artifact_paths(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"model manifest {manifest_path} not found") from None
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"model manifest {manifest_path} is not valid JSON (truncated or altered?)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact version {manifest.get('format_version')}")
    return manifest


def load_model(path):
    from bookrec.model.bpmf import BPMF

    npz_path, manifest_path = artifact_paths(path)
    manifest = read_manifest(path)
    try:
        data = npz_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"model arrays {npz_path} not found") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != manifest.get("bytes") or digest != manifest.get("sha256"):
        raise ArtifactError(
            f"{npz_path} does not match its manifest checksum ({len(data)} bytes, sha256 {digest[:12]}..., "
            f"expected {manifest.get('bytes')} bytes, {str(manifest.get('sha256'))[:12]}...): truncated or altered"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad artifact
        raise ArtifactError(f"{npz_path} cannot be read as npz: {type(exc).__name__}") from None
    missing = [name.rstrip("_") for name in ARRAYS if name.rstrip("_") not in arrays]
    if missing:
        raise ArtifactError(f"{npz_path} lacks the arrays {', '.join(missing)}")
    try:
        model = _model_from(manifest, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path} does not describe a usable model ({type(exc).__name__}: {exc})") from None
    return model


def _model_from(manifest: dict, arrays: dict[str, np.ndarray]):
    """The model the manifest and arrays describe; every size the manifest states must match the
    arrays, since the compiled kernels index them without bounds checks."""
    from bookrec.contracts.params import check_params
    from bookrec.model.bpmf import BPMF

    params = dict(manifest["params"])
    for key in (p.name for p in MODEL_PARAMS.values() if p.kind == PAIR):
        if key in params:
            params[key] = tuple(params[key])
    check_params(params)
    model = BPMF(**params)
    for name in ARRAYS:
        setattr(model, name, arrays[name.rstrip("_")])
    model.traces_ = {name[len("trace__"):]: arr for name, arr in arrays.items() if name.startswith("trace__")}
    model.n_users_ = int(manifest["n_users"])
    model.n_items_ = int(manifest["n_items"])
    model.n_kept_ = int(manifest["n_kept"])
    model.n_train_ = int(manifest["n_train"])
    model.fit_seconds_ = float(manifest["fit_seconds"])
    model.chain_mode_ = manifest["chain_mode"]
    model.diagnostics_ = manifest["diagnostics"]
    model.eval_history_ = manifest["eval_history"]
    model.metadata_ = manifest.get("metadata", {})
    kept, users, items, k = model.n_kept_, model.n_users_, model.n_items_, model.n_factors
    expected = {"user_factors_": (kept, users, k), "item_factors_": (kept, items, k), "mu_": (kept,),
                "alpha_": (kept,), "user_bias_": (kept, users), "item_bias_": (kept, items)}
    for name, shape in expected.items():
        if getattr(model, name).shape != shape:
            raise ValueError(f"{name} has shape {getattr(model, name).shape}, but the manifest states {shape}")
    return model
