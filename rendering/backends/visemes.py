"""Mouth shapes over time: visemes from phonemes when they are known, else from the audio.

A mouth shape is four numbers (SHAPE_FIELDS): `open` (jaw and lips apart, 0..1), `spread`
(corners out, lips thin; negative is rounded, corners in), `press` (lips sealed, the rest
gap closed) and `bite` (lower lip up against the upper teeth). Six visemes are points of that
space: closed (m b p), rounded (o u w), spread (i e), open (a), teeth (f v) and rest (the
portrait's own mouth).

Coarticulation follows the dominance model of Cohen and Massaro: every phone pulls the mouth
towards its target with a strength that is flat over the phone and falls off smoothly
outside it, and the shape at any moment is the dominance-weighted mean of the targets. Lips
that must close (bilabials) pull hard and the consonants the lips barely show (t, k, n...)
pull weakly, so they take their neighbours' shapes; shapes blend, nothing pops. The mouth
moves slightly ahead of the sound (LEAD_S), as speakers' lips do.

Without phonemes (CosyVoice, uploads), each video frame's spectrum gives a soft guess:
loudness opens the mouth, the spectral centroid of the voiced band tells rounded (low) from
spread (high) vowels, energy above 3 kHz marks fricatives (teeth together), and a short
silence inside speech is a stop closure (lips pressed); the same smoothing blends them.
"""

from __future__ import annotations

import numpy as np

from rendering.backends.phonemes import Phone
from rendering.media import Speech, loudness

SHAPE_FIELDS = ("open", "spread", "press", "bite")
REST = np.zeros(4)  # the portrait's own mouth
VISEMES = {
    "rest": REST,
    "closed": np.array([0.0, 0.0, 1.0, 0.0]),
    "rounded": np.array([0.4, -1.0, 0.0, 0.0]),
    "spread": np.array([0.3, 0.8, 0.0, 0.0]),
    "open": np.array([1.0, 0.15, 0.0, 0.0]),
    "teeth": np.array([0.12, 0.15, 0.0, 1.0]),
}
# between the visemes: the middle vowel, sibilants (teeth together), the tongue consonants
SCHWA = np.array([0.45, 0.1, 0.0, 0.0])
OPEN_ROUNDED = np.array([0.7, -0.6, 0.0, 0.0])  # "o" of "bob", "aw" of "bought"
SIBILANT = np.array([0.1, 0.5, 0.0, 0.0])
TONGUE = np.array([0.22, 0.1, 0.0, 0.0])
LEAD_S = 0.03
FALL_S = 0.045  # how far outside its span a phone's pull fades (Gaussian width)


def phone_target(symbol: str) -> tuple[np.ndarray, float, float]:
    """Target shape, dominance and fall-off (s) of an espeak-ng phoneme mnemonic (English
    and Mandarin): lips that must close pull hard but only close by, vowels reach further."""
    s = symbol.strip("'`,%=")
    if s.startswith("("):  # a language switch, "(en)": no sound of its own
        return REST, 0.0, FALL_S
    if not s or s[0] in "_#":
        return REST, 0.6, FALL_S
    first = s[0]
    if first in "pbm":
        return VISEMES["closed"], 4.0, 0.025
    if first in "fv":
        return VISEMES["teeth"], 3.0, 0.02
    if first in "0O":
        return OPEN_ROUNDED, 1.2, FALL_S
    if first in "ouUwy":
        return VISEMES["rounded"], 1.2, FALL_S
    if first in "iIeEj":
        return VISEMES["spread"], 1.0, FALL_S
    if first in "aAV&":
        return VISEMES["open"], 1.0, FALL_S
    if first in "@3":
        return SCHWA, 0.6, FALL_S
    if first in "szSZTDcx" or s in ("tS", "dZ"):
        return SIBILANT, 0.7, 0.03
    return TONGUE, 0.25, FALL_S


def from_phones(phones: list[Phone], frames: int, fps: int, level: np.ndarray) -> np.ndarray:
    """(frames, 4) mouth shapes from timed phonemes, opening scaled a little by loudness."""
    # each frame is the mean of the shape over its 40 ms (a camera's shutter): no jumps
    shutter = np.linspace(-0.4, 0.4, 5) / fps
    t = ((np.arange(frames) + 0.5) / fps + LEAD_S)[:, None] + shutter[None]
    total = np.full(t.shape, 1e-3)
    acc = total[..., None] * REST
    for phone in phones:
        target, strength, fall = phone_target(phone.symbol)
        centre = (phone.start_s + phone.end_s) / 2
        half = (phone.end_s - phone.start_s) / 2
        outside = np.maximum(0.0, np.abs(t - centre) - half)
        d = strength * np.exp(-((outside / fall) ** 2))
        total += d
        acc += d[..., None] * target
    shapes = (acc / total[..., None]).mean(axis=1)
    envelope = np.convolve(level, np.ones(3) / 3, mode="same")
    shapes[:, 0] *= 0.55 + 0.45 * np.clip(envelope / max(float(envelope.max()), 1e-6), 0, 1)
    return shapes


def spectral_features(speech: Speech, fps: int, frames: int) -> dict[str, np.ndarray]:
    """Per video frame: centroid of the voiced band (Hz) and the share of energy above 3 kHz."""
    size = 2048  # ~43 ms at 48 kHz, centred on the frame
    hop = speech.rate / fps
    centres = ((np.arange(frames) + 0.5) * hop).astype(np.int64)
    padded = np.concatenate([np.zeros(size // 2, np.float32), speech.samples, np.zeros(size)])
    freqs = np.fft.rfftfreq(size, 1 / speech.rate)
    voiced = (freqs >= 250) & (freqs <= 3500)
    high = freqs >= 3000
    band = (freqs >= 100) & (freqs <= 8000)
    window = np.hanning(size).astype(np.float32)
    centroid = np.zeros(frames)
    high_share = np.zeros(frames)
    for start in range(0, frames, 256):  # bounded memory for long replies
        idx = centres[start : start + 256, None] + np.arange(size)[None]
        magnitude = np.abs(np.fft.rfft(padded[idx] * window, axis=1))
        power = magnitude**2
        v = magnitude[:, voiced]  # magnitudes: the second formant counts beside the first
        centroid[start : start + 256] = (v * freqs[voiced]).sum(1) / (v.sum(1) + 1e-12)
        high_share[start : start + 256] = power[:, high].sum(1) / (power[:, band].sum(1) + 1e-12)
    return {"centroid": centroid, "high_share": high_share}


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def from_audio(speech: Speech, frames: int, fps: int, level: np.ndarray) -> np.ndarray:
    """(frames, 4) mouth shapes guessed from the sound of each frame, then blended."""
    feats = spectral_features(speech, fps, frames)
    loud = smoothstep(0.1, 0.9, level)
    silent = 1 - smoothstep(0.08, 0.25, level)
    fricative = smoothstep(0.2, 0.5, feats["high_share"]) * (1 - silent)
    vowel = (1 - fricative) * (1 - silent)
    rounded = 1 - smoothstep(800, 1100, feats["centroid"])
    spread = smoothstep(1500, 1900, feats["centroid"])
    opened = np.clip(1 - rounded - spread, 0, 1)
    shapes = np.outer(silent, REST) + np.outer(fricative, SIBILANT)
    for weight, name in ((rounded, "rounded"), (spread, "spread"), (opened, "open")):
        target = np.outer(vowel * weight, VISEMES[name])
        target[:, 0] *= 0.35 + 0.65 * loud  # loud vowels open wide, quiet ones less
        shapes += target
    # a short silence between sounds is a stop's closure: lips pressed
    gap = _short_gaps(silent > 0.5, round(0.15 * fps))
    shapes[gap] = VISEMES["closed"] * 0.8 + REST * 0.2
    return _blend(shapes, fps)


def _short_gaps(quiet: np.ndarray, longest: int) -> np.ndarray:
    """Runs of quiet frames no longer than `longest`, with sound on both sides."""
    out = np.zeros_like(quiet)
    i, n = 0, len(quiet)
    while i < n:
        if not quiet[i]:
            i += 1
            continue
        j = i
        while j < n and quiet[j]:
            j += 1
        if i > 0 and j < n and j - i <= longest:
            out[i:j] = True
        i = j
    return out


def _blend(shapes: np.ndarray, fps: int) -> np.ndarray:
    """Coarticulation of frame-wise guesses: a Gaussian over ~±2 frames, led by LEAD_S."""
    sigma = FALL_S * fps * 0.6
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(shapes, ((radius, radius), (0, 0)), mode="edge")
    out = np.stack(
        [np.convolve(padded[:, k], kernel, mode="valid") for k in range(shapes.shape[1])], 1
    )
    lead = round(LEAD_S * fps)
    if lead:
        out = np.concatenate([out[lead:], np.repeat(out[-1:], lead, axis=0)])
    return out


def mouth_shapes(speech: Speech, fps: int, frames: int, phones: list[Phone] | None) -> np.ndarray:
    """(frames, 4) mouth shapes for `speech`; from `phones` when they are given."""
    level = loudness(speech, fps, frames)
    if phones:
        return from_phones(phones, frames, fps, level)
    return from_audio(speech, frames, fps, level)
