"""The phonemes of an espeak-ng reply with their times, for visemes that follow the sounds.

The offline TTS (chat.providers.tts.espeak) runs the espeak-ng program once per sentence and
the reply's WAV is those outputs back to back. The same engine as a library (libespeak-ng,
through ctypes) reports a phoneme event at the sample where each phoneme starts and writes
the very same samples, so the render worker synthesises the reply's sentences again and
keeps the phonemes only when they match the stored audio (each sentence's loudness envelope
nearly the same, within a few ms of where it should be): speech from any other
source (DashScope CosyVoice, uploads, another voice) is never given wrong timings, it falls
back to visemes from the audio itself. Synthesis runs at about 100× real time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import pickle
import select
import signal
import threading
import time
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
_RATE, _PITCH = 1, 3  # espeakRATE, espeakPITCH: what the program's -s and -p set
SLACK = 220  # samples (10 ms): how far the library's sentence may start from the program's
MIN_CORRELATION = 0.97
CHILD_TIMEOUT_S = 30.0  # of the loudness envelopes: the same speech, not just similar


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

    def synthesize(
        self, text: str, voice: str, speed: int | None = None, pitch: int | None = None
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 samples at self.rate and (phoneme, first sample) of `text` in `voice`, at
        `speed` words per minute and `pitch` when given (else espeak-ng's defaults)."""
        data = text.encode()
        self._pcm, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise OSError(f"espeak-ng has no voice {voice}")
        for parameter, value in ((_RATE, speed), (_PITCH, pitch)):
            if value is not None and self.lib.espeak_SetParameter(parameter, value, 0) != 0:
                raise OSError(f"espeak-ng refused the setting {value}")
        flags = _CHARS_UTF8 | _ENDPAUSE
        if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None):
            raise OSError("espeak-ng failed to speak")
        self.lib.espeak_Synchronize()
        pcm = np.concatenate(self._pcm) if self._pcm else np.zeros(0, np.int16)
        return pcm, self._events


def _synthesize_here(
    sentences: list[str], voice: str, speed: int | None, pitch: int | None
) -> tuple[list, list, int]:
    chunks: list[np.ndarray] = []
    phones: list[list[Phone]] = []
    engine = Espeak.get()
    for sentence in sentences:
        pcm, events = engine.synthesize(sentence, voice, speed, pitch)
        rate = engine.rate
        ends = [sample for _, sample in events[1:]] + [len(pcm)]
        phones.append(
            [
                Phone(symbol, start / rate, end / rate)
                for (symbol, start), end in zip(events, ends, strict=True)
                if end > start
            ]
        )
        chunks.append(pcm)
    return chunks, phones, engine.rate


def synthesize(
    sentences: list[str], voice: str, speed: int | None = None, pitch: int | None = None
) -> tuple[list[np.ndarray], list[list[Phone]], int]:
    """Each sentence spoken on its own as the offline TTS does (with an avatar's speed and
    pitch when set): its samples and its phones (times from the sentence's start), and the
    sample rate.

    The library keeps state from one text to the next (a voice spoken before changes the
    next one's timing), so each call runs in a forked child that has never spoken: it
    behaves as the program does, which starts afresh (~10 ms to fork). A plain fork, not
    multiprocessing: a Celery pool process is daemonic and may not start those."""
    receive, send = os.pipe()
    with Espeak._lock:
        pid = os.fork()
        if pid == 0:  # the child: speak, hand the result over, leave without clean-up
            code = 0
            try:
                os.close(receive)
                try:
                    result: object = _synthesize_here(sentences, voice, speed, pitch)
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    result = OSError(str(exc))
                with os.fdopen(send, "wb") as out:
                    out.write(pickle.dumps(result))
            except BaseException:  # noqa: BLE001 - nothing may escape a forked child
                code = 1
            finally:
                os._exit(code)
        os.close(send)
        try:
            data = _read_all(receive, time.monotonic() + CHILD_TIMEOUT_S)
        finally:
            os.close(receive)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not data:
        raise OSError("espeak-ng stopped or took too long")
    result = pickle.loads(data)  # noqa: S301 - our own child's output
    if isinstance(result, OSError):
        raise result
    return result


def _read_all(fd: int, deadline: float) -> bytes:
    """Everything the child writes to `fd` until it closes it; b"" past the deadline."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


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


def _envelope(pcm: np.ndarray, hop: int) -> np.ndarray:
    count = len(pcm) // hop
    frames = pcm[: count * hop].astype(np.float64).reshape(count, hop)
    return np.sqrt(np.mean(frames**2, axis=1))


def _place(stored: np.ndarray, pcm: np.ndarray, at: int, rate: int) -> int | None:
    """Where `pcm` lies in `stored` near sample `at`, None when it is not there.

    The program starts fresh for each sentence; the library, having spoken before, gives
    the same phonemes at the same times but not the same samples (its voice's jitter runs
    on), and may start a few samples off: so the loudness envelopes (5 ms steps) are
    compared, at shifts of up to SLACK samples."""
    hop = rate // 200
    target = _envelope(pcm, hop)
    if len(target) < 4 or not target.any():
        return None
    best: tuple[float, int] | None = None
    for shift in range(-SLACK, SLACK + 1, hop // 2):
        start = at + shift
        if start < 0:
            continue
        part = _envelope(stored[start : start + len(pcm)], hop)
        if len(part) < len(target) - 2 or not part.any():
            continue
        n = min(len(part), len(target))
        score = float(np.corrcoef(part[:n], target[:n])[0, 1])
        if best is None or score > best[0]:
            best = (score, start)
    if best is None or best[0] < MIN_CORRELATION:
        return None
    return best[1]


def espeak_alignment(
    audio: Path,
    sentences: list[str],
    voice: str,
    speed: int | None = None,
    pitch: int | None = None,
) -> list[Phone] | None:
    """The phones of `audio` when it is espeak-ng speaking `sentences` in `voice` (at `speed`
    words per minute and `pitch`, the avatar's settings, when given)."""
    stored = read_wav(audio)
    if stored is None or not sentences:
        return None
    try:
        chunks, phones, rate = synthesize(sentences, voice, speed, pitch)
    except OSError as exc:
        log.info("no phoneme timing: %s", exc)
        return None
    pcm, stored_rate = stored
    if stored_rate != rate:
        return None
    out: list[Phone] = []
    cursor = 0
    for chunk, sentence_phones in zip(chunks, phones, strict=True):
        start = _place(pcm, chunk, cursor, rate)
        if start is None:
            return None
        offset = start / rate
        out.extend(Phone(p.symbol, p.start_s + offset, p.end_s + offset) for p in sentence_phones)
        cursor = start + len(chunk)
    return out if abs(cursor - len(pcm)) <= SLACK * len(chunks) else None
