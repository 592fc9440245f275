"""The three provider interfaces and their one error type per stage.

A backend is one small class. Streaming is the primary form (async iterators); the one-shot
forms are derived from it unless a backend has a better native one-shot call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Self

from chat.protocol import Err

# The rate speech is recognised at: uploads are decoded to it, ASR streams default to it.
SPEECH_RATE = 16000


class ProviderError(Exception):
    """A provider failed. `code` is the protocol's error code, `retryable` tells the client
    whether trying again may help, `provider_message` is what the provider itself said."""

    code: str = Err.INTERNAL

    def __init__(
        self, message: str, *, retryable: bool = False, provider_message: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.provider_message = provider_message


class ASRError(ProviderError):
    code: str = Err.ASR_FAILED


class LLMError(ProviderError):
    code: str = Err.LLM_FAILED


class TTSError(ProviderError):
    code: str = Err.TTS_FAILED


class Configurable:
    """Backends are built by the registry from Django settings through `from_settings()`."""

    @classmethod
    def from_settings(cls) -> Self:
        return cls()

    @classmethod
    def preload(cls) -> None:
        """Make what every instance shares and the first call would otherwise make while other
        sessions wait (a web process calls this at start-up; the class's module is loaded)."""

    def close(self) -> None:
        """Release what the backend holds open (connections kept ready); it is not used again."""


@dataclass(frozen=True)
class Hypothesis:
    """A recognition result: interim (final=False) or the final text of an utterance (or of one
    sentence of it: cloud recognisers finalise sentence by sentence). A stream that heard no
    words ends without a final hypothesis."""

    text: str
    final: bool


class ASRStream(ABC):
    """One streaming recognition: feed PCM16 mono chunks, read hypotheses, then finish."""

    @abstractmethod
    async def feed(self, pcm: bytes) -> None: ...

    @abstractmethod
    async def finish(self) -> None:
        """No more audio: flush; the final hypotheses still arrive on `results()`."""

    @abstractmethod
    def results(self) -> AsyncIterator[Hypothesis]:
        """Hypotheses as they come; ends after `finish()` once everything was recognised."""

    @abstractmethod
    async def close(self) -> None:
        """Abandon the stream (barge-in, session end); never raises."""


class ASRProvider(Configurable, ABC):
    name: str

    @abstractmethod
    def stream(self, language: str, sample_rate: int = SPEECH_RATE) -> ASRStream: ...

    @abstractmethod
    async def recognize_file(self, path: str, url: str, language: str) -> str:
        """The text of one recorded utterance: a local PCM16/WAV `path` (16 kHz mono, as the
        service normalises uploads) and its public `url` for cloud services."""


@dataclass
class ChatTurn:
    """What the LLM needs to answer: the avatar's persona and the conversation so far
    (oldest first, the user's new message last)."""

    persona: str
    history: list[dict[str, str]] = field(default_factory=list)
    avatar_name: str = ""
    greeting: str = ""
    language: str = "en-US"


class LLMProvider(Configurable, ABC):
    name: str

    @abstractmethod
    def stream_reply(self, turn: ChatTurn) -> AsyncIterator[str]:
        """The reply, piece by piece (token deltas)."""

    async def reply(self, turn: ChatTurn) -> str:
        return "".join([piece async for piece in self.stream_reply(turn)])


@dataclass(frozen=True)
class Voice:
    """Who speaks: each backend takes the part it can use. `cloned` is a ready cloned CosyVoice
    voice, tried before `preset` (a CosyVoice preset id); `espeak`, `pitch` and `rate` are the
    offline engine's settings. A plain string is a preset (`Voice.of`)."""

    preset: str = ""
    cloned: str = ""
    espeak: str = ""
    pitch: int | None = None
    rate: int | None = None

    @classmethod
    def of(cls, voice: Voice | str) -> Voice:
        return voice if isinstance(voice, Voice) else cls(preset=voice)


class TTSProvider(Configurable, ABC):
    """Text to PCM16 mono audio at `sample_rate`."""

    name: str
    sample_rate: int

    @abstractmethod
    def stream(self, text: str, voice: Voice | str, language: str) -> AsyncIterator[bytes]:
        """PCM16 chunks, the first as soon as it is ready."""

    async def synthesize(self, text: str, voice: Voice | str, language: str) -> bytes:
        return b"".join([chunk async for chunk in self.stream(text, voice, language)])
