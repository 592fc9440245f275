"""A browser stand-in for tests and benchmarks: an aiortc peer with a microphone that speaks
queued PCM in real time and a record of the audio the server sends back.

The microphone is the server's own paced track (`SpeakerTrack`: 20 ms frames at their
real-time instants, silence when nothing is queued, Opus packets encoded by the track, Opus DTX
when the other side asks for it), so the clients and the server keep time the same way. Like
the web client, the peer offers `usedtx=1` unless told not to (`dtx=False`): its microphone
then goes quiet in silence and the server's speaker too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamTrack

from chat.realtime.peer import Inbound, InlineDecoding, drain, offers_dtx
from chat.realtime.speaker import SAMPLE_RATE, SpeakerTrack
from harness.audio import read_wav, resample, rms

# A 10 ms window of the user's audio above this is speech (the server's VAD's minimum level).
QUIET_DB = -45.0
# Frames that arrive this far apart had a pause between them (DTX); one longer than
# MAX_PAUSE_S is not filled in further.
PAUSE_S = 0.06
MAX_PAUSE_S = 5.0


def speech_bounds(pcm: np.ndarray, rate: int) -> tuple[int, int]:
    """Index of the first and one past the last non-silent sample (10 ms windows)."""
    step = rate // 100
    loud = [
        i
        for i in range(0, len(pcm) - step + 1, step)
        if 20 * np.log10(max(rms(pcm[i : i + step]), 1e-9) / 32768.0) > QUIET_DB
    ]
    if not loud:
        return 0, 0
    return loud[0], loud[-1] + step


class Speech:
    """A queued utterance; `start`/`end`: capture instants of its first/last loud sample."""

    def __init__(self, first: int, last: int, duration: float) -> None:
        self.first, self.last, self.duration = first, last, duration
        self.start: float | None = None
        self.end: float | None = None

    async def started(self, timeout: float = 20.0) -> float:
        await _until(lambda: self.start is not None, timeout, "the utterance was never sent")
        assert self.start is not None
        return self.start

    async def ended(self, timeout: float = 20.0) -> float:
        await _until(lambda: self.end is not None, timeout, "the utterance was never sent")
        assert self.end is not None
        return self.end


async def _until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        await asyncio.sleep(0.005)


# Opus packets of speech already encoded by some microphone of this process, by the chain of
# frames since the last silence: the benchmark's clients all say the same utterance, and
# encoding it once instead of once per client keeps the load generator's CPU for the service.
# The packets are those the client's own encoder would give (same frames, same history).
_ENCODED: dict[int, bytes] = {}
_ENCODED_MAX = 50_000


class MicTrack(SpeakerTrack):
    """The client's microphone: queued speech in 20 ms frames in real time, then silence."""

    report_metrics = False

    def __init__(self) -> None:
        super().__init__()
        self._written = 0  # samples queued so far (the `Speech` marks count in these)
        self._pending: list[Speech] = []
        self._chain: int | None = None  # the speech frames since the last silence

    def _encode(self, chunk: bytes) -> bytes:
        key = hash((self._chain, chunk))
        self._chain = key
        packet = _ENCODED.get(key)
        if packet is None:
            packet = super()._encode(chunk)
            if len(_ENCODED) < _ENCODED_MAX:
                _ENCODED[key] = packet
        return packet

    def utter(self, pcm: np.ndarray, rate: int) -> Speech:
        """Queue speech after what is queued; its marks are set as it is sent."""
        pcm = resample(pcm, rate, SAMPLE_RATE)
        first, last = speech_bounds(pcm, SAMPLE_RATE)
        speech = Speech(self._written + first, self._written + last, len(pcm) / SAMPLE_RATE)
        self._pending.append(speech)
        self._written += len(pcm)
        self._buffer += pcm.astype(np.int16).tobytes()
        self._drained.clear()
        self._wake_up()
        return speech

    def play(self, pcm: np.ndarray, rate: int) -> float:
        """Queue speech; returns its duration in seconds."""
        return self.utter(pcm, rate).duration

    def play_wav(self, path: Path) -> float:
        pcm, rate = read_wav(path)
        return self.play(pcm, rate)

    @property
    def playing(self) -> bool:
        return self.queued_ms > 0

    async def recv(self) -> av.AudioFrame | av.Packet:
        frame = await super().recv()
        if not self._last_was_speech:
            self._chain = None
        now, sent = time.monotonic(), self.samples_taken
        for speech in list(self._pending):
            if speech.start is None and speech.first < sent:
                speech.start = now - (sent - speech.first) / SAMPLE_RATE
            if speech.last <= sent:
                speech.end = now - (sent - speech.last) / SAMPLE_RATE
                self._pending.remove(speech)
        return frame


def with_dtx(sdp: str) -> str:
    """The SDP with `usedtx=1` in the fmtp of its Opus codecs (what the web client does); an
    Opus codec without an fmtp line gets one."""
    lines = sdp.split("\r\n")
    opus = {
        line.split()[0].removeprefix("a=rtpmap:")
        for line in lines
        if line.startswith("a=rtpmap:") and " opus/" in line.lower()
    }
    out: list[str] = []
    for line in lines:
        payload_type = line.split()[0].split(":", 1)[-1] if line.startswith("a=") else ""
        if line.startswith("a=fmtp:") and payload_type in opus:
            opus.discard(payload_type)
            if "usedtx=" not in line:
                line += ";usedtx=1"
        out.append(line)
        if line.startswith("a=rtpmap:") and payload_type in opus:
            has_fmtp = any(x.startswith(f"a=fmtp:{payload_type} ") for x in lines)
            if not has_fmtp:
                out.append(f"a=fmtp:{payload_type} usedtx=1")
    return "\r\n".join(out)


class ClientPeer:
    """A browser stand-in: an aiortc peer sending `mic` and recording the server's audio.

    `received`: (arrival time, 16 kHz mono samples) of every frame, and a 20 ms frame of
    silence for each 20 ms of a pause between frames (what a browser plays; unless `keep_audio` is False,
    as the capacity benchmark's many clients do); `levels`: (arrival time, RMS) of every frame
    received. `prefetch`: frames the playout (jitter) buffer holds back (aiortc's default: 4).
    `lose(n)`, given the count of microphone RTP packets sent so far (the nth one, counted
    from 1), says whether that one is lost on the way (a lossy network); with it,
    `mic_packets` counts them, lost ones included.
    """

    def __init__(
        self,
        ice_servers: list[dict[str, Any]] | None = None,
        *,
        dtx: bool = True,
        keep_audio: bool = True,
        prefetch: int | None = None,
        lose: Callable[[int], bool] | None = None,
    ) -> None:
        # ice_servers: the init frame's list, as a browser passes it to RTCPeerConnection
        self.pc = RTCPeerConnection(
            RTCConfiguration([RTCIceServer(**server) for server in ice_servers])
            if ice_servers
            else None
        )
        self.dtx = dtx
        self.keep_audio = keep_audio
        self.lose = lose
        self.mic_packets = 0
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        # what the server sends is decoded as it arrives, as the server decodes the microphone
        self._inbound = Inbound()
        for transceiver in self.pc.getTransceivers():
            InlineDecoding(self._inbound).install(transceiver.receiver)
            if prefetch is not None:
                transceiver.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(
                    capacity=16, prefetch=prefetch
                )
        self.received: list[tuple[float, np.ndarray]] = []
        self.levels: list[tuple[float, float]] = []
        self._reader: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._reader = asyncio.create_task(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        inbound = self._inbound
        last: float | None = None
        ended = asyncio.ensure_future(drain(track))
        try:
            while await inbound.wait() and inbound.chunks:
                pcm = np.frombuffer(inbound.chunks.popleft()[0], dtype=np.int16)
                now = time.monotonic()
                self.levels.append((now, rms(pcm)))
                if not self.keep_audio:
                    continue
                if last is not None and now - last > PAUSE_S:
                    # a DTX pause: a browser plays silence meanwhile, 20 ms at a time
                    missing = int(min(now - last, MAX_PAUSE_S) / 0.02 + 0.5) - 1
                    for n in range(1, missing + 1):
                        self.received.append((last + 0.02 * n, np.zeros(320, dtype=np.int16)))
                last = now
                self.received.append((now, pcm))
        finally:
            ended.cancel()

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        return with_dtx(sdp) if self.dtx else sdp

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self.mic.encode_opus = _sends_opus(self.pc)
        self.mic.dtx = self.dtx and self.mic.encode_opus and offers_dtx(answer_sdp)
        if self.lose is not None:  # the packets go straight out otherwise
            self._lossy(self.lose)

    def _lossy(self, lose: Callable[[int], bool]) -> None:
        transport = self.pc.getSenders()[0].transport
        send = transport._send_rtp

        async def lossy(data: bytes) -> None:
            if not 192 <= data[1] <= 223:  # RTP; RTCP's packet types are 192-223 there
                self.mic_packets += 1
                if lose(self.mic_packets):
                    return
            await send(data)

        transport._send_rtp = lossy

    def audio_since(self, since: float) -> np.ndarray:
        parts = [pcm for at, pcm in self.received if at >= since]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def _sends_opus(pc: RTCPeerConnection) -> bool:
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None) or []
        if transceiver.kind == "audio":
            return bool(codecs) and codecs[0].mimeType.lower() == "audio/opus"
    return False
