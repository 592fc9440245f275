"""The realtime audio parts on their own: the speaker track, the VAD and the listener."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from chat.providers.base import ASRError, ASRStream, Hypothesis
from chat.realtime.listener import Listener
from chat.realtime.opus import OpusDecoder
from chat.realtime.speaker import FRAME_SAMPLES, SAMPLE_RATE, SpeakerTrack
from chat.realtime.vad import EnergyVAD
from tests.audio import read_wav, resample, rms, speak
from tests.fixtures_realtime import EchoASR, FakeContext, run

SENTENCE = "Hello there. What is the weather like today?"


def speech_16k(text: str = SENTENCE) -> np.ndarray:
    pcm, rate = read_wav(speak(text))
    return resample(pcm, rate, 16000)


def frame_pcm(frame: object) -> np.ndarray:
    return frame.to_ndarray().reshape(-1)  # type: ignore[attr-defined]


# --- speaker -------------------------------------------------------------------------------


def test_speaker_sends_silence_when_nothing_is_queued() -> None:
    async def body() -> None:
        track = SpeakerTrack()
        for _ in range(3):
            frame = await track.recv()
            assert frame.samples == FRAME_SAMPLES and frame.sample_rate == SAMPLE_RATE
            assert not frame_pcm(frame).any()
        await track.drained()  # nothing queued: returns at once
        track.stop()

    run(body())


def test_speaker_plays_written_speech_resampled_then_silence() -> None:
    async def body() -> None:
        pcm, rate = read_wav(speak("Good morning"))
        track = SpeakerTrack()
        # Written in odd-sized chunks, as a streaming TTS delivers it.
        data = pcm.tobytes()
        for i in range(0, len(data), 1001):
            await track.write(data[i : i + 1001], rate)
        expected_ms = len(pcm) / rate * 1000
        assert abs(track.queued_ms - expected_ms) < 30
        drained = asyncio.create_task(track.drained())
        frames = []
        while track.queued_ms > 0:
            frames.append(frame_pcm(await track.recv()))
        await asyncio.wait_for(drained, 1)
        out = np.concatenate(frames)
        assert abs(len(out) / SAMPLE_RATE * 1000 - expected_ms) < 40
        assert rms(out) > 0.3 * rms(pcm)
        assert not frame_pcm(await track.recv()).any()
        pts = [(await track.recv()).pts for _ in range(2)]
        assert pts[1] - pts[0] == FRAME_SAMPLES
        track.stop()

    run(body())


@pytest.mark.parametrize("complexity", [0, 1, 10])
def test_speaker_encodes_speech_at_the_opus_complexity_it_is_given(complexity: int) -> None:
    """WEBRTC_OPUS_COMPLEXITY reaches libopus, and the speech decodes back at every setting."""

    async def body() -> tuple[np.ndarray, np.ndarray, int]:
        pcm, rate = read_wav(speak("Good morning"))
        track = SpeakerTrack()
        track.encode_opus = True
        track.opus_complexity = complexity
        await track.write(pcm.tobytes(), rate)
        decoder, decoded = OpusDecoder(SAMPLE_RATE), []
        while track.queued_ms > 0:
            packet = await track.recv()
            decoded.append(np.frombuffer(decoder.decode(bytes(packet)), np.int16))
        assert track._encoder is not None
        used = track._encoder.complexity
        track.stop()
        return resample(pcm, rate, SAMPLE_RATE), np.concatenate(decoded), used

    sent, heard, used = run(body())
    assert used == complexity
    # The loudness envelope (20 ms steps) of what is heard follows what was sent.
    steps = min(len(sent), len(heard)) // FRAME_SAMPLES
    level = [
        np.sqrt(np.mean(x[: steps * FRAME_SAMPLES].astype(float).reshape(steps, -1) ** 2, axis=1))
        for x in (sent, heard)
    ]
    assert np.corrcoef(level[0], level[1])[0, 1] > 0.9


def test_speaker_clear_silences_the_next_frame_and_releases_drained() -> None:
    async def body() -> None:
        pcm, rate = read_wav(speak("This sentence is long enough to be interrupted."))
        track = SpeakerTrack()
        await track.write(pcm.tobytes(), rate)
        assert rms(frame_pcm(await track.recv())) >= 0  # playing
        drained = asyncio.create_task(track.drained())
        await asyncio.sleep(0)
        assert not drained.done()
        track.clear()
        await asyncio.wait_for(drained, 1)
        assert track.queued_ms == 0
        assert not frame_pcm(await track.recv()).any()
        track.stop()
        await track.write(pcm.tobytes(), rate)  # ignored once stopped
        assert track.queued_ms == 0

    run(body())


def test_speaker_hold_pauses_the_speech_and_resume_goes_on_where_it_stopped() -> None:
    async def body() -> None:
        tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(
            np.int16
        )
        track = SpeakerTrack()
        await track.write(tone.tobytes(), SAMPLE_RATE)
        first = frame_pcm(await track.recv())
        track.hold(True)
        held = [frame_pcm(await track.recv()) for _ in range(3)]
        assert all(not frame.any() for frame in held)  # silence while held...
        assert abs(track.queued_ms - (1000 - 20)) < 1  # ...and nothing dropped
        track.hold(False)
        resumed = frame_pcm(await track.recv())
        assert np.array_equal(first, tone[:FRAME_SAMPLES])
        assert np.array_equal(resumed, tone[FRAME_SAMPLES : 2 * FRAME_SAMPLES])
        track.stop()

    run(body())


# --- VAD -----------------------------------------------------------------------------------


def vad_events(signal: np.ndarray, vad: EnergyVAD | None = None) -> list[tuple[str, float]]:
    vad = vad or EnergyVAD()
    events = []
    for i in range(0, len(signal) - 319, 320):
        event = vad.update(signal[i : i + 320])
        if event:
            events.append((event, i / 16000))
    return events


def test_vad_finds_one_utterance_in_speech_between_silences() -> None:
    speech = speech_16k()
    silence = np.zeros(16000, dtype=np.int16)
    events = vad_events(np.concatenate([silence, speech, silence]))
    assert [e for e, _ in events] == ["speech_start", "speech_end"]
    start, end = events[0][1], events[1][1]
    assert 0.9 < start < 1.6
    assert 1 + len(speech) / 16000 < end < 1 + len(speech) / 16000 + 1.0


def test_vad_says_how_much_quiet_still_ends_the_utterance() -> None:
    """`quiet_left_s` (what a DTX pause waits for before it is handed on as silence) is what
    the VAD then needs: that much more quiet ends the utterance, and one frame less does not."""
    vad = EnergyVAD()
    assert vad.quiet_left_s is None  # nothing to end
    loud = (3000 * np.sin(np.arange(320) / 3)).astype(np.int16)
    quiet = np.zeros(320, dtype=np.int16)
    while vad.update(loud) != "speech_start":
        pass
    assert vad.quiet_left_s == vad.config.end_ms / 1000
    for _ in range(7):
        vad.update(quiet)
    left = vad.quiet_left_s
    assert left == (vad.config.end_ms - 7 * 20) / 1000
    frames = round(left / 0.02)
    assert [vad.update(quiet) for _ in range(frames - 1)] == [None] * (frames - 1)
    assert vad.update(quiet) == "speech_end"
    assert vad.quiet_left_s is None


def test_vad_detects_speech_at_the_very_start_of_a_stream() -> None:
    events = vad_events(np.concatenate([speech_16k(), np.zeros(16000, dtype=np.int16)]))
    assert [e for e, _ in events] == ["speech_start", "speech_end"]


def test_vad_adapts_to_steady_noise_and_still_hears_speech_over_it() -> None:
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(16000 * 9) * 0.01 * 32768).astype(np.int16)
    speech = speech_16k()
    mixed = noise.copy()
    mixed[5 * 16000 : 5 * 16000 + len(speech)] += speech
    events = vad_events(mixed)
    # Whatever the noise did while the floor settled, speech at 5 s is found and ended.
    late = [(e, t) for e, t in events if t > 3.0]
    assert [e for e, _ in late] == ["speech_start", "speech_end"]
    assert 4.9 < late[0][1] < 6.0
    assert not vad_events(noise, EnergyVAD())[2:]  # at most one settling blip


def test_vad_ends_an_endless_utterance_at_the_maximum_length() -> None:
    from chat.realtime.vad import VADConfig

    tone = (np.sin(np.arange(16000 * 3) * 0.2) * 8000).astype(np.int16)
    tone[::300] = 0  # not stationary enough to be taken for noise
    vad = EnergyVAD(VADConfig(max_utterance_ms=1000, stationary_db=0.0))
    events = vad_events(tone, vad)
    assert events[:2] == [("speech_start", events[0][1]), ("speech_end", events[1][1])]
    assert events[1][1] - events[0][1] < 1.1


# --- listener ------------------------------------------------------------------------------


def make_listener(asr: object, ctx: FakeContext) -> Listener:
    async def on_interim(text: str, utterance_id: str) -> None:
        await ctx.send_event({"type": "asr_interim", "text": text, "utterance_id": utterance_id})

    async def on_error(exc: Exception) -> None:
        await ctx.send_error(exc.code, str(exc), retryable=exc.retryable)  # type: ignore[attr-defined]

    return Listener(
        asr,  # type: ignore[arg-type]
        "en-US",
        on_speech_start=ctx.barge_in,
        on_interim=on_interim,
        on_final=ctx.user_utterance,
        on_error=on_error,
    )


async def feed_in_chunks(listener: Listener, pcm: np.ndarray, chunk: int = 1234) -> None:
    data = pcm.tobytes()
    for i in range(0, len(data), chunk):
        await listener.feed(data[i : i + chunk])


def test_listener_splits_utterances_on_silence_with_interims_and_finals() -> None:
    async def body() -> None:
        asr, ctx = EchoASR(), FakeContext()
        listener = make_listener(asr, ctx)
        speech = speech_16k()
        gap = np.zeros(16000, dtype=np.int16)
        await feed_in_chunks(listener, np.concatenate([gap, speech, gap, speech, gap]))
        await listener.stop()
        assert ctx.barge_ins == 2
        assert len(ctx.utterances) == 2
        ids = [uid for _, uid in ctx.utterances]
        assert len(set(ids)) == 2 and all(len(uid) <= 16 for uid in ids)
        for text, uid in ctx.utterances:
            fed_ms = int(text.split()[-2])
            # The whole utterance, with its pre-roll, and not much of the silence around it.
            assert len(speech) / 16 - 200 < fed_ms < len(speech) / 16 + 1000
            interims = [e for e in ctx.events if e["utterance_id"] == uid]
            assert interims and len({e["text"] for e in interims}) == len(interims)
        assert all(s.closed for s in asr.streams)
        await listener.close()

    run(body())


def test_listener_pauses_on_the_first_speech_like_frame_and_resumes_after_a_click() -> None:
    async def body() -> None:
        asr, ctx = EchoASR(), FakeContext()
        listener = make_listener(asr, ctx)
        calls: list[tuple[bool, int]] = []  # (paused?, barge-ins so far)
        listener.on_maybe_speech = lambda held: calls.append((held, ctx.barge_ins))
        quiet = np.zeros(16000, dtype=np.int16)
        rng = np.random.default_rng(7)
        click = rng.integers(-12000, 12000, 320, dtype=np.int16)  # one loud 20 ms frame
        await listener.feed(np.concatenate([quiet, click, quiet]).tobytes())
        assert calls == [(True, 0), (False, 0)] and ctx.barge_ins == 0
        assert not listener.in_utterance
        calls.clear()
        await feed_in_chunks(listener, np.concatenate([speech_16k(), quiet]), chunk=640)
        # Paused at the first speech frame; resumed only after the barge-in ran.
        assert calls[:2] == [(True, 0), (False, 1)]
        await listener.stop()
        await listener.close()

    run(body())


def test_listener_stop_finishes_the_utterance_in_progress() -> None:
    async def body() -> None:
        asr, ctx = EchoASR(), FakeContext()
        listener = make_listener(asr, ctx)
        await feed_in_chunks(listener, speech_16k()[:16000])  # cut mid-sentence
        assert listener.in_utterance and not ctx.utterances
        await listener.stop()
        assert len(ctx.utterances) == 1
        await listener.stop()  # nothing more to finish
        assert len(ctx.utterances) == 1
        await listener.close()

    run(body())


def test_listener_skips_empty_finals_and_reports_provider_errors() -> None:
    class SilentStream(ASRStream):
        async def feed(self, pcm: bytes) -> None:
            pass

        async def finish(self) -> None:
            pass

        async def results(self) -> AsyncIterator[Hypothesis]:
            for hyp in ():
                yield hyp

        async def close(self) -> None:
            pass

    class FailingStream(SilentStream):
        async def feed(self, pcm: bytes) -> None:
            raise ASRError("recogniser gone", retryable=True)

    class Scripted(EchoASR):
        def __init__(self) -> None:
            super().__init__()
            self.kinds = [SilentStream, FailingStream]

        def stream(self, language: str, sample_rate: int = 16000) -> ASRStream:
            return self.kinds.pop(0)()

    async def body() -> None:
        ctx = FakeContext()
        listener = make_listener(Scripted(), ctx)
        gap = np.zeros(16000, dtype=np.int16)
        await feed_in_chunks(listener, np.concatenate([speech_16k(), gap, speech_16k(), gap]))
        await listener.stop()
        assert ctx.utterances == []
        assert [e["code"] for e in ctx.errors] == ["ERR_ASR_FAILED"]
        assert ctx.errors[0]["retryable"] is True
        await listener.close()

    run(body())


def test_listener_close_abandons_the_stream_without_a_final() -> None:
    async def body() -> None:
        asr, ctx = EchoASR(), FakeContext()
        listener = make_listener(asr, ctx)
        await feed_in_chunks(listener, speech_16k()[:16000])
        await listener.close()
        await listener.close()
        assert ctx.utterances == [] and asr.streams[0].closed
        await listener.feed(b"\0" * 640)  # ignored after close

    run(body())


def test_vad_over_levels_measured_100_ms_at_a_time_finds_the_same_speech() -> None:
    """The listener measures a batch's frame levels in one pass; the VAD then hears the same
    utterances at the same instants as when it measures each frame itself."""
    from chat.realtime.vad import frame_dbs

    rng = np.random.default_rng(11)
    noise = (rng.standard_normal(16000 * 6) * 0.005 * 32768).astype(np.int16)
    speech = speech_16k()
    mixed = noise.copy()
    mixed[2 * 16000 : 2 * 16000 + len(speech)] += speech
    frames = mixed[: len(mixed) // 320 * 320].reshape(-1, 320)
    batched, vad = [], EnergyVAD()
    for first in range(0, len(frames), 5):
        for n, level in enumerate(frame_dbs(frames[first : first + 5])):
            if event := vad.update_level(level):
                batched.append((event, (first + n) * 320 / 16000))
    expected = vad_events(mixed)
    assert [e for e, _ in expected if _ > 1.5] == ["speech_start", "speech_end"]
    assert batched == expected
