#!/usr/bin/env bash
# The whole test suite: set-up, services, lint, pytest (arguments go to pytest), then, as root,
# with CLUSTER=1, the simulated cluster's scenarios (tests/cluster, docs/deploy.md).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash scripts/setup.sh
WITH_POSTGRES=1 bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
if [ "${CLUSTER:-0}" != 1 ]; then
  exit 0
elif [ "$(id -u)" != 0 ]; then
  echo "test: the cluster scenarios need root (network namespaces): skipped; sudo make cluster-test runs them"
  exit 0
fi
WITH_CLUSTER=1 bash scripts/setup.sh
CLUSTER_TEST=1 exec .venv/bin/python -m pytest tests/cluster -x -q
