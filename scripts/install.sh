#!/usr/bin/env bash
# Create ./.venv with Python 3.11+ and install bookrec into it, from the locked dependency set
# (extras given as an argument).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

find_python() {
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

PYTHON="$(find_python)" || { echo "bookrec needs Python >= 3.11 (python3.11 not found)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately.
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
        rm -rf .venv && "$PYTHON" -m venv .venv
    fi
fi

EXTRAS="${1:-}"
# The pinned set first (exact versions, checked hashes), then bookrec itself on top of it. The test
# extra has its own lock; any other extra resolves from pyproject.toml's floors.
LOCK=requirements.lock
if [ "$EXTRAS" = "test" ]; then LOCK=requirements-test.lock; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
if [ -n "$EXTRAS" ] && [ "$EXTRAS" != "test" ]; then
    .venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
else
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
fi
