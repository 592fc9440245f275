"""The server's outgoing audio track: reply speech paced in real time, silence otherwise.

aiortc's sender pulls frames from `recv()` as fast as it returns them, so the track itself keeps
the real-time clock (as aiortc's own AudioStreamTrack does). Reply audio is queued as 24 kHz mono
PCM16, the rate the cloud TTS is asked for (chat/providers/tts/dashscope.py), so its audio is
queued as it comes, unresampled, and Opus encodes it at that rate (super-wideband: the whole band
of that audio; the RTP clock stays Opus's 48 kHz, the timestamps are converted on the way out);
the offline engine's 22.05 kHz is resampled. `clear()` empties the queue so the very next frame
is silence, which is what makes barge-in stop speech within one 20 ms frame. `hold()` pauses the
speech without dropping it (silence meanwhile), while the VAD decides whether what it hears is
the user starting to talk.

Most of a session's time the avatar is silent, and encoding silence was most of an idle
session's cost: aiortc hands every frame to a thread pool for Opus encoding (and measures its
level). With `encode_opus` set (the peer sets it when Opus was negotiated), the track returns
encoded packets itself: silence is one constant Opus packet, encoded once per process, and only
speech frames are encoded, by the track's own encoder (mono, tuned for speech:
chat/realtime/opus.py), on the loop.

With `dtx` also set (the client's offer asked for Opus DTX, `usedtx=1`, as the web client does),
the track does what Opus's own discontinuous transmission does: after `DTX_HANGOVER_FRAMES` of
silence it sends one silence packet per `DTX_INTERVAL_S` instead of one per 20 ms, and wakes as
soon as speech is written. The RTP timestamps keep to the real-time clock across the gap (the
next frame is stamped with the slot it is sent in), so the receiver plays it at the right moment.
The hangover flushes the receiver's jitter buffer after speech, so a reply's last frames (and a
barge-in's silence) are not held back until the next packet 400 ms later.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time

import av
from aiortc import RTCRtpCodecParameters, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTP_HISTORY_SIZE, random_sequence_number
from aiortc.rtp import RtpPacket
from aiortc.utils import random32

from chat.realtime.opus import SPEECH_COMPLEXITY, OpusEncoder
from chat.realtime.pcm import PcmResampler
from echoproject import metrics

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
FRAME_BYTES = FRAME_SAMPLES * 2
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# When the loop stalled for longer than this, restart the clock rather than send a burst of
# catch-up frames that the receiver's jitter buffer would drop anyway.
MAX_LAG_S = 0.5
# Opus DTX: silence frames sent at the normal pace after speech, then one per interval.
DTX_HANGOVER_FRAMES = 10
DTX_INTERVAL_S = 0.4
# A speech frame handed to aiortc more than this after its real-time instant is late: the
# receiver's playout may already have had to fill the gap (the server's own lateness).
FRAME_S = FRAME_MS / 1000
LATE_S = FRAME_S
_silence_packet: bytes | None = None


def _on_grid(instant: float) -> float:
    """The start of the process-wide 20 ms slot `instant` falls in. Every track's frames fall
    due on the same instants, so the loop wakes once per 20 ms for all of them (one timer
    batch, one poll) instead of once per track and frame."""
    return math.floor(instant / FRAME_S) * FRAME_S


def _pcm_frame(chunk: bytes, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
    frame.planes[0].update(chunk)
    frame.pts = pts
    frame.sample_rate = SAMPLE_RATE
    frame.time_base = TIME_BASE
    return frame


def silence_packet() -> bytes:
    """One 20 ms Opus packet of silence, from the encoder speech is sent with."""
    global _silence_packet
    if _silence_packet is None:
        _silence_packet = OpusEncoder(SAMPLE_RATE).encode(bytes(FRAME_BYTES))
    return _silence_packet


class SpeakerTrack(MediaStreamTrack):
    """An audio track fed with PCM16 by the reply pipeline (`write`) and read by aiortc."""

    kind = "audio"
    # underruns and late frames go to the process's metrics (not for a test or bench client)
    report_metrics = True

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._resamplers: dict[int, PcmResampler] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        self._start: float | None = None
        self._timestamp = 0
        self._silence = bytes(FRAME_BYTES)
        self.frames_sent = 0
        self.speech_frames_sent = 0
        self.held = False
        self.encode_opus = False
        self.frames_encoded = 0  # by the track itself (speech only), when `encode_opus`
        self._encoder: OpusEncoder | None = None
        self.opus_complexity = SPEECH_COMPLEXITY
        # a reply is being written (until `end_of_speech`): running dry then is an underrun
        self.expecting = False
        self.underruns = 0
        self._last_was_speech = False
        self.dtx = False
        self._silent_frames = 0  # consecutive silence frames sent
        self._wake: asyncio.Event | None = None  # set by write/hold/clear/stop during DTX
        self.late_frames = 0
        self.samples_taken = 0  # of the written audio (not of the silence or padding)

    @property
    def queued_ms(self) -> float:
        """Milliseconds of speech queued and not yet handed to the encoder."""
        return len(self._buffer) / 2 / SAMPLE_RATE * 1000

    async def write(self, pcm: bytes, sample_rate: int) -> None:
        """Queue PCM16 mono audio at `sample_rate`; it plays after what is already queued."""
        if self.readyState != "live" or not pcm:
            return
        resampler = self._resamplers.get(sample_rate)
        if resampler is None:
            resampler = self._resamplers[sample_rate] = PcmResampler(sample_rate, SAMPLE_RATE)
        pcm = resampler(pcm)
        if pcm:
            self._buffer += pcm
            self._drained.clear()
            self.expecting = True
            self._wake_up()

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def end_of_speech(self) -> None:
        """The reply wrote all its audio: the queue may now run dry without a gap heard."""
        self.expecting = False

    def hold(self, held: bool) -> None:
        """Pause (True) or resume (False) the queued speech; frames are silence while held."""
        self.held = held
        self._wake_up()

    def clear(self) -> None:
        """Drop everything queued (barge-in): the next frame sent is silence."""
        self._buffer.clear()
        self._resamplers.clear()
        self._drained.set()
        self.expecting = False

    async def drained(self) -> None:
        """Wait until everything queued so far was sent (or dropped by `clear`/`stop`)."""
        if self.readyState != "live":
            return
        await self._drained.wait()

    def stop(self) -> None:
        """End the track; waiters of `drained` are released."""
        self.clear()
        super().stop()
        self._wake_up()

    async def recv(self) -> av.AudioFrame | av.Packet:
        """The next 20 ms frame (a packet when `encode_opus`), returned at its real-time
        instant; in DTX silence, the next packet up to `DTX_INTERVAL_S` later."""
        chunk = await self._next_chunk()
        if not self.encode_opus:
            return _pcm_frame(chunk, self._timestamp)
        packet = av.Packet(self._payload(chunk))
        packet.pts = self._timestamp
        packet.time_base = TIME_BASE
        return packet

    async def next_payload(self) -> tuple[bytes, int]:
        """With `encode_opus`: the next Opus packet and its timestamp at 48 kHz (Opus's RTP
        clock), at the same instant `recv()` would return it (see `send_with`)."""
        chunk = await self._next_chunk()
        return self._payload(chunk), self._timestamp * (48000 // SAMPLE_RATE)

    def _payload(self, chunk: bytes) -> bytes:
        if chunk is self._silence:
            return silence_packet()
        self.frames_encoded += 1
        return self._encode(chunk)

    async def _next_chunk(self) -> bytes:
        """The next 20 ms of PCM (speech, or the silence object), at its real-time instant."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = _on_grid(now)
        elif self.dtx and self._silent_frames >= DTX_HANGOVER_FRAMES and not self._speaking():
            await self._dtx_wait()
            # stamped with the slot it is sent in: the receiver plays it after the gap
            now = time.monotonic()
            slot = int((now - self._start) * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
            self._timestamp = max(self._timestamp + FRAME_SAMPLES, slot)
        else:
            self._timestamp += FRAME_SAMPLES
            due = self._start + self._timestamp / SAMPLE_RATE
            if due - now < -MAX_LAG_S:
                self._start = _on_grid(now - self._timestamp / SAMPLE_RATE)
            elif due > now:
                await asyncio.sleep(due - now)
            elif now - due > LATE_S and self._speaking():
                self.late_frames += 1
                if self.report_metrics:
                    metrics.audio_late_frame()
        if self.readyState != "live":
            raise MediaStreamError

        if self._buffer and not self.held:
            chunk = bytes(self._buffer[:FRAME_BYTES])
            del self._buffer[:FRAME_BYTES]
            self.samples_taken += len(chunk) // 2
            if len(chunk) < FRAME_BYTES:
                chunk += bytes(FRAME_BYTES - len(chunk))
            self.speech_frames_sent += 1
            self._last_was_speech = True
            if not self._buffer:
                self._drained.set()
        else:
            if self._last_was_speech and self.expecting and not self.held:
                self.underruns += 1  # speech, then silence in the middle of the reply
                if self.report_metrics:
                    metrics.audio_underrun()
            self._last_was_speech = False
            chunk = self._silence
        self._silent_frames = 0 if chunk is not self._silence else self._silent_frames + 1
        self.frames_sent += 1
        return chunk

    def _encode(self, chunk: bytes) -> bytes:
        if self._encoder is None:
            self._encoder = OpusEncoder(SAMPLE_RATE, complexity=self.opus_complexity)
        return self._encoder.encode(chunk)

    def _speaking(self) -> bool:
        return bool(self._buffer) and not self.held

    async def _dtx_wait(self) -> None:
        """Until speech is written (or the track stops), at most `DTX_INTERVAL_S`."""
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.clear()
        if self._speaking() or self.readyState != "live":
            return
        # a timer handle, not wait_for's task per wait
        timer = asyncio.get_running_loop().call_later(DTX_INTERVAL_S, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()


# seconds from the NTP epoch (1900) to the Unix epoch (1970)
_NTP_UNIX_S = 2208988800


def _ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (aiortc's own goes through datetime)."""
    now = time.time()
    seconds = int(now)
    return (seconds + _NTP_UNIX_S) << 32 | int((now - seconds) * 4294967296)


def send_with(sender: RTCRtpSender, track: SpeakerTrack) -> None:
    """Let `sender` (aiortc 1.16's, before it starts) send `track`'s Opus packets the short way.

    aiortc's sending loop takes each packet through its generic encoder interface: the track
    returns an `av.Packet`, the "encoder" converts its timestamp with `Fraction` arithmetic,
    and every RTP packet gets two datetime-based NTP readings; per 20 ms frame and session that
    cost more than encoding the speech. This loop takes the payload and its 48 kHz timestamp
    from `track.next_payload()` and otherwise does what aiortc's does with each packet: the
    same RTP header and extensions, the history kept for retransmission, the counters its RTCP
    sender reports are built from, the same SRTP transport. A track not sending Opus (PCMU)
    keeps aiortc's loop.
    """

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        private = "_RTCRtpSender__"
        getattr(sender, private + "rtp_started").set()
        extensions = getattr(sender, private + "rtp_header_extensions_map")
        history = getattr(sender, private + "rtp_history")
        mid = getattr(sender, private + "mid")
        # what aiortc's RTCP sender reports are built from (only this loop writes them)
        ntp_name, rtp_name = private + "ntp_timestamp", private + "rtp_timestamp"
        octets_name, packets_name = private + "octet_count", private + "packet_count"
        octets, packets = getattr(sender, octets_name), getattr(sender, packets_name)
        transport = sender.transport
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        try:
            while True:
                payload, timestamp = await track.next_payload()
                packet = RtpPacket(
                    payload_type=codec.payloadType,
                    marker=1,
                    sequence_number=sequence_number,
                    timestamp=(timestamp_origin + timestamp) & 0xFFFFFFFF,
                    ssrc=sender._ssrc,
                    payload=payload,
                )
                ntp = _ntp_now()
                packet.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
                packet.extensions.mid = mid
                history[sequence_number % RTP_HISTORY_SIZE] = packet
                await transport._send_rtp(packet.serialize(extensions))
                octets += len(payload)
                packets += 1
                setattr(sender, ntp_name, ntp)
                setattr(sender, rtp_name, packet.timestamp)
                setattr(sender, octets_name, octets)
                setattr(sender, packets_name, packets)
                sequence_number = (sequence_number + 1) & 0xFFFF
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            logger.exception("sending the speaker track failed")
        track.stop()
        getattr(sender, private + "rtp_exited").set()

    sender._run_rtp = run_rtp  # type: ignore[method-assign]
