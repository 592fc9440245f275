"""Audio in, MP4 segments out: decoding speech, its loudness per video frame, and PyAV muxing.

The reply audio is encoded to AAC once (a span per segment); every segment takes the packets
of its time span and the whole video reuses all of them, so segments and the whole share one
audio encode and the whole has no seams. Each segment has its own H.264 encoder, so it starts with a keyframe and
plays on its own.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from rendering.backends.base import RenderError

AUDIO_RATE = 48_000  # AAC frames of 1024 samples are 21 ms: the video ends within one frame
AUDIO_BIT_RATE = 96_000
MIN_AUDIO_S = 0.05
MAX_AUDIO_S = 600.0


@dataclass(frozen=True)
class Speech:
    """Mono float samples in [-1, 1] at AUDIO_RATE."""

    samples: np.ndarray
    rate: int = AUDIO_RATE

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate

    def frame_count(self, fps: int) -> int:
        """Video frames for this audio: the video's length is within half a frame of it."""
        return max(1, round(self.duration_s * fps))


def load_speech(path: Path | str) -> Speech:
    """Decode any audio file PyAV reads into mono float samples; bad input is a RenderError."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"audio file {path.name} not found")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise RenderError(f"audio file {path.name} has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except RenderError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise RenderError(f"audio file {path.name} cannot be decoded: {exc}") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    speech = Speech(samples.astype(np.float32, copy=False))
    if speech.duration_s < MIN_AUDIO_S:
        raise RenderError(f"audio file {path.name} is empty ({speech.duration_s:.3f} s)")
    if speech.duration_s > MAX_AUDIO_S:
        raise RenderError(f"audio file {path.name} is too long ({speech.duration_s:.0f} s)")
    return speech


def loudness(speech: Speech, fps: int, frames: int) -> np.ndarray:
    """Loudness per video frame in [0, 1]: RMS in dB over each frame's window, 0 = silence."""
    hop = speech.rate / fps
    edges = (np.arange(frames + 1) * hop).astype(np.int64)
    padded = np.concatenate([speech.samples, np.zeros(int(hop) + 1, np.float32)])
    energy = np.add.reduceat(padded[: edges[-1] + 1] ** 2, edges[:-1]) / max(1.0, hop)
    db = 10 * np.log10(energy + 1e-10)
    peak = float(np.percentile(db, 95)) if frames else 0.0
    floor = max(peak - 36.0, -70.0)
    level = np.clip((db - floor) / max(peak - floor, 1e-6), 0.0, 1.0)
    return level.astype(np.float32)


@dataclass(frozen=True)
class AudioPacket:
    data: bytes
    pts: int
    dts: int
    duration: int


class AudioTrack:
    """The reply audio as AAC packets, encoded on demand, one segment's span at a time.

    The first segment then pays only for its own ~2 s of audio (the whole reply's AAC encode
    costs ~15 ms per second of speech), and nothing runs beside the frames to compete for
    the GIL. Pieces and the whole video mux these same packets into streams with identical
    encoder settings.
    """

    STEP = 1024 * 4  # samples per encoder call

    def __init__(self, speech: Speech) -> None:
        self.rate = speech.rate
        self.time_base = fractions.Fraction(1, speech.rate)
        self.packets: list[AudioPacket] = []
        self._samples = speech.samples
        self._fed = 0  # samples given to the encoder so far
        self._flushed = False
        self._codec = av.CodecContext.create("aac", "w")
        self._codec.sample_rate, self._codec.layout = speech.rate, "mono"
        self._codec.format = "fltp"
        self._codec.bit_rate = AUDIO_BIT_RATE
        self._codec.time_base = self.time_base

    def _encode_to(self, sample: int) -> None:
        """Feed the encoder up to `sample` (all of it and flush, past the end)."""
        total = len(self._samples)
        try:
            while self._fed < min(sample, total):
                chunk = self._samples[self._fed : self._fed + self.STEP].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = self.rate, self._fed
                self._keep(self._codec.encode(frame))
                self._fed += chunk.shape[1]
            if sample > total and not self._flushed:
                self._keep(self._codec.encode(None))
                self._flushed = True
        except (av.FFmpegError, ValueError) as exc:
            raise RenderError(f"the reply audio cannot be encoded: {exc}") from None

    def _keep(self, packets: list[av.Packet]) -> None:
        self.packets.extend(AudioPacket(bytes(p), p.pts, p.dts, p.duration) for p in packets)

    def add_stream(self, container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
        """An AAC stream whose header matches the packets (same encoder settings)."""
        stream = container.add_stream("aac", rate=self.rate, layout="mono")
        stream.bit_rate = AUDIO_BIT_RATE
        return stream

    def span(self, start_s: float, end_s: float | None) -> list[AudioPacket]:
        """Packets that start in [start_s, end_s) (the first span includes the priming)."""
        lo = start_s / self.time_base if start_s > 0 else -(1 << 62)
        hi = (1 << 62) if end_s is None else end_s / self.time_base
        # packets trail the input by the encoder's delay: feed a little past the span
        self._encode_to(int(min(hi + 4096, 1 << 62)))
        return [p for p in self.packets if lo <= p.pts < hi]

    def close(self) -> None:
        """Nothing to release beyond the encoder, which is garbage collected."""


def mux_audio(
    out: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    packets: Iterable[AudioPacket],
    offset: int,
    time_base: fractions.Fraction,
) -> None:
    """Mux copies of encoded packets, shifted back by `offset` (in `time_base` units)."""
    for src in packets:
        packet = av.Packet(src.data)
        packet.stream = stream
        packet.pts, packet.dts = src.pts - offset, src.dts - offset
        packet.duration = src.duration
        packet.time_base = time_base
        out.mux(packet)
