"""Writes rendered frames as independently playable MP4 segments, then the whole video.

Pieces are ~RENDER_SEGMENT_S long and each has its own H.264 encoder (so it opens on a
keyframe) and its slice of the pre-encoded AAC audio. The whole video is a remux of the
segments' packets with the full audio track: no second encode.
"""

from __future__ import annotations

import fractions
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from rendering.media import AudioTrack, mux_audio

# No B-frames (segments concatenate with monotonic timestamps) but a short lookahead: as fast
# as `tune=zerolatency` on this content and half the bytes (bench/render.py, docs).
X264_OPTIONS = {"preset": "veryfast", "crf": "23", "bf": "0", "rc-lookahead": "5", "threads": "2"}
MP4_OPTIONS = {"movflags": "+faststart"}


@dataclass(frozen=True)
class Segment:
    index: int
    path: Path
    start_frame: int
    frames: int
    fps: int

    @property
    def start_ms(self) -> int:
        return round(self.start_frame * 1000 / self.fps)

    @property
    def duration_ms(self) -> int:
        return round(self.frames * 1000 / self.fps)


class SegmentWriter:
    """Accepts I420 frames in order; closes a segment every `segment_frames` frames."""

    def __init__(
        self,
        out_dir: Path,
        width: int,
        height: int,
        fps: int,
        segment_frames: int,
        audio: AudioTrack,
        on_segment: Callable[[Segment], None],
        x264_options: dict[str, str] | None = None,
    ) -> None:
        self.out_dir, self.width, self.height, self.fps = out_dir, width, height, fps
        self.segment_frames = max(1, segment_frames)
        self.audio = audio
        self.on_segment = on_segment
        self.options = dict(x264_options or X264_OPTIONS)
        self.segments: list[Segment] = []
        self._frame = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._segment_start = 0

    def _open(self) -> None:
        path = self.out_dir / f"segment-{len(self.segments):03d}.mp4"
        self._container = av.open(str(path), "w", options=MP4_OPTIONS)
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.codec_context.options = self.options
        self._stream = stream
        self._audio_stream = self.audio.add_stream(self._container)
        self._segment_start = self._frame

    def write(self, i420: np.ndarray) -> None:
        """One frame as a (height * 3 / 2, width) uint8 I420 array."""
        if self._container is None:
            self._open()
        assert self._stream is not None and self._container is not None
        frame = av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
        frame.pts = self._frame - self._segment_start
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._frame += 1
        if self._frame - self._segment_start >= self.segment_frames:
            self._close_segment(final=False)

    def _close_segment(self, final: bool) -> None:
        assert self._stream is not None and self._container is not None
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        start_s = self._segment_start / self.fps
        end_s = None if final else self._frame / self.fps
        offset = round(start_s / self.audio.time_base)
        mux_audio(
            self._container,
            self._audio_stream,
            self.audio.span(start_s, end_s),
            offset,
            self.audio.time_base,
        )
        self._container.close()
        segment = Segment(
            len(self.segments),
            Path(self._container.name),
            self._segment_start,
            self._frame - self._segment_start,
            self.fps,
        )
        self._container = self._stream = None
        self.segments.append(segment)
        self.on_segment(segment)

    def finish(self, path: Path) -> Path:
        """Close the last segment and remux every segment and the whole audio into `path`."""
        if self._container is not None:
            self._close_segment(final=True)
        if not self.segments:
            raise ValueError("no frames were written")
        concat(self.segments, self.audio, path)
        return path

    def abort(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    @property
    def frames_written(self) -> int:
        return self._frame


def concat(segments: list[Segment], audio: AudioTrack, path: Path) -> None:
    """The whole video from the segments' H.264 packets (time-shifted) and all audio packets."""
    inputs = [av.open(str(segment.path)) for segment in segments]
    try:
        with av.open(str(path), "w", options=MP4_OPTIONS) as out:
            video = out.add_stream_from_template(inputs[0].streams.video[0])
            sound = audio.add_stream(out)
            timed: list[tuple[float, int, av.Packet]] = []
            for segment, container in zip(segments, inputs, strict=True):
                src = container.streams.video[0]
                tb: fractions.Fraction = src.time_base
                shift = round(fractions.Fraction(segment.start_frame, segment.fps) / tb)
                for packet in container.demux(src):
                    if packet.pts is None:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = video
                    timed.append((float(packet.dts * tb), 0, packet))
            out_video_packets = timed
            timed_audio = [(float(p.dts * audio.time_base), 1, p) for p in audio.span(0.0, None)]
            merged = sorted(out_video_packets + timed_audio, key=lambda item: (item[0], item[1]))
            for _, kind, packet in merged:
                if kind == 0:
                    out.mux(packet)
                else:
                    mux_audio(out, sound, [packet], 0, audio.time_base)
    finally:
        for container in inputs:
            container.close()


def write_clip(frames: Iterable[np.ndarray], path: Path, width: int, height: int, fps: int) -> Path:
    """A silent MP4 of I420 frames (the idle loop): one H.264 stream, nothing else."""
    with av.open(str(path), "w", options=MP4_OPTIONS) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = dict(X264_OPTIONS)
        for index, i420 in enumerate(frames):
            frame = av.VideoFrame.from_numpy_buffer(i420, format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
