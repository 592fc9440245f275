"""Publishing protocol events to a session's WebSocket from anywhere (consumer, task, worker).

Every event is a server→client frame of docs/protocol.md (a dict with `type`); the session's consumer
forwards it unchanged. Workers on other machines publish through the same Redis channel layer.

Synchronous code (Celery tasks and signals) publishes through one event loop per process that
lives in a background thread: the channel layer keeps its Redis connections per loop, so a
fresh loop per event (`async_to_sync`) would connect to Redis for every progress event.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from channels.layers import get_channel_layer

from chat.models import group_name

HANDLER = "session.event"  # dispatched to ChatConsumer.session_event
BATCH_HANDLER = "session.events"  # several events, in order: ChatConsumer.session_events
T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


async def publish(session_id: uuid.UUID | str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    await layer.group_send(group_name(session_id), {"type": HANDLER, "event": event})


async def publish_many(session_id: uuid.UUID | str, events: list[dict[str, Any]]) -> None:
    """Events in order, in one message of the channel layer (one Redis round trip per group
    send, not per event); the consumer sends them as separate frames."""
    if len(events) == 1:
        await publish(session_id, events[0])
        return
    layer = get_channel_layer()
    await layer.group_send(group_name(session_id), {"type": BATCH_HANDLER, "events": events})


class OrderedPublisher:
    """The events of one producer (a reply streaming in a worker), in order. Streamed pieces
    (`text_delta`) do not wait for the channel layer: what queues up while a send is in flight
    goes out in the next one. Any other event waits until it and everything before it went
    out, so that it is never overtaken by what another publisher sends after it (a render
    worker's `video_queued` after `tts_complete`)."""

    STREAMED = frozenset({"text_delta"})

    def __init__(self, session_id: uuid.UUID | str) -> None:
        self.session_id = session_id
        self._pending: list[dict[str, Any]] = []
        self._sending: asyncio.Future[None] | None = None

    async def send(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        if self._sending is None or self._sending.done():
            if self._sending is not None:
                self._sending.result()  # a failed send fails the producer
            self._sending = asyncio.ensure_future(self._drain())
        if event.get("type") not in self.STREAMED:
            await self.flush()

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await publish_many(self.session_id, batch)

    async def flush(self) -> None:
        """Wait until every event sent so far went out."""
        if self._sending is not None:
            await asyncio.shield(self._sending)


def _background_loop() -> asyncio.AbstractEventLoop:
    """This process's publishing loop (a forked worker child starts its own)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="event-publisher", daemon=True).start()
        return _loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the process's background loop and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result(timeout)


def publish_sync(session_id: uuid.UUID | str, event: dict[str, Any]) -> None:
    """For Celery tasks and other synchronous code."""
    run_sync(publish(session_id, event), timeout=30)
