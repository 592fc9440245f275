"""The session WebSocket `/ws/chat/` of docs/protocol.md: the transport of a session.

It opens the session (handshake, auth, the `init` frame), decodes each frame and dispatches it
on `type`: turns (text, upload, interrupt) to the session's `SessionTurns` (chat.turns), which
owns the reply and its life cycle, and the realtime messages to the realtime handler, which
talks to the same `SessionTurns`. Events from workers (progress, results of upload turns)
arrive through the channel-layer group of the session and are forwarded unchanged. The session
ends here: its turns stop, its tasks are cancelled, the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import handshake, limits, presence, protocol, sessions
from chat.layers import RETRYABLE as REDIS_DOWN
from chat.models import ChatSession, EndReason
from chat.protocol import (
    Close,
    Err,
    ProtocolError,
    RateLimiter,
    error,
    parse,
    scrub,
)
from chat.turns import SessionTurns
from echoproject import logs, metrics

log = logging.getLogger(__name__)
REALTIME_TYPES = {"offer", "ice_candidate", "ready", "asr_start", "asr_stop"}
URL_FIELDS = {"tts_complete": "audio_url", "video_segment": "url", "video_ready": "video_url"}


class ChatConsumer(AsyncWebsocketConsumer):
    session: ChatSession | None = None
    counted_as: tuple[str, str] | None = None  # (mode, transport) in echo_sessions_open
    _ending: asyncio.Future[None] | None = None  # the end on disconnect, once started

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its `aclose_old_connections()` before every frame: that
        is a hop to the database thread and back per ping, the largest cost of a frame under
        load (docs/benchmarks.md). Every database call here goes through
        `database_sync_to_async`, which closes stale connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop, and the session's end however the loop ends: an exception
        that escaped a handler, or daphne cancelling the consumer (shutdown, a socket lost
        without its disconnect), would otherwise leave the session's row open, its group
        joined and its tasks pending until `cleanup_sessions` found it."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.disconnect(Close.ABNORMAL)  # waits for an end already under way too

    # --- connection ---------------------------------------------------------------------------
    async def connect(self) -> None:
        self.ended = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.realtime: Any = None
        self.progress: dict[str, int] = {}
        self.limiter = RateLimiter(settings.RATE_LIMIT_MESSAGES, settings.RATE_LIMIT_WINDOW_S)
        self.last_seen = time.monotonic()
        self.last_touch = self.last_seen
        self.subject = ""  # whose usage the session counts against (chat.limits)
        self.limit_member = uuid.uuid4().hex
        params = {k: v[-1] for k, v in parse_qs(self.scope["query_string"].decode()).items()}
        await self.accept()
        try:
            opening = await handshake.check(params)
        except handshake.Refused as exc:
            await self._refuse(
                exc.code, exc.message, exc.close_code, retryable=exc.retryable, **exc.extra
            )
            return
        avatar, mode, language, ticket = (
            opening.avatar,
            opening.mode,
            opening.language,
            opening.ticket,
        )
        self.avatar = avatar
        self.subject = limits.subject(ticket.user_id if ticket else None, self._client_ip())
        try:
            if settings.LIMIT_SESSIONS:
                await asyncio.to_thread(limits.open_session, self.subject, self.limit_member)
        except limits.Limited as exc:
            await self._refuse(
                Err.RATE_LIMITED, exc.message, Close.RATE_LIMITED, retryable=True, **exc.fields()
            )
            return
        except REDIS_DOWN:
            log.warning("limits: Redis unreachable, session of %s not counted", self.subject)
        web_process = await presence.announce()  # its sessions end soon after it dies
        client_info = self._client_info()
        if ticket is not None:
            client_info["ticket"] = ticket.nonce
        self.session = await database_sync_to_async(sessions.open_session)(
            avatar, mode, language, client_info, web_process, ticket.user_id if ticket else None
        )
        self.session_id = str(self.session.id)
        self.language = language
        self.turns = SessionTurns(self, self.session, avatar, language, self.subject)
        metrics.session_opened(mode)
        self.counted_as = (mode, "websocket")
        logs.bind(self.session_id)  # every line this consumer logs names its session
        try:
            await self.channel_layer.group_add(self.session.group, self.channel_name)
        except REDIS_DOWN:  # past the layer's retries: no events could reach this session
            await self._end(EndReason.ERROR, notify=False)
            await self.send_error(Err.INTERNAL, "Redis is unreachable, try again", retryable=True)
            await self.close(code=Close.UNAVAILABLE)
            return
        idle_video_url = await handshake.idle_video_url(avatar, mode, self._absolute)
        await self.send_event(
            handshake.init_frame(self.session, avatar, language, self._absolute, idle_video_url)
        )
        self._spawn(self._watch_idle())

    async def _refuse(
        self, code: Err, message: str, close_code: int, *, retryable: bool = False, **extra: Any
    ) -> None:
        self.ended = True
        await self.send_event(error(code, message, retryable=retryable, **extra))
        await self.close(code=close_code)

    def _client_ip(self) -> str:
        client = self.scope.get("client") or ["", 0]
        return str(client[0])

    def _client_info(self) -> dict[str, Any]:
        headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in self.scope.get("headers", [])
        }
        client = self.scope.get("client") or ["", 0]
        return {
            "ip": client[0],
            "user_agent": headers.get("user-agent", "")[:300],
            "origin": headers.get("origin", ""),
        }

    def _absolute(self, url: str) -> str:
        if not url.startswith("/"):
            return url
        if settings.PUBLIC_BASE_URL:
            return settings.PUBLIC_BASE_URL + url
        headers = dict(self.scope.get("headers", []))
        host = headers.get(b"host", b"localhost").decode("latin-1")
        scheme = "https" if self.scope.get("scheme") == "wss" else "http"
        return f"{scheme}://{host}{url}"

    async def disconnect(self, code: int) -> None:
        """The socket is gone (or the consumer is ending): end the session at once.

        The end runs as a task of its own that a cancellation of the consumer (daphne's
        shutdown) cannot cut short: a peer connection left open would keep the process alive.
        """
        if self.session is None:
            return
        if self._ending is None and not self.ended:
            self._ending = asyncio.ensure_future(self._end(EndReason.DISCONNECTED, notify=False))
        if self._ending is not None:
            await asyncio.shield(self._ending)

    # --- sending ------------------------------------------------------------------------------
    async def send_event(self, event: dict[str, Any]) -> None:
        field = URL_FIELDS.get(event["type"])
        if field and isinstance(event.get(field), str):  # site-relative media URLs made absolute
            event[field] = self._absolute(event[field])
        data = json.dumps(event, ensure_ascii=False)
        try:
            await self._send(text_data=data)
        except UnicodeEncodeError:  # a lone surrogate from a provider or a worker's event
            await self._send(text_data=scrub(data))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(bytes_data=data)

    async def _send(self, **frame: Any) -> None:
        """One frame to the client. When the client has closed its socket and daphne has not
        yet told us (its disconnect is on its way and ends the session), what was still on its
        way to it is dropped."""
        with contextlib.suppress(Disconnected):
            await self.send(**frame)

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        ref: str | None = None,
        **extra: Any,
    ) -> None:
        await self.send_event(error(code, message, retryable=retryable, ref=ref, **extra))

    async def session_event(self, message: dict[str, Any]) -> None:
        """An event published to the session's group by a task or worker."""
        event = message["event"]
        if event.get("type") == "video_progress":  # never let a redelivered task go backwards
            task_id, progress = event.get("task_id", ""), event.get("progress", 0)
            if progress < self.progress.get(task_id, -1):
                return
            self.progress[task_id] = progress
        if not self.ended:
            await self.send_event(event)

    async def session_events(self, message: dict[str, Any]) -> None:
        """Several events published together (chat.events.publish_many), in order."""
        for event in message["events"]:
            await self.session_event({"event": event})

    # --- receiving ----------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One client frame. Whatever it holds, the session outlives it: a refusal is a protocol
        error, and a failure of ours is ERR_INTERNAL (logged with its traceback, to be fixed)."""
        if self.ended or self.session is None:
            return
        self.last_seen = time.monotonic()
        if self.last_seen - self.last_touch > sessions.touch_interval_s():
            self.last_touch = self.last_seen
            self._spawn(database_sync_to_async(sessions.touch)(self.session_id))
            if settings.LIMIT_SESSIONS:
                self._spawn(
                    asyncio.to_thread(limits.renew_session, self.subject, self.limit_member)
                )
        ref = None
        try:
            if bytes_data is not None:
                await self._receive_audio(bytes_data)
                return
            if not self.limiter.allow():
                await self._rate_limited()
                return
            try:
                kind, message, ref = parse(text_data or "")
            except ProtocolError as exc:
                await self.send_error(exc.code, exc.message, ref=exc.ref)
                return
            if kind in REALTIME_TYPES:
                await self._realtime_handler().handle(kind, message, ref)
            else:
                await getattr(self, f"on_{kind}")(message, ref)
        except Exception:
            log.exception("a client frame failed in session %s", self.session_id)
            if not self.ended:
                await self.send_error(
                    Err.INTERNAL, "the server failed to handle this message", ref=ref
                )

    async def _rate_limited(self) -> None:
        if self.limiter.should_warn():
            await self.send_error(
                Err.RATE_LIMITED,
                f"more than {settings.RATE_LIMIT_MESSAGES} messages in {settings.RATE_LIMIT_WINDOW_S:g} s",
                retryable=True,
            )

    async def on_ping(self, message: dict[str, Any], ref: str | None) -> None:
        await self.send_event(protocol.pong(message.get("timestamp"), ref))

    async def on_text_message(self, message: dict[str, Any], ref: str | None) -> None:
        await self.turns.text(message["text"], ref)

    async def on_interrupt(self, message: dict[str, Any], ref: str | None) -> None:
        if not await self.turns.interrupt():
            await self.send_error(
                Err.STATE, "nothing to interrupt: no reply is being produced", ref=ref
            )

    async def on_stop_session(self, message: dict[str, Any], ref: str | None) -> None:
        await self._end(EndReason.STOPPED, notify=True)

    async def _receive_audio(self, data: bytes) -> None:
        if self.realtime is not None and await self.realtime.feed_pcm(data):
            return
        if not self.limiter.allow():
            await self._rate_limited()
            return
        await self.turns.upload(data, ref=None)

    # --- realtime -----------------------------------------------------------------------------
    def _realtime_handler(self) -> Any:
        if self.realtime is None:
            # local: defers aiortc (heavy) until a session first negotiates or streams audio
            from chat.realtime.handler import RealtimeHandler

            self.realtime = RealtimeHandler(self.turns, on_transport=self._transport_changed)
            self.turns.realtime = self.realtime
        return self.realtime

    def _transport_changed(self, transport: str) -> None:
        if self.counted_as is not None and self.counted_as[1] != transport:
            mode, old = self.counted_as
            metrics.session_moved(mode, old, transport)
            self.counted_as = (mode, transport)

    # --- life cycle ---------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _watch_idle(self) -> None:
        timeout = settings.SESSION_TIMEOUT_S
        while not self.ended:
            left = self.last_seen + timeout - time.monotonic()
            if left <= 0:
                await self.send_error(Err.SESSION_TIMEOUT, f"no message for {timeout} s")
                await self._end(EndReason.TIMEOUT, notify=True, close_code=Close.TIMEOUT)
                return
            await asyncio.sleep(min(left, 5.0))

    async def _end(self, reason: str, *, notify: bool, close_code: int = Close.NORMAL) -> None:
        """End the session: stop its work, delete its files, tell the client, close."""
        if self.ended:
            return
        self.ended = True
        current = asyncio.current_task()
        await self.turns.close()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self.tasks if t is not current), return_exceptions=True)
        if self.realtime is not None:
            await self.realtime.close()
        if self.counted_as is not None:
            metrics.session_closed(*self.counted_as)
            self.counted_as = None
        await self.channel_layer.group_discard(self.session.group, self.channel_name)
        try:
            if settings.LIMIT_SESSIONS:
                await asyncio.to_thread(limits.close_session, self.subject, self.limit_member)
        except REDIS_DOWN:  # it falls out of the count when it is no longer renewed
            log.warning(
                "limits: Redis unreachable, end of a session of %s not counted", self.subject
            )
        files_deleted = await database_sync_to_async(sessions.end_session)(self.session_id, reason)
        if notify:
            await self.send_event(
                protocol.session_ended(self.session_id, str(reason), files_deleted)
            )
            await self.close(code=close_code)
