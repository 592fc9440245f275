"""Redis faults with sessions open: its connections killed, the server paused for 5 s, and the
server restarted (its data gone). Every session stays open and working; the web process's
channel layer, the Celery worker and its render heartbeat recover by themselves.

A full stack of its own (redis-server on its own port and directory, a daphne and a speech +
render worker pointed at it), so that faults touch nothing else of the test run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from chat.models import group_name
from tests.audio import speak
from tests.fixtures_sessions import Client, run
from tests.procs import RedisServer, child_env, start_celery_worker, start_daphne

pytestmark = pytest.mark.usefixtures("live_avatars")

SESSIONS = 20
UTTERANCE = "what is the weather like in london today"


@pytest.fixture(scope="module")
def redis_server(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(log_dir, tmp_path_factory.mktemp("redis-faults"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup: None, log_dir: Path, redis_server: RedisServer) -> Iterator[dict]:
    """daphne and a speech + render worker, both on the test's own redis-server."""
    env = child_env(REDIS_URL=redis_server.url, RENDER_HEARTBEAT_S="0.5")
    worker = start_celery_worker(
        log_dir, "speech,render", "faults-worker", env=env, concurrency=1, app_env=env
    )
    try:
        web, port = start_daphne(log_dir, env, name="daphne-faults")
        try:
            yield {
                "ws": f"ws://127.0.0.1:{port}/ws/chat/",
                "http": f"http://127.0.0.1:{port}",
                "web": web,
                "worker": worker,
            }
        finally:
            web.stop()
    finally:
        worker.stop()


async def open_sessions(url: str, count: int) -> list[Client]:
    clients = []
    for _ in range(count):
        client = Client(await websockets.connect(url, max_size=None))
        client.init = await client.until("init", fail_on_error=True)
        clients.append(client)
    return clients


async def ping_all(clients: list[Client], stamp: int) -> None:
    for client in clients:
        await client.send(type="ping", timestamp=stamp)
    for client in clients:
        pong = await client.until("pong", timeout=30)
        assert pong["timestamp"] == stamp


async def text_turn(client: Client, text: str) -> dict:
    await client.send(type="text_message", text=text)
    return await client.until("tts_complete", timeout=60, fail_on_error=True)


async def upload_turn(client: Client) -> dict:
    """Through the worker: its events reach the session over the channel layer's group."""
    await client.ws.send(speak(UTTERANCE).read_bytes())
    return await client.until("tts_complete", timeout=90, fail_on_error=True)


async def close_all(clients: list[Client]) -> list[int | None]:
    """Close codes before our own close: None for a session that was still open."""
    codes = [client.ws.close_code for client in clients]
    await asyncio.gather(*(client.ws.close() for client in clients))
    return codes


def worker_heartbeat(server: RedisServer, nodename: str) -> dict | None:
    raw = server.client().get(f"render:worker:{nodename}")
    return json.loads(raw) if raw else None


def healthz(base: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout} s")


def test_killed_redis_connections_leave_every_session_working(
    stack: dict, redis_server: RedisServer
) -> None:
    async def body() -> tuple[list[int | None], dict, dict]:
        clients = await open_sessions(stack["ws"], SESSIONS)
        await ping_all(clients, 1)
        killed = redis_server.client().client_kill_filter(_type="normal", skipme=True)
        assert killed >= 2  # at least the web process's and the worker's connections
        await asyncio.sleep(1)
        await ping_all(clients, 2)
        spoken = await text_turn(clients[0], "Are you still there?")
        uploaded = await upload_turn(clients[-1])
        await ping_all(clients, 3)
        return await close_all(clients), spoken, uploaded

    codes, spoken, uploaded = run(body(), timeout=240)
    assert codes == [None] * SESSIONS  # no session was closed (1011 before)
    assert spoken["audio_url"] and uploaded["audio_url"]


def test_a_five_second_pause_of_redis_leaves_every_session_working(
    stack: dict, redis_server: RedisServer
) -> None:
    async def body() -> tuple[list[int | None], dict]:
        clients = await open_sessions(stack["ws"], SESSIONS)
        redis_server.proc.signal(signal.SIGSTOP)
        try:
            await ping_all(clients, 1)  # the session's own path needs no Redis
            await clients[0].ws.send(speak(UTTERANCE).read_bytes())  # waits for Redis
            await asyncio.sleep(5)
        finally:
            redis_server.proc.signal(signal.SIGCONT)
        uploaded = await clients[0].until("tts_complete", timeout=90, fail_on_error=True)
        await ping_all(clients, 2)
        return await close_all(clients), uploaded

    codes, uploaded = run(body(), timeout=240)
    assert codes == [None] * SESSIONS
    assert uploaded["audio_url"]


def test_a_restarted_redis_is_rejoined_by_sessions_workers_and_heartbeats(
    stack: dict, redis_server: RedisServer
) -> None:
    nodename = stack["worker"].nodename
    wait_for(lambda: worker_heartbeat(redis_server, nodename), 30, "beating")

    async def body() -> tuple[list[int | None], dict, dict]:
        clients = await open_sessions(stack["ws"], SESSIONS)
        await asyncio.to_thread(redis_server.restart)  # every key is gone, groups too
        await ping_all(clients, 1)

        groups = [group_name(c.init["session_id"]) for c in clients]

        def every_group_rejoined() -> bool:
            r = redis_server.client()
            return all(r.zcard(f"asgi:group:{group}") == 1 for group in groups)

        await asyncio.to_thread(wait_for, every_group_rejoined, 30, "rejoined")
        spoken = await text_turn(clients[1], "Are you still there?")
        uploaded = await upload_turn(clients[0])  # the worker is back on the broker
        await ping_all(clients, 2)
        return await close_all(clients), spoken, uploaded

    codes, spoken, uploaded = run(body(), timeout=300)
    assert codes == [None] * SESSIONS
    assert spoken["audio_url"] and uploaded["audio_url"]
    wait_for(lambda: worker_heartbeat(redis_server, nodename), 30, "beating again")
    wait_for(lambda: healthz(stack["http"])[0] == 200, 60, "healthy")
    assert "Exception inside application" not in stack["web"].log_tail(200_000)


def test_while_redis_is_down_a_turn_or_a_new_session_fails_with_its_code_and_sessions_go_on(
    stack: dict, redis_server: RedisServer
) -> None:
    async def body() -> tuple[list[int | None], dict, dict, dict]:
        clients = await open_sessions(stack["ws"], 3)
        await asyncio.to_thread(redis_server.stop)
        try:
            await clients[0].ws.send(speak(UTTERANCE).read_bytes())
            failure = await clients[0].until("error", timeout=120)
            await ping_all(clients, 1)
            async with websockets.connect(stack["ws"], max_size=None) as ws:  # a new session
                refused = await Client(ws).until("error", timeout=60)
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                refused["close"] = ws.close_code
        finally:
            await asyncio.to_thread(redis_server.start)
        spoken = await text_turn(clients[0], "Are you still there?")
        await ping_all(clients, 2)
        return await close_all(clients), failure, refused, spoken

    codes, failure, refused, spoken = run(body(), timeout=300)
    assert codes == [None] * 3
    assert failure["code"] == "ERR_INTERNAL" and failure["retryable"] is True
    assert "Redis" in failure["message"]
    assert refused["code"] == "ERR_INTERNAL" and refused["retryable"] is True
    assert refused["close"] == 4503  # unavailable: try again later
    assert spoken["audio_url"]
