"""CosyVoice through DashScope, on the event loop.

A sentence is one CosyVoice task, written by the SDK's own `tts_v2.Request` (run-task, then
continue-task with the text and finish-task once the task started, as `SpeechSynthesizer`
sends them), over a websocket of aiohttp, the transport of the SDK's asyncio requests. The
text goes out and the audio comes back on the event loop: no thread per socket, no hand-over
between threads per chunk, every wait bounded by a timeout from settings. (The SDK's
`SpeechSynthesizer` runs each socket's read loop on a thread of its own: at 20 talking
sessions a process, those threads took a fifth of its CPU samples, mostly waiting for the GIL
to hand one chunk at a time to the loop.)

Connections are reused, as the SDK's `SpeechSynthesizerObjectPool` reuses them
(chat/providers/dashscope_ws.py): after a task's task-finished its socket waits in the loop's
pool for the next sentence, of any voice, so a sentence starts with its run-task instead of a
handshake, and DASHSCOPE_TTS_PRECONNECT sockets are opened ahead while CosyVoice is in use. A
waiting socket the service closed meanwhile is found out at the sentence's run-task, and the
sentence is sent again, once, on a new connection. A sentence given up before its end (a
barge-in, a timeout, an error) closes its socket.

An avatar's cloned voice is tried first; when the service refuses it (not ready, deleted, made
for another model) before any audio came, the sentence is spoken with the avatar's preset and a
warning is logged, and the cloned voice is not tried again for UNUSABLE_FOR_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from dashscope.audio.tts_v2 import AudioFormat
from dashscope.audio.tts_v2.speech_synthesizer import Request
from django.conf import settings

from chat.providers.base import TTSError, TTSProvider, Voice
from chat.providers.cloud import (
    configure_dashscope,
    failure,
    timed_out,
    websocket_tls_context,
)
from chat.providers.dashscope_ws import Connections, Service, Socket, close_connections, connections

log = logging.getLogger(__name__)

WHAT = "DashScope TTS"
# CosyVoice's own rate, which the realtime speaker queues as it comes (chat/realtime/speaker.py)
FORMAT = AudioFormat.PCM_24000HZ_MONO_16BIT
SAMPLE_RATE = FORMAT.sample_rate
UNUSABLE_FOR_S = 60.0  # a cloned voice the service refused is not tried again for this long
_ESPEAK_NAME = re.compile(r"[a-z]{2,3}(-[a-z0-9]+)*(\+.*)?")


class DashScopeTTS(TTSProvider):
    name = "dashscope"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: str,
        default_voice: str,
        timeout_s: float,
        connect_timeout_s: float = 5.0,
        preconnect: int = 0,
    ) -> None:
        self.model = model
        self.default_voice = default_voice
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.preconnect = preconnect
        self._refused: dict[str, float] = {}  # cloned voice id -> when it may be tried again

    @classmethod
    def preload(cls) -> None:
        if settings.DASHSCOPE_WEBSOCKET_BASE_URL.startswith("wss:"):
            websocket_tls_context()

    @classmethod
    def from_settings(cls) -> DashScopeTTS:
        return cls(
            settings.DASHSCOPE_TTS_MODEL,
            settings.DASHSCOPE_TTS_VOICE,
            settings.PROVIDER_TIMEOUT_S,
            settings.PROVIDER_CONNECT_TIMEOUT_S,
            settings.DASHSCOPE_TTS_PRECONNECT,
        )

    def close(self) -> None:
        """Close the DashScope sockets waiting in every loop (recognition's too: one pool)."""
        close_connections()

    def service(self) -> Service:
        """What a connection is opened with (configures the SDK first)."""
        import dashscope

        api_key = configure_dashscope()
        return (dashscope.base_websocket_api_url, api_key, "tts")

    def _voice(self, voice: str) -> str:
        """CosyVoice ids look like "longxiaochun_v2"; an espeak-ng name ("en-us+f3") is not one."""
        if not voice or _ESPEAK_NAME.fullmatch(voice.lower()):
            return self.default_voice
        return voice

    def _request(self, api_key: str, voice: str, language: str) -> Request:
        """One task's messages, as `SpeechSynthesizer` writes them."""
        hints = [language.split("-")[0].lower()] if language else None
        return Request(
            apikey=api_key,
            model=self.model,
            voice=self._voice(voice),
            format=FORMAT.format,
            sample_rate=FORMAT.sample_rate,
            bit_rate=FORMAT.bit_rate,
            language_hints=hints,
        )

    async def stream(self, text: str, voice: Voice | str, language: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        chosen = Voice.of(voice)
        cloned = chosen.cloned
        if cloned and self._refused.get(cloned, 0.0) > time.monotonic():
            cloned = ""
        if not cloned:
            async for chunk in self._stream_voice(text, chosen.preset, language):
                yield chunk
            return

        def refused(exc: TTSError) -> bool:
            """A cloned voice the service will not speak with: the preset, for a while."""
            if exc.retryable:
                return False
            self._refused[cloned] = time.monotonic() + UNUSABLE_FOR_S
            log.warning(
                "cloned voice %s cannot speak (%s): speaking with the preset %s instead",
                cloned,
                exc.provider_message or exc.message,
                self._voice(chosen.preset),
            )
            return True

        chunks = _instead_before_audio(
            self._stream_voice(text, cloned, language),
            refused,
            lambda: self._stream_voice(text, chosen.preset, language),
        )
        async for chunk in chunks:
            yield chunk

    def forget_refusals(self) -> None:
        """Try cloned voices again at once (after an operator fixed them)."""
        self._refused.clear()

    async def _stream_voice(self, text: str, voice: str, language: str) -> AsyncIterator[bytes]:
        service = self.service()
        pool = connections()
        waiting = pool.take(service, self.preconnect, self.connect_timeout_s)
        if waiting is None:
            sock = await self._open(pool, service)
            async for chunk in self._task(pool, sock, text, voice, language):
                yield chunk
            return

        # A socket that waited may have been closed by the service an instant before it was
        # taken (its close not yet read here): when that socket is gone before any audio came,
        # the sentence is sent again, once, on a new connection.
        async def fresh() -> AsyncIterator[bytes]:
            sock = await self._open(pool, service)
            async for chunk in self._task(pool, sock, text, voice, language):
                yield chunk

        chunks = _instead_before_audio(
            self._task(pool, waiting, text, voice, language),
            lambda exc: exc.retryable and waiting.lost,
            fresh,
        )
        async for chunk in chunks:
            yield chunk

    async def _open(self, pool: Connections, service: Service) -> Socket:
        api_key = service[1]
        try:
            return await pool.open(service, self.connect_timeout_s)
        except aiohttp.WSServerHandshakeError as exc:  # answered with an HTTP error
            message = f"websocket handshake refused ({exc.status})"
            raise failure(
                TTSError, WHAT, status=exc.status, message=message, secrets=(api_key,)
            ) from None
        except TimeoutError:
            raise timed_out(TTSError, WHAT, self.connect_timeout_s) from None
        except Exception as exc:  # noqa: BLE001 - every connection failure becomes TTSError
            raise failure(TTSError, WHAT, exc=exc, secrets=(api_key,)) from None

    async def _task(
        self, pool: Connections, sock: Socket, text: str, voice: str, language: str
    ) -> AsyncIterator[bytes]:
        """One sentence on `sock`: its audio as it comes; the socket goes back to `pool`
        after task-finished, and is closed on anything else."""
        api_key = sock.service[1]
        request = self._request(api_key, voice, language)
        finished = False
        try:
            await sock.ws.send_str(request.get_start_request())
            while True:
                async with asyncio.timeout(self.timeout_s):
                    message = await sock.ws.receive()
                if message.type == aiohttp.WSMsgType.BINARY:
                    yield message.data
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:  # closed, or the connection failed
                    sock.lost = True
                    why = message.data if isinstance(message.data, BaseException) else None
                    raise ConnectionError(
                        f"connection closed before the audio ended{f' ({why})' if why else ''}"
                    )
                header = json.loads(message.data)["header"]
                event = header.get("event")
                if header.get("task_id") != request.task_id:
                    continue  # not this task's (a reused connection's earlier task)
                if event == "task-started":
                    await sock.ws.send_str(request.get_continue_request(text))
                    await sock.ws.send_str(request.get_finish_request())
                elif event == "task-finished":
                    finished = True
                    return
                elif event == "task-failed":
                    raise failure(
                        TTSError,
                        WHAT,
                        code=header.get("error_code"),
                        message=header.get("error_message", message.data),
                        secrets=(api_key,),
                    )
        except TimeoutError:
            raise timed_out(TTSError, WHAT, self.timeout_s) from None
        except (TTSError, GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - every transport failure becomes TTSError
            if isinstance(exc, (ConnectionError, aiohttp.ClientError)):
                sock.lost = True
            raise failure(TTSError, WHAT, exc=exc, secrets=(api_key,)) from None
        finally:
            if finished:
                pool.give_back(sock)
            else:  # given up, failed or lost: the service may still be speaking on it
                pool.discard(sock)


async def _instead_before_audio(
    first: AsyncIterator[bytes],
    instead: Callable[[TTSError], bool],
    then: Callable[[], AsyncIterator[bytes]],
) -> AsyncIterator[bytes]:
    """The chunks of `first`; if it fails before its first chunk with an error that
    `instead(error)` accepts, the chunks of `then()` (once). An error after audio went out is
    the sentence's error: the client has heard part of it."""
    started = False
    try:
        async for chunk in first:
            started = True
            yield chunk
        return
    except TTSError as exc:
        if started or not instead(exc):
            raise
    async for chunk in then():
        yield chunk
