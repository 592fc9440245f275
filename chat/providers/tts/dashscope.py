"""CosyVoice through DashScope, on the event loop.

A sentence is one CosyVoice task, written by the SDK's own `tts_v2.Request` (run-task, then
continue-task with the text and finish-task once the task started, as `SpeechSynthesizer`
sends them), over a websocket of aiohttp, the transport of the SDK's asyncio requests. The
text goes out and the audio comes back on the event loop: no thread per socket, no hand-over
between threads per chunk, every wait bounded by a timeout from settings. (The SDK's
`SpeechSynthesizer` runs each socket's read loop on a thread of its own: at 20 talking
sessions a process, those threads took a fifth of its CPU samples, mostly waiting for the GIL
to hand one chunk at a time to the loop.)

Connections are reused, as the SDK's `SpeechSynthesizerObjectPool` reuses them: after a task's
task-finished its socket waits in the loop's `_Connections` for the next sentence, of any
voice, so a sentence starts with its run-task instead of a handshake. DASHSCOPE_TTS_PRECONNECT
sockets are also opened ahead for a service in use. A socket idle for RENEW_AFTER_S is closed
(and replaced while the service is in use); one the service closed meanwhile is found out at
its next run-task, and that sentence is sent again, once, on a new connection. A sentence given
up before its end (a barge-in, a timeout, an error) closes its socket.

An avatar's cloned voice is tried first; when the service refuses it (not ready, deleted, made
for another model) before any audio came, the sentence is spoken with the avatar's preset and a
warning is logged, and the cloned voice is not tried again for UNUSABLE_FOR_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from dashscope.audio.tts_v2 import AudioFormat
from dashscope.audio.tts_v2.speech_synthesizer import Request
from django.conf import settings

from chat.providers.base import TTSError, TTSProvider, Voice
from chat.providers.cloud import (
    configure_dashscope,
    dashscope_websocket_session,
    failure,
    timed_out,
    websocket_tls_context,
)

log = logging.getLogger(__name__)

WHAT = "DashScope TTS"
# CosyVoice's own rate, which the realtime speaker queues as it comes (chat/realtime/speaker.py)
FORMAT = AudioFormat.PCM_24000HZ_MONO_16BIT
SAMPLE_RATE = FORMAT.sample_rate
RENEW_AFTER_S = 30.0  # an idle socket is replaced after this (the SDK's own pool: 25-35 s)
KEEP_FOR_S = 300.0  # sockets are opened ahead for a service used within this time
MAINTAIN_EVERY_S = 5.0
CLOSE_WAIT_S = 2.0  # a closing socket waits this long for the service's close frame
UNUSABLE_FOR_S = 60.0  # a cloned voice the service refused is not tried again for this long
_ESPEAK_NAME = re.compile(r"[a-z]{2,3}(-[a-z0-9]+)*(\+.*)?")

# websocket URL and API key: what a connection is opened with (a task names model and voice)
_Service = tuple[str, str]


@dataclass(eq=False)
class _Socket:
    service: _Service
    ws: aiohttp.ClientWebSocketResponse
    opened_at: float
    idle_since: float
    lost: bool = False  # the connection went away under a task

    def usable(self, now: float) -> bool:
        return not (self.lost or self.ws.closed) and now - self.idle_since < RENEW_AFTER_S


def _proxy_for(url: str) -> str | None:
    """The proxy of the environment for this websocket URL (`HTTPS_PROXY` for `wss://`, as
    websocket-client reads it; `NO_PROXY` honoured)."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    plain = URL(url).with_scheme("https" if url.startswith("wss:") else "http")
    with contextlib.suppress(LookupError):
        proxy, _ = get_env_proxy_for_url(plain)
        return str(proxy)
    return None


class _Connections:
    """The CosyVoice sockets of one event loop: those waiting for a sentence, per service, and
    a maintenance task that renews them, opens `size` ahead for a service used within
    KEEP_FOR_S, and closes the waiting sockets when it ends (the provider's `close()`, or the
    end of the loop: `asyncio.run` cancels it). The sockets are the loop's websocket session's
    (`dashscope_websocket_session`), which closes whatever is left with the loop."""

    def __init__(self, size: int, connect_timeout_s: float) -> None:
        self.size = size
        self.connect_timeout_s = connect_timeout_s
        self.closed = False
        self._idle: dict[_Service, list[_Socket]] = {}
        self._used: dict[_Service, float] = {}
        self._wake = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._maintainer = asyncio.get_running_loop().create_task(
            self._maintain_until_closed(), name="dashscope-tts-connections"
        )

    def take(self, service: _Service) -> _Socket | None:
        """An open socket for `service`, or None: the caller opens one (`open`)."""
        now = time.monotonic()
        self._used[service] = now
        waiting = self._idle.get(service, [])
        found = None
        while waiting and found is None:
            sock = waiting.pop()  # the one used last
            if sock.usable(now):
                found = sock
            else:
                self.discard(sock)
        if self.size and len(waiting) < self.size:
            self._wake.set()  # open more ahead
        return found

    async def open(self, service: _Service) -> _Socket:
        url, api_key = service
        headers = Request(api_key, "", "").get_websocket_headers(headers=None, workspace=None)
        async with asyncio.timeout(self.connect_timeout_s):
            ws = await dashscope_websocket_session().ws_connect(
                url,
                headers=headers,
                proxy=_proxy_for(url),
                ssl=websocket_tls_context() if url.startswith("wss:") else True,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_WAIT_S),
                max_msg_size=0,
            )
        now = time.monotonic()
        return _Socket(service, ws, now, now)

    def give_back(self, sock: _Socket) -> None:
        """A socket whose task finished: it waits for the next sentence."""
        if self.closed or sock.ws.closed:
            self.discard(sock)
            return
        sock.idle_since = time.monotonic()
        self._idle.setdefault(sock.service, []).append(sock)

    def discard(self, sock: _Socket) -> None:
        """Close without waiting (the close handshake may take a round trip)."""
        if sock.ws.closed:
            return
        try:
            closing = asyncio.get_running_loop().create_task(sock.ws.close())
        except RuntimeError:  # no loop left (a sentence abandoned at the loop's end)
            return
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def ready(self, service: _Service) -> int:
        now = time.monotonic()
        return sum(1 for sock in self._idle.get(service, []) if sock.usable(now))

    async def close(self) -> None:
        self._maintainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._maintainer

    async def _maintain_until_closed(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MAINTAIN_EVERY_S):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self._maintain()
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.exception("keeping DashScope TTS sockets failed")
        finally:
            self.closed = True
            for waiting in self._idle.values():
                for sock in waiting:
                    self.discard(sock)
            self._idle.clear()
            if self._closing:
                await asyncio.wait(set(self._closing), timeout=CLOSE_WAIT_S)

    async def _maintain(self) -> None:
        now = time.monotonic()
        wanted: list[_Service] = []
        for service in set(self._idle) | set(self._used):
            waiting = self._idle.pop(service, [])
            keep = [sock for sock in waiting if sock.usable(now)]
            for sock in waiting:
                if sock not in keep:
                    self.discard(sock)
            if keep:
                self._idle[service] = keep
            if service in self._used and now - self._used[service] >= KEEP_FOR_S:
                del self._used[service]  # the service went quiet: open nothing ahead for it
            elif service in self._used:
                wanted += [service] * (self.size - len(keep))
        for service in wanted:
            try:
                sock = await self.open(service)
            except Exception:  # noqa: BLE001 - refused or unreachable: not until the next use
                log.debug("opening a DashScope TTS socket ahead failed", exc_info=True)
                self._used.pop(service, None)
                continue
            self.give_back(sock)


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
        self._connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connections]
        self._connections = weakref.WeakKeyDictionary()
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
        """Close every loop's sockets (from any thread; a loop's own close goes on without
        being waited for)."""
        for loop, connections in list(self._connections.items()):
            if loop.is_closed():
                continue
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                asyncio.run_coroutine_threadsafe(connections.close(), loop)
        self._connections.clear()

    def connections(self) -> _Connections:
        """The running loop's sockets."""
        loop = asyncio.get_running_loop()
        connections = self._connections.get(loop)
        if connections is None or connections.closed:
            connections = _Connections(self.preconnect, self.connect_timeout_s)
            self._connections[loop] = connections
        return connections

    def service(self) -> _Service:
        """What a connection is opened with (configures the SDK first)."""
        import dashscope

        api_key = configure_dashscope()
        return (dashscope.base_websocket_api_url, api_key)

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
        connections = self.connections()
        waiting = connections.take(service)
        if waiting is None:
            sock = await self._open(connections, service)
            async for chunk in self._task(connections, sock, text, voice, language):
                yield chunk
            return

        # A socket that waited may have been closed by the service an instant before it was
        # taken (its close not yet read here): when that socket is gone before any audio came,
        # the sentence is sent again, once, on a new connection.
        async def fresh() -> AsyncIterator[bytes]:
            sock = await self._open(connections, service)
            async for chunk in self._task(connections, sock, text, voice, language):
                yield chunk

        chunks = _instead_before_audio(
            self._task(connections, waiting, text, voice, language),
            lambda exc: exc.retryable and waiting.lost,
            fresh,
        )
        async for chunk in chunks:
            yield chunk

    async def _open(self, connections: _Connections, service: _Service) -> _Socket:
        api_key = service[1]
        try:
            return await connections.open(service)
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
        self, connections: _Connections, sock: _Socket, text: str, voice: str, language: str
    ) -> AsyncIterator[bytes]:
        """One sentence on `sock`: its audio as it comes; the socket goes back to
        `connections` after task-finished, and is closed on anything else."""
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
                connections.give_back(sock)
            else:  # given up, failed or lost: the service may still be speaking on it
                connections.discard(sock)


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
