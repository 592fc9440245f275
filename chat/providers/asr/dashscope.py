"""DashScope recognition: Paraformer realtime for streams, Qwen ASR for uploaded files.

A stream is the SDK's duplex websocket request (the one `Recognition.start()` makes), run on
the event loop with the SDK's own steps (run-task, the wait for task-started, the results until
task-finished, finish-task): the audio goes out from an asyncio queue and the results come back
on the loop, with no thread, no event loop of its own and no hand-over between threads per
stream. (The SDK's `Recognition` runs each stream on two threads of its own and a private event
loop: the final text crossed three threads on its way to the session, each crossing a wait for
the GIL on a busy machine, and every stream left a reference cycle of ~80 objects for the cyclic
collector.) The task runs on one of the loop's reusable DashScope connections
(chat/providers/dashscope_ws.py) instead of a connection, and an aiohttp session, of its own:
after task-finished the socket waits for the next utterance, so an utterance costs no handshake
(and over TLS no TLS handshake). A waiting socket the service closed meanwhile is found out
before any audio went out, and the utterance starts again, once, on a new connection. File
recognition needs the file's public URL: the service cannot reach local paths or private hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import aiohttp
from dashscope import MultiModalConversation
from dashscope.api_entities.api_request_factory import _build_api_request
from dashscope.audio.asr import Recognition
from dashscope.client.base_api import get_api_module
from dashscope.common.constants import ApiProtocol
from dashscope.common.error import RequestFailure, UnexpectedMessageReceived
from dashscope.common.utils import _get_task_group_and_task
from dashscope.protocol.websocket import WebsocketStreamingMode
from django.conf import settings

from chat.providers.base import SPEECH_RATE, ASRError, ASRProvider, ASRStream, Hypothesis
from chat.providers.bridge import ThreadBridge, run_in_daemon
from chat.providers.cloud import configure_dashscope, failure, timed_out
from chat.providers.dashscope_ws import (
    Connections,
    Service,
    Socket,
    close_connections,
    connections,
)

WHAT = "DashScope ASR"
# The SDK's websocket session has only a total timeout: the longest stream we allow.
MAX_STREAM_S = 600.0
# Audio goes out in chunks of at least this many ms (the realtime path hands 20 ms frames):
# fewer websocket frames per second of speech; what is left is sent at the end of the stream,
# so the final text comes no later.
CHUNK_MS = 100
# A stream no audio comes to for this long ends itself, as the SDK's silence timer ends it.
SILENCE_TIMEOUT_S = float(Recognition.SILENCE_TIMEOUT_S)
_END = None  # queued after the last audio


def _language_code(language: str) -> str:
    return language.split("-")[0].lower() or "en"


def _recognition_request(model: str, language: str, sample_rate: int, key: str) -> Any:
    """The SDK's request for one realtime recognition, as `Recognition.start()` builds it."""
    task, function = _get_task_group_and_task(Recognition.__module__)
    return _build_api_request(
        model=model,
        input=iter(()),  # the audio goes out through `_DashScopeStream._send`
        task_group="audio",
        task=task,
        function=function,
        api_key=key,
        sdk_module=get_api_module(Recognition.__module__),
        api_protocol=ApiProtocol.WEBSOCKET,
        ws_stream_mode=WebsocketStreamingMode.DUPLEX,
        is_binary_input=True,
        sample_rate=sample_rate,
        format="pcm",
        stream=True,
        language_hints=[_language_code(language)],
        request_timeout=MAX_STREAM_S,
    )


class _DashScopeStream(ASRStream):
    def __init__(self, provider: DashScopeASR, language: str, sample_rate: int) -> None:
        self._timeout_s = provider.timeout_s
        self._bridge: ThreadBridge[Hypothesis] = ThreadBridge()
        self._key = configure_dashscope()
        self.error: ASRError | None = None
        self._finished = False
        self._chunk_bytes = sample_rate * 2 * CHUNK_MS // 1000
        self._held = bytearray()
        self._audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._request = _recognition_request(provider.model, language, sample_rate, self._key)
        self._connect_timeout_s = provider.connect_timeout_s
        self._complete = False  # task-finished came: every result is in
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dashscope-asr")

    async def _send(self, ws: Any) -> None:
        """The audio as it comes, then the end of the task (after the last audio, or after
        SILENCE_TIMEOUT_S without any)."""
        while True:
            try:
                async with asyncio.timeout(SILENCE_TIMEOUT_S):
                    chunk = await self._audio.get()
            except TimeoutError:
                break
            if chunk is _END:
                break
            await ws.send_bytes(chunk)
        await self._request._send_finished_task(ws)

    async def _started(self, pool: Connections, service: Service) -> Socket:
        """A socket whose task (this stream's) has started: one that waited, else a new one;
        a waiting one found closed before the task started is replaced, once."""
        sock = pool.take(service)
        reused = sock is not None
        while True:
            if sock is None:
                sock = await pool.open(service, self._connect_timeout_s, self._request.headers)
            try:
                await self._request._start_task(sock.ws)
                await self._request._wait_for_task_started(sock.ws)
                return sock
            except BaseException as exc:
                pool.discard(sock)  # refused (task-failed), lost, or given up
                lost = isinstance(exc, (UnexpectedMessageReceived, aiohttp.ClientError, OSError))
                if not (reused and lost):
                    raise
                reused, sock = False, None

    async def _run(self) -> None:
        url, pool = self._request.url, connections()
        service: Service = (url, self._key, "asr")
        sock: Socket | None = None
        try:
            async with asyncio.timeout(MAX_STREAM_S):
                sock = await self._started(pool, service)
                task_id = self._request.task_headers["task_id"]
                sender = asyncio.create_task(self._send(sock.ws), name="dashscope-asr-audio")
                try:
                    async for is_binary, payload in self._request._receive_streaming_data_task(
                        sock.ws
                    ):
                        part = self._request._to_DashScopeAPIResponse(task_id, is_binary, payload)
                        sentence = (part.output or {}).get("sentence")
                        if isinstance(sentence, dict) and sentence.get("text"):
                            final = (
                                bool(sentence.get("sentence_end"))
                                or sentence.get("end_time") is not None
                            )
                            self._bridge.put(Hypothesis(sentence["text"], final=final))
                    await sender
                finally:
                    if not sender.done():
                        sender.cancel()
                        await asyncio.gather(sender, return_exceptions=True)
            self._complete = True
            self._bridge.end()
        except RequestFailure as exc:  # task-failed
            self._fail(status=exc.http_code, code=exc.name, message=exc.message)
        except UnexpectedMessageReceived as exc:  # the connection closed or failed under it
            self._fail(exc=exc, retryable=True)
        except aiohttp.WSServerHandshakeError as exc:  # answered with an HTTP error
            message = f"websocket handshake refused ({exc.status})"
            self._fail(status=exc.status, message=message)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes ASRError
            self._fail(exc=exc)
        finally:
            if sock is not None:
                if self._complete:
                    pool.give_back(sock)
                else:  # failed, cancelled or closed early: the service may still be at it
                    pool.discard(sock)

    def _fail(self, **why: Any) -> None:
        self.error = failure(ASRError, WHAT, secrets=(self._key,), **why)
        self._bridge.fail(self.error)

    async def feed(self, pcm: bytes) -> None:
        if self.error is not None:
            raise self.error
        if self._finished:
            raise ASRError("audio fed after finish()")
        self._start()
        self._held += pcm
        if len(self._held) >= self._chunk_bytes:
            self._send_held()

    def _send_held(self) -> None:
        if self._held:
            chunk, self._held = bytes(self._held), bytearray()
            self._audio.put_nowait(chunk)

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._start()
        self._send_held()
        self._audio.put_nowait(_END)
        self._bridge.deadline(self._timeout_s, lambda: timed_out(ASRError, WHAT, self._timeout_s))

    async def results(self) -> AsyncIterator[Hypothesis]:
        # No timeout while audio flows (the speaker may be silent); finish() sets a deadline.
        async for hypothesis in self._bridge.iterate():
            yield hypothesis

    async def close(self) -> None:
        self._bridge.abandon()
        self._finished = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()  # its socket is closed, unless its task had finished
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class DashScopeASR(ASRProvider):
    name = "dashscope"

    def __init__(
        self, model: str, file_model: str, timeout_s: float, connect_timeout_s: float
    ) -> None:
        self.model = model
        self.file_model = file_model
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s

    @classmethod
    def from_settings(cls) -> DashScopeASR:
        return cls(
            settings.DASHSCOPE_ASR_MODEL,
            settings.DASHSCOPE_FILE_ASR_MODEL,
            settings.PROVIDER_TIMEOUT_S,
            settings.PROVIDER_CONNECT_TIMEOUT_S,
        )

    def close(self) -> None:
        """Close the DashScope sockets waiting in every loop (speech's too: one pool)."""
        close_connections()

    def stream(self, language: str, sample_rate: int = SPEECH_RATE) -> ASRStream:
        return _DashScopeStream(self, language, sample_rate)

    async def recognize_file(self, path: str, url: str, language: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ASRError(
                "DashScope file recognition needs a public URL of the audio",
                provider_message="set up S3/OSS storage with public URLs",
            )
        wait = self.timeout_s + self.connect_timeout_s
        return await run_in_daemon(
            lambda: self._recognize_url(url, language),
            wait,
            lambda: timed_out(ASRError, WHAT, wait),
        )

    def _recognize_url(self, url: str, language: str) -> str:
        key = configure_dashscope()
        try:
            response: Any = MultiModalConversation.call(
                model=self.file_model,
                messages=[{"role": "user", "content": [{"audio": url}]}],
                result_format="message",
                asr_options={"language": _language_code(language)},
                api_key=key,
                request_timeout=(self.connect_timeout_s, self.timeout_s),
            )
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes ASRError
            raise failure(ASRError, WHAT, exc=exc, secrets=(key,)) from None
        if response.status_code != HTTPStatus.OK:
            raise failure(
                ASRError,
                WHAT,
                status=response.status_code,
                code=response.code,
                message=response.message,
                secrets=(key,),
            )
        try:
            content = response.output.choices[0].message.content
            return "".join(part.get("text", "") for part in content).strip()
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise ASRError(
                "DashScope ASR answered without text", provider_message=str(exc)
            ) from None
