"""Fixtures of the session tests: a WebSocket client against the real daphne, and helpers to
run async test bodies (the suite uses no asyncio plugin)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import websockets

from tests.procs import Proc, child_env, start_daphne

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Run an async test body to completion on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Client:
    """A protocol client over a real WebSocket: send messages, read events by type."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.binary: list[bytes] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 20) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            if isinstance(frame, bytes):
                self.binary.append(frame)
                continue
            event = json.loads(frame)
            self.events.append(event)
            return event

    async def until(
        self, kind: str, timeout: float = 30, fail_on_error: bool = False
    ) -> dict[str, Any]:
        """Read events until one of type `kind` arrives (the ones before are kept in events)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(max(0.1, deadline - loop.time()))
            if event["type"] == kind:
                return event
            if fail_on_error and event["type"] == "error":
                raise AssertionError(f"error while waiting for {kind}: {event}")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


@pytest.fixture(scope="session")
def chat_server(django_db_setup: None, log_dir: Path) -> Iterator[str]:
    """A real daphne with a short idle timeout; yields the ws:// base URL."""
    proc, port = start_daphne(
        log_dir, child_env(RATE_LIMIT_MESSAGES="20", MAX_AUDIO_SECONDS="20"), name="daphne-chat"
    )
    yield f"ws://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def connect(chat_server: str) -> Callable[..., Any]:
    """`async with connect(mode="voice") as client:` opens a session and reads `init`."""

    class _Session:
        def __init__(self, query: str, headers: dict[str, str] | None) -> None:
            self.url = f"{chat_server}/ws/chat/{query}"
            self.headers = headers

        async def __aenter__(self) -> Client:
            self.ws = await websockets.connect(
                self.url, additional_headers=self.headers, max_size=None
            )
            return Client(self.ws)

        async def __aexit__(self, *exc: object) -> None:
            await self.ws.close()

    def factory(query: str = "", headers: dict[str, str] | None = None) -> _Session:
        return _Session(query, headers)

    return factory


def daphne_with(log_dir: Path, name: str, **env: str) -> tuple[Proc, int]:
    return start_daphne(log_dir, child_env(**env), name=name)


@pytest.fixture
def live_avatars(transactional_db: None, media_root: Path) -> list:
    """The fixture avatars, committed so that server processes see them."""
    from django.core.management import call_command

    from avatars.models import Avatar

    call_command("load_avatars", verbosity=0)
    return list(Avatar.objects.order_by("slug"))


@contextmanager
def separate_stack(log_dir: Path, name: str, **settings: str) -> Iterator[str]:
    """A web process and a speech worker of their own, on another Redis database, with
    `settings` in their environment; yields the chat WebSocket URL."""
    from tests.isolation import separate_redis

    with separate_redis() as redis_url:
        from tests.procs import start_celery_worker

        env = child_env(REDIS_URL=redis_url, **settings)
        worker = start_celery_worker(
            log_dir, "speech", f"{name}-worker", env=env, concurrency=1, app_env=env
        )
        try:
            web, port = start_daphne(log_dir, env, name=f"daphne-{name}")
            try:
                yield f"ws://127.0.0.1:{port}/ws/chat/"
            finally:
                web.stop()
        finally:
            worker.stop()
