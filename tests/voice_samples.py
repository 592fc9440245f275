"""Voice sample files for the tests: real speech (espeak-ng) encoded by PyAV in any container."""

from __future__ import annotations

import io

import av
import numpy as np

from tests.audio import read_wav, resample, speak

SPEECH = (
    "Hello, this is my own voice. I am reading a few sentences slowly, so that the service has"
    " enough continuous speech to learn from, and a little more after that."
)


def speech_pcm(seconds: float, sample_rate: int = 22050) -> np.ndarray:
    """`seconds` of int16 mono speech (espeak-ng, repeated or cut to length)."""
    samples, rate = read_wav(speak(SPEECH, rate=140))
    samples = samples.astype(np.int16)
    if rate != sample_rate:
        samples = resample(samples, rate, sample_rate).astype(np.int16)
    wanted = int(seconds * sample_rate)
    repeats = wanted // len(samples) + 1
    return np.tile(samples, repeats)[:wanted]


def encode_sample(
    seconds: float, container: str = "wav", codec: str = "pcm_s16le", sample_rate: int = 22050
) -> bytes:
    """A sample in `container` ("wav", "mp3", "ipod" for M4A, "ogg") with `codec`."""
    pcm = speech_pcm(seconds, sample_rate)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name if stream.codec_context.format else "s16"
        for start in range(0, len(pcm), frame_size):
            chunk = pcm[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            if fmt != "s16":
                frame = av.AudioResampler(format=fmt, layout="mono", rate=sample_rate).resample(
                    frame
                )
            else:
                frame = [frame]
            for item in frame:
                for packet in stream.encode(item):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()
