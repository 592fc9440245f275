"""The realtime flow end to end: a real daphne, a real WebSocket, a real aiortc client peer and
the offline providers (pocketsphinx, persona, espeak-ng).

The daphne is `chat_server` (tests/fixtures_sessions.py): conftest's `live_server` shares its
name with pytest-django's fixture, whose autouse helper then fails on it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
import websockets

from tests.audio import read_wav, resample, rms, speak
from tests.fixtures_realtime import ClientPeer, run

pytestmark = pytest.mark.usefixtures("live_avatars")
pytest.importorskip("chat.providers.asr.pocketsphinx")

SENTENCE = "Hello there. What is the weather like today?"


class Session:
    """A protocol client whose reader task timestamps every event and binary frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.binary: list[tuple[float, bytes]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            now = time.monotonic()
            if isinstance(frame, bytes):
                self.binary.append((now, frame))
            else:
                self.events.append((now, json.loads(frame)))

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def at(self, kind: str, index: int = 0) -> float:
        return [t for t, e in self.events if e["type"] == kind][index]

    async def until(self, kind: str, count: int = 1, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind!r} after {timeout}s; events: {self.of_all()}")
            if self._reader.done():
                raise AssertionError(f"connection closed waiting for {kind!r}: {self.of_all()}")
            await asyncio.sleep(0.02)
        return self.of(kind)[count - 1]

    def of_all(self) -> list[str]:
        return [e["type"] if e["type"] != "error" else f"error:{e['code']}" for _, e in self.events]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_ws(chat_server: str, query: str = "?mode=voice") -> Session:
    url = chat_server + "/ws/chat/" + query
    session = Session(await websockets.connect(url, max_size=None))
    await session.until("init")
    return session


async def negotiate(session: Session, client: ClientPeer) -> None:
    await session.send(type="offer", sdp=await client.offer(), sdp_type="offer", id="o1")
    answer = await session.until("answer")
    assert answer["sdp_type"] == "answer" and answer["ref"] == "o1"
    await client.accept(answer["sdp"])
    await session.until("connected")
    await session.send(type="ready", direction="both", id="r1")
    assert (await session.until("ready"))["direction"] == "both"


def speech_ms(pcm: np.ndarray, rate: int = 16000, threshold: float = 300.0) -> float:
    step = rate // 50
    loud = [i for i in range(0, len(pcm) - step + 1, step) if rms(pcm[i : i + step]) > threshold]
    return (loud[-1] - loud[0] + step) / rate * 1000 if loud else 0.0


def test_voice_turn_over_webrtc_recognises_and_speaks_the_reply(chat_server: str) -> None:
    async def body() -> None:
        session = await open_ws(chat_server)
        assert session.of("init")[0]["server_info"]["ice_servers"] == []
        client = ClientPeer()
        try:
            await negotiate(session, client)
            await session.send(type="asr_start", language="en-US", id="a1")
            client.mic.play_wav(speak(SENTENCE))
            result = await session.until("asr_result")
            assert "weather" in result["text"].split(), result
            interims = session.of("asr_interim")
            assert interims and all(e["utterance_id"] == result["utterance_id"] for e in interims)
            start = await session.until("tts_start")
            assert start["transport"] == "webrtc"
            complete = await session.until("tts_complete", timeout=60)
            await asyncio.sleep(0.5)
            heard = client.audio_since(session.at("tts_start") - 0.1)
            assert rms(heard) > 300
            got_ms = speech_ms(heard)
            assert complete["duration_ms"] * 0.8 - 300 < got_ms < complete["duration_ms"] + 500
            assert session.of("text_response")
            assert not [e for e in session.of("error")], session.of("error")
        finally:
            await client.close()
            await session.close()

    run(body(), timeout=90)


def test_speaking_during_the_reply_stops_its_speech(chat_server: str) -> None:
    async def body() -> None:
        session = await open_ws(chat_server)
        client = ClientPeer()
        try:
            await negotiate(session, client)
            await session.send(type="asr_start", id="a1")
            client.mic.play_wav(speak(SENTENCE))
            await session.until("tts_start")
            await asyncio.sleep(1.0)  # the reply is speaking now
            assert rms(client.audio_since(time.monotonic() - 0.5)) > 300
            barge_at = time.monotonic()
            client.mic.play_wav(speak("Stop please"))
            await session.until("asr_result", count=2)
            # From the barge-in (speech detected, stopped within 200 ms, plus transport) until
            # the next reply begins, the avatar is silent.
            quiet_from = barge_at + 0.5
            next_reply = session.at("tts_start", 1) if len(session.of("tts_start")) > 1 else None
            window = [
                pcm
                for t, pcm in client.received
                if t >= quiet_from and (next_reply is None or t < next_reply)
            ]
            assert len(window) > 20
            assert rms(np.concatenate(window)) < 50
        finally:
            await client.close()
            await session.close()

    run(body(), timeout=90)


def test_interrupt_stops_the_reply_speech(chat_server: str) -> None:
    async def body() -> None:
        session = await open_ws(chat_server)
        client = ClientPeer()
        try:
            await negotiate(session, client)
            await session.send(type="text_message", text="Tell me about yourself", id="t1")
            await session.until("tts_start")
            await asyncio.sleep(1.0)
            assert rms(client.audio_since(time.monotonic() - 0.5)) > 300
            await session.send(type="interrupt", id="i1")
            stopped_at = time.monotonic()
            await asyncio.sleep(1.5)
            assert rms(client.audio_since(stopped_at + 0.3)) < 50
        finally:
            await client.close()
            await session.close()

    run(body(), timeout=60)


def test_websocket_fallback_streams_pcm_in_and_reply_audio_out(chat_server: str) -> None:
    async def body() -> None:
        session = await open_ws(chat_server)
        try:
            pcm, rate = read_wav(speak(SENTENCE))
            pcm = resample(pcm, rate, 16000)
            await session.send(
                type="asr_start", transport="websocket", format="pcm16", sample_rate=16000, id="a1"
            )
            data = pcm.tobytes() + bytes(16000)
            for i in range(0, len(data), 6400):  # 200 ms frames
                await session.ws.send(data[i : i + 6400])
            await session.send(type="asr_stop", id="a2")
            result = await session.until("asr_result")
            assert "weather" in result["text"].split(), result
            start = await session.until("tts_start")
            assert start["transport"] == "websocket"
            complete = await session.until("tts_complete", timeout=60)
            audio = b"".join(frame for t, frame in session.binary if t >= session.at("tts_start"))
            seconds = len(audio) / 2 / start["sample_rate"]
            assert abs(seconds * 1000 - complete["duration_ms"]) < 300
            assert rms(np.frombuffer(audio, dtype=np.int16)) > 300
            assert not session.of("error"), session.of("error")
        finally:
            await session.close()

    run(body(), timeout=60)
