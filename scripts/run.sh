#!/usr/bin/env bash
# The whole service on the embedded defaults: web (daphne), speech and render workers, beat and
# flower, from a fresh machine. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
export PATH="$PWD/.venv/bin:$PATH"
python manage.py migrate --noinput -v0
python manage.py collectstatic --noinput -v0
python manage.py load_avatars
python manage.py ensure_admin
# metrics of the processes of an earlier run (their files) are not this run's
rm -f "${METRICS_DIR:-${VAR_DIR:-var}/metrics}"/*.db
host=${HOST:-127.0.0.1}
port=${PORT:-8000}
echo
echo "  app:    http://$host:$port/"
admin_url=${ADMIN_URL:-admin/}
echo "  admin:  http://$host:$port/${admin_url%/}/"
echo "  flower: http://$host:${FLOWER_PORT:-5555}/"
echo "  health: http://$host:$port/healthz"
echo "  service health: http://$host:$port/admin/health/   metrics: http://$host:$port/metrics"
echo
# honcho gives each process PORT = base + 100 × its place in the Procfile; web is first
exec honcho -f Procfile start --port "$port"
