"""One WebRTC peer connection of a session: answer the client's offer, receive its microphone,
send the reply speech.

aiortc does the media work; this class owns everything it starts (the connection, the track
readers, the negotiation watchdog, the callbacks' tasks) so that `close()` leaves nothing
running: the web process serves thousands of sessions over its life and any leaked task or
connection would pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from aiortc.sdp import candidate_from_sdp

from chat.providers.base import SPEECH_RATE
from chat.realtime.jitter import InOrder
from chat.realtime.opus import SPEECH_COMPLEXITY, OpusDecoder
from chat.realtime.pcm import frame_pcm
from chat.realtime.speaker import SpeakerTrack, send_with
from chat.realtime.tasks import Tasks

logger = logging.getLogger(__name__)

SAMPLE_RATE = SPEECH_RATE  # what the listener takes

AudioCallback = Callable[[bytes], Awaitable[None]]
StateCallback = Callable[[str], Awaitable[None]]
AudioPredicate = Callable[[], bool]
# While nothing depends on a frame's timing (see PeerSession's `batch_audio`), the microphone's
# 20 ms frames are resampled and handed on this many at a time: one resampler call and one
# callback (and so one pass through the listener) per 100 ms instead of five.
BATCH_FRAMES = 5
# A client in Opus DTX (silence: one packet per ~400 ms) sends no packets for long stretches.
# While speech is under way the VAD must still hear that silence to end the utterance. A pause
# in the packets may also be a packet late on the network, though, and silence handed on for it
# would lengthen the quiet (the VAD would end early by the lateness). So a pause is left alone
# for LATE_S, or only as long as the VAD still needs quiet to end the utterance if that is
# shorter (`quiet_left`: the end of speech is not delayed); past that it is DTX, and the silence
# the clock owes since the last frame is handed on at once, then at every GAP_WAIT_S, in whole
# 20 ms frames (the sum, not a fixed amount per wake-up: a loop that wakes a few ms late under
# load would lose those ms at every step). When the packet that ends a pause comes, the pause's
# length in media time (its RTP timestamp against the end of the frame before; never more than
# the clock saw) is what the VAD hears in all: the silence not handed on yet comes first, to the
# sample, and a late packet adds none.
LATE_S = 0.12
GAP_WAIT_S = 0.04
_GAP_FRAME_S = 0.02
_GAP_FRAME = bytes(int(_GAP_FRAME_S * SAMPLE_RATE) * 2)


def _silence(seconds: float) -> bytes:
    """That much PCM16 silence at SAMPLE_RATE (none for a negative span)."""
    return bytes(max(0, int(seconds * SAMPLE_RATE)) * 2)


class WebRTCError(Exception):
    """Negotiation or the connection failed; the handler answers ERR_WEBRTC_FAILED."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class CandidateError(ValueError):
    """A client ICE candidate that cannot be parsed (a bad message, not a failed connection)."""


def ice_servers_from_settings(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    """settings.ICE_SERVERS ({"urls", "username", "credential"} dicts) as aiortc objects."""
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in servers
    ]


def parse_candidate(candidate: str, sdp_mid: str | None, sdp_mline_index: int | None) -> Any:
    """A client `ice_candidate` message as an RTCIceCandidate; "" means end of candidates (None)."""
    text = candidate.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    if not text:
        return None
    try:
        parsed = candidate_from_sdp(text)
    except (AssertionError, ValueError, IndexError) as exc:
        raise CandidateError(f"unparsable ICE candidate: {candidate[:100]!r}") from exc
    parsed.sdpMid = sdp_mid
    parsed.sdpMLineIndex = sdp_mline_index
    return parsed


async def drain(track: MediaStreamTrack) -> None:
    """Read and drop a track until it ends: one whose media is not used (video) or is decoded
    elsewhere (`InlineDecoding`), so that aiortc's queue stays empty and its end is read."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


class Inbound:
    """Received audio not yet read, filled on the loop: 16 kHz mono PCM16 chunks, each with
    where it starts in the stream's media time (seconds from its RTP timestamp; None when
    not known)."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[bytes, float | None]] = deque()
        self.ended = False
        self._waiter: asyncio.Future[bool] | None = None

    def push(self, pcm: bytes, start: float | None = None) -> None:
        self.chunks.append((pcm, start))
        self._wake(True)

    def end(self) -> None:
        self.ended = True
        self._wake(True)

    def _wake(self, value: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(value)

    async def wait(self, timeout: float | None = None) -> bool:
        """Until a chunk is there or the audio ended (True), or `timeout` passed (False)."""
        if self.chunks or self.ended:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self._wake, False) if timeout is not None else None
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


class InlineDecoding:
    """Takes the place of an aiortc audio receiver's decoder queue: each complete encoded
    frame the receiver would hand its decoder thread is decoded here, on the loop, to 16 kHz
    mono PCM16 and pushed to `inbound` (Opus by libopus at that rate; any other codec by
    aiortc's own decoder and a resampler). The receiver's decoder thread waits in `get()`
    until the receiver stops. `wanted()` says whether anyone listens: while nobody does,
    frames are dropped undecoded (and the decoder starts afresh after). With `in_order` the
    receiver's jitter buffer gives way to `jitter.InOrder`: each packet is decoded as it
    arrives in sequence, and lost ones are concealed, as long as the last frame was (the last
    of them rebuilt from the next packet's FEC copy, where the client sends one).
    """

    def __init__(self, inbound: Inbound, wanted: Callable[[], bool] | None = None) -> None:
        self.inbound = inbound
        self.wanted = wanted
        self._stopped = threading.Event()
        self._opus: OpusDecoder | None = None
        self._skipped = False
        self._other: tuple[str, Any, av.AudioResampler] | None = None
        self._codecs: dict[int, RTCRtpCodecParameters] = {}
        self._in_order: InOrder | None = None
        self._last_samples = 0  # the length of the last frame decoded (16 kHz samples)
        self._last_opus = False  # and whether libopus decoded it
        self._media_end: float | None = None  # where the last audio pushed ends in media time
        self._rtp: tuple[int, int] | None = None  # (last RTP timestamp, unwrapped)

    def install(self, receiver: Any, *, in_order: bool = False) -> None:
        """Before the receiver starts (aiortc 1.16's private names; requirements pin it)."""
        receiver._RTCRtpReceiver__decoder_queue = self
        if in_order:
            self._codecs = receiver._RTCRtpReceiver__codecs  # filled as the receiver starts
            self._in_order = InOrder(self._arrived, self._lost)
            receiver._RTCRtpReceiver__jitter_buffer = self._in_order

    def _arrived(self, packet: RtpPacket) -> None:
        codec = self._codecs.get(packet.payload_type)
        if codec is not None:
            self.put((codec, JitterFrame(packet._data, packet.timestamp)))  # type: ignore[attr-defined]

    def _lost(self, count: int, following: RtpPacket) -> None:
        """`count` packets before `following` will not come: the decoder stands in for them
        (as long as the last frame each), so that the audio keeps its length; the last of them
        from the copy `following` may carry (Opus in-band FEC), the others concealed."""
        if self._skipped or (self.wanted is not None and not self.wanted()):
            return
        samples = count * self._last_samples
        if self._last_opus and self._opus is not None:
            last = self._last_samples
            pcm = self._opus.conceal(samples - last) + self._opus.recover(
                following._data,  # type: ignore[attr-defined]
                last,
            )
        else:
            pcm = bytes(samples * 2)
        if pcm:
            self._push(pcm, self._media_end)

    def _push(self, pcm: bytes, start: float | None) -> None:
        self._media_end = None if start is None else start + len(pcm) / 2 / SAMPLE_RATE
        self.inbound.push(pcm, start)

    def _media_start(self, timestamp: int, clock_rate: int) -> float:
        """A frame's RTP timestamp as seconds of media time (unwrapped past 2**32)."""
        if self._rtp is None:
            unwrapped = 0
        else:
            last, unwrapped = self._rtp
            unwrapped += (timestamp - last + 2**31) % 2**32 - 2**31
        self._rtp = (timestamp, unwrapped)
        return unwrapped / clock_rate

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:  # the receiver stops
            self._stopped.set()
            if self._in_order is not None:
                self._in_order.stop()
            if self._opus is not None:
                self._opus.close()
            self.inbound.end()
            return
        codec, frame = item
        if self.wanted is not None and not self.wanted():
            self._skipped = True
            return
        self._last_opus = codec.name.lower() == "opus"
        if self._last_opus:
            if self._opus is None:
                self._opus = OpusDecoder(SAMPLE_RATE)
            elif self._skipped:
                self._opus.reset()
            pcm = self._opus.decode(frame.data)
        else:
            pcm = self._decode_other(codec, frame)
        self._skipped = False
        start = self._media_start(frame.timestamp, codec.clockRate)
        if pcm:
            self._last_samples = len(pcm) // 2
            self._push(pcm, start)

    def _decode_other(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> bytes:
        if self._other is None or self._other[0] != codec.name or self._skipped:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._other = (codec.name, get_decoder(codec), resampler)
        _, decoder, resampler = self._other
        return b"".join(
            frame_pcm(out)
            for decoded in decoder.decode(frame)
            for out in resampler.resample(decoded)
        )

    def get(self) -> None:
        """aiortc's decoder thread: nothing to do but wait for the receiver to stop."""
        self._stopped.wait()


class PeerSession:
    """The server side of one WebRTC connection.

    `on_audio` receives the client's microphone as 16 kHz mono PCM16 chunks (the track is read
    whatever happens, so that aiortc's receive queue never grows).
    `on_state` is told "connected", "failed" (ICE/DTLS failure, or not connected within
    `timeout_s` of the offer; `failure_reason` says which) and "closed" (ended by the remote).
    `batch_audio`, asked at every received frame, says whether frames may be held back and
    delivered `BATCH_FRAMES` at a time (True while no speech is under way and no reply plays:
    only then is a frame's own moment of arrival unimportant); without it every frame goes on
    alone. `wants_audio` says whether anyone listens at all: frames received while it is False
    are read (aiortc's queue stays empty) but neither resampled nor handed on.
    `pause_is_silence` says whether a pause in the client's packets now is Opus DTX silence
    (the end of the user's speech is awaited and the last frame was quiet): then it is handed on
    as silence (see `LATE_S`), from the moment `quiet_left` (seconds of quiet the VAD still
    needs to end the utterance, None if unknown) says it would end it, if that comes sooner.

    The answer asks the client for Opus DTX (`usedtx=1`) and in-band FEC, and the speaker uses DTX too when
    the client's offer asked for it: an idle session then moves a packet per ~400 ms each way
    instead of one per 20 ms.
    """

    def __init__(
        self,
        *,
        on_audio: AudioCallback,
        on_state: StateCallback,
        ice_servers: list[dict[str, Any]] | None = None,
        timeout_s: float = 15.0,
        batch_audio: AudioPredicate | None = None,
        wants_audio: AudioPredicate | None = None,
        pause_is_silence: AudioPredicate | None = None,
        quiet_left: Callable[[], float | None] | None = None,
        opus_complexity: int = SPEECH_COMPLEXITY,
    ) -> None:
        self.on_audio = on_audio
        self.batch_audio = batch_audio
        self.wants_audio = wants_audio
        self.pause_is_silence = pause_is_silence
        self.quiet_left = quiet_left
        self.on_state = on_state
        self.timeout_s = timeout_s
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=ice_servers_from_settings(ice_servers or []))
        )
        self.speaker = SpeakerTrack()
        self.speaker.opus_complexity = opus_complexity
        self.failure_reason = ""
        self._connected = asyncio.Event()
        self._tasks = Tasks()
        self._tracks: list[MediaStreamTrack] = []
        self._closed = False
        self._final_state_sent = False
        self._audio_in = False
        self._inbound = Inbound()
        self._remote_set = False
        self._pending_candidates: list[Any] = []
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and not self._closed

    async def accept_offer(self, sdp: str, sdp_type: str = "offer") -> RTCSessionDescription:
        """Apply the client's offer and return the answer, with our candidates in its SDP."""
        if sdp_type != "offer":
            raise WebRTCError(f"expected an SDP offer, got {sdp_type!r}")
        try:
            await asyncio.wait_for(self._negotiate(sdp), self.timeout_s)
        except TimeoutError as exc:
            raise WebRTCError("WebRTC negotiation timed out", retryable=True) from exc
        except WebRTCError:
            raise
        except Exception as exc:  # aiortc raises many kinds on malformed SDP
            raise WebRTCError(f"invalid SDP offer: {exc or type(exc).__name__}") from exc
        self._tasks.spawn(self._watchdog(), "webrtc-watchdog")
        return self.pc.localDescription

    async def _negotiate(self, sdp: str) -> None:
        if "m=" not in sdp:
            raise WebRTCError("invalid SDP offer: no media section")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._remote_set = True
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self.pc.addIceCandidate(candidate)
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise WebRTCError("the SDP offer has no audio section")
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                # The avatar's video is rendered elsewhere and the client's camera is not
                # used: declining it spares decoding every frame.
                transceiver.direction = "inactive"
        self.pc.addTrack(self.speaker)
        _ask_for_dtx_and_fec(self.pc)
        answer = await self.pc.createAnswer()
        self.speaker.encode_opus = _sends_opus(self.pc, self.speaker)
        self.speaker.dtx = self.speaker.encode_opus and offers_dtx(sdp)
        if self.speaker.encode_opus:
            send_with(_sender_of(self.pc, self.speaker), self.speaker)
        # Gathers our candidates and puts them into the answer SDP.
        await self.pc.setLocalDescription(answer)

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        """Add one remote candidate ({"candidate", "sdpMid", "sdpMLineIndex"}).

        Candidates that arrive while the offer is still being applied are kept and added
        right after it, so the client may trickle them as soon as it sent the offer.
        """
        sdp_mid = candidate.get("sdpMid")
        index = candidate.get("sdpMLineIndex")
        if sdp_mid is None and index is None:
            index = 0
        parsed = parse_candidate(str(candidate.get("candidate") or ""), sdp_mid, index)
        if self._closed:
            return
        if not self._remote_set:
            self._pending_candidates.append(parsed)
            return
        await self.pc.addIceCandidate(parsed)

    async def _watchdog(self) -> None:
        """Fail the connection that does not come up within the negotiation timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), self.timeout_s)
        except TimeoutError:
            self.failure_reason = "WebRTC connection timed out"
            await self._report_final("failed")

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tracks.append(track)
        receiver = next(
            (t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None
        )
        if track.kind == "audio" and not self._audio_in and receiver is not None:
            # One microphone, decoded as it arrives (`InlineDecoding`); its track gets no
            # frames and only ends. Further audio tracks are read and dropped.
            self._audio_in = True
            InlineDecoding(self._inbound, self.wants_audio).install(receiver, in_order=True)
            self._tasks.spawn(self._read_audio(), "webrtc-audio-in")
        self._tasks.spawn(drain(track), "webrtc-discard-in")

    async def _read_audio(self) -> None:
        """The microphone's 16 kHz mono PCM16 → on_audio, until it ends."""
        inbound = self._inbound
        held: list[bytes] = []
        last_at = time.monotonic()  # when the last frame came
        heard_until = last_at  # the audio handed on so far reaches this instant
        media_end: float | None = None  # where the last frame ends in media time
        paused = False  # a wait for a frame timed out since the last frame
        while True:
            if self.pause_is_silence is not None and self.pause_is_silence():
                # a DTX pause must still read as silence: wait for a frame a while only
                due = last_at + self._silence_after()  # silence is handed on from then
                wait = GAP_WAIT_S
                if heard_until == last_at:  # none handed on yet
                    first = max(due, last_at + _GAP_FRAME_S)
                    wait = min(GAP_WAIT_S, max(0.001, first - time.monotonic()))
                if not await inbound.wait(wait):
                    paused = True
                    now = time.monotonic()
                    owed = int((now - heard_until) / _GAP_FRAME_S)
                    if now >= due and owed > 0:
                        heard_until += owed * _GAP_FRAME_S
                        await self._deliver(_GAP_FRAME * owed)
                    continue
            else:
                await inbound.wait()
            if not inbound.chunks:
                return  # ended
            now = time.monotonic()
            pcm, start = inbound.chunks.popleft()
            seconds = len(pcm) / 2 / SAMPLE_RATE
            if paused and self.pause_is_silence is not None and self.pause_is_silence():
                # the frame that ends a pause: the pause's silence not handed on yet comes
                # first (as long as the pause lasted in media time, if that is known; the
                # clock says how long at most: the frame's audio ends as it comes)
                await self._deliver(b"".join(held))
                held = []
                pause = now - seconds - last_at
                if start is not None and media_end is not None:
                    pause = min(pause, start - media_end)
                await self._deliver(_silence(pause - (heard_until - last_at)))
            paused = False
            heard_until = last_at = now
            media_end = None if start is None else start + seconds
            if self.wants_audio is not None and not self.wants_audio():
                held.clear()
                continue
            held.append(pcm)
            if len(held) < BATCH_FRAMES and self.batch_audio is not None and self.batch_audio():
                continue
            await self._deliver(b"".join(held))
            held = []

    def _silence_after(self) -> float:
        """How long a pause in the packets waits before it is handed on as silence."""
        left = self.quiet_left() if self.quiet_left is not None else None
        return LATE_S if left is None else min(LATE_S, left)

    async def _deliver(self, pcm: bytes) -> None:
        if pcm:
            try:
                await self.on_audio(pcm)
            except Exception:
                logger.exception("handling incoming WebRTC audio failed")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if self._closed:
            return
        if state == "connected" and not self._connected.is_set():
            self._connected.set()
            self._tasks.spawn(self.on_state("connected"), "webrtc-state")
        elif state == "failed":
            self.failure_reason = self.failure_reason or "WebRTC connection failed"
            self._tasks.spawn(self._report_final("failed"), "webrtc-state")
        elif state == "closed":
            self._tasks.spawn(self._report_final("closed"), "webrtc-state")

    async def _report_final(self, state: str) -> None:
        if self._final_state_sent or self._closed:
            return
        self._final_state_sent = True
        await self.on_state(state)

    async def close(self) -> None:
        """Close the connection and stop every track and task it started; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.speaker.stop()
        try:
            await self.pc.close()
        except Exception:
            logger.exception("closing the peer connection failed")
        for track in self._tracks:
            track.stop()
        await self._tasks.cancel()
        self._tracks.clear()


def _transceiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpTransceiver:
    return next(t for t in pc.getTransceivers() if t.sender.track is track)


def _sender_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpSender:
    return _transceiver_of(pc, track).sender


def _sends_opus(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Whether `track` is sent with Opus, so that it may hand aiortc encoded packets."""
    codecs = getattr(_transceiver_of(pc, track), "_codecs", None) or []
    return bool(codecs) and codecs[0].mimeType.lower() == "audio/opus"


_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/", re.IGNORECASE | re.MULTILINE)


def offers_dtx(sdp: str) -> bool:
    """Whether an SDP asks its peer to send Opus with DTX (`usedtx=1` in an Opus fmtp)."""
    for payload_type in _OPUS_RTPMAP.findall(sdp):
        fmtp = re.search(rf"^a=fmtp:{payload_type} (.*)$", sdp, re.MULTILINE)
        if fmtp and re.search(r"(^|;)\s*usedtx=1\s*($|;)", fmtp.group(1).strip()):
            return True
    return False


def _ask_for_dtx_and_fec(pc: RTCPeerConnection) -> None:
    """`usedtx=1` and `useinbandfec=1` on the Opus codec of every audio transceiver: the answer
    asks the client to send silence as Opus DTX (browsers do: a packet per ~400 ms instead of
    per 20 ms), and to add in-band FEC once it hears of loss (a lost frame is then rebuilt
    from the next packet, see `InlineDecoding`)."""
    for transceiver in pc.getTransceivers():
        for codec in getattr(transceiver, "_codecs", None) or []:
            if codec.mimeType.lower() == "audio/opus":
                codec.parameters["usedtx"] = 1
                codec.parameters["useinbandfec"] = 1
