"""Audio helpers shared by turns: PCM16 to WAV bytes, durations."""

from __future__ import annotations

import contextlib
import io
import os
import wave

from chat.providers.base import SPEECH_RATE


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm)
    return buffer.getvalue()


def pcm_duration_ms(pcm: bytes, sample_rate: int) -> int:
    return int(len(pcm) / 2 * 1000 / sample_rate)


# --- uploads: any accepted container/codec → 16 kHz mono PCM16 -------------------------------

ACCEPTED_CONTAINERS = {"wav": "wav", "matroska,webm": "webm", "ogg": "ogg", "mp3": "mp3"}
TARGET_RATE = SPEECH_RATE
SILENCE_PEAK = 200  # int16 peak below this (about -44 dBFS) counts as silence


class AudioInvalid(ValueError):
    """An upload that is not usable audio; the message says why in words a user understands."""


def decode_upload(data: bytes, max_seconds: float) -> bytes:
    """Decode a WAV, WebM/Opus, Ogg/Opus or MP3 file into 16 kHz mono PCM16.

    Refuses other formats, undecodable or empty data, silence, and audio longer than
    `max_seconds` (decoding stops there, so a huge file costs no more than the limit).
    """
    import numpy as np

    if not data:
        raise AudioInvalid("the audio is empty")
    pcm = _plain_wav(data)  # its length is bounded by the upload's size
    if pcm is None:
        pcm = _decode_any(data, max_seconds)
    limit = int(max_seconds * TARGET_RATE)
    if len(pcm) // 2 > limit:
        raise AudioInvalid(f"the audio is longer than {max_seconds:g} s")
    if len(pcm) < TARGET_RATE // 10 * 2:
        raise AudioInvalid("the audio is empty or shorter than 0.1 s")
    if int(np.abs(np.frombuffer(pcm, dtype=np.int16)).max()) < SILENCE_PEAK:
        raise AudioInvalid("the audio is silent")
    return pcm


def _plain_wav(data: bytes) -> bytes | None:
    """A PCM16 mono or stereo WAV resampled in one piece (the same resampler, the same
    samples, without PyAV's loop over its small frames: a third of the time); None for
    anything else, which takes the general path."""
    import av
    import numpy as np

    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data), "rb") as handle:
            channels, width, rate = (
                handle.getnchannels(),
                handle.getsampwidth(),
                handle.getframerate(),
            )
            if width != 2 or channels not in (1, 2) or not 8000 <= rate <= 192000:
                return None
            frames = handle.readframes(handle.getnframes())
    except (wave.Error, EOFError):
        return None
    usable = len(frames) // (2 * channels) * 2 * channels
    if not usable:
        return None
    samples = np.frombuffer(frames[:usable], dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=LAYOUTS[channels])
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=TARGET_RATE)
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return b"".join(piece.to_ndarray().tobytes() for piece in out)


LAYOUTS = {1: "mono", 2: "stereo"}


def _decode_any(data: bytes, max_seconds: float) -> bytes:
    """Any accepted container and codec through PyAV, stopping at `max_seconds`."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise AudioInvalid(f"not a decodable audio file ({type(exc).__name__})") from None
    with container:
        kind = ACCEPTED_CONTAINERS.get(container.format.name)
        if kind is None:
            raise AudioInvalid(
                f"unsupported audio format {container.format.name!r}: send WAV, WebM/Opus, Ogg/Opus or MP3"
            )
        if not container.streams.audio:
            raise AudioInvalid("the file has no audio stream")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=TARGET_RATE)
        limit = int(max_seconds * TARGET_RATE)
        chunks: list[bytes] = []
        samples = 0
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().tobytes()
                    samples += len(chunk) // 2
                    chunks.append(chunk)
                if samples > limit:
                    raise AudioInvalid(f"the audio is longer than {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().tobytes())
        except av.FFmpegError as exc:
            raise AudioInvalid(f"the audio could not be decoded ({type(exc).__name__})") from None
    return b"".join(chunks)


def lower_priority(nice: int) -> None:
    """The initializer of the process that decodes a web process's uploads: yield the CPU to
    the event loop that spawned it, as the workers do (WORKER_NICE). Kept here, importable
    without Django's set-up, because the process is spawned."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
