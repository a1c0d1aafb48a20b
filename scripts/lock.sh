#!/usr/bin/env bash
# Regenerate the two exact dependency sets, with the hashes of every file PyPI has for each pinned
# version (so the same lock installs on amd64 and arm64), for Python 3.11 on Linux:
#   requirements.lock       what the Docker images install: the runtime dependencies of
#                           pyproject.toml, the `postgres` extra (shared Optuna studies) and the
#                           build backend;
#   requirements-test.lock  what scripts/install.sh installs, for the quick start and CI: the same
#                           plus the `test`, `bench` and `bench-peers` extras (the peers' tests
#                           run myfm and smurff).
# `pip install .` is unaffected: pyproject.toml keeps floors only.
#   bash scripts/lock.sh            # re-resolve at the newest versions allowed by the floors
#   bash scripts/lock.sh --check    # fail if a lock is not what the inputs resolve to
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
if [ ! -x .venv/bin/uv ] || [ "$(.venv/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    .venv/bin/python -m pip install -q "uv==$UV_VERSION"
fi

compile() {
    .venv/bin/uv pip compile pyproject.toml deploy/build-requirements.in \
        --python-version 3.11.14 --python-platform linux \
        --generate-hashes --quiet \
        --custom-compile-command "bash scripts/lock.sh" \
        "$@"
}
declare -A EXTRAS=(
    [requirements.lock]="--extra postgres"
    [requirements-test.lock]="--extra postgres --extra test --extra bench --extra bench-peers"
)

status=0
for lock in requirements.lock requirements-test.lock; do
    # shellcheck disable=SC2086  # the extras are separate words
    if [ "${1:-}" = "--check" ]; then
        # Keep the current pins (uv prefers the versions already in the output file) and compare.
        tmp="$(mktemp)"
        cp "$lock" "$tmp"
        compile ${EXTRAS[$lock]} --output-file "$tmp"
        if diff -u "$lock" "$tmp"; then echo "$lock is up to date"; else status=1; fi
        rm -f "$tmp"
    else
        # The test set starts from the runtime pins, so both locks agree on every shared package.
        if [ "$lock" = requirements-test.lock ]; then cp requirements.lock "$lock"; upgrade=(); else upgrade=(--upgrade); fi
        compile ${EXTRAS[$lock]} "${upgrade[@]}" --output-file "$lock"
    fi
done
exit $status
