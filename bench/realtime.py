"""Realtime voice turns: from the end of the user's speech to `asr_result`, `text_response` and
the first reply audio at the client, split into the providers' time and the service's own;
barge-in; CPU per concurrent realtime session.

Starts the loopback DashScope fake (tests/fakes/dashscope_server.py) in a process of its own
with FIXED delays, and a web process (`python -m echoproject.web`) whose three providers are
the DashScope backends pointed at it, on a Redis database of its own with a
throw-away SQLite database and media folder. Then, in this process:

1. WebRTC turns: an aiortc client peer (as the e2e tests use) negotiates, sends `ready` and
   `asr_start`, plays an espeak-ng utterance on its microphone track in real time followed by
   silence, and timestamps the end of the speech (the capture instant of the last non-silent
   sample), `asr_result`, the first `text_delta`, `text_response`, `tts_start` and the first
   non-silent frame on its remote track. After a second of reply speech it barges in, by an
   `interrupt` message or by speaking again (alternately), and times until the reply audio it
   receives goes silent.
2. The same over the websocket-PCM fallback (PCM16 binary frames paced in real time, reply
   audio as binary frames).
3. Capacity: K concurrent WebRTC sessions, each talking turn after turn, while the web
   process's CPU is read from /proc/<pid>/stat; also K idle connected sessions.

0. Before those, the WebRTC media path alone: the same client peer connected to a bare aiortc
   peer in this process (`BarePeer`: the server's resampling and VAD on what it receives, the
   server's speaker track for what it sends; no session, no providers).

Provider time of a stage = the fake's configured delays on its path (ASR final after the
stream ends; LLM first token, then per token up to the end of the first sentence or of the
reply; TTS first chunk); the fake keeps to them on a fixed schedule. The VAD's end-of-speech
hangover (silence needed to end an utterance, a design parameter) is computed by running the
server's own VAD over the same audio and is reported apart. Overhead = measured - provider
time - what comes before and after the service: over the websocket the hangover; over WebRTC
the bare peers' median time from the end of speech to their VAD's end (transport plus the
hangover on the decoded audio) and from queueing reply audio to hearing it at the client.

    .venv/bin/python bench/realtime.py --turns 20 --ws-turns 10 --sessions 5,10,20

`--client-prefetch N` sets the client peer's playout (jitter) buffer (aiortc's default holds
4 frames back, ~80 ms, which counts in the first-audio and barge-in figures); BENCH_TRACE=1
prints the events and loud frames around every barge-in to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import ROOT, Stack  # noqa: E402

UTTERANCE = "what is the weather like in london today"
BARGE = "stop please"
REPLY = (
    "Sure, here is what I know. London is cloudy today with light rain in the afternoon. "
    "Temperatures stay around twelve degrees until the evening. "
    "Take an umbrella if you go out later, and a warm coat too."
)
MIC_RATE = 48000
MIC_FRAME = MIC_RATE // 50
LOUD_RMS = 300.0  # a received 20 ms frame louder than this is reply speech (the fake's tone ~2100)
QUIET_DB = -45.0  # a 10 ms window of the user's audio above this is speech (the VAD's minimum)


# --- figures ------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)


def summary(values: list[float]) -> str:
    return f"p50 {median(values)} p99 {p99(values)} (n={len(values)})"


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def speech_bounds(pcm: np.ndarray, rate: int) -> tuple[int, int]:
    """Index of the first and one past the last non-silent sample (10 ms windows)."""
    step = rate // 100
    loud = [
        i
        for i in range(0, len(pcm) - step + 1, step)
        if 20 * np.log10(max(rms(pcm[i : i + step]), 1e-9) / 32768.0) > QUIET_DB
    ]
    return loud[0], loud[-1] + step


def vad_hangover_ms(pcm16k: np.ndarray) -> float:
    """How long after the last non-silent sample the server's VAD ends the utterance, for this
    audio preceded and followed by digital silence (what the client's microphone sends)."""
    from chat.realtime.vad import EnergyVAD

    vad = EnergyVAD()
    lead = 16000
    audio = np.concatenate([np.zeros(lead, np.int16), pcm16k, np.zeros(3 * 16000, np.int16)])
    size = vad.config.frame_samples
    _, end = speech_bounds(pcm16k, 16000)
    for offset in range(0, len(audio) - size + 1, size):
        if vad.update(audio[offset : offset + size]) == "speech_end":
            return (offset + size - lead - end) / 16.0
    raise RuntimeError("the VAD never ended the utterance")


def load_pcm(text: str, rate: int) -> np.ndarray:
    from tests.audio import read_wav, resample, speak

    pcm, rate_in = read_wav(speak(text))
    return resample(pcm, rate_in, rate)


# --- the DashScope fake in its own process ------------------------------------------------


def serve_fake(delays: dict[str, float]) -> None:
    """Child mode: run the fake with fixed delays, print its addresses, stop at stdin's end."""
    import logging

    from tests.fakes.dashscope_server import DashScopeServer

    # An interrupted reply drops its LLM stream: the fake's failed writes are expected.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    server = DashScopeServer().start()
    b = server.behaviour
    b.reply = REPLY
    b.transcript = UTTERANCE
    b.first_token_delay = delays["llm_first_token"] / 1000
    b.token_delay = delays["llm_token"] / 1000
    # The fake sleeps asr_result_delay before every result, interims included: no interims, so
    # the delay is the final's alone, counted from the end of the stream (finish-task).
    b.asr_result_delay = delays["asr_final"] / 1000
    b.asr_interim_every_bytes = 1 << 40
    b.tts_first_chunk_delay = delays["tts_first_chunk"] / 1000
    b.tts_chunk_delay = delays["tts_chunk"] / 1000
    print(
        json.dumps(
            {"http": server.http_base_url, "ws": server.websocket_url, "key": server.api_key}
        ),
        flush=True,
    )
    try:
        sys.stdin.read()
    finally:
        server.stop()


def provider_ms(delays: dict[str, float]) -> dict[str, float]:
    """The providers' own time on the path from the end of the stream to each client event."""
    first_sentence = len(REPLY.split(".")[0].split())
    words = len(REPLY.split())
    asr = delays["asr_final"]
    return {
        "asr_result": asr,
        "text_response": asr + delays["llm_first_token"] + (words - 1) * delays["llm_token"],
        "first_audio": asr
        + delays["llm_first_token"]
        + (first_sentence - 1) * delays["llm_token"]
        + delays["tts_first_chunk"],
    }


# --- clients ------------------------------------------------------------------------------


class Events:
    """A protocol client whose reader timestamps every event and binary frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.binary: list[tuple[float, float]] = []  # (arrival, rms)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self.ws:
                now = time.monotonic()
                if isinstance(frame, bytes):
                    self.binary.append((now, rms(np.frombuffer(frame, dtype=np.int16))))
                else:
                    self.events.append((now, json.loads(frame)))

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    def find(self, kind: str, since: float) -> tuple[float, dict[str, Any]] | None:
        for at, event in self.events:
            if at >= since and event["type"] == kind and not event.get("interrupted"):
                return at, event
        return None

    async def first(self, kind: str, since: float, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while (found := self.find(kind, since)) is None:
            errors = [e for at, e in self.events if at >= since and e["type"] == "error"]
            if errors:
                raise RuntimeError(f"error waiting for {kind}: {errors}")
            if time.monotonic() > deadline or self._reader.done():
                raise RuntimeError(f"no {kind!r}: {[e['type'] for _, e in self.events[-20:]]}")
            await asyncio.sleep(0.005)
        return found[0]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


class Speech:
    """A queued utterance; `start`/`end`: capture instants of its first/last loud sample."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.start: float | None = None
        self.end: float | None = None

    async def ended(self, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while self.end is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the utterance was never sent")
            await asyncio.sleep(0.005)
        return self.end

    async def started(self, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while self.start is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the utterance was never sent")
            await asyncio.sleep(0.005)
        return self.start


class Microphone:
    """PCM queued at `rate`, taken in 20 ms frames at their real-time instants; silence when
    nothing is queued. Each frame is handed over when its last sample is 'captured'."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = rate // 50
        self.queue = np.zeros(0, dtype=np.int16)
        self.sent = 0  # samples handed over so far
        self.pending: list[Speech] = []

    def play(self, pcm: np.ndarray) -> Speech:
        first, last = speech_bounds(pcm, self.rate)
        base = self.sent + len(self.queue)
        speech = Speech(base + first, base + last)
        self.pending.append(speech)
        self.queue = np.concatenate([self.queue, pcm])
        return speech

    def take(self, now: float) -> np.ndarray:
        chunk, self.queue = self.queue[: self.frame], self.queue[self.frame :]
        if len(chunk) < self.frame:
            chunk = np.concatenate([chunk, np.zeros(self.frame - len(chunk), dtype=np.int16)])
        self.sent += self.frame
        for speech in list(self.pending):
            if speech.start is None and speech.first < self.sent:
                speech.start = now - (self.sent - speech.first) / self.rate
            if speech.last <= self.sent:
                speech.end = now - (self.sent - speech.last) / self.rate
                self.pending.remove(speech)
        return chunk


def mic_track(mic: Microphone) -> Any:
    import av
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class MicTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._start: float | None = None
            self._pts = 0

        async def recv(self) -> av.AudioFrame:
            if self.readyState != "live":
                raise MediaStreamError
            if self._start is None:
                self._start = time.monotonic()
            else:
                self._pts += MIC_FRAME
                delay = self._start + self._pts / MIC_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            chunk = mic.take(time.monotonic())
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = MIC_RATE
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, MIC_RATE)
            return frame

    return MicTrack()


class WebRTCClient:
    """A browser stand-in: an aiortc peer; records (arrival, rms) of every frame it receives."""

    def __init__(self) -> None:
        from aiortc import RTCPeerConnection

        self.mic = Microphone(MIC_RATE)
        self.pc = RTCPeerConnection()
        self.pc.addTrack(mic_track(self.mic))
        if CLIENT_PREFETCH is not None:  # the client's playout buffer (aiortc's default: 4)
            from aiortc.jitterbuffer import JitterBuffer

            for transceiver in self.pc.getTransceivers():
                transceiver.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                    capacity=16, prefetch=CLIENT_PREFETCH
                )
        self.received: list[tuple[float, float]] = []
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.received.append((time.monotonic(), rms(frame.to_ndarray())))

    async def connect(self, session: Events) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        since = time.monotonic()
        await session.send(type="offer", sdp=self.pc.localDescription.sdp, sdp_type="offer")
        await session.first("answer", since, 30)
        answer = session.find("answer", since)[1]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await session.first("connected", since, 30)
        await session.send(type="ready", direction="both")
        await session.first("ready", since, 10)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class BarePeer:
    """The WebRTC media path without the service: an aiortc peer that turns the client's audio
    into 16 kHz mono and runs the server's VAD over it (noting when it ends an utterance), and
    sends the server's own speaker track, fed on demand. What the WebRTC audio path costs on
    its own (Opus framing and codec delay, RTP, the client's playout buffer, the 20 ms pacing of
    the outgoing track), measured in the same run as the service, so that it can be told apart
    from the service's own overhead."""

    def __init__(self) -> None:
        from aiortc import RTCPeerConnection

        from chat.realtime.speaker import SpeakerTrack

        self.pc = RTCPeerConnection()
        self.speaker = SpeakerTrack()
        self.pc.addTrack(self.speaker)
        self.vad_ends: list[float] = []
        self.vad_ended = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: Any) -> None:
        import av
        from aiortc.mediastreams import MediaStreamError

        from chat.realtime.pcm import frame_pcm
        from chat.realtime.vad import EnergyVAD

        vad = EnergyVAD()
        size = vad.config.frame_samples * 2
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        pending = b""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                pending += frame_pcm(out)
            while len(pending) >= size:
                chunk, pending = pending[:size], pending[size:]
                if vad.update(np.frombuffer(chunk, dtype=np.int16)) == "speech_end":
                    self.vad_ends.append(time.monotonic())
                    self.vad_ended.set()

    async def connect(self, client: WebRTCClient) -> None:
        await client.pc.setLocalDescription(await client.pc.createOffer())
        from chat.realtime.peer import low_latency_audio_in

        await self.pc.setRemoteDescription(client.pc.localDescription)
        low_latency_audio_in(self.pc)  # as the server's peer does
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await client.pc.setRemoteDescription(self.pc.localDescription)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def webrtc_media_baseline(utterance: np.ndarray, turns: int) -> dict[str, list[float]]:
    """Per turn: capture of the user's last loud sample → the bare peer's VAD ending the
    utterance ("inbound": transport plus the VAD's hangover on the decoded audio), and reply
    audio queued on the speaker track → its first loud frame at the client ("outbound")."""
    client, bare = WebRTCClient(), BarePeer()
    inbound: list[float] = []
    outbound: list[float] = []
    tone = (3000 * np.sin(2 * np.pi * 220 * np.arange(48000) / 48000)).astype(np.int16)
    try:
        await bare.connect(client)
        await asyncio.sleep(1.5)  # connected; the VAD's noise floor settles
        for n in range(turns + 1):
            bare.vad_ended.clear()
            speech = client.mic.play(utterance)
            end = await speech.ended()
            await asyncio.wait_for(bare.vad_ended.wait(), 10)
            ends = [t for t in bare.vad_ends if t > end]
            # Anywhere within a frame of the track's 20 ms pacing, as a reply's first chunk is.
            await asyncio.sleep(0.2 + random.random() * 0.02)
            queued = time.monotonic()
            await bare.speaker.write(tone.tobytes(), 48000)
            heard = await first_loud(client.received, queued, 5)
            await asyncio.sleep(1.2)
            if n and ends:  # the first turn warms up
                inbound.append((ends[0] - end) * 1000)
                outbound.append((heard - queued) * 1000)
    finally:
        await client.close()
        await bare.close()
    return {"inbound": inbound, "outbound": outbound}


TRACE = bool(os.environ.get("BENCH_TRACE"))
CLIENT_PREFETCH: int | None = None


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


async def first_loud(frames: list[tuple[float, float]], since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        for at, level in frames[seen:]:
            if at >= since and level > LOUD_RMS:
                return at
        seen = len(frames)
        if time.monotonic() > deadline:
            raise RuntimeError("no reply audio")
        await asyncio.sleep(0.005)


def silent_after(frames: list[tuple[float, float]], since: float, until: float) -> float:
    """ms from `since` until the received audio went silent: the end of the last loud frame
    that arrived in [since, until) (0 when none did)."""
    loud = [at for at, level in frames if since <= at < until and level > LOUD_RMS]
    return ((loud[-1] + 0.02 - since) * 1000) if loud else 0.0


async def open_session(url: str) -> Events:
    import websockets

    ws = await websockets.connect(url, max_size=None, open_timeout=30, ping_interval=None)
    session = Events(ws)
    await session.first("init", 0, 30)
    return session


def turn_marks(session: Events, end: float, audio_at: float) -> dict[str, float]:
    def after(kind: str) -> float:
        found = session.find(kind, end)
        if found is None:
            raise RuntimeError(f"no {kind}")
        return round((found[0] - end) * 1000, 1)

    marks = {k: after(k) for k in ("asr_result", "text_delta", "text_response", "tts_start")}
    marks["first_audio"] = round((audio_at - end) * 1000, 1)
    return marks


async def webrtc_turns(url: str, turns: int, utterance: np.ndarray, barge: np.ndarray) -> Any:
    session = await open_session(url)
    client = WebRTCClient()
    results: list[dict[str, float]] = []
    barge_ms: dict[str, list[float]] = {"interrupt": [], "speech": []}
    try:
        await client.connect(session)
        await session.send(type="asr_start", language="en-US")
        await asyncio.sleep(1.0)  # the VAD's noise floor settles on the microphone's silence
        for n in range(turns + 1):  # the first turn warms up
            speech = client.mic.play(utterance)
            end = await speech.ended()
            await session.first("text_response", end)
            audio_at = await first_loud(client.received, end, 20)
            await session.first("tts_start", end)
            marks = turn_marks(session, end, audio_at)
            await asyncio.sleep(max(0.0, audio_at + 1.0 - time.monotonic()))
            if n % 2 == 0:
                kind, since = "interrupt", time.monotonic()
                await session.send(type="interrupt")
            else:
                kind = "speech"
                again = client.mic.play(barge)
                since = await again.started()
            await asyncio.sleep(1.0)
            stop_ms = round(silent_after(client.received, since, since + 1.0), 1)
            if TRACE:
                trace(session, client.received, since, kind, stop_ms)
            if kind == "speech":  # its own reply comes: stop it
                await session.first("tts_start", await again.ended())
                await session.send(type="interrupt")
                await asyncio.sleep(0.5)
            if n:
                results.append(marks)
                barge_ms[kind].append(stop_ms)
            await asyncio.sleep(0.3)
        await session.send(type="asr_stop")
    finally:
        await client.close()
        await session.close()
    return results, barge_ms


async def websocket_turns(url: str, turns: int, utterance: np.ndarray, barge: np.ndarray) -> Any:
    session = await open_session(url)
    mic = Microphone(16000)
    results: list[dict[str, float]] = []
    barge_ms: dict[str, list[float]] = {"interrupt": [], "speech": []}

    async def stream() -> None:  # 20 ms PCM16 frames at their real-time instants
        start, count = time.monotonic(), 0
        while True:
            count += 1
            await asyncio.sleep(max(0.0, start + count * 0.02 - time.monotonic()))
            await session.ws.send(mic.take(time.monotonic()).tobytes())

    await session.send(type="asr_start", transport="websocket", format="pcm16", sample_rate=16000)
    sender = asyncio.create_task(stream())
    try:
        await asyncio.sleep(1.0)
        for n in range(turns + 1):
            speech = mic.play(utterance)
            end = await speech.ended()
            await session.first("text_response", end)
            audio_at = await first_loud(session.binary, end, 20)
            await session.first("tts_start", end)
            marks = turn_marks(session, end, audio_at)
            await asyncio.sleep(max(0.0, audio_at + 1.0 - time.monotonic()))
            if n % 2 == 0:
                kind, since = "interrupt", time.monotonic()
                await session.send(type="interrupt")
            else:
                kind = "speech"
                again = mic.play(barge)
                since = await again.started()
            await asyncio.sleep(1.0)
            # Over the websocket the reply audio is not paced: what matters is how long frames
            # keep coming after the barge-in (the client drops what it has queued itself).
            stop_ms = round(silent_after(session.binary, since, since + 1.0), 1)
            if kind == "speech":
                await session.first("tts_start", await again.ended())
                await session.send(type="interrupt")
                await asyncio.sleep(0.5)
            if n:
                results.append(marks)
                barge_ms[kind].append(stop_ms)
            await asyncio.sleep(0.3)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await session.close()
    return results, barge_ms


# --- capacity -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def talker(
    session: Events,
    client: WebRTCClient,
    utterance: np.ndarray,
    stop_at: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    """Turn after turn until stop_at: speak, hear 2 s of the reply, interrupt, pause."""
    try:
        await session.send(type="asr_start", language="en-US")
        await asyncio.sleep(1.0)
        while time.monotonic() < stop_at:
            end = await client.mic.play(utterance).ended()
            audio_at = await first_loud(client.received, end, 20)
            latencies.append((audio_at - end) * 1000)
            await asyncio.sleep(2.0)
            await session.send(type="interrupt")
            await asyncio.sleep(1.0)
    except Exception as exc:  # counted; the others go on
        errors.append(f"{type(exc).__name__}: {exc}"[:200])


async def capacity(
    url: str, pid: int, counts: list[int], seconds: float, utterance: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        sessions: list[Events] = []
        clients: list[WebRTCClient] = []
        try:
            for _ in range(count):
                session = await open_session(url)
                client = WebRTCClient()
                sessions.append(session)
                clients.append(client)
                await client.connect(session)
            await asyncio.sleep(2.0)
            # Idle: connected, microphones sending silence, the server's tracks sending silence.
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(min(10.0, seconds))
            idle = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            # Talking: every session in turns (speech in, reply speech out, interrupts).
            latencies: list[float] = []
            errors: list[str] = []
            stop_at = time.monotonic() + seconds + 6.0
            tasks = [
                asyncio.create_task(talker(s, c, utterance, stop_at, latencies, errors))
                for s, c in zip(sessions, clients, strict=True)
            ]
            await asyncio.sleep(5.0)  # into the steady state
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(seconds)
            busy = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            for client in clients:
                await client.close()
            for session in sessions:
                await session.close()
        rows.append(
            {
                "sessions": count,
                "idle_cpu_pct_per_session": round(100 * idle / count, 2),
                "talking_cpu_pct_total": round(100 * busy, 1),
                "talking_cpu_pct_per_session": round(100 * busy / count, 2),
                "first_audio_ms_under_load": summary(latencies),
                "errors": errors[:5],
            }
        )
        await asyncio.sleep(2.0)
    return rows


# --- the run ------------------------------------------------------------------------------


def server_timings() -> dict[str, Any]:
    """Medians of what every reply recorded, the loaded capacity runs included (ms from the
    reply's start to its first LLM delta and first TTS chunk)."""
    from chat.models import Message

    rows = list(Message.objects.filter(role="assistant").values_list("timings", flat=True))
    keys = ("llm_first_ms", "tts_first_ms")
    return {k: median([t[k] for t in rows if k in t]) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=10, help="WebRTC turns (after a warm-up)")
    parser.add_argument("--ws-turns", type=int, default=6, help="websocket-PCM turns")
    parser.add_argument("--sessions", default="5,10,20", help="concurrent sessions, comma list")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window per count")
    parser.add_argument("--redis-db", type=int, help="default: a free one of 1-15")
    parser.add_argument("--asr-final", type=float, default=150.0, help="ms")
    parser.add_argument("--llm-first-token", type=float, default=200.0, help="ms")
    parser.add_argument("--llm-token", type=float, default=20.0, help="ms")
    parser.add_argument("--tts-first-chunk", type=float, default=100.0, help="ms")
    parser.add_argument("--tts-chunk", type=float, default=20.0, help="ms per 100 ms chunk")
    parser.add_argument(
        "--client-prefetch",
        type=int,
        help="frames the client's aiortc jitter buffer holds back (default: aiortc's 4)",
    )
    parser.add_argument("--serve-fake", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CLIENT_PREFETCH
    CLIENT_PREFETCH = args.client_prefetch
    if args.serve_fake:
        serve_fake(json.loads(args.serve_fake))
        return
    delays = {
        "asr_final": args.asr_final,
        "llm_first_token": args.llm_first_token,
        "llm_token": args.llm_token,
        "tts_first_chunk": args.tts_first_chunk,
        "tts_chunk": args.tts_chunk,
    }
    counts = [int(c) for c in args.sessions.split(",") if c.strip()]
    stack = Stack(args.redis_db, prefix="echo-bench-rt-")
    fake: subprocess.Popen[str] | None = None
    try:
        fake = subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", json.dumps(delays)],
            cwd=ROOT,
            env=stack.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fake.stdout is not None
        addresses = json.loads(fake.stdout.readline())
        stack.env.update(
            {
                "DASHSCOPE_API_KEY": addresses["key"],
                "DASHSCOPE_HTTP_BASE_URL": addresses["http"],
                "DASHSCOPE_WEBSOCKET_BASE_URL": addresses["ws"],
                "ASR_BACKEND": "dashscope",
                "LLM_BACKEND": "dashscope",
                "TTS_BACKEND": "dashscope",
            }
        )
        stack.prepare()
        web, port = stack.start_web()
        url = f"ws://127.0.0.1:{port}/ws/chat/?mode=voice"
        utterance16 = load_pcm(UTTERANCE, 16000)
        hangover = vad_hangover_ms(utterance16)

        async def body() -> dict[str, Any]:
            utterance, barge = load_pcm(UTTERANCE, MIC_RATE), load_pcm(BARGE, MIC_RATE)
            out: dict[str, Any] = {}
            out["media"] = await webrtc_media_baseline(utterance, max(3, args.turns // 2))
            out["webrtc"] = await webrtc_turns(url, args.turns, utterance, barge)
            if args.ws_turns:
                out["websocket"] = await websocket_turns(
                    url, args.ws_turns, utterance16, load_pcm(BARGE, 16000)
                )
            out["capacity"] = (
                await capacity(url, web.pid, counts, args.seconds, utterance) if counts else []
            )
            return out

        measured = asyncio.run(asyncio.wait_for(body(), 1500))
        import django

        django.setup()
        timings = server_timings()
    finally:
        stack.close()
        if fake is not None:
            with contextlib.suppress(Exception):
                fake.stdin.close()  # type: ignore[union-attr]
            fake.terminate()
            fake.wait(20)

    providers = provider_ms(delays)
    result: dict[str, Any] = {
        "fake_delays_ms": delays,
        "provider_ms": providers,
        "vad_hangover_ms": round(hangover, 1),
        "server_timings_ms": timings,
    }
    media = measured["media"]
    inbound, outbound = median(media["inbound"]) or 0.0, median(media["outbound"]) or 0.0
    result["webrtc_media_path_ms"] = {
        "inbound_to_vad_end": summary(media["inbound"]),
        "inbound_transport": round(inbound - hangover, 1),
        "outbound": summary(media["outbound"]),
    }
    for path in ("webrtc", "websocket"):
        if path not in measured:
            continue
        turns, barge = measured[path]
        stages = ("asr_result", "text_delta", "text_response", "tts_start", "first_audio")
        # Over the websocket the hangover is all that precedes the service's own work; over
        # WebRTC the media path measured without the service is (inbound, then outbound).
        before = inbound if path == "webrtc" else hangover
        after = {"first_audio": outbound if path == "webrtc" else 0.0}
        overhead = {
            k: summary([t[k] - providers[k] - before - after.get(k, 0.0) for t in turns])
            for k in ("asr_result", "text_response", "first_audio")
        }
        result[path] = {
            "turns": len(turns),
            "from_end_of_speech_ms": {k: summary([t[k] for t in turns]) for k in stages},
            "service_overhead_ms": overhead,
            "first_audio_before_text_response": sum(
                t["first_audio"] < t["text_response"] for t in turns
            ),
            "barge_in_until_silent_ms": {k: summary(v) for k, v in barge.items()},
        }
    result["capacity"] = measured["capacity"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
