"""The phonemes of an espeak-ng reply with their times, for visemes that follow the sounds.

The offline TTS (chat.providers.tts.espeak) runs the espeak-ng program once per sentence and
the reply's WAV is those outputs back to back. The same engine as a library (libespeak-ng,
through ctypes) reports a phoneme event at the sample where each phoneme starts and writes
the very same samples, so the render worker synthesises the reply's sentences again and
keeps the phonemes only when its samples equal the stored audio: speech from any other
source (DashScope CosyVoice, uploads, another voice) is never given wrong timings, it falls
back to visemes from the audio itself. Synthesis runs at about 100× real time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the text is spoken
_PHONEME_EVENTS = 0x0001  # espeakINITIALIZE_PHONEME_EVENTS
_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: a failure returns instead of exiting
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # the pause the espeak-ng program adds after the text (samples match)
_POS_CHARACTER = 1
_EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Phone:
    """One phoneme (espeak-ng's mnemonic, "b", "O:", "_" for a pause) and its span in s."""

    symbol: str
    start_s: float
    end_s: float


class Espeak:
    """libespeak-ng in synchronous mode; one text at a time (the library is not reentrant)."""

    _lock = threading.Lock()
    _instance: Espeak | None = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _PHONEME_EVENTS | _DONT_EXIT)
        if self.rate <= 0:
            raise OSError("espeak-ng cannot start")
        self._pcm: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _Callback(self._collect)  # kept alive as long as the library uses it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, wav: ctypes._Pointer, count: int, events: ctypes._Pointer) -> int:
        if count > 0:
            self._pcm.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].id.decode(errors="replace"), events[i].sample))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 samples at self.rate and (phoneme, first sample) of `text` in `voice`."""
        data = text.encode()
        self._pcm, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise OSError(f"espeak-ng has no voice {voice}")
        flags = _CHARS_UTF8 | _ENDPAUSE
        if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None):
            raise OSError("espeak-ng failed to speak")
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.int16)
        return pcm, self._events


def synthesize(sentences: list[str], voice: str) -> tuple[np.ndarray, list[Phone], int]:
    """The sentences spoken one after the other as the offline TTS does: samples, phones
    (times from the start of the first sentence) and the sample rate."""
    with Espeak._lock:
        engine = Espeak.get()
        chunks: list[np.ndarray] = []
        marks: list[tuple[str, int]] = []
        offset = 0
        for sentence in sentences:
            pcm, events = engine.synthesize(sentence, voice)
            marks.extend((symbol, offset + sample) for symbol, sample in events)
            chunks.append(pcm)
            offset += len(pcm)
        rate = engine.rate
    phones = [
        Phone(symbol, start / rate, (marks[i + 1][1] if i + 1 < len(marks) else offset) / rate)
        for i, (symbol, start) in enumerate(marks)
    ]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return samples, [p for p in phones if p.end_s > p.start_s], rate


def read_wav(path: Path) -> tuple[np.ndarray, int] | None:
    """Mono 16-bit PCM samples and rate of a WAV file, None for anything else."""
    try:
        with wave.open(str(path), "rb") as handle:
            if handle.getnchannels() != 1 or handle.getsampwidth() != 2:
                return None
            frames = handle.readframes(handle.getnframes())
            return np.frombuffer(frames, dtype="<i2"), handle.getframerate()
    except (wave.Error, EOFError, OSError):
        return None


def espeak_alignment(audio: Path, sentences: list[str], voice: str) -> list[Phone] | None:
    """The phones of `audio` when it is exactly espeak-ng speaking `sentences` in `voice`."""
    stored = read_wav(audio)
    if stored is None or not sentences:
        return None
    try:
        samples, phones, rate = synthesize(sentences, voice)
    except OSError as exc:
        log.info("no phoneme timing: %s", exc)
        return None
    pcm, stored_rate = stored
    if stored_rate != rate or len(pcm) != len(samples):
        return None
    if np.max(np.abs(pcm.astype(np.int32) - samples.astype(np.int32)), initial=0) > 2:
        return None
    return phones
