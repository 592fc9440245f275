"""`GET /healthz`: is every part this service needs up?

Reports the database, Redis, the channel layer and the live Celery workers per queue, with the
time each check took; answers 503 when any part is down or a queue has no worker.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

REQUIRED_QUEUES = ("speech", "render")
CHECK_TIMEOUT_S = 1.0


def _check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _check_redis() -> dict[str, Any]:
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )
    try:
        client.ping()
        return {"version": client.info("server").get("redis_version")}
    finally:
        client.close()


async def _channel_round_trip() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, {"type": "healthz.ping"})
    message = await layer.receive(channel)
    if message.get("type") != "healthz.ping":
        raise RuntimeError("channel layer returned another message")


async def _bounded_round_trip() -> None:
    """The whole round trip is bounded: the layer itself retries through Redis outages."""
    import asyncio

    await asyncio.wait_for(_channel_round_trip(), CHECK_TIMEOUT_S)


def _check_channel_layer() -> dict[str, Any]:
    async_to_sync(_bounded_round_trip)()
    return {}


def _check_workers() -> dict[str, Any]:
    from celery_app import app

    replies = app.control.inspect(timeout=CHECK_TIMEOUT_S).active_queues() or {}
    queues: Counter[str] = Counter()
    for worker_queues in replies.values():
        for queue in worker_queues:
            name = queue["name"]
            if name in REQUIRED_QUEUES:
                queues[name] += 1
    missing = [q for q in REQUIRED_QUEUES if not queues[q]]
    result: dict[str, Any] = {
        "queues": {q: queues[q] for q in REQUIRED_QUEUES},
        "workers": sorted(replies),
    }
    if missing:
        raise _Degraded(f"no live worker on queue {', '.join(missing)}", result)
    return result


class _Degraded(Exception):
    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.detail = detail


def _run(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = {"ok": True, **check()}
    except _Degraded as exc:
        result = {"ok": False, "error": str(exc), **exc.detail}
    except Exception as exc:  # a health check reports every failure, whatever it is
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": _run(_check_database),
        "redis": _run(_check_redis),
        "channel_layer": _run(_check_channel_layer),
    }
    # Asking Celery needs Redis; skip the wait when Redis is already known down.
    if checks["redis"]["ok"]:
        checks["workers"] = _run(_check_workers)
    else:
        checks["workers"] = {"ok": False, "error": "redis is down", "ms": 0.0}
    ok = all(check["ok"] for check in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "down", "checks": checks}, status=200 if ok else 503
    )
