"""Fixtures of the realtime tests (registered in tests/conftest.py).

The tests drive `chat.realtime` with a real aiortc client peer in the same event loop: the
client plays espeak-ng speech on its microphone track, paced in real time, and records what the
server's speaker track sends back. pytest-asyncio is not used: `run()` runs one async body.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from chat.providers.base import ASRProvider, ASRStream, Hypothesis
from tests.audio import read_wav, resample

CLIENT_RATE = 48000
CLIENT_FRAME = CLIENT_RATE // 50


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run one async test body in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it holds (event-driven tests without fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class FakeContext:
    """A SessionContext that records what the handler sends and asks for."""

    def __init__(self, language: str = "en-US") -> None:
        self.session_id = "test-session"
        self.language = language
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.utterances: list[tuple[str, str]] = []
        self.barge_ins = 0
        self.on_barge_in: Callable[[], Awaitable[None]] | None = None

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def send_error(
        self, code: str, message: str, *, retryable: bool = False, ref: str | None = None
    ) -> None:
        self.errors.append({"code": code, "message": message, "retryable": retryable, "ref": ref})

    async def user_utterance(self, text: str, utterance_id: str) -> None:
        self.utterances.append((text, utterance_id))

    async def barge_in(self) -> None:
        self.barge_ins += 1
        if self.on_barge_in is not None:
            await self.on_barge_in()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.errors]


class PcmTrack(MediaStreamTrack):
    """The client's microphone: queued PCM played in 20 ms frames in real time, then silence."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, dtype=np.int16)
        self._start: float | None = None
        self._pts = 0

    def play(self, pcm: np.ndarray, rate: int) -> float:
        """Queue speech; returns its duration in seconds."""
        self._queue = np.concatenate([self._queue, resample(pcm, rate, CLIENT_RATE)])
        return len(pcm) / rate

    def play_wav(self, path: Path) -> float:
        pcm, rate = read_wav(path)
        return self.play(pcm, rate)

    @property
    def playing(self) -> bool:
        return len(self._queue) > 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += CLIENT_FRAME
            delay = self._start + self._pts / CLIENT_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk, self._queue = self._queue[:CLIENT_FRAME], self._queue[CLIENT_FRAME:]
        if len(chunk) < CLIENT_FRAME:
            chunk = np.concatenate([chunk, np.zeros(CLIENT_FRAME - len(chunk), dtype=np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = CLIENT_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, CLIENT_RATE)
        return frame


class ClientPeer:
    """A browser stand-in: an aiortc peer sending `mic` and recording the server's audio."""

    def __init__(self, ice_servers: list[dict[str, Any]] | None = None) -> None:
        # ice_servers: the init frame's list, as a browser passes it to RTCPeerConnection
        self.pc = RTCPeerConnection(
            RTCConfiguration([RTCIceServer(**server) for server in ice_servers])
            if ice_servers
            else None
        )
        self.mic = PcmTrack()
        self.pc.addTrack(self.mic)
        # (arrival time, 16 kHz mono samples) of every frame the server sent.
        self.received: list[tuple[float, np.ndarray]] = []
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            for out in resampler.resample(frame):
                self.received.append((now, out.to_ndarray().reshape(-1)[: out.samples].copy()))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    def audio_since(self, since: float) -> np.ndarray:
        parts = [pcm for at, pcm in self.received if at >= since]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def negotiate(handler: Any, ctx: FakeContext, client: ClientPeer, ref: str = "o1") -> None:
    """offer → answer → connected → ready, as a browser does it."""
    answered, errors = len(ctx.of_type("answer")), len(ctx.errors)
    await handler.handle(
        "offer", {"type": "offer", "sdp": await client.offer(), "sdp_type": "offer"}, ref
    )
    await wait_until(
        lambda: len(ctx.of_type("answer")) > answered or len(ctx.errors) > errors, 15, "answer"
    )
    answers = ctx.of_type("answer")
    assert answers, f"no answer; errors: {ctx.errors}"
    await client.accept(answers[-1]["sdp"])
    await wait_until(lambda: len(ctx.of_type("connected")) > answered, 15, "connected")
    await handler.handle("ready", {"direction": "both"}, "r1")


class EchoASRStream(ASRStream):
    """Test-only recogniser: reports how much audio it got (interim per 200 ms, and a final)."""

    def __init__(self, provider: EchoASR) -> None:
        self.provider = provider
        self.bytes = 0
        self._queue: asyncio.Queue[Hypothesis | None] = asyncio.Queue()
        self.closed = False

    async def feed(self, pcm: bytes) -> None:
        before = self.bytes // 6400
        self.bytes += len(pcm)
        if self.bytes // 6400 != before:
            self._queue.put_nowait(Hypothesis(f"heard {self.bytes // 32} ms", False))

    async def finish(self) -> None:
        self._queue.put_nowait(Hypothesis(f"utterance of {self.bytes // 32} ms", True))
        self._queue.put_nowait(None)

    async def results(self) -> AsyncIterator[Hypothesis]:
        while (hyp := await self._queue.get()) is not None:
            yield hyp

    async def close(self) -> None:
        self.closed = True


class EchoASR(ASRProvider):
    """Test-only ASRProvider returning EchoASRStreams (and remembering them)."""

    name = "echo"

    def __init__(self) -> None:
        self.streams: list[EchoASRStream] = []

    def stream(self, language: str, sample_rate: int = 16000) -> ASRStream:
        stream = EchoASRStream(self)
        self.streams.append(stream)
        return stream

    async def recognize_file(self, path: str, url: str, language: str) -> str:
        return ""


@pytest.fixture
def echo_asr() -> EchoASR:
    return EchoASR()


@pytest.fixture
def fake_ctx() -> FakeContext:
    return FakeContext()
