"""The microphone's receive buffer (`chat.realtime.jitter.InOrder`): RTP packets go on as they
arrive, in order; a missing one is waited for a short while, then given up."""

from __future__ import annotations

import asyncio

import numpy as np
from aiortc.rtp import RtpPacket

from chat.realtime.jitter import InOrder
from tests.fixtures_realtime import run


def packet(seq: int) -> RtpPacket:
    return RtpPacket(sequence_number=seq % 0x10000, timestamp=960 * seq % 2**32)


class Buffer:
    def __init__(self, wait_s: float = 0.04) -> None:
        self.out: list[int | str] = []  # sequence numbers handed on, "lost n" for given-up ones
        self.buffer = InOrder(
            lambda p: self.out.append(p.sequence_number),
            lambda n, following: self.out.append(f"lost {n}"),
            wait_s,
        )

    def add(self, *seqs: int) -> list[int | str]:
        for seq in seqs:
            assert self.buffer.add(packet(seq)) == (False, None)
        return self.out


def test_packets_in_sequence_go_on_as_each_arrives() -> None:
    async def body() -> None:
        buffer = Buffer()
        for seq in range(100, 110):
            assert buffer.add(seq)[-1] == seq  # not held for the next one, as aiortc's is
        assert buffer.out == list(range(100, 110))

    run(body())


def test_a_packet_that_comes_early_waits_for_the_one_before_it() -> None:
    async def body() -> None:
        buffer = Buffer()
        assert buffer.add(1, 2, 4) == [1, 2]
        assert buffer.add(3) == [1, 2, 3, 4]
        await asyncio.sleep(0.1)
        assert buffer.add(5) == [1, 2, 3, 4, 5]  # nothing was given up meanwhile

    run(body())


def test_a_lost_packet_is_given_up_after_the_wait_and_no_later_packet_lags() -> None:
    async def body() -> None:
        buffer = Buffer(wait_s=0.04)
        buffer.add(10, 11, 13, 14)
        assert buffer.out == [10, 11]
        await asyncio.sleep(0.08)
        assert buffer.out == [10, 11, "lost 1", 13, 14]
        assert buffer.add(15, 16)[-2:] == [15, 16]  # at once again
        assert buffer.add(12) == [10, 11, "lost 1", 13, 14, 15, 16]  # too late: dropped
        buffer.add(16)  # a duplicate
        assert buffer.out.count(16) == 1

    run(body())


def test_a_long_burst_after_a_loss_goes_on_without_waiting() -> None:
    async def body() -> None:
        buffer = Buffer(wait_s=10)
        buffer.add(0, *range(3, 21))
        assert buffer.out == [0, "lost 2", *range(3, 21)]

    run(body())


def test_sequence_numbers_wrap_and_a_restarted_stream_is_followed() -> None:
    async def body() -> None:
        buffer = Buffer()
        assert buffer.add(0xFFFE, 0xFFFF, 0x10000, 0x10001) == [0xFFFE, 0xFFFF, 0, 1]
        assert buffer.add(20000, 20001) == [0xFFFE, 0xFFFF, 0, 1, 20000, 20001]
        assert buffer.add(7, 8)[-2:] == [7, 8]  # restarted lower

    run(body())


def test_stopping_cancels_the_wait() -> None:
    async def body() -> None:
        buffer = Buffer(wait_s=0.02)
        buffer.add(1, 3)
        buffer.buffer.stop()
        await asyncio.sleep(0.06)
        assert buffer.out == [1]

    run(body())


def test_a_lost_speech_packet_is_rebuilt_from_the_next_ones_fec_copy() -> None:
    """A browser that hears of loss adds to each Opus packet a low-rate copy of the frame
    before it (in-band FEC). The server's microphone path rebuilds a lost frame from that
    copy: what the recogniser hears there is much closer to what it would have heard without
    the loss than the concealment is (what it gets from a stream without FEC), and the audio
    keeps its length."""
    from types import SimpleNamespace

    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from chat.realtime.opus import OpusEncoder
    from chat.realtime.peer import Inbound, InlineDecoding
    from harness.audio import read_wav, resample
    from tests.audio import speak

    pcm, rate = read_wav(speak("Seven lost packets of speech"))
    mic = resample(pcm, rate, 48000).astype(np.int16)
    frames = [mic[i : i + 960].tobytes() for i in range(0, len(mic) - 959, 960)]
    levels = [float(np.abs(np.frombuffer(f, dtype=np.int16)).mean()) for f in frames]
    lost = int(np.argmax(levels))  # the loudest frame of the utterance
    codec = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )

    def heard(fec: bool, lose: int | None) -> np.ndarray:
        encoder = OpusEncoder(48000, fec_loss_pct=20 if fec else 0)
        inbound = Inbound()
        receiver = SimpleNamespace(_RTCRtpReceiver__codecs={111: codec})
        InlineDecoding(inbound).install(receiver, in_order=True)

        async def body() -> None:
            for n, frame in enumerate(frames):
                packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n)
                packet._data = encoder.encode(frame)  # type: ignore[attr-defined]
                if n != lose:
                    receiver._RTCRtpReceiver__jitter_buffer.add(packet)
                if lose is not None and n == lose + 1:
                    await asyncio.sleep(0.1)  # the wait for the lost one ends

        run(body())
        audio = np.frombuffer(b"".join(pcm for pcm, _ in inbound.chunks), dtype=np.int16)
        assert len(audio) == len(frames) * 320  # nothing missing
        return audio.astype(np.float64)

    def error(fec: bool) -> float:
        """Over the lost frame, against the same stream received whole."""
        span = slice(lost * 320, (lost + 1) * 320)
        return float(np.mean((heard(fec, lost)[span] - heard(fec, None)[span]) ** 2))

    with_fec, concealed = error(True), error(False)
    assert with_fec < 0.3 * concealed, (with_fec, concealed)
