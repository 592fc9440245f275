"""Real recognition on the realtime path: the registry's offline ASR (pocketsphinx) hears
espeak-ng speech sent over WebRTC and over the websocket PCM fallback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from chat.providers.bridge import waiting_threads
from chat.realtime.handler import RealtimeHandler
from tests.audio import read_wav, speak
from tests.fixtures_realtime import ClientPeer, FakeContext, negotiate, run, wait_until

pytest.importorskip("chat.providers.asr.pocketsphinx")

SENTENCE = "Hello there. What is the weather like today?"


@pytest.fixture(autouse=True)
def offline_asr(settings: object) -> None:
    settings.ASR_BACKEND = "pocketsphinx"  # type: ignore[attr-defined]


def test_pocketsphinx_recognises_speech_sent_over_webrtc() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx)  # the registry's ASR
        client = ClientPeer()
        await negotiate(handler, ctx, client)
        await handler.handle("asr_start", {"language": "en-US", "transport": "webrtc"}, "a1")
        duration = client.mic.play_wav(speak(SENTENCE))
        await wait_until(lambda: ctx.utterances, duration + 20, "a final")
        text, utterance_id = ctx.utterances[0]
        assert "weather" in text.split(), text
        interims = ctx.of_type("asr_interim")
        assert interims, "no interim hypotheses"
        assert all(e["utterance_id"] == utterance_id for e in interims)
        assert len({e["text"] for e in interims}) == len(interims)  # only changes are sent
        assert not ctx.errors
        await handler.close()
        await client.close()

    run(body(), timeout=60)


def test_pocketsphinx_recognises_pcm_streamed_over_the_websocket() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx)
        pcm, rate = read_wav(speak(SENTENCE))  # 22050 Hz: resampled to 16 kHz by the handler
        await handler.handle(
            "asr_start", {"transport": "websocket", "format": "pcm16", "sample_rate": rate}, "a1"
        )
        data = pcm.tobytes()
        for i in range(0, len(data), rate // 5 * 2):  # 200 ms frames
            assert await handler.feed_pcm(data[i : i + rate // 5 * 2])
        await handler.handle("asr_stop", {}, "a2")
        await handler.wait_idle()
        assert len(ctx.utterances) == 1, (ctx.utterances, ctx.errors)
        assert "weather" in ctx.utterances[0][0].split()
        await handler.close()

    run(body(), timeout=60)


def test_many_recognition_spans_leave_no_tasks_or_threads() -> None:
    async def body() -> None:
        pcm, rate = read_wav(speak("Good morning", sample_rate=16000))
        data = pcm.tobytes() + bytes(rate)  # a second of silence: the VAD ends the utterance

        async def span(abandon: bool) -> None:
            ctx = FakeContext()
            handler = RealtimeHandler(ctx)
            await handler.handle("asr_start", {"transport": "websocket"}, None)
            await handler.feed_pcm(data if not abandon else data[: len(data) // 3])
            if not abandon:
                await handler.handle("asr_stop", {}, None)
                await handler.wait_idle()
                assert ctx.utterances, ctx.errors
            await handler.close()  # abandoning a span mid-utterance too

        for _ in range(2):
            await span(False)
        await asyncio.sleep(0.2)

        def working_threads() -> int:  # reusable threads waiting for work are not leaks
            return threading.active_count() - waiting_threads()

        tasks, threads = len(asyncio.all_tasks()), working_threads()
        for i in range(20):
            await span(abandon=i % 2 == 1)
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks, 10, "tasks to end")
        await wait_until(lambda: working_threads() <= threads, 10, "threads to end")

    run(body(), timeout=90)
