"""`/healthz` tells an operator whether every part the service needs is up, and tells an
anonymous caller nothing more than that."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from tests.fixtures_sessions import run
from tests.procs import Proc, child_env, start_celery_worker

pytestmark = pytest.mark.django_db

TOKEN = "health-token-for-tests-0123456789"


def _layers(url: str) -> dict[str, Any]:
    return {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}
    }


def _redis_version() -> str:
    return redis.Redis.from_url(settings.REDIS_URL).info("server")["redis_version"]


def test_healthy_with_redis_and_a_worker(client: Client, celery_worker: Proc) -> None:
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    checks = body["checks"]
    assert checks["database"]["ok"] and checks["redis"]["ok"] and checks["channel_layer"]["ok"]
    assert checks["workers"]["ok"]
    assert checks["workers"]["queues"]["speech"] >= 1
    assert checks["workers"]["queues"]["render"] >= 1
    assert response["Cache-Control"] == "no-store"


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_healthy_through_daphne_while_sessions_are_open(
    celery_worker: Proc, live_avatars: list, chat_server: str, connect: Any
) -> None:
    """The view on the web process's own loop, next to session consumers that hold the
    channel layer's receive lock: the round trip must still come back."""
    url = chat_server.replace("ws://", "http://") + "/healthz"

    async def body() -> list[tuple[int, dict[str, Any]]]:
        async with connect() as first, connect("?mode=video") as second:
            for client in (first, second):
                await client.until("init")
            return [await asyncio.to_thread(_get, url) for _ in range(3)]

    for status, answer in run(body()):
        assert status == 200, answer
        assert answer["checks"]["channel_layer"] == {
            **answer["checks"]["channel_layer"],
            "ok": True,
            "attempts": 1,
        }


def test_anonymous_answer_names_no_version_vendor_host_or_worker(
    client: Client, celery_worker: Proc
) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    text = response.content.decode()
    for secret in (
        _redis_version(),
        "sqlite",
        "postgresql",
        socket.gethostname(),
        celery_worker.nodename,
        "version",
        "vendor",
    ):
        assert secret not in text, f"{secret!r} leaked to an anonymous caller: {text}"


def test_staff_user_gets_versions_vendor_and_worker_names(
    client: Client, celery_worker: Proc, django_user_model: Any
) -> None:
    staff = django_user_model.objects.create_user("ops", password="pw-ops", is_staff=True)
    client.force_login(staff)
    checks = client.get("/healthz").json()["checks"]
    assert checks["database"]["vendor"] == "sqlite"
    assert checks["redis"]["version"] == _redis_version()
    assert celery_worker.nodename in checks["workers"]["workers"]


def test_a_logged_in_user_who_is_not_staff_gets_no_detail(
    client: Client, celery_worker: Proc, django_user_model: Any
) -> None:
    client.force_login(django_user_model.objects.create_user("someone", password="pw-x"))
    text = client.get("/healthz").content.decode()
    assert celery_worker.nodename not in text and "sqlite" not in text


@override_settings(HEALTHZ_TOKEN=TOKEN)
def test_the_configured_token_gets_the_detail_by_header_or_query(
    client: Client, celery_worker: Proc
) -> None:
    by_header = client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    by_query = client.get(f"/healthz?token={TOKEN}").json()
    for body in (by_header, by_query):
        assert celery_worker.nodename in body["checks"]["workers"]["workers"]
        assert body["checks"]["redis"]["version"] == _redis_version()
    wrong = client.get("/healthz", headers={"Authorization": "Bearer not-the-token"})
    assert celery_worker.nodename not in wrong.content.decode()


def test_down_when_redis_is_unreachable(client: Client) -> None:
    dead = "redis://127.0.0.1:1/0"
    with override_settings(REDIS_URL=dead, CHANNEL_LAYERS=_layers(dead), HEALTHZ_TOKEN=TOKEN):
        anonymous = client.get("/healthz")
        staff = client.get("/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    body = anonymous.json()
    assert anonymous.status_code == 503
    assert body["status"] == "down"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"] == {**body["checks"]["redis"], "ok": False}
    assert body["checks"]["redis"]["error"] == "unreachable"
    assert body["checks"]["redis"]["attempts"] == 2  # retried once before saying so
    assert "127.0.0.1" not in anonymous.content.decode()  # no address for anonymous callers
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["workers"]["ok"] is False
    assert staff.status_code == 503
    assert "Connection" in staff.json()["checks"]["redis"]["detail"]


@pytest.fixture
def speech_only_stack(log_dir: Path) -> Iterator[tuple[str, Proc]]:
    """A Redis database of its own with one worker, on the speech queue only."""
    from tests.isolation import separate_redis

    with separate_redis() as url:
        env = child_env(REDIS_URL=url)
        worker = start_celery_worker(
            log_dir, "speech", "health-speech-only", env=env, concurrency=1, app_env=env
        )
        yield url, worker
        worker.stop()


def test_a_queue_without_a_worker_is_down_and_a_killed_worker_leaves(
    client: Client, speech_only_stack: tuple[str, Proc]
) -> None:
    url, worker = speech_only_stack
    with override_settings(REDIS_URL=url, CHANNEL_LAYERS=_layers(url), CELERY_BROKER_URL=url):
        response = client.get("/healthz")
        body = response.json()
        assert response.status_code == 503, body
        assert body["status"] == "down"
        workers = body["checks"]["workers"]
        assert workers["ok"] is False
        assert workers.get("queues") == {"speech": 1, "render": 0}, body
        assert workers["error"] == "no live worker on queue render"
        assert body["checks"]["redis"]["ok"] and body["checks"]["channel_layer"]["ok"]

        worker.signal(signal.SIGKILL)  # no clean shutdown: its presence must expire
        deadline = time.monotonic() + 20
        speech = 1
        while speech and time.monotonic() < deadline:
            time.sleep(1)
            speech = client.get("/healthz").json()["checks"]["workers"]["queues"]["speech"]
        assert speech == 0


class _FlakyProxy:
    """A TCP proxy to Redis that drops the first connection it gets, then forwards: a blip
    that a retry a moment later passes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            if self.dropped == 0:
                self.dropped += 1
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


def test_a_blip_that_a_retry_passes_is_not_reported_down(
    client: Client, celery_worker: Proc
) -> None:
    real = redis.connection.parse_url(settings.REDIS_URL)
    proxy = _FlakyProxy(int(real.get("port", 6379)))
    try:
        flaky = f"redis://127.0.0.1:{proxy.port}/{real.get('db', 0)}"
        with override_settings(REDIS_URL=flaky):
            response = client.get("/healthz")
    finally:
        proxy.close()
    body = response.json()
    assert proxy.dropped == 1
    assert response.status_code == 200, body
    assert max(check["attempts"] for check in body["checks"].values()) == 2
    assert json.dumps(body).count('"ok": false') == 0
