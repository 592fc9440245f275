"""One session at a time: the WebRTC media path alone (the server's peer without a session),
then voice turns over WebRTC and over the websocket-PCM fallback, timed at the client from the
end of the user's speech, and barge-ins timed until the reply audio goes silent."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

import numpy as np

from bench.realtime.clients import (
    LOUD_RMS,
    Events,
    connect,
    first_loud,
    open_session,
    silent_after,
)
from chat.providers.base import SPEECH_RATE
from chat.realtime.speaker import SAMPLE_RATE
from harness.peer import ClientPeer, MicTrack

TRACE = bool(os.environ.get("BENCH_TRACE"))
MIC_RATE = SAMPLE_RATE  # the microphone track's own rate: the utterance is queued unresampled


class BarePeer:
    """The WebRTC media path without the service: the server's own `PeerSession` (its
    resampling, DTX handling and speaker track), whose audio goes to the server's VAD alone
    (noting when it ends an utterance). What the WebRTC audio path costs on its own (Opus
    framing and codec delay, RTP, the client's playout buffer, the 20 ms pacing of the outgoing
    track), measured in the same run as the service, so that it can be told apart from the
    service's own overhead."""

    def __init__(self) -> None:
        from chat.realtime.peer import PeerSession
        from chat.realtime.vad import EnergyVAD

        self.vad = EnergyVAD()
        self._pending = b""
        self.vad_ends: list[float] = []
        self.vad_ended = asyncio.Event()
        self.peer = PeerSession(
            on_audio=self._on_audio,
            on_state=self._on_state,
            pause_is_silence=self._pause_is_silence,
            quiet_left=lambda: self.vad.quiet_left_s,
        )
        self.speaker = self.peer.speaker
        self.speaker.report_metrics = False  # this process's, not the web process's

    def _pause_is_silence(self) -> bool:
        """As the server's handler decides it: speech under way and the last frame quiet."""
        vad = self.vad
        if not (vad.speaking or vad.rising):
            return False
        return vad.last_db < vad.threshold_db - (vad.config.hysteresis_db if vad.speaking else 0)

    async def _on_state(self, state: str) -> None:
        pass

    async def _on_audio(self, pcm: bytes) -> None:
        size = self.vad.config.frame_samples * 2
        data = self._pending + pcm
        while len(data) >= size:
            chunk, data = data[:size], data[size:]
            if self.vad.update(np.frombuffer(chunk, dtype=np.int16)) == "speech_end":
                self.vad_ends.append(time.monotonic())
                self.vad_ended.set()
        self._pending = data

    async def connect(self, client: ClientPeer) -> None:
        answer = await self.peer.accept_offer(await client.offer())
        await client.accept(answer.sdp)

    async def close(self) -> None:
        await self.peer.close()


async def media_baseline(utterance: np.ndarray, turns: int, **client: Any) -> dict[str, Any]:
    """Per turn: capture of the user's last loud sample → the bare peer's VAD ending the
    utterance ("inbound": transport plus the VAD's hangover on the decoded audio), and reply
    audio queued on the speaker track → its first loud frame at the client ("outbound")."""
    peer, bare = ClientPeer(keep_audio=False, **client), BarePeer()
    inbound: list[float] = []
    outbound: list[float] = []
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(48000) / 48000)).astype(np.int16)
    try:
        await bare.connect(peer)
        await asyncio.sleep(1.5)  # connected; the VAD's noise floor settles
        for n in range(turns + 1):
            bare.vad_ended.clear()
            speech = peer.mic.utter(utterance, MIC_RATE)
            end = await speech.ended()
            await asyncio.wait_for(bare.vad_ended.wait(), 10)
            ends = [t for t in bare.vad_ends if t > end]
            # Anywhere within a frame of the track's 20 ms pacing, as a reply's first chunk is.
            await asyncio.sleep(0.2 + random.random() * 0.02)
            queued = time.monotonic()
            await bare.speaker.write(tone.tobytes(), 48000)
            heard = await first_loud(peer.levels, queued, 5)
            await asyncio.sleep(1.2)
            if n and ends:  # the first turn warms up
                inbound.append((ends[0] - end) * 1000)
                outbound.append((heard - queued) * 1000)
    finally:
        await peer.close()
        await bare.close()
    return {"inbound": inbound, "outbound": outbound}


def trace(
    session: Events, frames: list[tuple[float, float]], since: float, kind: str, ms: float
) -> None:
    events = [
        (round((at - since) * 1000), e["type"], e.get("interrupted"))
        for at, e in session.events
        if since - 0.5 <= at < since + 1.0
    ]
    loud = [
        round((at - since) * 1000)
        for at, level in frames
        if since - 0.1 <= at < since + 1.0 and level > LOUD_RMS
    ]
    print(kind, ms, events, loud[:3], loud[-3:], len(loud), file=sys.stderr)


def turn_marks(session: Events, end: float, audio_at: float) -> dict[str, float]:
    def after(kind: str) -> float:
        found = session.find(kind, end)
        if found is None:
            raise RuntimeError(f"no {kind}")
        return round((found[0] - end) * 1000, 1)

    marks = {k: after(k) for k in ("asr_result", "text_delta", "text_response", "tts_start")}
    marks["first_audio"] = round((audio_at - end) * 1000, 1)
    return marks


async def measure_turns(
    session: Events,
    mic: Any,
    rate: int,
    levels: Any,
    turns: int,
    utterance: np.ndarray,
    barge: np.ndarray,
    traced: bool = False,
) -> Any:
    """Speak `turns` utterances (after a warm-up one) on `mic` at `rate`, time each reply from
    the events and the reply audio's `levels`, and stop every reply, alternately by `interrupt`
    and by speech, timing how long its audio goes on."""
    results: list[dict[str, float]] = []
    barge_ms: dict[str, list[float]] = {"interrupt": [], "speech": []}
    await asyncio.sleep(1.0)  # the VAD's noise floor settles on the microphone's silence
    for n in range(turns + 1):  # the first turn warms up
        speech = mic.utter(utterance, rate)
        end = await speech.ended()
        await session.first("text_response", end)
        audio_at = await first_loud(levels, end, 20)
        await session.first("tts_start", end)
        marks = turn_marks(session, end, audio_at)
        await asyncio.sleep(max(0.0, audio_at + 1.0 - time.monotonic()))
        if n % 2 == 0:
            kind, since = "interrupt", time.monotonic()
            await session.send(type="interrupt")
        else:
            kind = "speech"
            again = mic.utter(barge, rate)
            since = await again.started()
        await asyncio.sleep(1.0)
        # Over the websocket the reply audio is not paced: what matters there is how long
        # frames keep coming after the barge-in (the client drops what it has queued itself).
        stop_ms = round(silent_after(levels, since, since + 1.0), 1)
        if traced:
            trace(session, levels, since, kind, stop_ms)
        if kind == "speech":  # its own reply comes: stop it
            await session.first("tts_start", await again.ended())
            await session.send(type="interrupt")
            await asyncio.sleep(0.5)
        if n:
            results.append(marks)
            barge_ms[kind].append(stop_ms)
        await asyncio.sleep(0.3)
    return results, barge_ms


async def webrtc_turns(
    url: str, turns: int, utterance: np.ndarray, barge: np.ndarray, **client: Any
) -> Any:
    session = await open_session(url)
    peer = ClientPeer(keep_audio=False, **client)
    try:
        await connect(peer, session)
        await session.send(type="asr_start", language="en-US")
        measured = await measure_turns(
            session, peer.mic, MIC_RATE, peer.levels, turns, utterance, barge, TRACE
        )
        await session.send(type="asr_stop")
        return measured
    finally:
        await peer.close()
        await session.close()


async def websocket_turns(url: str, turns: int, utterance: np.ndarray, barge: np.ndarray) -> Any:
    """The same over the websocket: the microphone's paced frames as PCM16 at 16 kHz."""
    from chat.realtime.pcm import PcmResampler, frame_pcm

    session = await open_session(url)
    mic = MicTrack()

    async def stream() -> None:  # 20 ms PCM16 frames at their real-time instants
        to16k = PcmResampler(MIC_RATE, SPEECH_RATE)
        while True:
            frame = await mic.recv()
            await session.ws.send(to16k(frame_pcm(frame)))

    await session.send(
        type="asr_start", transport="websocket", format="pcm16", sample_rate=SPEECH_RATE
    )
    sender = asyncio.create_task(stream())
    try:
        return await measure_turns(
            session, mic, SPEECH_RATE, session.binary, turns, utterance, barge
        )
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        mic.stop()
        await session.close()
