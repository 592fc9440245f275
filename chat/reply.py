"""One reply of the avatar, produced in the web process's event loop.

The LLM's deltas stream to the client (`text_delta`) and, sentence by sentence, into streaming
TTS whose audio goes to the session's audio sink (WebRTC track or WebSocket frames) while the
model still writes; the whole reply audio is stored for `tts_complete.audio_url`, and in video
mode handed to rendering. Cancelling the task (interrupt, barge-in, session end) stops speech at
once through `sink.clear()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from avatars.models import Avatar
from avatars.voices import speaking_voice
from chat import limits, observe, protocol, sessions, video
from chat.audio import pcm_duration_ms, pcm_to_wav
from chat.models import Message
from chat.protocol import Err, scrub
from chat.providers.base import ChatTurn, ProviderError, Voice
from chat.providers.registry import get_llm, get_tts
from chat.providers.text import split_sentences, stream_sentences
from chat.storage import public_url, save_for_session
from chat.video import RenderBusy
from echoproject import logs, metrics

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class AudioSink(Protocol):
    transport: str

    async def write(self, pcm: bytes, sample_rate: int) -> None: ...

    async def finish(self) -> None: ...

    def clear(self) -> None: ...


class WebSocketSink:
    """Reply audio as binary WebSocket frames (PCM16 mono at the TTS rate)."""

    transport = "websocket"

    def __init__(self, send_bytes: Callable[[bytes], Awaitable[None]]) -> None:
        self._send_bytes = send_bytes

    async def write(self, pcm: bytes, sample_rate: int) -> None:
        await self._send_bytes(pcm)

    async def finish(self) -> None:
        return None

    def clear(self) -> None:
        return None


class WebRTCSink:
    """Reply audio on the session's outgoing WebRTC track, paced in real time by the track."""

    transport = "webrtc"

    def __init__(self, speaker: Any) -> None:
        self._speaker = speaker

    async def write(self, pcm: bytes, sample_rate: int) -> None:
        await self._speaker.write(pcm, sample_rate)

    async def finish(self) -> None:
        self._speaker.end_of_speech()
        await self._speaker.drained()

    def clear(self) -> None:
        self._speaker.clear()


@dataclass
class ReplyRequest:
    session_id: str
    mode: str
    language: str
    voice: Voice | str
    persona: str
    avatar_name: str
    greeting: str
    user_message_id: int
    ref: str | None = None
    speak: bool = True  # False: text only (the upload chain speaks in its own step)
    # text, realtime or upload: what operators see of the turn (the upload chain records its
    # own turns, over its steps)
    kind: str = "text"
    asr_ms: float | None = None  # a realtime utterance's recognition, for the turn's record

    @classmethod
    def of(
        cls,
        session_id: str,
        mode: str,
        language: str,
        avatar: Avatar | None,
        user_message_id: int,
        ref: str | None,
        *,
        speak: bool = True,
        kind: str = "text",
        asr_ms: float | None = None,
    ) -> ReplyRequest:
        """The one place that reads a reply's voice and persona off the avatar (a session whose
        avatar was deleted keeps replying, with the defaults)."""
        return cls(
            session_id=session_id,
            mode=mode,
            language=language,
            voice=speaking_voice(avatar),
            persona=avatar.persona if avatar else "",
            avatar_name=avatar.name if avatar else "",
            greeting=avatar.greeting if avatar else "",
            user_message_id=user_message_id,
            ref=ref,
            speak=speak,
            kind=kind,
            asr_ms=asr_ms,
        )

    def chat_turn(self, history: list[dict[str, str]]) -> ChatTurn:
        """What the LLM is asked, with the conversation `history` (the user's message last)."""
        return ChatTurn(
            persona=self.persona,
            history=history,
            avatar_name=self.avatar_name,
            greeting=self.greeting,
            language=self.language,
        )


class EarlyAnswer:
    """The LLM asked before the turn's database work is done, with the conversation the session
    expects (chat.turns): the request is on its way while the messages are stored. The reply
    keeps it only if the conversation it then reads is the same (`Reply.run`), and asks again
    otherwise; nothing of it reaches the client before that.

    The provider's stream runs in a task of its own from the first piece to the last (a
    provider's deadlines belong to the task that entered them), and hands its pieces over;
    the reply that stops reading it, or drops it, stops that task and with it the request."""

    def __init__(self, turn: ChatTurn) -> None:
        self.turn = turn
        self._queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._run(get_llm().stream_reply(turn)))
        self._taken = False

    async def _run(self, pieces: AsyncIterator[str]) -> None:
        try:
            async for piece in pieces:
                self._queue.put_nowait(piece)
        except Exception as exc:  # raised where the reply reads it
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(None)

    def pieces(self) -> AsyncIterator[str]:
        self._taken = True
        return self._stream()

    async def _stream(self) -> AsyncIterator[str]:
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._pump.cancel()  # the reply stopped reading: the request ends (done: no-op)

    async def drop(self) -> None:
        """Abandon the request (its connection is given back)."""
        self._taken = True
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)

    def drop_unless_taken(self, task: asyncio.Task[Any]) -> None:
        """Abandon the request if `task` ends without having taken it (a reply cancelled
        before it ran)."""

        def ended(_: asyncio.Task[Any]) -> None:
            if not self._taken:
                self._pump.cancel()

        task.add_done_callback(ended)


class Reply:
    """Produces one reply; `run()` is meant to be a task that the session may cancel."""

    def __init__(self, request: ReplyRequest, send: Send, sink: AudioSink | None) -> None:
        self.request = request
        self._send = send
        self.sink = sink
        self.message: Message | None = None
        # run in the reply's first database call, before its message is made: what a new turn
        # stops first (one thread hop fewer before the LLM is asked)
        self.before: Callable[[], object] | None = None
        self.history: list[dict[str, str]] | None = None  # read by `open`
        self.early: EarlyAnswer | None = None  # the LLM asked before `open` (chat.turns)
        self.text = ""
        self.request_id = ""
        self.speaking = False
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()
        self._task: asyncio.Task[Any] | None = None
        self._counted = 0  # reply characters counted against the limits (chat.limits)

    def open(self) -> None:
        """The reply's database work before the LLM is asked: `before`, the reply's message (a
        redelivered upload step brings the one its lost run made) and the history before it.
        `run()` calls it in a thread hop of its own unless the caller made it part of one
        (chat.turns records the user's message in the same call)."""
        if self.before is not None:
            self.before()
        if self.message is None:
            self.message = sessions.add_message(
                self.request.session_id,
                sessions.ASSISTANT,
                reply_to_id=self.request.user_message_id,
            )
        self.history = sessions.history(self.request.session_id, self.message)

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(event)

    def _mark(self, stage: str) -> None:
        self.timings.setdefault(stage, round((time.perf_counter() - self._started) * 1000, 1))

    async def run(self) -> None:
        request = self.request
        self._task = asyncio.current_task()
        logs.bind(request.session_id, request.user_message_id)
        if self.history is None:
            await database_sync_to_async(self.open)()
        answer = await self._ask(request.chat_turn(self.history or []))
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speech = asyncio.create_task(self._speak(_drain(sentences)))
        try:
            try:
                pieces = self._timed(answer, "llm_ms")
                async for sentence in stream_sentences(self._deltas(pieces)):
                    sentences.put_nowait(sentence)
            finally:
                sentences.put_nowait(None)
            self._mark("llm_done_ms")
            if settings.LIMIT_REPLY_CHARS_PER_DAY:  # counted before the client hears of it,
                await self._count_reply()  # so that its next turn is checked against it
            await self.send(
                protocol.text_response(
                    self.text, self.message.id, request.user_message_id, request.ref
                )
            )
            await speech
        except ProviderError as exc:
            speech.cancel()
            await self._fail(exc.code, exc.message, exc.retryable)
        except asyncio.CancelledError:
            speech.cancel()
            await asyncio.shield(self._interrupted())
            raise
        finally:
            self._record()
            await asyncio.shield(self._save())
            await asyncio.shield(self._count_reply())  # what the LLM produced is spent

    async def _ask(self, turn: ChatTurn) -> AsyncIterator[str]:
        """The LLM's answer to `turn`: the early one if it was asked with the same conversation."""
        early, self.early = self.early, None
        if early is not None:
            if early.turn == turn:
                return early.pieces()
            await early.drop()
            metrics.llm_asked_again()
            log.info(
                "the LLM is asked again for session %s: its conversation changed meanwhile",
                self.request.session_id,
            )
        return get_llm().stream_reply(turn)

    def conversation(self) -> list[dict[str, str]] | None:
        """The session's conversation after this reply, as the next turn's history will read
        it (a failed, interrupted or empty reply is not part of it); None if not known."""
        if self.history is None or self.message is None:
            return None
        if self.message.error_code or not self.message.text:
            return list(self.history)
        return [*self.history, self.message.history_entry()]

    async def _count_reply(self) -> None:
        """Count the reply's characters against the daily limit of its subject, once."""
        counted, self._counted = self._counted, len(self.text)
        if len(self.text) > counted:
            await database_sync_to_async(limits.add_for_session)(
                limits.REPLY, self.request.session_id, len(self.text) - counted
            )

    def _record(self) -> None:
        """The turn's log line and metrics (an upload's are recorded by its chain)."""
        request = self.request
        if request.kind == "upload" or self.message is None:
            return
        timings = {} if request.asr_ms is None else {"asr_ms": request.asr_ms}
        observe.record_turn(
            request.session_id,
            request.user_message_id,
            request.kind,
            {**timings, **self.timings},
            self.message.error_code,
        )

    async def _timed(self, items: AsyncIterator[Any], key: str) -> AsyncIterator[Any]:
        """Pass items through, adding the time spent waiting for the provider to timings[key]
        (so the service's own overhead can be told apart from the provider's time)."""
        iterator = aiter(items)
        while True:
            started = time.perf_counter()
            try:
                item = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                waited = (time.perf_counter() - started) * 1000
                self.timings[key] = round(self.timings.get(key, 0.0) + waited, 1)
            yield item

    def _check_cancelled(self) -> None:
        """Raise CancelledError when the reply's task was told to stop.

        Python 3.11's `asyncio.wait_for` (under the providers' thread bridges) returns a result
        that arrived together with the cancellation and drops the cancellation: an interrupted
        reply then kept speaking to its end, and `interrupt` waited for it. The task still
        counts the request (`cancelling()`), so each piece checks it before it goes out.
        """
        if self._task is not None and self._task.cancelling():
            raise asyncio.CancelledError

    async def _deltas(self, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
        async for delta in pieces:
            self._check_cancelled()
            if not delta:
                continue
            self._mark("llm_first_ms")
            delta = scrub(delta)  # a lone surrogate from the model would fail the save
            self.text += delta
            await self.send(protocol.text_delta(delta, self.message.id, self.request.ref))
            yield delta

    async def speak_message(self, message: Message) -> None:
        """Speak an existing reply (the upload chain's synthesize step)."""
        self.message, self.text = message, message.text
        try:
            await self._speak(_iterate(split_sentences(message.text)))
        finally:
            await self._save()

    async def _speak(self, sentences: AsyncIterator[str]) -> None:
        """TTS of each sentence as soon as it is complete, into the sink; then store the audio."""
        request = self.request
        if not request.speak or request.mode not in ("voice", "video"):
            async for _ in sentences:
                pass
            return
        tts = get_tts()
        pcm = bytearray()
        try:
            async for sentence in sentences:
                asked = time.perf_counter()
                chunks = self._timed(
                    tts.stream(sentence, request.voice, request.language), "tts_ms"
                )
                async for chunk in chunks:
                    self._check_cancelled()
                    if not self.speaking:
                        # the provider's own time to the first audio of the reply
                        waited = (time.perf_counter() - asked) * 1000
                        self.timings.setdefault("tts_first_chunk_ms", round(waited, 1))
                        await self._start_speech(tts.sample_rate)
                    pcm.extend(chunk)
                    if self.sink is not None:
                        await self.sink.write(chunk, tts.sample_rate)
            if not self.speaking:
                return
            if self.sink is not None:
                await self.sink.finish()
            self._mark("tts_done_ms")
            await self._complete_speech(bytes(pcm), tts.sample_rate)
        except ProviderError as exc:
            if self.sink is not None:
                self.sink.clear()
            await self._fail(exc.code, exc.message, exc.retryable)

    async def _start_speech(self, sample_rate: int) -> None:
        self.speaking = True
        self.request_id = uuid.uuid4().hex[:12]
        self._mark("tts_first_ms")
        await self.send(
            protocol.tts_start(
                self.request_id,
                self.message.id,
                self.sink.transport if self.sink is not None else "url",
                sample_rate,
                self.request.ref,
            )
        )

    async def _complete_speech(self, pcm: bytes, sample_rate: int) -> None:
        message = self.message
        name = await database_sync_to_async(save_for_session, thread_sensitive=False)(
            self.request.session_id, f"audio/reply-{message.id}.wav", pcm_to_wav(pcm, sample_rate)
        )
        if name is None:  # the session ended meanwhile
            return
        message.audio = name
        message.audio_url = await sync_to_async(public_url, thread_sensitive=False)(name)
        message.duration_ms = pcm_duration_ms(pcm, sample_rate)
        self.speaking = False
        await self.send(
            protocol.tts_complete(
                self.request_id, message.audio_url, message.duration_ms, self.request.ref
            )
        )
        if self.request.mode == "video":
            await database_sync_to_async(self._save_sync)()
            await self.render()

    async def render(self) -> None:
        """Hand the stored reply to a render worker (or tell the client they are all busy)."""
        try:
            await database_sync_to_async(video.renderer().submit, thread_sensitive=False)(
                self.message.id, self.request.ref
            )
        except RenderBusy as exc:
            await self._fail(Err.BUSY, str(exc), True)

    async def _fail(self, code: str, message: str, retryable: bool) -> None:
        if code != Err.BUSY:
            metrics.provider_error(code)
        if self.message is not None and not self.message.error_code:
            self.message.error_code = str(code)
            self.message.error_message = message
            await self._save()  # the history shows the failure before the client hears of it
        await self.send(protocol.error(code, message, retryable=retryable, ref=self.request.ref))

    async def _interrupted(self) -> None:
        """Close what the client has open: the speech span and the text of the reply."""
        if self.sink is not None:
            self.sink.clear()
        if self.message is None:
            return
        self.message.error_code = self.message.error_code or "INTERRUPTED"
        try:
            if self.speaking:
                await self.send(
                    protocol.tts_complete(
                        self.request_id, None, 0, self.request.ref, interrupted=True
                    )
                )
            await self.send(
                protocol.text_response(
                    self.text,
                    self.message.id,
                    self.request.user_message_id,
                    self.request.ref,
                    interrupted=True,
                )
            )
        except Exception:  # the socket may already be gone
            log.debug("could not report the interruption", exc_info=True)

    def _save_sync(self) -> None:
        """Save the fields this reply owns; a render worker may be writing the others. A
        message deleted meanwhile (the session's data erased while it ran) stays deleted."""
        message = self.message
        if message is None:
            return
        stored = Message.objects.filter(pk=message.pk).values_list("timings", flat=True).first()
        message.text = self.text
        message.timings = {**(stored or {}), **self.timings}
        fields = ("audio", "audio_url", "duration_ms", "error_code", "error_message")
        saved = Message.objects.filter(pk=message.pk).update(
            text=message.text,
            timings=message.timings,
            **{name: getattr(message, name) for name in fields},
        )
        if not saved:
            log.info("reply %s not saved: its message was deleted meanwhile", message.pk)

    async def _save(self) -> None:
        await database_sync_to_async(self._save_sync)()


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (item := await queue.get()) is not None:
        yield item


async def _iterate(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item
