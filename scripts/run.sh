#!/usr/bin/env bash
# Install bookrec and run the whole system on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/bookrec run "$@"
