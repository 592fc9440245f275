"""The benchmark's side of a session: the protocol socket whose reader timestamps every event,
WebRTC negotiation over it with the shared client peer (`harness.peer.ClientPeer`), and what
is read from the audio a client received."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import numpy as np

from harness.audio import read_wav, resample, rms, speak
from harness.peer import ClientPeer, speech_bounds

# A received 20 ms frame louder than this is reply speech (the fake's tone is ~2100).
LOUD_RMS = 300.0


class Loss:
    """`--mic-loss`: each microphone packet is lost with probability `share`, from a seeded
    generator (the same losses in every run of a process)."""

    def __init__(self, share: float, seed: int = 1) -> None:
        self.share = share
        self._random = random.Random(seed)

    def __call__(self, packet: int) -> bool:
        return self._random.random() < self.share


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


async def open_session(url: str) -> Events:
    import websockets

    ws = await websockets.connect(url, max_size=None, open_timeout=60, ping_interval=None)
    session = Events(ws)
    await session.first("init", 0, 60)
    return session


async def connect(client: ClientPeer, session: Events) -> None:
    """offer → answer → connected → ready, as the web client does it."""
    since = time.monotonic()
    await session.send(type="offer", sdp=await client.offer(), sdp_type="offer")
    await session.first("answer", since, 60)
    answer = session.find("answer", since)
    assert answer is not None
    await client.accept(answer[1]["sdp"])
    await session.first("connected", since, 60)
    await session.send(type="ready", direction="both")
    await session.first("ready", since, 30)


def load_pcm(text: str, rate: int) -> np.ndarray:
    pcm, rate_in = read_wav(speak(text))
    return resample(pcm, rate_in, rate)


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


async def first_loud(frames: list[tuple[float, float]], since: float, timeout: float) -> float:
    """Arrival of the first loud frame at or after `since` in (arrival, rms) pairs."""
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


def gaps_ms(frames: list[tuple[float, float]], since: float, until: float) -> list[float]:
    """ms between consecutive arrivals in [since, until): while reply speech plays, a gap
    much over 20 ms is an underrun the client's playout buffer has to hide."""
    times = [at for at, _ in frames if since <= at < until]
    return [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
