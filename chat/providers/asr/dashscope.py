"""DashScope recognition: Paraformer realtime for streams, Qwen ASR for uploaded files.

A stream is one `Recognition` object (the SDK reuses a task id when an object is reused). Its
callbacks run on an SDK thread and hand hypotheses to the loop through a `ThreadBridge`;
`stop()` blocks until the task ends, so it runs on a daemon thread. Results only flow while
audio keeps arriving, which the realtime path does (silence included). File recognition needs
the file's public URL: the service cannot reach local paths or private hosts.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from dashscope import MultiModalConversation
from dashscope.audio.asr import Recognition, RecognitionCallback
from dashscope.common.error import InvalidParameter
from django.conf import settings

from chat.providers.base import SPEECH_RATE, ASRError, ASRProvider, ASRStream, Hypothesis
from chat.providers.bridge import ThreadBridge, run_in_daemon, spawn
from chat.providers.cloud import configure_dashscope, failure, timed_out

logger = logging.getLogger(__name__)

WHAT = "DashScope ASR"
# The SDK's websocket session has only a total timeout: the longest stream we allow.
MAX_STREAM_S = 600.0
# Audio goes to the SDK in chunks of at least this many ms (the realtime path hands 20 ms
# frames): fewer queue hand-overs and websocket frames per second of speech; what is left is
# sent at the end of the stream, so the final text comes no later.
CHUNK_MS = 100
# How long the SDK's sender waits for audio before it lets the SDK's own loop read results:
# longer than the CHUNK_MS between chunks while audio flows (each chunk lets it read them too),
# so the sender wakes without audio only while the speaker's audio pauses.
_WAIT_S = 0.15


def _language_code(language: str) -> str:
    return language.split("-")[0].lower() or "en"


class _Recognition(Recognition):
    """The SDK's recogniser, with a sender that waits for audio instead of polling for it, and
    no thread started on the caller's (the event loop's) behalf.

    The SDK's `start()` starts its websocket worker with `Thread.start()`, which waits for the
    new thread to run (milliseconds of a held event loop on a busy machine), and a 23 s silence
    `threading.Timer`; its sender (`_input_stream_cycle`, a generator its websocket loop
    iterates) polls its queue every 10 ms while it is empty and, for every chunk, cancels the
    timer and starts a new one: a thread woken a hundred times a second and a new thread per
    chunk, for every stream open at once. Here the worker runs on a pooled daemon thread
    (`spawn`), the sender blocks on the queue, hands the SDK's loop an empty item (which it
    skips, reading results meanwhile) when no audio came for `_WAIT_S`, and ends the stream
    itself after `SILENCE_TIMEOUT_S` without audio, as the timer did. `stop()` wakes it at once.
    """

    _wake = object()
    _stopping = False

    def start(self, phrase_id: str | None = None, **kwargs: Any) -> None:
        if self._running:
            raise InvalidParameter("Speech recognition has started.")
        self._start_stream_timestamp = -1
        self._first_package_timestamp = -1
        self._stop_stream_timestamp = -1
        self._on_complete_timestamp = -1
        self._phrase = phrase_id
        self._kwargs.update(**kwargs)
        self._recognition_once = False
        self._running = True
        self._worker = spawn(self._Recognition__receive_worker, name="dashscope-asr")
        self._callback.on_open()

    def end_audio(self) -> None:
        """The audio is complete: the sender sends what is queued, then the end of the task.
        Never blocks (safe on the event loop): the rest of `stop()` is waiting for the end."""
        if not self._stopping:
            self._stopping = True
            self._stream_data.put(self._wake)

    def stop(self) -> None:
        self.end_audio()
        super().stop()

    def _input_stream_cycle(self):  # type: ignore[no-untyped-def]  # the SDK's generator
        heard_at = time.monotonic()
        while self._running and not self._stopping:
            try:
                frame = self._stream_data.get(timeout=_WAIT_S)
            except queue.Empty:
                if time.monotonic() - heard_at >= self.SILENCE_TIMEOUT_S:
                    self._running = False  # as the SDK's silence timer: the task ends
                    break
                yield b""  # the SDK skips it and reads what the service sent meanwhile
                continue
            if frame is self._wake:
                break
            heard_at = time.monotonic()
            yield frame if isinstance(frame, dict) else bytes(frame)
        while True:  # what was queued before stop()
            try:
                frame = self._stream_data.get_nowait()
            except queue.Empty:
                return
            if frame is not self._wake:
                yield frame if isinstance(frame, dict) else bytes(frame)


class _Callback(RecognitionCallback):
    """SDK callbacks → bridge; never blocks the SDK's thread."""

    def __init__(
        self, bridge: ThreadBridge[Hypothesis], key: str, stream: _DashScopeStream
    ) -> None:
        self._bridge, self._key, self._stream = bridge, key, stream

    def on_event(self, result: Any) -> None:
        sentence = result.get_sentence()
        if not isinstance(sentence, dict) or not sentence.get("text"):
            return
        final = bool(sentence.get("sentence_end")) or sentence.get("end_time") is not None
        self._bridge.put(Hypothesis(sentence["text"], final=final))

    def on_complete(self) -> None:
        self._bridge.end()

    def on_error(self, result: Any) -> None:
        error = failure(
            ASRError,
            WHAT,
            status=result.status_code,
            code=result.code,
            message=result.message,
            secrets=(self._key,),
        )
        self._stream.error = error
        self._bridge.fail(error)


class _DashScopeStream(ASRStream):
    def __init__(self, provider: DashScopeASR, language: str, sample_rate: int) -> None:
        self._timeout_s = provider.timeout_s
        self._bridge: ThreadBridge[Hypothesis] = ThreadBridge()
        self._key = configure_dashscope()
        self.error: ASRError | None = None
        self._finished = False
        self._started = False
        self._chunk_bytes = sample_rate * 2 * CHUNK_MS // 1000
        self._held = bytearray()
        self._recognition = _Recognition(
            model=provider.model,
            callback=_Callback(self._bridge, self._key, self),
            format="pcm",
            sample_rate=sample_rate,
            language_hints=[_language_code(language)],
            api_key=self._key,
            request_timeout=MAX_STREAM_S,
        )

    def _start(self) -> None:
        if not self._started:
            self._started = True
            # start() only launches the SDK's worker thread; the connection is made there.
            self._recognition.start()

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
        if not self._held:
            return
        chunk, self._held = bytes(self._held), bytearray()
        try:
            self._recognition.send_audio_frame(chunk)  # only queues the chunk
        except Exception as exc:  # noqa: BLE001 - the task ended (error, silence timeout)
            raise self.error or failure(ASRError, WHAT, exc=exc, secrets=(self._key,)) from None

    def _stop(self) -> None:
        try:
            self._recognition.stop()
        except Exception as exc:  # noqa: BLE001 - already stopped after an error
            logger.debug("recognition stop: %s", exc)
        finally:
            # on_complete is not called when the task ends without a payload: end anyway.
            self._bridge.end()

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._start()
        with contextlib.suppress(ASRError):  # the task ended: its error reaches results()
            self._send_held()
        self._bridge.deadline(self._timeout_s, lambda: timed_out(ASRError, WHAT, self._timeout_s))
        # The end of the audio goes to the SDK's sender from here, not after a thread hop;
        # waiting for the task to end (the SDK's stop()) is left to a thread.
        self._recognition.end_audio()
        spawn(self._stop, name="dashscope-asr-stop")

    async def results(self) -> AsyncIterator[Hypothesis]:
        # No timeout while audio flows (the speaker may be silent); finish() sets a deadline.
        async for hypothesis in self._bridge.iterate():
            yield hypothesis

    async def close(self) -> None:
        self._bridge.abandon()
        if not self._finished:
            self._finished = True
            if self._started:
                spawn(self._stop, name="dashscope-asr-stop")


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
