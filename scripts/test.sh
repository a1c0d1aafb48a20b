#!/usr/bin/env bash
# Install bookrec with its test tools (Debian's redis-server and Chromium included) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

bash scripts/install.sh test
# The tuner's shared-study tests need the machine's PostgreSQL (database test, trust auth); they
# fail rather than skip without it, so say so before the run.
if ! .venv/bin/python -c 'import psycopg; psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=5).close()' 2>/dev/null; then
    echo "error: PostgreSQL does not answer on 127.0.0.1:5432 (database test, user postgres, trust auth); the tuner tests need it" >&2
    exit 1
fi
exec .venv/bin/python -m pytest "$@"
