"""Offline speech with espeak-ng: robotic but instant, in English and Mandarin.

espeak-ng runs as an asyncio subprocess reading the text from stdin (text starting with "-"
is then never taken for an option) and writing a WAV to stdout as it speaks, so the first
chunk leaves long before the last sentence is synthesised. An avatar's espeak-ng settings
(voice and variant, pitch, rate) are used when set; its CosyVoice voice ids mean nothing here,
and a voice espeak-ng does not know falls back to the language's default voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import subprocess
from collections.abc import AsyncIterator

from django.conf import settings

from chat.providers.base import TTSError, TTSProvider, Voice
from chat.providers.cloud import timed_out

logger = logging.getLogger(__name__)

LANGUAGE_VOICES = {"en-us": "en-us", "en-gb": "en-gb", "en": "en-us", "zh-cn": "cmn", "zh": "cmn"}
SAMPLE_RATE = 22050
_CHUNK = 4096


@functools.cache
def known_voices() -> frozenset[str]:
    """The voice and variant names this espeak-ng install accepts (asked once per process)."""
    names: set[str] = set()
    for listing in ("--voices", "--voices=variant"):
        try:
            out = subprocess.run(
                ["espeak-ng", listing], capture_output=True, text=True, check=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return frozenset()
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 5:
                names.add(fields[1].lower())
                names.add(fields[4].rsplit("/", 1)[-1].lower())
    names.discard("variant")
    return frozenset(names)


def espeak_voice(voice: str, language: str) -> str:
    """`voice` when espeak-ng knows it ("en-us", "en-us+f3", "cmn"), else the language's voice."""
    default = LANGUAGE_VOICES.get(
        language.lower(), LANGUAGE_VOICES.get(language[:2].lower(), "en-us")
    )
    if not voice:
        return default
    base, _, variant = voice.lower().partition("+")
    voices = known_voices()
    if base in voices and (not variant or variant in voices):
        return voice
    return default


def espeak_parameters(voice: Voice) -> tuple[int | None, int | None]:
    """The voice's (speed in words per minute, pitch) as espeak-ng is given them, clamped to
    what it accepts; None leaves espeak-ng's default. The render worker's phoneme timing
    speaks with the same."""
    speed = None if voice.rate is None else max(80, min(450, voice.rate))
    pitch = None if voice.pitch is None else max(0, min(99, voice.pitch))
    return speed, pitch


def _pcm_offset(header: bytes) -> int | None:
    """Where the samples start in espeak-ng's streamed WAV (None until the header is complete)."""
    if len(header) < 12:
        return None
    if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise TTSError("espeak-ng wrote no WAV", provider_message=repr(header[:16]))
    position = 12
    while position + 8 <= len(header):
        kind, size = (
            header[position : position + 4],
            struct.unpack("<I", header[position + 4 : position + 8])[0],
        )
        if kind == b"fmt ":
            if position + 8 + 16 > len(header):
                return None
            channels, rate = struct.unpack("<HI", header[position + 10 : position + 16])
            bits = struct.unpack("<H", header[position + 22 : position + 24])[0]
            if (channels, rate, bits) != (1, SAMPLE_RATE, 16):
                raise TTSError(
                    "espeak-ng wrote an unexpected audio format",
                    provider_message=f"{channels} ch, {rate} Hz, {bits} bit",
                )
        if kind == b"data":
            return position + 8
        position += 8 + size
    return None


class EspeakTTS(TTSProvider):
    name = "espeak"
    sample_rate = SAMPLE_RATE

    def __init__(self, timeout_s: float, binary: str = "espeak-ng") -> None:
        self.timeout_s = timeout_s
        self.binary = binary

    @classmethod
    def from_settings(cls) -> EspeakTTS:
        return cls(settings.PROVIDER_TIMEOUT_S)

    @staticmethod
    def options(voice: Voice) -> list[str]:
        """Pitch and rate arguments, clamped to what espeak-ng accepts."""
        speed, pitch = espeak_parameters(voice)
        args: list[str] = []
        if pitch is not None:
            args += ["-p", str(pitch)]
        if speed is not None:
            args += ["-s", str(speed)]
        return args

    async def stream(self, text: str, voice: Voice | str, language: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        chosen = Voice.of(voice)
        name = await asyncio.to_thread(espeak_voice, chosen.espeak or chosen.preset, language)
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary,
                "-v",
                name,
                *self.options(chosen),
                "--stdout",
                "--stdin",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TTSError("espeak-ng is not installed", provider_message=str(exc)) from None
        assert process.stdin and process.stdout and process.stderr
        try:
            process.stdin.write(text.encode())
            await process.stdin.drain()
            process.stdin.close()
            async for chunk in self._pcm(process.stdout):
                yield chunk
            if await process.wait() != 0:
                stderr = (await process.stderr.read()).decode(errors="replace").strip()
                raise TTSError("espeak-ng failed", provider_message=stderr)
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def _pcm(self, stdout: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """PCM chunks of even length from the WAV stream, the header skipped."""
        header = b""
        offset: int | None = None
        carry = b""
        while True:
            try:
                data = await asyncio.wait_for(stdout.read(_CHUNK), self.timeout_s)
            except TimeoutError:
                raise timed_out(TTSError, "espeak-ng", self.timeout_s) from None
            if not data:
                break
            if offset is None:
                header += data
                offset = _pcm_offset(header)
                if offset is None:
                    continue
                data, header = header[offset:], b""
            data = carry + data
            usable = len(data) - len(data) % 2
            carry = data[usable:]
            if usable:
                yield data[:usable]
