"""Fixtures of the rendering tests (registered in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import get_channel_layer

from tests.procs import Proc, child_env, start_celery_worker

RENDER_ENV = {"RENDER_HEARTBEAT_S": "0.5"}


class EventListener:
    """Receives every event published to a session's group, on a loop in its own thread."""

    def __init__(self, session_id: Any) -> None:
        from chat.models import group_name

        self.group = group_name(session_id)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))
        self._thread.daemon = True
        self._thread.start()
        assert self._ready.wait(10), "channel layer subscription failed"

    async def _run(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(self.group, channel)
        self._ready.set()
        while not self._stop:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.5)
            except TimeoutError:
                continue
            self.events.put(message["event"])
        await layer.group_discard(self.group, channel)

    def next(self, timeout: float = 30.0) -> dict[str, Any]:
        event = self.events.get(timeout=timeout)
        self.seen.append(event)
        return event

    def until(
        self, matches: Callable[[dict[str, Any]], bool] | str, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Events are kept in `seen`; returns the first one that matches (a type or a test)."""
        test = (lambda e: e["type"] == matches) if isinstance(matches, str) else matches
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event in {timeout}s; got {self.types()}")
            try:
                event = self.next(left)
            except queue.Empty:
                continue
            if test(event):
                return event

    def drain(self, seconds: float) -> None:
        """Collect whatever else arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.next(left)
            except queue.Empty:
                return

    def types(self) -> list[str]:
        return [e["type"] for e in self.seen]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["type"] == kind]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)


def make_reply(session: Any, wav: Path | bytes, text: str = "reply") -> Any:
    """An assistant message whose reply audio is `wav`, stored like the speech pipeline does."""
    from chat.models import Message, Role
    from chat.storage import save_for_session

    data = wav if isinstance(wav, bytes) else Path(wav).read_bytes()
    message = Message.objects.create(session=session, role=Role.ASSISTANT, text=text)
    message.audio = save_for_session(session.id, f"audio/reply-{message.pk}.wav", data) or ""
    message.save(update_fields=["audio"])
    return message


@pytest.fixture
def video_session(avatars: list) -> Any:
    """A video-mode session with the fixture avatar aria."""
    from chat.models import ChatSession, Mode

    aria = next(a for a in avatars if a.slug == "aria")
    return ChatSession.objects.create(avatar=aria, mode=Mode.VIDEO, language="en-US")


@pytest.fixture
def listener(video_session: Any) -> Iterator[EventListener]:
    events = EventListener(video_session.id)
    yield events
    events.close()


def start_render_worker(log_dir: Path, name: str, **env: str) -> Proc:
    """A render-only worker (shared and own queue), one process, fast heartbeats."""
    return start_celery_worker(
        log_dir, "render", name, env=child_env(**{**RENDER_ENV, **env}), concurrency=1
    )


@pytest.fixture(scope="module")
def render_worker(
    django_db_setup: None, django_db_blocker: object, log_dir: Path
) -> Iterator[Proc]:
    proc = start_render_worker(log_dir, "render-a")
    yield proc
    proc.stop()


# per-render state, fake workers (…@gpu) and their queues; live workers' heartbeats stay
EPHEMERAL = ["progress:*", "once:*", "segments:*", "cancel:*", "claims:*", "test-workers", "*@gpu"]


@pytest.fixture
def render_redis() -> Iterator[Any]:
    """The test run's Redis; afterwards the state tests leave behind is removed."""
    from rendering import coordination

    r = coordination.client()
    yield r
    for pattern in [coordination.PREFIX + p for p in EPHEMERAL] + ["render.*@gpu", "render"]:
        for key in r.scan_iter(pattern):
            r.delete(key)
