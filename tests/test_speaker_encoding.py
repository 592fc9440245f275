"""The speaker track over a real WebRTC connection hands aiortc Opus packets itself: silence as
one constant packet, never encoded again, and speech encoded by the track; the client hears the
same thing as before."""

from __future__ import annotations

import asyncio
import time

from chat.realtime.handler import RealtimeHandler
from tests.audio import read_wav, rms, speak
from tests.fixtures_realtime import ClientPeer, EchoASR, FakeContext, negotiate, run, wait_until


def test_silence_is_sent_without_encoding_and_speech_still_plays() -> None:
    async def body() -> None:
        ctx = FakeContext()
        handler = RealtimeHandler(ctx, asr=EchoASR())
        client = ClientPeer()
        await negotiate(handler, ctx, client)
        speaker = handler.speaker()
        assert speaker is not None
        assert speaker.encode_opus  # Opus was negotiated with the aiortc client
        await wait_until(lambda: speaker.frames_sent >= 25, 10, "silent frames sent")
        assert speaker.frames_encoded == 0

        pcm, rate = read_wav(speak("The weather is sunny and warm today."))
        started = time.monotonic()
        await speaker.write(pcm.tobytes(), rate)
        await asyncio.wait_for(speaker.drained(), 20)
        await asyncio.sleep(0.5)  # the last packets in flight
        assert rms(client.audio_since(started)) > 300
        assert speaker.frames_encoded == speaker.speech_frames_sent > 0
        after = time.monotonic()
        await asyncio.sleep(0.3)
        assert rms(client.audio_since(after)) < 50
        await handler.close()
        await client.close()

    run(body())
