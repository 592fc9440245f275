"""Instructions the web process spends per received microphone frame, counted by callgrind.

Wall and CPU time are too noisy on a shared machine to see a change of a few microseconds per
frame; instruction counts are not. This script feeds `--frames` 20 ms Opus packets of a quiet
microphone (as aiortc's receiver hands them on once complete) through the server's own inbound
path: `InlineDecoding` (libopus to 16 kHz mono, on the loop) and `PeerSession._read_audio` into a
`Listener` (its VAD), either frame by frame (`--mode frame`: no batching predicate), as the
handler runs it while nothing is said and nothing plays (`--mode batched`), or as it runs while
no recognition span is open (`--mode unheard`: the packets are dropped undecoded). `--mode
aiortc` is the path before: aiortc's own decoder (PyAV, 48 kHz stereo) and a resampler to
16 kHz, frame by frame (without the hand-overs to and from aiortc's decoder thread, which cost
more still). `--mode none` builds the same packets and reads none: the difference between a
mode's count and that one, divided by `--frames`, is the cost of one frame.

    for mode in none frame batched unheard aiortc; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode \\
            .venv/bin/python -m bench.inbound --mode $mode --frames 1000 2>&1 | grep refs
    done

(the "Collected" / "refs" line of each run is its instruction count.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

import numpy as np


def packets(count: int) -> list[bytes]:
    """`count` 20 ms Opus packets of a quiet microphone (48 kHz mono, as a browser encodes)."""
    from chat.realtime.opus import OpusEncoder

    rng = np.random.default_rng(1)
    encoder = OpusEncoder(48000)
    return [encoder.encode(rng.normal(0, 30, 960).astype(np.int16).tobytes()) for _ in range(count)]


async def main(mode: str, count: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
    os.environ.setdefault("METRICS_DIR", tempfile.mkdtemp(prefix="bench-inbound-"))
    import django

    django.setup()
    import av
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from chat.realtime.listener import Listener
    from chat.realtime.pcm import frame_pcm
    from chat.realtime.peer import InlineDecoding, PeerSession

    queued = packets(count)
    if mode == "none":
        return

    async def nothing(*_args: object) -> None:
        return None

    listener = Listener(
        None,  # type: ignore[arg-type] - quiet audio never opens an utterance
        "en-US",
        on_speech_start=nothing,
        on_interim=nothing,
        on_final=nothing,
        on_error=nothing,
    )
    if mode == "aiortc":
        decoder = OpusDecoder()
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for n, data in enumerate(queued):
            for frame in decoder.decode(JitterFrame(data, n * 960)):
                for out in resampler.resample(frame):
                    await listener.feed(frame_pcm(out))
        assert not listener.in_utterance
        return

    def quiet() -> bool:
        return not listener.in_utterance and not listener.vad.rising

    peer = PeerSession(
        on_audio=listener.feed,
        on_state=nothing,
        batch_audio=quiet if mode == "batched" else None,
        wants_audio=(lambda: False) if mode == "unheard" else None,
    )
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
    decoding = InlineDecoding(peer._inbound, peer.wants_audio)
    reader = asyncio.create_task(peer._read_audio())
    for n, data in enumerate(queued):
        decoding.put((opus, JitterFrame(data, n * 960)))
        await asyncio.sleep(0)  # the reader runs as the packets come
    decoding.put(None)
    await reader
    assert not listener.in_utterance
    await peer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=["none", "frame", "batched", "unheard", "aiortc"], required=True
    )
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.mode, args.frames))
