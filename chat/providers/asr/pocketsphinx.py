"""Offline recognition with pocketsphinx and the US English model its wheel ships.

Decoding is CPU work, so each stream has its own worker thread fed through a queue: `feed()`
never waits for the decoder, and hypotheses reach the loop through a `ThreadBridge`. Decoders
come from a per-process pool (chat/providers/asr/sphinx_pool.py) that loads the language model
once for all of them and bounds how many exist (`ASR_OFFLINE_DECODERS`): an utterance that finds
them all busy queues its audio until one is free. The pool keeps at most `MAX_IDLE_DECODERS`
idle per sample rate, so a past burst of concurrent sessions does not keep its memory.

Only English is known offline. For other languages (Mandarin avatars) the English model still
runs, so every flow keeps working without a network; it logs a warning once per language, and
the words it finds are English approximations.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import wave
from collections.abc import AsyncIterator

from django.conf import settings

from chat.providers.asr.sphinx_pool import DecoderPool, SharedModels
from chat.providers.base import SPEECH_RATE, ASRError, ASRProvider, ASRStream, Hypothesis
from chat.providers.bridge import ThreadBridge, spawn
from chat.providers.cloud import timed_out

logger = logging.getLogger(__name__)

_FINISH, _ABORT = object(), object()  # control items in the audio queue
# Idle decoders kept per sample rate: enough that the next turn or two start without loading a
# model, few enough that a past burst of concurrent sessions does not keep its memory.
MAX_IDLE_DECODERS = 2
_warned_languages: set[str] = set()
_pool = DecoderPool(SharedModels(), MAX_IDLE_DECODERS)


def _check_language(language: str) -> None:
    if not language.lower().startswith("en") and language not in _warned_languages:
        _warned_languages.add(language)
        logger.warning(
            "pocketsphinx only knows English; recognising %s speech as English", language
        )


class _SphinxStream(ASRStream):
    def __init__(
        self, sample_rate: int, interim_s: float, timeout_s: float, max_decoders: int
    ) -> None:
        self._sample_rate = sample_rate
        self._max_decoders = max_decoders
        self._closed = threading.Event()  # stops waiting for a decoder
        self._interim_bytes = max(2, int(interim_s * sample_rate) * 2)
        self._timeout_s = timeout_s
        self._audio: queue.SimpleQueue[bytes | object] = queue.SimpleQueue()
        self._bridge: ThreadBridge[Hypothesis] = ThreadBridge()
        self._finished = False
        spawn(self._run, name="pocketsphinx")

    def _run(self) -> None:
        self._decode()
        _pool.trim()  # here the decoder is no longer referenced

    def _decode(self) -> None:
        """Worker thread: one utterance, interim hypotheses when they change."""
        try:
            decoder = _pool.acquire(self._sample_rate, self._max_decoders, self._closed)
        except Exception as exc:  # noqa: BLE001
            self._bridge.fail(ASRError("pocketsphinx could not start", provider_message=str(exc)))
            return
        if decoder is None:
            return  # closed while every decoder was busy
        decoder.start_utt()
        since_interim, last = 0, ""
        try:
            while True:
                chunk = self._audio.get()
                if chunk is _ABORT:
                    decoder.end_utt()
                    return
                if chunk is _FINISH:
                    decoder.end_utt()
                    hyp = decoder.hyp()
                    if hyp is not None and hyp.hypstr:
                        self._bridge.put(Hypothesis(hyp.hypstr, final=True))
                    self._bridge.end()
                    return
                decoder.process_raw(chunk, False, False)  # type: ignore[arg-type]
                since_interim += len(chunk)
                if since_interim >= self._interim_bytes:
                    since_interim = 0
                    hyp = decoder.hyp()
                    if hyp is not None and hyp.hypstr and hyp.hypstr != last:
                        last = hyp.hypstr
                        self._bridge.put(Hypothesis(last, final=False))
        except Exception as exc:  # noqa: BLE001
            self._bridge.fail(ASRError("pocketsphinx failed", provider_message=str(exc)))
        finally:
            _pool.release(self._sample_rate, decoder)

    async def feed(self, pcm: bytes) -> None:
        if self._finished:
            raise ASRError("audio fed after finish()")
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if pcm:
            self._audio.put(bytes(pcm))

    async def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._audio.put(_FINISH)
            self._bridge.deadline(
                self._timeout_s, lambda: timed_out(ASRError, "pocketsphinx", self._timeout_s)
            )

    async def results(self) -> AsyncIterator[Hypothesis]:
        # No timeout while audio flows (the speaker may be silent); finish() sets a deadline.
        async for hypothesis in self._bridge.iterate():
            yield hypothesis

    async def close(self) -> None:
        self._closed.set()
        self._bridge.abandon()
        if not self._finished:
            self._finished = True
            self._audio.put(_ABORT)


class PocketSphinxASR(ASRProvider):
    name = "pocketsphinx"

    def __init__(self, timeout_s: float, interim_s: float = 0.5, max_decoders: int = 4) -> None:
        self.timeout_s = timeout_s
        self.interim_s = interim_s
        self.max_decoders = max_decoders

    @classmethod
    def from_settings(cls) -> PocketSphinxASR:
        return cls(settings.PROVIDER_TIMEOUT_S, max_decoders=settings.ASR_OFFLINE_DECODERS)

    def stream(self, language: str, sample_rate: int = SPEECH_RATE) -> ASRStream:
        _check_language(language)
        return _SphinxStream(sample_rate, self.interim_s, self.timeout_s, self.max_decoders)

    async def recognize_file(self, path: str, url: str, language: str) -> str:
        _check_language(language)
        return await asyncio.to_thread(self._recognize_and_trim, path)

    def _recognize_and_trim(self, path: str) -> str:
        try:
            return self._recognize(path)
        finally:
            _pool.trim()  # here the decoder is no longer referenced

    def _recognize(self, path: str) -> str:
        try:
            with wave.open(path, "rb") as handle:
                if handle.getnchannels() != 1 or handle.getsampwidth() != 2:
                    raise ASRError("pocketsphinx needs mono 16-bit PCM audio")
                rate, pcm = handle.getframerate(), handle.readframes(handle.getnframes())
        except (OSError, EOFError, wave.Error) as exc:
            raise ASRError("unreadable audio file", provider_message=str(exc)) from None
        decoder = _pool.acquire(rate, self.max_decoders)
        if decoder is None:  # only a cancelled wait gives none; this one is never cancelled
            raise ASRError("pocketsphinx could not start")
        try:
            decoder.start_utt()
            decoder.process_raw(pcm, False, True)
            decoder.end_utt()
            hyp = decoder.hyp()
        except Exception as exc:  # noqa: BLE001
            raise ASRError("pocketsphinx failed", provider_message=str(exc)) from None
        finally:
            _pool.release(rate, decoder)
        return hyp.hypstr if hyp is not None else ""
