#!/usr/bin/env bash
# The whole test suite: set-up, services, lint, then pytest (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash scripts/setup.sh
WITH_POSTGRES=1 bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
