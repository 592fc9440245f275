#!/usr/bin/env bash
# Makes sure the services the project talks to are up: Redis always, PostgreSQL for the tests.
# Starts a local server when it is installed but not running; otherwise says how to get one.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
redis_up() { .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$redis_url" 2>/dev/null; }
if ! redis_up; then
  case "$redis_url" in
    redis://127.0.0.1*|redis://localhost*)
      if command -v redis-server >/dev/null; then
        echo "services: starting redis-server on 127.0.0.1:6379"
        mkdir -p var
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
          --dir "$PWD/var" --logfile "$PWD/var/redis.log"
        for _ in $(seq 50); do redis_up && break; sleep 0.1; done
      fi ;;
  esac
fi
if ! redis_up; then
  echo "services: Redis is not reachable at $redis_url: install it (apt-get install redis-server) or set REDIS_URL" >&2
  exit 1
fi

if [ "${WITH_POSTGRES:-0}" = 1 ] && command -v pg_isready >/dev/null; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      echo "services: starting PostgreSQL"
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
    fi
  fi
fi
