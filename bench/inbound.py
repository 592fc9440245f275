"""Instructions the web process spends per received microphone frame, counted by callgrind.

Wall and CPU time are too noisy on a shared machine to see a change of a few microseconds per
frame; instruction counts are not. This script feeds `--frames` 20 ms frames of a quiet
microphone (48 kHz stereo s16, as aiortc's Opus decoder gives them) through the server's own
inbound path: `PeerSession._read_audio` (resampling to 16 kHz) into a `Listener` (its VAD),
either frame by frame (`--mode frame`: no batching predicate), as the handler runs it while
nothing is said and nothing plays (`--mode batched`), or as it runs while no recognition span is
open (`--mode unheard`: the frames are read and dropped). `--mode none` builds the same frames and
reads none: the difference between a mode's count and that one, divided by `--frames`, is the
cost of one frame.

    for mode in none frame batched unheard; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode \\
            .venv/bin/python -m bench.inbound --mode $mode --frames 1000 2>&1 | grep refs
    done

(the "Collected" / "refs" line of each run is its instruction count.)
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np


def frames(count: int) -> list:
    import av

    rng = np.random.default_rng(1)
    out = []
    for n in range(count):
        samples = (rng.normal(0, 30, 960 * 2)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, n * 960
        out.append(frame)
    return out


async def main(mode: str, count: int) -> None:
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    from chat.realtime.listener import Listener
    from chat.realtime.peer import PeerSession

    queued = frames(count)

    class Microphone(MediaStreamTrack):
        kind = "audio"

        async def recv(self) -> object:
            if not queued or mode == "none":
                raise MediaStreamError
            return queued.pop(0)

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

    def quiet() -> bool:
        return not listener.in_utterance and not listener.vad.rising

    peer = PeerSession(
        on_audio=listener.feed,
        on_state=nothing,
        batch_audio=quiet if mode == "batched" else None,
        wants_audio=(lambda: False) if mode == "unheard" else None,
    )
    await peer._read_audio(Microphone())
    assert not listener.in_utterance
    await peer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["none", "frame", "batched", "unheard"], required=True)
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.mode, args.frames))
