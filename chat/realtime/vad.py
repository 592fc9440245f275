"""Energy-based voice activity detection over 16 kHz PCM16, in plain numpy.

Why energy and not a model: it costs microseconds per frame inside the event loop, needs no
download, and the streaming recogniser after it is the real judge of what was said; the VAD
only has to say "someone started talking" (for barge-in) and "they stopped" (to end an
utterance without an explicit `asr_stop`). The noise floor follows the quietest frames of the
last few seconds (minimum statistics), so a fan or a noisy room raises the threshold by itself.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chat.providers.base import SPEECH_RATE

SpeechEvent = Literal["speech_start", "speech_end"]

# Level of digital silence, so that log10 never sees zero.
_MIN_DB = -100.0


@dataclass(frozen=True)
class VADConfig:
    """Tuning of the detector; the defaults suit a headset or laptop microphone."""

    sample_rate: int = SPEECH_RATE
    frame_ms: int = 20
    # Speech must last this long before it counts as a start (short clicks do not).
    start_ms: int = 100
    # This much silence ends an utterance.
    end_ms: int = 600
    # A frame is speech when it is this far above the noise floor...
    margin_db: float = 10.0
    # ...and at least this loud (dBFS), so digital silence does not make every breath speech.
    min_speech_db: float = -45.0
    # Once speaking, a frame still counts as speech this much below the start threshold.
    hysteresis_db: float = 4.0
    # The floor is a low percentile of the frame levels of this last stretch of audio...
    floor_window_ms: int = 3000
    floor_percentile: float = 10.0
    # ...which starts out holding this much of an assumed quiet room, so that a stream that
    # begins with speech is not taken for noise...
    prior_ms: int = 1000
    prior_db: float = -60.0
    # ...and a level that stayed within this many dB for this long is noise, whatever it is.
    stationary_ms: int = 1000
    stationary_db: float = 6.0
    # An utterance longer than this is ended anyway (the recogniser needs an end).
    max_utterance_ms: int = 30000

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000


def frame_db(frame: np.ndarray) -> float:
    """RMS level of one frame of int16 samples in dBFS."""
    if not len(frame):
        return _MIN_DB
    power = float(np.mean(np.square(frame.astype(np.float32)))) / (32768.0 * 32768.0)
    return max(_MIN_DB, 10.0 * float(np.log10(power))) if power > 0 else _MIN_DB


def frame_dbs(frames: np.ndarray) -> list[float]:
    """`frame_db` of each row of a 2-D array of int16 frames, in one pass over all of them."""
    power = np.mean(np.square(frames.astype(np.float32)), axis=1).astype(np.float64)
    # a silent frame's zero power reads as the floor, as in frame_db (no log of zero)
    levels = 10.0 * np.log10(np.maximum(power / (32768.0 * 32768.0), 1e-30))
    return np.maximum(levels, _MIN_DB).tolist()


class EnergyVAD:
    """Feed fixed-size frames with `update`; it returns "speech_start"/"speech_end" or None.

    A start is reported once `start_ms` of speech frames were seen (with a little tolerance for
    dips), so the caller should keep a pre-roll of recent frames to give the recogniser the
    beginning of the word too.
    """

    def __init__(self, config: VADConfig | None = None) -> None:
        self.config = config or VADConfig()
        cfg = self.config
        # Frame levels of the last floor window (float32, as they were kept in numpy before),
        # in a ring and, for the percentile, in order: the floor is one lookup per frame and
        # the update a bisection, instead of a partition of the whole window every 20 ms.
        size = max(1, cfg.floor_window_ms // cfg.frame_ms)
        self._ring = array("f", bytes(4 * size))
        self._count = min(size, cfg.prior_ms // cfg.frame_ms)
        for i in range(self._count):
            self._ring[i] = cfg.prior_db
        self._sorted = sorted(self._ring[: self._count])
        self._pos = self._count % size
        # the levels of the last stationary stretch (newest last)
        stationary = min(size, max(2, cfg.stationary_ms // cfg.frame_ms))
        self._recent: deque[float] = deque(self._ring[: self._count], maxlen=stationary)
        self._start_frames = max(1, cfg.start_ms // cfg.frame_ms)
        self._end_frames = max(1, cfg.end_ms // cfg.frame_ms)
        self._max_frames = max(1, cfg.max_utterance_ms // cfg.frame_ms)
        self.speaking = False
        self._run = 0  # speech evidence before a start / silent frames during speech
        self._speech_frames = 0
        self.last_db = _MIN_DB

    @property
    def noise_floor_db(self) -> float:
        if not self._count:
            return _MIN_DB
        k = int(self.config.floor_percentile / 100.0 * (self._count - 1))
        floor = self._sorted[k]
        recent = self._recent
        if len(recent) == recent.maxlen and max(recent) - min(recent) < self.config.stationary_db:
            floor = max(floor, sum(recent) / len(recent))
        return floor

    @property
    def threshold_db(self) -> float:
        return max(self.noise_floor_db + self.config.margin_db, self.config.min_speech_db)

    @property
    def rising(self) -> bool:
        """Speech-like frames were just heard but are not yet a start (they may be a click)."""
        return not self.speaking and self._run > 0

    @property
    def quiet_left_s(self) -> float | None:
        """While speaking: how many seconds more of quiet end the utterance."""
        if not self.speaking:
            return None
        return (self._end_frames - self._run) * self.config.frame_ms / 1000

    def reset(self) -> None:
        """Forget the current utterance (the noise floor is kept)."""
        self.speaking = False
        self._run = 0
        self._speech_frames = 0

    def update(self, frame: np.ndarray) -> SpeechEvent | None:
        """Classify one frame of `config.frame_samples` int16 samples."""
        return self.update_level(frame_db(frame))

    def update_level(self, level: float) -> SpeechEvent | None:
        """Classify the next frame by its level (`frame_db`, or one row of `frame_dbs`)."""
        self.last_db = level
        threshold = self.threshold_db
        ring, sorted_levels = self._ring, self._sorted
        if self._count == len(ring):  # the oldest level leaves the window
            del sorted_levels[bisect_left(sorted_levels, ring[self._pos])]
        ring[self._pos] = level
        kept = ring[self._pos]  # as float32
        insort(sorted_levels, kept)
        self._recent.append(kept)
        self._pos = (self._pos + 1) % len(ring)
        self._count = min(self._count + 1, len(ring))
        if not self.speaking:
            if level >= threshold:
                self._run += 1
            else:
                self._run = max(0, self._run - 1)
            if self._run >= self._start_frames:
                self.speaking = True
                self._run = 0
                self._speech_frames = self._start_frames
                return "speech_start"
            return None

        self._speech_frames += 1
        if level >= threshold - self.config.hysteresis_db:
            self._run = 0
        else:
            self._run += 1
        if self._run >= self._end_frames or self._speech_frames >= self._max_frames:
            self.reset()
            return "speech_end"
        return None
