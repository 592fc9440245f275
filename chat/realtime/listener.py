"""Streaming recognition of one audio source: VAD-delimited utterances fed to the ASR provider.

The caller pushes 16 kHz mono PCM16 as it arrives (`feed`); the listener cuts it into 20 ms
frames, asks the VAD where speech starts and ends, and opens one ASR stream per utterance with
a short pre-roll so the first syllable is not lost. Audio goes to the recogniser through a
queue and its own task, so a slow recogniser never stalls the transport that feeds the audio.
Finals are delivered in utterance order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from chat import observe
from chat.providers.base import SPEECH_RATE, ASRError, ASRProvider, ASRStream, ProviderError
from chat.realtime.tasks import Tasks
from chat.realtime.vad import EnergyVAD, VADConfig, frame_db, frame_dbs

logger = logging.getLogger(__name__)

SAMPLE_RATE = SPEECH_RATE  # what the recognisers take
PRE_ROLL_MS = 300
# Languages written without spaces between words: finals of one utterance are joined directly.
_NO_SPACE_LANGUAGES = ("zh", "ja", "ko", "th")

SpeechStartCallback = Callable[[], Awaitable[None]]
MaybeSpeechCallback = Callable[[bool], None]
TextCallback = Callable[[str, str], Awaitable[None]]
ErrorCallback = Callable[[ProviderError], Awaitable[None]]


def new_utterance_id() -> str:
    """A short id, unique enough within and across sessions."""
    return "u" + uuid.uuid4().hex[:11]


class _Utterance:
    """One ASR stream: a feeding task draining a queue and a reading task collecting results."""

    def __init__(self, listener: Listener, stream: ASRStream) -> None:
        self.id = new_utterance_id()
        self.listener = listener
        self.stream = stream
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.finals: list[str] = []
        self.last_interim = ""
        self.error: ProviderError | None = None
        self.feeder = asyncio.create_task(self._feed(), name=f"asr-feed-{self.id}")
        self.reader = asyncio.create_task(self._read(), name=f"asr-read-{self.id}")

    def text(self, partial: str = "") -> str:
        joiner = "" if self.listener.language.lower().startswith(_NO_SPACE_LANGUAGES) else " "
        return joiner.join(p for p in [*self.finals, partial] if p).strip()

    async def _feed(self) -> None:
        try:
            while (chunk := await self.queue.get()) is not None:
                await self.stream.feed(chunk)
            await self.stream.finish()
        except ProviderError as exc:
            self.error = self.error or exc
        except Exception as exc:  # a backend bug must not kill the session
            logger.exception("ASR stream feeding failed")
            self.error = self.error or ASRError(
                "speech recognition failed", retryable=True, provider_message=str(exc)
            )

    async def _read(self) -> None:
        try:
            async for hyp in self.stream.results():
                text = (hyp.text or "").strip()
                if hyp.final:
                    if text:
                        self.finals.append(text)
                    continue
                interim = self.text(text)
                if interim and interim != self.last_interim:
                    self.last_interim = interim
                    await self.listener.on_interim(interim, self.id)
        except ProviderError as exc:
            self.error = self.error or exc
        except Exception as exc:
            logger.exception("ASR stream results failed")
            self.error = self.error or ASRError(
                "speech recognition failed", retryable=True, provider_message=str(exc)
            )

    async def finish(self, previous: asyncio.Task[None] | None) -> None:
        """End the audio, wait for the final text, and deliver it after the previous one."""
        self.queue.put_nowait(None)
        ended = time.perf_counter()
        try:
            try:
                await asyncio.wait_for(
                    asyncio.gather(self.feeder, self.reader), self.listener.final_timeout_s
                )
            except TimeoutError:
                self.error = self.error or ASRError("speech recognition timed out", retryable=True)
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            if self.error is not None:
                await self.listener.on_error(self.error)
                return
            text = self.text()
            if text:
                observe.note_asr_ms((time.perf_counter() - ended) * 1000)
                await self.listener.on_final(text, self.id)
        finally:
            await self.abandon()

    async def abandon(self) -> None:
        """Stop both tasks and close the stream; safe to call more than once."""
        for task in (self.feeder, self.reader):
            task.cancel()
        await asyncio.gather(self.feeder, self.reader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.stream.close()


class Listener:
    """Turns a stream of 16 kHz PCM16 into utterances: speech start, interim and final texts."""

    def __init__(
        self,
        asr: ASRProvider,
        language: str,
        *,
        on_speech_start: SpeechStartCallback,
        on_interim: TextCallback,
        on_final: TextCallback,
        on_error: ErrorCallback,
        vad_config: VADConfig | None = None,
        final_timeout_s: float = 30.0,
        on_maybe_speech: MaybeSpeechCallback | None = None,
    ) -> None:
        self.asr = asr
        self.language = language
        self.on_speech_start = on_speech_start
        # Called with True at the first speech-like frame outside an utterance and with False
        # when those frames became a start or died away: the reply's speech pauses meanwhile,
        # so a barge-in is silent after one frame instead of after the VAD's start_ms.
        self.on_maybe_speech = on_maybe_speech
        self._rising = False
        self.on_interim = on_interim
        self.on_final = on_final
        self.on_error = on_error
        self.final_timeout_s = final_timeout_s
        self.vad = EnergyVAD(vad_config or VADConfig(sample_rate=SAMPLE_RATE))
        self._frame_bytes = self.vad.config.frame_samples * 2
        self._pending = bytearray()
        self._pre_roll: deque[bytes] = deque(maxlen=max(1, PRE_ROLL_MS // self.vad.config.frame_ms))
        self._current: _Utterance | None = None
        self._finishing = Tasks()
        self._last_finish: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def in_utterance(self) -> bool:
        return self._current is not None

    async def feed(self, pcm: bytes) -> None:
        """Push audio (any chunk size); runs the VAD frame by frame (the frames' levels of a
        chunk are measured together: one numpy pass for a 100 ms batch instead of five)."""
        if self._closed:
            return
        data = bytes(self._pending) + pcm if self._pending else pcm
        size = self._frame_bytes
        whole = len(data) - len(data) % size
        self._pending = bytearray(data[whole:])
        if not whole:
            return
        samples = np.frombuffer(data, dtype=np.int16, count=whole // 2)
        levels = [frame_db(samples)] if whole == size else frame_dbs(samples.reshape(-1, size // 2))
        for count, offset in enumerate(range(0, whole, size), 1):
            if self._closed:
                return
            await self._frame(data[offset : offset + size], levels[count - 1])
            if count % 50 == 0:  # a long chunk (websocket client): let the loop breathe
                await asyncio.sleep(0)

    async def _frame(self, frame: bytes, level: float) -> None:
        event = self.vad.update_level(level)
        if self.vad.rising and not self._rising:
            self._maybe_speech(True)
        if event == "speech_start":
            self._pre_roll.append(frame)
            try:
                await self._start_utterance()
            finally:
                self._maybe_speech(False)  # after the barge-in cleared what was paused
            return
        if self._rising and not self.vad.rising:
            self._maybe_speech(False)  # it died away: a click, a breath
        if self._current is not None:
            self._current.queue.put_nowait(frame)
            if event == "speech_end":
                self._end_utterance()
        else:
            self._pre_roll.append(frame)

    async def _start_utterance(self) -> None:
        try:
            stream = self.asr.stream(self.language, SAMPLE_RATE)
        except ProviderError as exc:
            self.vad.reset()
            await self.on_error(exc)
            return
        self._current = _Utterance(self, stream)
        for frame in self._pre_roll:
            self._current.queue.put_nowait(frame)
        self._pre_roll.clear()
        # After the utterance exists, so a slow barge-in never delays the recogniser.
        await self.on_speech_start()

    def _maybe_speech(self, rising: bool) -> None:
        if rising != self._rising:
            self._rising = rising
            if self.on_maybe_speech is not None:
                self.on_maybe_speech(rising)

    def _end_utterance(self) -> asyncio.Task[None] | None:
        utterance, self._current = self._current, None
        if utterance is None:
            return None
        task = self._finishing.spawn(
            utterance.finish(self._last_finish), name=f"asr-finish-{utterance.id}"
        )
        self._last_finish = task
        return task

    async def stop(self) -> None:
        """End the current utterance now (explicit `asr_stop`) and wait for every final."""
        if self._current is not None and self._pending:
            self._current.queue.put_nowait(bytes(self._pending))
        self._pending.clear()
        self.vad.reset()
        self._maybe_speech(False)
        self._end_utterance()
        await self._finishing.wait()

    async def close(self) -> None:
        """Abandon everything (session end, barge-in of the listener itself); never raises."""
        if self._closed:
            return
        self._closed = True
        self._maybe_speech(False)
        utterance, self._current = self._current, None
        await self._finishing.cancel()
        if utterance is not None:
            await utterance.abandon()
