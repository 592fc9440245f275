"""CosyVoice through DashScope: `tts_v2.SpeechSynthesizer` in streaming mode.

One synthesizer per utterance (an instance is single-use). The SDK delivers audio on its
websocket thread; chunks reach the loop through a `ThreadBridge`. Two SDK habits are designed
around: it never notices a dropped connection and it waits 5 s on a refused or rejected one.
`_Synthesizer` therefore overrides the websocket's close and error hooks to report both at
once, and every wait carries a timeout from settings.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer
from dashscope.common.error import RequestFailure
from django.conf import settings

from chat.providers.base import TTSError, TTSProvider
from chat.providers.bridge import ThreadBridge
from chat.providers.cloud import configure_dashscope, failure, timed_out

WHAT = "DashScope TTS"
SAMPLE_RATE = 22050
_ESPEAK_NAME = re.compile(r"[a-z]{2,3}(-[a-z0-9]+)*(\+.*)?")


class _Callback(ResultCallback):
    """SDK callbacks → bridge. The first end or error wins; later ones (the SDK's own timeout
    after an error was reported, a close after the end) are dropped unbuilt and unlogged."""

    def __init__(self, bridge: ThreadBridge[bytes], key: str) -> None:
        self.bridge, self.key = bridge, key
        self.reported = threading.Event()
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """True for the first caller only: it reports the outcome."""
        with self._lock:
            if self.reported.is_set():
                return False
            self.reported.set()
            return True

    def end(self) -> None:
        if self.claim():
            self.bridge.end()

    def fail(self, build: Callable[[], TTSError]) -> None:
        if self.claim():
            self.bridge.fail(build())

    def on_data(self, data: bytes) -> None:
        if not self.reported.is_set():
            self.bridge.put(bytes(data))

    def on_complete(self) -> None:
        self.end()

    def on_error(self, message: str) -> None:
        try:
            header = json.loads(message)["header"]
            code, text = header.get("error_code"), header.get("error_message", message)
        except (ValueError, KeyError, TypeError):
            code, text = None, message
        self.fail(lambda: failure(TTSError, WHAT, code=code, message=text, secrets=(self.key,)))


class _Synthesizer(SpeechSynthesizer):
    """Reports refused, rejected and dropped connections at once instead of timing out."""

    def __init__(self, *args: Any, reporter: _Callback, **kwargs: Any) -> None:
        self._reporter = reporter
        super().__init__(*args, callback=reporter, **kwargs)

    def on_error(self, ws: Any, error: Any) -> None:
        status = getattr(error, "status_code", None)
        key = self._reporter.key
        if status is not None:  # the handshake was answered with an HTTP error
            message = f"websocket handshake refused ({status})"
            self._reporter.fail(
                lambda: failure(TTSError, WHAT, status=status, message=message, secrets=(key,))
            )
        else:
            self._reporter.fail(lambda: failure(TTSError, WHAT, exc=error, secrets=(key,)))
        super().on_error(ws, error)

    def on_close(self, ws: Any, close_status_code: Any, close_msg: Any) -> None:
        if not self.complete_event.is_set():
            dropped = ConnectionError("connection closed before the audio ended")
            key = self._reporter.key
            self._reporter.fail(lambda: failure(TTSError, WHAT, exc=dropped, secrets=(key,)))
            self.complete_event.set()  # release the SDK's own wait too
        super().on_close(ws, close_status_code, close_msg)


class DashScopeTTS(TTSProvider):
    name = "dashscope"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str, default_voice: str, timeout_s: float) -> None:
        self.model = model
        self.default_voice = default_voice
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls) -> DashScopeTTS:
        return cls(
            settings.DASHSCOPE_TTS_MODEL, settings.DASHSCOPE_TTS_VOICE, settings.PROVIDER_TIMEOUT_S
        )

    def _voice(self, voice: str) -> str:
        """CosyVoice ids look like "longxiaochun_v2"; an espeak-ng name ("en-us+f3") is not one."""
        if not voice or _ESPEAK_NAME.fullmatch(voice.lower()):
            return self.default_voice
        return voice

    def _synthesize(self, synthesizer: _Synthesizer, text: str, callback: _Callback) -> None:
        """Worker thread: send the text, wait for the end; errors go to the bridge."""
        try:
            synthesizer.streaming_call(text)
            synthesizer.streaming_complete(complete_timeout_millis=int(self.timeout_s * 1000))
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes TTSError
            callback.fail(functools.partial(self._error, exc, callback.key))
        else:
            callback.end()

    @staticmethod
    def _error(exc: Exception, key: str) -> TTSError:
        if isinstance(exc, RequestFailure):  # task-failed: classify by the service's code
            return failure(TTSError, WHAT, code=exc.name, message=exc.message, secrets=(key,))
        return failure(TTSError, WHAT, exc=exc, secrets=(key,))

    async def stream(self, text: str, voice: str, language: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        key = configure_dashscope()
        bridge: ThreadBridge[bytes] = ThreadBridge()
        callback = _Callback(bridge, key)
        synthesizer = _Synthesizer(
            model=self.model,
            voice=self._voice(voice),
            format=AudioFormat.PCM_22050HZ_MONO_16BIT,
            language_hints=[language.split("-")[0].lower()] if language else None,
            reporter=callback,
        )
        threading.Thread(
            target=self._synthesize,
            args=(synthesizer, text, callback),
            name="dashscope-tts",
            daemon=True,
        ).start()
        try:
            async for chunk in bridge.iterate(
                self.timeout_s, lambda: timed_out(TTSError, WHAT, self.timeout_s)
            ):
                yield chunk
        finally:
            if callback.claim():  # abandoned (barge-in) or timed out
                threading.Thread(
                    target=synthesizer.close, name="dashscope-tts-close", daemon=True
                ).start()
