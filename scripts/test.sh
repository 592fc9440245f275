#!/usr/bin/env bash
# The whole test suite: set-up, services, lint, pytest (arguments go to pytest), then, as root,
# the simulated cluster's scenarios (tests/cluster, docs/deploy.md). They are skipped, with one
# line saying why, when not root, when this machine cannot make network namespaces, or with
# CLUSTER=0; pytest arguments that pick tests (`-k`, a path) skip them too.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=1 bash scripts/setup.sh
WITH_POSTGRES=1 bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"

skip() {
  echo "test: cluster scenarios skipped: $1"
  exit 0
}
[ "${CLUSTER:-1}" != 0 ] || skip "CLUSTER=0"
[ $# = 0 ] || skip "pytest arguments given (make cluster-test runs them alone)"
[ "$(id -u)" = 0 ] || skip "they need root (network namespaces); sudo make cluster-test runs them"
WITH_CLUSTER=1 bash scripts/setup.sh
probe="echo-probe-$$"
if ! ip netns add "$probe" 2>/dev/null || ! ip netns exec "$probe" unshare --uts true 2>/dev/null; then
  ip netns del "$probe" 2>/dev/null || true
  skip "this machine cannot make network namespaces (a container without CAP_SYS_ADMIN?)"
fi
ip netns del "$probe"
CLUSTER_TEST=1 exec .venv/bin/python -m pytest tests/cluster -x -q
