"""The turns of one session and their one owner: text messages, uploaded utterances, realtime
utterances, interrupt and barge-in, and the reply in progress with the sink its audio goes to.

The consumer (chat.consumers) only moves frames: it hands each turn to `SessionTurns` and
sends what the turns give back through its `Transport`. The realtime handler talks to the same
object (it is the handler's `SessionContext`). An upload turn's work runs in a speech worker
(chat.upload_turn); what starts it, stops it and supersedes it is here and in chat.uploads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from avatars.models import Avatar, VoiceSource
from avatars.voices import refresh_voice
from chat import limits, observe, protocol, sessions, stopping
from chat.models import ChatSession, Message
from chat.protocol import Err
from chat.reply import AudioSink, EarlyAnswer, Reply, ReplyRequest, WebRTCSink, WebSocketSink
from chat.uploads import UploadRefused, accept_upload, check_and_decode_async

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What a session's turns need from the connection that carries the session."""

    async def send_event(self, event: dict[str, Any]) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...


class SessionTurns:
    """Starts, supersedes and stops the turns of one session; at most one reply runs."""

    def __init__(
        self,
        transport: Transport,
        session: ChatSession,
        avatar: Avatar,
        language: str,
        subject: str,
    ) -> None:
        self.transport = transport
        self.session = session
        self.session_id = str(session.id)
        self.avatar = avatar
        self.language = language
        self.subject = subject  # whose usage the turns count against (chat.limits)
        self.realtime: Any = None  # the session's realtime handler, once it has one
        self.reply: Reply | None = None
        self.reply_task: asyncio.Task[None] | None = None
        # the conversation as the next turn's history will read it, kept from the turns of this
        # process (a session opens empty); None while a turn elsewhere may change it (an upload
        # turn's worker, a reply cut short). A turn asks the LLM with it before its database
        # call ends, and again if that call reads something else (chat.reply.EarlyAnswer).
        self.conversation: list[dict[str, str]] | None = []
        self.latest: Reply | None = None  # the reply of the session's latest turn

    # --- what the realtime handler needs (chat.realtime.handler.SessionContext) ---------------
    async def send_event(self, event: dict[str, Any]) -> None:
        await self.transport.send_event(event)

    async def send_error(self, code: str, message: str, **fields: Any) -> None:
        """An `error` frame (`retryable`, `ref` and extra fields as protocol.error takes)."""
        await self.send_event(protocol.error(code, message, **fields))

    # --- turns --------------------------------------------------------------------------------
    async def text(self, text: str, ref: str | None) -> None:
        """A typed message: checked, recorded and answered."""
        text = text.strip()
        if not 1 <= len(text) <= settings.MAX_TEXT_CHARS:
            await self.send_error(
                Err.BAD_MESSAGE,
                f"text must have 1 to {settings.MAX_TEXT_CHARS} characters",
                ref=ref,
            )
            return
        if not await self.admit(ref, audio=False):
            return
        await self.answer(text, ref)

    async def upload(self, data: bytes, ref: str | None) -> None:
        """A recorded utterance (a binary frame): decoded here, answered by a speech worker.
        It supersedes the reply and the upload turn in flight."""
        try:
            pcm = await check_and_decode_async(data)
            await self.stop_reply()  # accept_upload stops the upload turn in flight
            self.conversation = None  # the upload turn's worker adds to it
            await database_sync_to_async(accept_upload)(self.session_id, pcm, ref)
        except UploadRefused as exc:
            await self.send_error(exc.code, exc.message, ref=ref)
        except limits.Limited as exc:
            await self.send_error(
                Err.RATE_LIMITED, exc.message, retryable=True, ref=ref, **exc.fields()
            )
        except (RedisError, OperationalError):  # past the clients' retries: this turn only
            await self.send_error(
                Err.INTERNAL,
                "the task queue (Redis) is unreachable, try again",
                retryable=True,
                ref=ref,
            )

    async def user_utterance(self, text: str, utterance_id: str) -> None:
        """A final result of the realtime recogniser: the user's turn, answered at once."""
        asr_ms = observe.take_asr_ms()
        timings = {"asr_ms": round(asr_ms, 1)} if asr_ms is not None else {}
        if not await self.admit(None, audio=True):
            return

        async def announce(user: Message) -> None:
            await self.send_event(protocol.asr_result(text, utterance_id, user.id, None))

        await self.answer(
            text, None, kind="realtime", asr_ms=asr_ms, timings=timings, announce=announce
        )

    async def admit(self, ref: str | None, *, audio: bool) -> bool:
        """Whether a new user turn is within the limits of the session's subject (it is then
        counted); if not the client gets ERR_RATE_LIMITED with `limit` and `retry_after`."""
        if not limits.turn_limited():
            return True
        try:
            await asyncio.to_thread(
                limits.admit_turn, self.subject, audio=audio, video=self.session.mode == "video"
            )
        except limits.Limited as exc:
            await self.send_error(
                Err.RATE_LIMITED, exc.message, retryable=True, ref=ref, **exc.fields()
            )
            return False
        return True

    # --- the reply ----------------------------------------------------------------------------
    def sink(self) -> AudioSink | None:
        """Where a reply's audio goes: the WebRTC track, binary frames inside a recognition
        span of a WebSocket-only session, or nowhere (the client fetches `audio_url`)."""
        if self.session.mode != "voice" or self.realtime is None:
            return None
        speaker = self.realtime.speaker()
        if speaker is not None:
            return WebRTCSink(speaker)
        if self.realtime.ws_audio_span:
            return WebSocketSink(self.transport.send_bytes)
        return None

    async def answer(
        self,
        text: str,
        ref: str | None,
        *,
        kind: str = "text",
        asr_ms: float | None = None,
        timings: dict[str, float] | None = None,
        announce: Callable[[Message], Awaitable[None]] | None = None,
    ) -> None:
        """Record a user message and answer it; a reply still running is superseded
        (cancelled). `announce` is told of the stored message before that (the realtime
        `asr_result`). One database call stops the upload turn and renders in flight, then
        records the message, makes the reply's own message and reads the history (`Reply.open`)
        in one transaction: the LLM is asked after one thread hop and one commit. When a reply
        is superseded, the new one opens in a call of its own once the old one has stopped, so
        that what the old one had started meanwhile (renders of its sentences) is stopped too.

        A turn that supersedes nothing asks the LLM before that call, with the conversation it
        expects (`conversation`), so that the call is off the path to the first reply: the answer
        is kept if the call reads that conversation (`Reply.run`)."""
        superseding = self.replying()
        sink = self.sink()
        stop = functools.partial(
            stopping.stop_turn, self.session_id, renders=self.session.mode == "video"
        )
        early = None
        if not superseding and self.conversation is not None:
            said = Message(role=sessions.USER, text=text).history_entry()
            expected = sessions.latest([*self.conversation, said])
            asked = ReplyRequest.of(
                self.session_id, self.session.mode, self.language, self.avatar, 0, ref
            )
            early = EarlyAnswer(asked.chat_turn(expected))

        def open_turn() -> tuple[Message, Reply]:
            if self.avatar.voice_source == VoiceSource.CLONED:  # the operator may change it
                refresh_voice(self.avatar)
            if not superseding:
                stop()  # outside the transaction: its Redis round trip holds no lock
            with transaction.atomic():
                user = sessions.add_message(
                    self.session_id, sessions.USER, text, ref=ref, timings=timings or {}
                )
                request = ReplyRequest.of(
                    self.session_id,
                    self.session.mode,
                    self.language,
                    self.avatar,
                    user.id,
                    ref,
                    kind=kind,
                    asr_ms=asr_ms,
                )
                reply = Reply(request, self.send_event, sink)
                if superseding:
                    reply.before = stop
                else:
                    reply.open()
            return user, reply

        # unknown until the new reply has ended; a superseded one ending meanwhile is not it
        self.latest, self.conversation = None, None
        try:
            user, reply = await database_sync_to_async(open_turn)()
            reply.early, self.latest = early, reply
            if announce is not None:
                await announce(user)
            await self.stop_reply()
        except BaseException:
            if early is not None:
                await asyncio.shield(early.drop())
            raise
        self.reply = reply
        self.reply_task = asyncio.ensure_future(self._run_reply(reply))
        if early is not None:
            early.drop_unless_taken(self.reply_task)

    async def _run_reply(self, reply: Reply) -> None:
        try:
            await reply.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reply failed in session %s", self.session_id)
            await self.send_error(
                Err.INTERNAL, "the reply failed", retryable=True, ref=reply.request.ref
            )
        finally:
            if reply is self.latest:  # not superseded: the next turn follows this one
                self.conversation = reply.conversation()

    def replying(self) -> bool:
        return self.reply_task is not None and not self.reply_task.done()

    async def stop_reply(self) -> bool:
        """Stop the reply this process is producing (its speech at once). True if one was."""
        reply, task = self.reply, self.reply_task
        self.reply = self.reply_task = None
        if task is None or task.done():
            return False
        if reply is not None and reply.sink is not None:
            reply.sink.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def interrupt(self) -> bool:
        """Stop the reply being produced, the upload turn in flight and their renders. True if
        there was one."""
        stopped = await self.stop_reply()
        return await database_sync_to_async(stopping.stop_turn)(self.session_id) or stopped

    async def barge_in(self) -> None:
        """The user started speaking over the avatar (realtime): the reply stops."""
        if self.replying():
            await self.interrupt()

    async def close(self) -> None:
        """The session ends: its speech stops at once, its reply is cancelled."""
        await self.stop_reply()
