"""What moves in a `lite` frame: head, breath, mouth shape and eyelids, as numbers per frame.

Each frame is PARAMS numbers: a 2×3 affine for the head (sway about the neck and the rise
and fall of breathing, which go on in the pauses so the face never freezes; the same whatever
is said, so speech moves nothing outside the mouth region), then one value per warp channel (warp.BASES): the four mouth-shape
fields from the visemes and the eyelid closing. Everything is deterministic, so a re-run
renders the same video.
"""

from __future__ import annotations

import math

import numpy as np

from rendering.backends.warp import BASES, Layout

PARAMS = 6 + len(BASES)
BLINK = np.array([0.45, 1.0, 1.0, 0.6, 0.25], dtype=np.float32)
BREATH_HZ = 0.23  # ~14 breaths a minute


class Motion:
    """Per-frame parameters from the mouth shapes and a fixed-seed idle motion.

    With `loop=True` the motion repeats seamlessly after its last frame (the idle clip played
    in a loop between replies): each sine's frequency is rounded to a whole number of cycles
    over the clip, and only blinks that end inside it are kept."""

    def __init__(self, layout: Layout, shapes: np.ndarray, fps: int, loop: bool = False) -> None:
        self.layout, self.fps = layout, fps
        self.frames = len(shapes)
        self.shapes = shapes.astype(np.float32)
        self.blink = self._blinks(self.frames, fps, loop)
        t = np.arange(self.frames, dtype=np.float64) / fps
        period = self.frames / fps if loop else None

        def hz(f: float) -> float:
            return f if period is None else max(1, round(f * period)) / period

        deg = math.pi / 180
        self.angle = deg * (
            0.8 * np.sin(2 * np.pi * hz(0.21) * t + 0.4) + 0.5 * np.sin(2 * np.pi * hz(0.37) * t)
        )
        breath = np.sin(2 * np.pi * hz(BREATH_HZ) * t)
        self.dx = 0.004 * np.sin(2 * np.pi * hz(0.16) * t + 1.1)
        self.dy = -0.0025 * breath  # no nod with speech: the mouth alone answers the sound
        self.scale = 1 + 0.003 * breath

    @staticmethod
    def _blinks(frames: int, fps: int, whole_only: bool = False) -> np.ndarray:
        rng = np.random.default_rng(20240601)
        blink = np.zeros(frames, dtype=np.float32)
        at = rng.uniform(0.8, 2.0) * fps
        while at < frames:
            start = int(at)
            if whole_only and start + len(BLINK) > frames:
                break
            span = BLINK[: max(0, min(len(BLINK), frames - start))]
            blink[start : start + len(span)] = span
            at += rng.uniform(2.5, 5.0) * fps
        return blink

    def params(self, start: int, end: int) -> np.ndarray:
        """(end - start, PARAMS) float32: affine row-major (2×3), then the warp channels."""
        sl = slice(start, end)
        angle, scale = self.angle[sl], self.scale[sl]
        w, h = self.layout.width, self.layout.height
        aspect = h / w
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        # rotate about the neck, below the mouth (normalised coordinates, aspect-corrected)
        mx, my = self.layout.mouth_centre
        px, py = mx / w * 2 - 1, min(1.0, my / h * 2 - 1 + 0.5)
        a11, a12, a21, a22 = cos, -sin * aspect, sin / aspect, cos
        tx = px - (a11 * px + a12 * py) + 2 * self.dx[sl]
        ty = py - (a21 * px + a22 * py) + 2 * self.dy[sl]
        head = np.stack([a11, a12, tx, a21, a22, ty], axis=1)
        return np.concatenate([head, self.shapes[sl], self.blink[sl, None]], axis=1).astype(
            np.float32
        )
