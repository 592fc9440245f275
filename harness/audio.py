"""Test audio made here: espeak-ng speaks known sentences into WAV files; PCM helpers."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "echoproject-test-audio"


@functools.cache
def speak(text: str, voice: str = "en-us", rate: int = 150, sample_rate: int | None = None) -> Path:
    """A WAV of espeak-ng saying `text` (cached per run), resampled when `sample_rate` is given."""
    CACHE.mkdir(exist_ok=True)
    key = hashlib.sha1(f"{text}|{voice}|{rate}|{sample_rate}".encode()).hexdigest()[:16]
    path = CACHE / f"{key}-{os.getpid()}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
    if sample_rate:
        pcm, rate_in = read_wav(path)
        write_wav(path, resample(pcm, rate_in, sample_rate), sample_rate)
    return path


def read_wav(path: Path | str) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the sample rate of a PCM16 WAV."""
    with wave.open(str(path), "rb") as handle:
        rate, channels = handle.getframerate(), handle.getnchannels()
        data = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data, rate


def write_wav(
    path: Path | str | io.BytesIO, pcm: np.ndarray, sample_rate: int
) -> Path | io.BytesIO:
    with wave.open(path if isinstance(path, io.BytesIO) else str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.astype(np.int16).tobytes())
    return path if isinstance(path, io.BytesIO) else Path(path)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return pcm
    n_out = int(round(len(pcm) * rate_out / rate_in))
    x = np.linspace(0, len(pcm) - 1, n_out)
    return np.interp(x, np.arange(len(pcm)), pcm.astype(np.float32)).astype(np.int16)


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


CODECS = {
    "webm": ("webm", "libopus", 48000),
    "ogg": ("ogg", "libopus", 48000),
    "mp3": ("mp3", "libmp3lame", 22050),
}


def encode(wav: Path | str, kind: str) -> bytes:
    """The utterance re-encoded as WebM/Opus, Ogg/Opus or MP3 (what browsers and apps send)."""
    import av

    container_format, codec, rate = CODECS[kind]
    pcm, rate_in = read_wav(wav)
    pcm = resample(pcm, rate_in, rate)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame_size = 960 if codec == "libopus" else 1152
        for start in range(0, len(pcm), frame_size):
            chunk = pcm[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()
