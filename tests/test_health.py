"""`/healthz` tells an operator whether every part the service needs is up."""

from __future__ import annotations

import pytest
from django.test import Client
from django.test.utils import override_settings

from tests.procs import Proc

pytestmark = pytest.mark.django_db


def test_healthy_with_redis_and_a_worker(client: Client, celery_worker: Proc) -> None:
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    checks = body["checks"]
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["channel_layer"]["ok"]
    assert checks["workers"]["queues"]["speech"] >= 1
    assert checks["workers"]["queues"]["render"] >= 1
    assert celery_worker.nodename in checks["workers"]["workers"]


def test_down_when_redis_is_unreachable(client: Client) -> None:
    dead = "redis://127.0.0.1:1/0"
    layers = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [dead]}}
    }
    with override_settings(REDIS_URL=dead, CHANNEL_LAYERS=layers):
        response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "down"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["channel_layer"]["ok"] is False
