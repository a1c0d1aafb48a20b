#!/usr/bin/env bash
# Regenerate requirements.lock, the exact dependency set the Docker images install: the runtime
# dependencies of pyproject.toml, the `postgres` extra (shared Optuna studies) and the build
# backend, for the images' Python (python:3.11.14-slim-bookworm) on Linux, with the hashes of every
# file PyPI has for each pinned version (so the same lock installs on amd64 and arm64).
# `pip install .` is unaffected: pyproject.toml keeps floors only.
#   bash scripts/lock.sh            # re-resolve at the newest versions allowed by the floors
#   bash scripts/lock.sh --check    # fail if requirements.lock is not what the inputs resolve to
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if [ ! -x .venv/bin/uv ] || [ "$(.venv/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    .venv/bin/python -m pip install -q "uv==$UV_VERSION"
fi

compile() {
    .venv/bin/uv pip compile pyproject.toml deploy/build-requirements.in \
        --extra postgres \
        --python-version 3.11.14 --python-platform linux \
        --generate-hashes --quiet \
        --custom-compile-command "bash scripts/lock.sh" \
        "$@"
}

if [ "${1:-}" = "--check" ]; then
    # Keep the current pins (uv prefers the versions already in the output file) and compare.
    tmp="$(mktemp)"; trap 'rm -f "$tmp"' EXIT
    cp requirements.lock "$tmp"
    compile --output-file "$tmp"
    diff -u requirements.lock "$tmp" && echo "requirements.lock is up to date"
else
    compile --upgrade --output-file requirements.lock
fi
