"""Voice samples an avatar's voice is cloned from: checked with PyAV before they are stored.

CosyVoice clones from WAV (16-bit PCM), MP3 or M4A recordings of 5 to 60 seconds, 16 kHz or
more, at most 10 MB. A file that is none of these is refused in the form with a sentence that
says what to change, instead of failing later at DashScope.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO, Any

from django.core.exceptions import ValidationError

MIN_SECONDS = 5.0
MAX_SECONDS = 60.0
_PADDING_S = 0.25  # encoders (MP3, AAC) pad the last frame: a 60 s recording may decode longer
MIN_RATE = 16000
MAX_BYTES = 10 * 1024 * 1024
_CONTAINERS = {"wav": "WAV", "mp3": "MP3", "mov,mp4,m4a,3gp,3g2,mj2": "M4A"}
_WAV_CODECS = {"pcm_s16le"}
_M4A_CODECS = {"aac", "alac"}


@dataclass(frozen=True)
class SampleInfo:
    kind: str  # "WAV", "MP3", "M4A"
    seconds: float
    sample_rate: int
    channels: int


def _refuse(message: str) -> ValidationError:
    return ValidationError(message, code="voice_sample")


def inspect_sample(data: bytes) -> SampleInfo:
    """What the recording is, or ValidationError saying why it cannot be cloned from."""
    import av

    if not data:
        raise _refuse("The voice sample is empty.")
    if len(data) > MAX_BYTES:
        raise _refuse("The voice sample is larger than 10 MB: upload a shorter recording.")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError):
        raise _refuse(
            "The voice sample is not a readable audio file: upload WAV, MP3 or M4A."
        ) from None
    with container:
        if not container.streams.audio:
            raise _refuse("The voice sample is not a readable audio file: upload WAV, MP3 or M4A.")
        kind = _CONTAINERS.get(container.format.name)
        if kind is None:
            raise _refuse(
                f"The voice sample is {container.format.long_name or container.format.name}"
                " audio: upload WAV, MP3 or M4A."
            )
        if container.streams.video:
            raise _refuse("The voice sample must hold one audio track and no video.")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        if kind == "WAV" and codec not in _WAV_CODECS:
            raise _refuse("WAV voice samples must be 16-bit PCM.")
        if kind == "M4A" and codec not in _M4A_CODECS:
            raise _refuse("M4A voice samples must hold AAC audio.")
        rate, channels = stream.codec_context.sample_rate or 0, stream.codec_context.channels
        if rate < MIN_RATE:
            raise _refuse(f"The voice sample is recorded at {rate} Hz: 16 kHz or more is needed.")
        if channels > 2:
            raise _refuse("The voice sample must be mono or stereo.")
        samples = 0
        try:
            for frame in container.decode(stream):
                samples += frame.samples
                if samples > (MAX_SECONDS + 1) * rate:  # enough to know it is too long
                    break
        except (av.FFmpegError, ValueError):
            raise _refuse("The voice sample is damaged: it cannot be decoded to the end.") from None
    seconds = samples / rate
    if seconds < MIN_SECONDS:
        raise _refuse(f"The voice sample lasts {seconds:.1f} s: record at least 5 seconds.")
    if seconds > MAX_SECONDS + _PADDING_S:
        raise _refuse("The voice sample lasts more than 60 s: upload 5 to 60 seconds.")
    return SampleInfo(kind, seconds, rate, channels)


def _read(value: Any) -> bytes:
    handle: IO[bytes] = getattr(value, "file", value)
    handle.seek(0)
    data = handle.read()
    handle.seek(0)
    return data


def validate_voice_sample(value: Any) -> None:
    """Model field validator: a newly uploaded sample is inspected; a stored one was already."""
    if not value or getattr(value, "_committed", False):
        return
    if (getattr(value, "size", 0) or 0) > MAX_BYTES:  # refused before it is read into memory
        raise _refuse("The voice sample is larger than 10 MB: upload a shorter recording.")
    inspect_sample(_read(value))
