"""CosyVoice through DashScope: `tts_v2.SpeechSynthesizer` in streaming mode.

One synthesizer per utterance (an instance is single-use). The SDK delivers audio on its
websocket thread; chunks reach the loop through a `ThreadBridge`. Four SDK habits are designed
around: it never notices a dropped connection, it waits 5 s on a refused or rejected one, it
opens a new connection for every utterance, polling for the open socket every 100 ms, and its
streaming calls block a thread through the task's round trips. `_Synthesizer` therefore
overrides the websocket's close and error hooks to report both at once, waits for the
handshake's own end, and sends a sentence's text from the socket's own thread when the task
has started (`speak`); `_Preconnected` keeps sockets open ahead of the next sentences, so a
sentence starts with its `run-task`, sent from the loop, instead of a handshake on a thread.
Every wait carries a timeout from settings.

An avatar's cloned voice is tried first; when the service refuses it (not ready, deleted, made
for another model) before any audio came, the sentence is spoken with the avatar's preset and a
warning is logged, and the cloned voice is not tried again for UNUSABLE_FOR_S.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import websocket  # websocket-client, the SDK's own transport
from dashscope.audio.tts_v2 import AudioFormat, ResultCallback, SpeechSynthesizer
from dashscope.common.error import RequestFailure
from django.conf import settings

from chat.providers.base import TTSError, TTSProvider, Voice
from chat.providers.bridge import ThreadBridge, spawn
from chat.providers.cloud import (
    configure_dashscope,
    failure,
    timed_out,
    websocket_tls_context,
)

log = logging.getLogger(__name__)

WHAT = "DashScope TTS"
# CosyVoice's own rate, which the realtime speaker queues as it comes (chat/realtime/speaker.py)
SAMPLE_RATE = 24000
FORMAT = AudioFormat.PCM_24000HZ_MONO_16BIT
RENEW_AFTER_S = 30.0  # a waiting socket is replaced after this (the SDK's own pool: 25-35 s)
KEEP_FOR_S = 300.0  # sockets are kept ready for a voice used within this time
MAINTAIN_EVERY_S = 5.0
UNUSABLE_FOR_S = 60.0  # a cloned voice the service refused is not tried again for this long
_ESPEAK_NAME = re.compile(r"[a-z]{2,3}(-[a-z0-9]+)*(\+.*)?")


class _Callback(ResultCallback):
    """SDK callbacks → bridge. The first end or error wins; later ones (the SDK's own timeout
    after an error was reported, a close after the end) are dropped unbuilt and unlogged."""

    def __init__(self, key: str, bridge: ThreadBridge[bytes] | None = None) -> None:
        self.key, self.bridge = key, bridge
        self.reported = threading.Event()
        self._lock = threading.Lock()

    def attach(self, bridge: ThreadBridge[bytes]) -> bool:
        """Give a pre-connected synthesizer its consumer; False when its socket already ended
        (then nobody was told, and it must not be used)."""
        with self._lock:
            if self.reported.is_set():
                return False
            self.bridge = bridge
            return True

    def claim(self) -> bool:
        """True for the first caller only: it reports the outcome."""
        with self._lock:
            if self.reported.is_set():
                return False
            self.reported.set()
            return True

    def end(self) -> None:
        if self.claim() and self.bridge is not None:
            self.bridge.end()

    def fail(self, build: Callable[[], TTSError]) -> None:
        if self.claim() and self.bridge is not None:
            self.bridge.fail(build())

    def on_data(self, data: bytes) -> None:
        if not self.reported.is_set() and self.bridge is not None:
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


class _SocketApp(websocket.WebSocketApp):
    """websocket-client's app with a read loop of its own: the same callbacks for what the
    SDK uses (open, text and binary messages, error, close), without reconnects or pings.

    websocket-client's `run_forever` makes local functions that refer to each other and to
    the app: every socket (one per sentence) left a reference cycle of ~75 objects, with the
    synthesizer, its events and buffers attached, for the cyclic collector. At 20 talking
    sessions a process its passes freed ~25 000 such objects at a time and held the event
    loop, and every session's audio, for 40-80 ms. Here nothing refers back: the socket, its
    buffers and (once the app lets go of its callbacks, at the end) the synthesizer are freed
    as soon as the sentence is done. Over TLS every socket shares the process's one context
    (`websocket_tls_context`) instead of websocket-client's new one, with the CA certificates
    loaded again, per socket."""

    _CALLBACKS = ("on_open", "on_message", "on_data", "on_error", "on_close")

    def run_forever(self, *args: Any, **kwargs: Any) -> bool:  # noqa: ARG002 - none used
        self.keep_running = True
        self.has_errored = False
        tls = {"context": websocket_tls_context()} if self.url.startswith("wss:") else None
        sock = self.sock = websocket.WebSocket(
            get_mask_key=self.get_mask_key, sslopt=tls, enable_multithread=True
        )
        close_frame = None
        try:
            sock.settimeout(websocket.getdefaulttimeout())
            header = self.header() if callable(self.header) else self.header
            sock.connect(self.url, header=header, cookie=self.cookie)
            self._callback(self.on_open)
            while self.keep_running:
                opcode, frame = sock.recv_data_frame(True)  # answers pings itself
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    close_frame = frame
                    break
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    data = frame.data
                    if opcode == websocket.ABNF.OPCODE_TEXT:
                        data = data.decode("utf-8")
                    self._callback(self.on_data, data, opcode, True)
                    self._callback(self.on_message, data)
        except Exception as exc:  # noqa: BLE001 - reported through on_error, as the app does
            if self.keep_running:  # not our own close()
                self.has_errored = True
                self._callback(self.on_error, exc)
        finally:
            self.keep_running = False
            self.sock = None
            sock.close(timeout=0)
            sock.frame_buffer.recv = None  # a bound method of the socket: a cycle of its own
            code, reason = self._get_close_args(close_frame)
            self._callback(self.on_close, code, reason)
            for name in self._CALLBACKS:  # the synthesizer is free to go
                setattr(self, name, None)
        return self.has_errored


class _Synthesizer(SpeechSynthesizer):
    """Reports refused, rejected and dropped connections at once instead of timing out, and
    connects without the SDK's 100 ms polling."""

    def __init__(
        self, *args: Any, reporter: _Callback, connect_timeout_s: float, **kwargs: Any
    ) -> None:
        self._reporter = reporter
        self._connect_timeout_s = connect_timeout_s
        self._settled = threading.Event()  # the handshake ended: open, refused or failed
        self.opened_at: float | None = None
        self._sentence: str | None = None  # `speak`: the text, until task-started comes
        super().__init__(*args, callback=reporter, **kwargs)

    def connect(self) -> None:
        """Open the websocket and wait for the handshake to end (the SDK's `__connect` sleeps
        in 100 ms steps until it sees the socket open: a tenth of a second on every sentence).
        A refusal has already been reported through the callback when this raises."""
        self.ws = _SocketApp(
            self.url,
            header=self.request.get_websocket_headers(
                headers=self.headers, workspace=self.workspace
            ),
            on_open=self._on_open,
            on_message=self.on_message,
            on_error=self.on_error,
            on_close=self.on_close,
        )
        self.thread = spawn(self.ws.run_forever, name="dashscope-tts-ws")
        self._settled.wait(self._connect_timeout_s)
        if not self.is_open():
            raise TimeoutError(f"no connection within {self._connect_timeout_s:g} s")

    def speak(self, text: str) -> None:
        """One sentence, as the SDK's `streaming_call(text)` and `streaming_complete()` send
        it, with no thread blocked through their two round trips: run-task goes out now; the
        text and finish-task go out from the socket's own thread as soon as task-started comes
        (`on_message`), and the socket's read loop ends with the task."""
        self._sentence = text
        self._start_stream_timestamp = time.time() * 1000  # the SDK's own first-audio log
        self._SpeechSynthesizer__send_str(self.request.get_start_request(self.additional_params))

    def on_message(self, ws: Any, message: Any) -> None:
        super().on_message(ws, message)
        if self._sentence is not None and self.start_event.is_set():
            text, self._sentence = self._sentence, None
            if self._receiver_error is None:  # task-started, not task-failed
                self._SpeechSynthesizer__send_str(self.request.get_continue_request(text))
                self._SpeechSynthesizer__send_str(self.request.get_finish_request())
        if self.complete_event.is_set() and self.ws is not None:
            self.ws.keep_running = False  # the task ended: this socket's read loop too

    def _on_open(self, ws: Any) -> None:
        self.opened_at = time.monotonic()
        self._settled.set()

    def is_open(self) -> bool:
        sock = self.ws.sock if self.ws is not None else None
        return bool(sock is not None and sock.connected)

    def close_soon(self) -> None:
        """Close without waiting (the close handshake may take a round trip)."""
        spawn(self.close, name="dashscope-tts-close")

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
        self._settled.set()
        super().on_error(ws, error)

    def on_close(self, ws: Any, close_status_code: Any, close_msg: Any) -> None:
        if not self.complete_event.is_set():
            dropped = ConnectionError("connection closed before the audio ended")
            key = self._reporter.key
            self._reporter.fail(lambda: failure(TTSError, WHAT, exc=dropped, secrets=(key,)))
            self.complete_event.set()  # release the SDK's own wait too
        self._settled.set()
        super().on_close(ws, close_status_code, close_msg)


# url, API key, model, voice, language hints: what a connection and its task are opened with
_Key = tuple[str, str, str, str, tuple[str, ...]]


class _Preconnected:
    """Sockets opened ahead of the next sentences, `size` per voice in use: the SDK's
    `SpeechSynthesizerObjectPool` idea, built on `_Synthesizer` so that its hooks hold.

    `take()` hands out an open one (or None: the caller connects its own) and wakes the
    maintenance thread to open a replacement; that thread also renews sockets older than
    RENEW_AFTER_S, drops those the service closed, and stops keeping any for a voice unused for
    KEEP_FOR_S. A failed pre-connect stops pre-connecting for that voice until its next use, so
    a refusing service is not called in a loop.
    """

    def __init__(self, size: int, build: Callable[[_Key, _Callback], _Synthesizer]) -> None:
        self.size = size
        self._build = build
        self._lock = threading.Lock()
        self._ready: dict[_Key, list[_Synthesizer]] = {}
        self._used: dict[_Key, float] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def take(self, key: _Key, bridge: ThreadBridge[bytes]) -> _Synthesizer | None:
        if self.size <= 0:
            return None
        found, spent = None, []
        with self._lock:
            if self._closed:
                return None
            self._used[key] = time.monotonic()
            ready = self._ready.get(key, [])
            while ready and found is None:
                synthesizer = ready.pop(0)
                if self._usable(synthesizer) and synthesizer._reporter.attach(bridge):
                    found = synthesizer
                else:
                    spent.append(synthesizer)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dashscope-tts-preconnect", daemon=True
                )
                self._thread.start()
        for synthesizer in spent:
            synthesizer.close_soon()
        self._wake.set()
        return found

    def ready(self, key: _Key) -> int:
        with self._lock:
            return sum(1 for s in self._ready.get(key, []) if self._usable(s))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spent = [s for ready in self._ready.values() for s in ready]
            self._ready.clear()
        self._wake.set()
        for synthesizer in spent:
            synthesizer.close_soon()

    @staticmethod
    def _usable(synthesizer: _Synthesizer) -> bool:
        opened = synthesizer.opened_at
        return (
            synthesizer.is_open()
            and not synthesizer._reporter.reported.is_set()
            and opened is not None
            and time.monotonic() - opened < RENEW_AFTER_S
        )

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(MAINTAIN_EVERY_S)
            self._wake.clear()
            if self._closed:
                return
            try:
                self._maintain()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("pre-connecting DashScope TTS sockets failed")

    def _maintain(self) -> None:
        now, spent, wanted = time.monotonic(), [], []
        with self._lock:
            for key, used in list(self._used.items()):
                ready = self._ready.pop(key, [])
                if now - used >= KEEP_FOR_S:  # the voice went quiet: keep nothing for it
                    del self._used[key]
                    spent += ready
                    continue
                keep = [s for s in ready if self._usable(s)]
                spent += [s for s in ready if s not in keep]
                self._ready[key] = keep
                wanted += [key] * (self.size - len(keep))
        for synthesizer in spent:
            synthesizer.close_soon()
        for key in wanted:
            synthesizer = None
            try:
                synthesizer = self._build(key, _Callback(key[1]))
                synthesizer.connect()
            except Exception:  # noqa: BLE001 - refused or unreachable: not until the next use
                log.debug("pre-connecting a DashScope TTS socket failed", exc_info=True)
                if synthesizer is not None:
                    synthesizer.close_soon()
                with self._lock:
                    self._used.pop(key, None)
                continue
            with self._lock:
                if not self._closed and key in self._used:
                    self._ready.setdefault(key, []).append(synthesizer)
                    synthesizer = None
            if synthesizer is not None:
                synthesizer.close_soon()


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
        self.preconnected = _Preconnected(preconnect, self._new)
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
        self.preconnected.close()

    def _new(self, key: _Key, callback: _Callback) -> _Synthesizer:
        url, _, model, voice, hints = key
        return _Synthesizer(
            model=model,
            voice=voice,
            format=FORMAT,
            language_hints=list(hints) or None,
            url=url,
            reporter=callback,
            connect_timeout_s=self.connect_timeout_s,
        )

    def key(self, voice: str, language: str) -> _Key:
        """What a connection for this voice is opened with (configures the SDK first)."""
        import dashscope

        api_key = configure_dashscope()
        hints = (language.split("-")[0].lower(),) if language else ()
        return (dashscope.base_websocket_api_url, api_key, self.model, self._voice(voice), hints)

    def _voice(self, voice: str) -> str:
        """CosyVoice ids look like "longxiaochun_v2"; an espeak-ng name ("en-us+f3") is not one."""
        if not voice or _ESPEAK_NAME.fullmatch(voice.lower()):
            return self.default_voice
        return voice

    def _speak(self, synthesizer: _Synthesizer, text: str, callback: _Callback) -> None:
        """Start the sentence (connecting first unless its socket was opened ahead); errors
        go to the bridge. The audio, the end and the service's errors come through the
        callback, on the socket's thread; `_run`'s deadline bounds the wait for them."""
        try:
            if not synthesizer.is_open():
                synthesizer.connect()
            synthesizer.speak(text)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes TTSError
            callback.fail(functools.partial(self._error, exc, callback.key))

    @staticmethod
    def _error(exc: Exception, key: str) -> TTSError:
        if isinstance(exc, RequestFailure):  # task-failed: classify by the service's code
            return failure(TTSError, WHAT, code=exc.name, message=exc.message, secrets=(key,))
        return failure(TTSError, WHAT, exc=exc, secrets=(key,))

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
        key = self.key(voice, language)
        bridge: ThreadBridge[bytes] = ThreadBridge()
        synthesizer = self.preconnected.take(key, bridge)
        if synthesizer is None:
            async for chunk in self._run(self._new(key, _Callback(key[1], bridge)), text, bridge):
                yield chunk
            return

        # A socket opened ahead may have been closed by the service an instant before it was
        # taken (its close not yet seen here): when that socket is gone before any audio came,
        # the sentence is tried again, once, on a fresh connection.
        def fresh() -> AsyncIterator[bytes]:
            again: ThreadBridge[bytes] = ThreadBridge()
            return self._run(self._new(key, _Callback(key[1], again)), text, again)

        chunks = _instead_before_audio(
            self._run(synthesizer, text, bridge),
            lambda exc: exc.retryable and not synthesizer.is_open(),
            fresh,
        )
        async for chunk in chunks:
            yield chunk

    async def _run(
        self, synthesizer: _Synthesizer, text: str, bridge: ThreadBridge[bytes]
    ) -> AsyncIterator[bytes]:
        callback = synthesizer._reporter
        if synthesizer.is_open():  # opened ahead: run-task goes out from the loop, no thread
            self._speak(synthesizer, text, callback)
        else:  # the handshake blocks: on a thread of its own
            spawn(self._speak, synthesizer, text, callback, name="dashscope-tts")
        try:
            async for chunk in bridge.iterate(
                self.timeout_s, lambda: timed_out(TTSError, WHAT, self.timeout_s)
            ):
                yield chunk
        finally:
            if callback.claim():  # abandoned (barge-in) or timed out
                synthesizer.close_soon()


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
