"""What moves in a `lite` frame: the face's geometry, the per-frame motion, the grids.

Positions are fractions of the portrait (the avatar's mouth_x/mouth_y; eyes are placed
relative to the mouth, which fits frontal, centred portraits). Each frame is eight numbers:
a 2×3 affine for the head (sway about the neck, a nod with speech), the mouth opening and
the eyelid closing, both in [0, 1]. Everything is deterministic, so a re-run renders the
same video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MOUTH_DROP = 0.034  # jaw drop at full loudness, fraction of height
EYE_DX, EYE_DY = 0.09, 0.24  # eyes relative to the mouth centre
EYE_CLOSE = 0.03  # how far the lid comes down, fraction of height
BLINK = np.array([0.45, 1.0, 1.0, 0.6, 0.25], dtype=np.float32)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def window(x: np.ndarray, centre: float, flat: float, fade: float) -> np.ndarray:
    """1 within `flat` of centre, falling smoothly to 0 at `flat + fade`."""
    return 1.0 - smoothstep(flat, flat + fade, np.abs(x - centre))


@dataclass(frozen=True)
class Face:
    mouth_x: float
    mouth_y: float
    width: int
    height: int

    def fields(self, h: int, w: int, device: torch.device) -> Fields:
        return Fields(self, h, w, device)


class Fields:
    """Sampling grids at one resolution: identity grid plus crops of displacement."""

    def __init__(self, face: Face, h: int, w: int, device: torch.device) -> None:
        self.h, self.w = h, w
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h  # fractions
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w
        gx, gy = np.meshgrid(xs * 2 - 1, ys * 2 - 1)
        self.gx = torch.from_numpy(gx)[None].to(device)  # (1, h, w), normalised [-1, 1]
        self.gy = torch.from_numpy(gy)[None].to(device)
        mx, my = face.mouth_x, face.mouth_y
        # mouth: below the mouth centre the face samples from higher up: the opening
        # stretches downwards and the chin drops
        drop = smoothstep(0.0, 1.6 * MOUTH_DROP, ys - my) * (1 - smoothstep(0.1, 0.2, ys - my))
        jaw = window(xs, mx, 0.11, 0.09)
        self.mouth = self._crop(-2 * MOUTH_DROP * np.outer(drop, jaw), device)
        # eyes: the region above each eye slides down over it
        lid = window(ys, my - EYE_DY, 0.012, 0.03)
        eyes = window(xs, mx - EYE_DX, 0.035, 0.025) + window(xs, mx + EYE_DX, 0.035, 0.025)
        self.eyes = self._crop(-2 * EYE_CLOSE * np.outer(lid, np.clip(eyes, 0, 1)), device)

    @staticmethod
    def _crop(field: np.ndarray, device: torch.device) -> tuple[slice, slice, torch.Tensor]:
        rows = np.flatnonzero(np.abs(field).max(axis=1) > 1e-6)
        cols = np.flatnonzero(np.abs(field).max(axis=0) > 1e-6)
        if not len(rows) or not len(cols):
            return slice(0, 0), slice(0, 0), torch.zeros(0, 0, device=device)
        r = slice(int(rows[0]), int(rows[-1]) + 1)
        c = slice(int(cols[0]), int(cols[-1]) + 1)
        return r, c, torch.from_numpy(np.ascontiguousarray(field[r, c])).to(device)

    def grid(self, params: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) source positions for grid_sample from (B, 8) frame parameters."""
        batch = params.shape[0]
        a = params[:, :6].reshape(batch, 6, 1, 1)
        # elementwise into one buffer: faster here than a (h*w, 3) @ (3, 2) matmul per frame
        grid = torch.empty(batch, self.h, self.w, 2, device=params.device)
        grid[..., 0] = a[:, 0] * self.gx + a[:, 1] * self.gy + a[:, 2]
        grid[..., 1] = a[:, 3] * self.gx + a[:, 4] * self.gy + a[:, 5]
        for (rows, cols, field), amount in ((self.mouth, params[:, 6]), (self.eyes, params[:, 7])):
            if field.numel():
                grid[:, rows, cols, 1] += amount.view(batch, 1, 1) * field
        return grid


class Motion:
    """Per-frame parameters from the loudness curve and a fixed-seed idle motion."""

    def __init__(self, face: Face, level: np.ndarray, fps: int) -> None:
        self.face, self.fps = face, fps
        self.frames = len(level)
        self.mouth = self._mouth(level)
        self.blink = self._blinks(self.frames, fps)
        t = np.arange(self.frames, dtype=np.float64) / fps
        speech = np.convolve(self.mouth, np.ones(9) / 9, mode="same")  # slow speech energy
        deg = math.pi / 180
        self.angle = deg * (
            0.8 * np.sin(2 * np.pi * 0.21 * t + 0.4) + 0.5 * np.sin(2 * np.pi * 0.37 * t)
        )
        self.dx = 0.004 * np.sin(2 * np.pi * 0.16 * t + 1.1)
        self.dy = 0.003 * np.sin(2 * np.pi * 0.27 * t) - 0.006 * speech
        self.scale = 1 + 0.004 * np.sin(2 * np.pi * 0.23 * t + 2.0)

    @staticmethod
    def _mouth(level: np.ndarray) -> np.ndarray:
        target = np.clip((level - 0.15) / 0.85, 0, 1) ** 0.8
        ahead = np.concatenate([target[1:], target[-1:]]) * 0.7  # open slightly before sound
        target = np.maximum(target, ahead)
        out = np.empty_like(target)
        value = 0.0
        for i, goal in enumerate(target):
            value = goal if goal > value else value + (goal - value) * 0.55
            out[i] = value
        return out

    @staticmethod
    def _blinks(frames: int, fps: int) -> np.ndarray:
        rng = np.random.default_rng(20240601)
        blink = np.zeros(frames, dtype=np.float32)
        at = rng.uniform(0.8, 2.0) * fps
        while at < frames:
            start = int(at)
            span = BLINK[: max(0, min(len(BLINK), frames - start))]
            blink[start : start + len(span)] = span
            at += rng.uniform(2.5, 5.0) * fps
        return blink

    def params(self, start: int, end: int) -> np.ndarray:
        """(end - start, 8) float32: affine row-major (2×3), mouth, blink."""
        sl = slice(start, end)
        angle, scale = self.angle[sl], self.scale[sl]
        aspect = self.face.height / self.face.width
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        # rotate about the neck, below the mouth (normalised coordinates, aspect-corrected)
        px, py = self.face.mouth_x * 2 - 1, min(1.0, self.face.mouth_y * 2 - 1 + 0.5)
        a11, a12, a21, a22 = cos, -sin * aspect, sin / aspect, cos
        tx = px - (a11 * px + a12 * py) + 2 * self.dx[sl]
        ty = py - (a21 * px + a22 * py) + 2 * self.dy[sl]
        return np.stack(
            [a11, a12, tx, a21, a22, ty, self.mouth[sl], self.blink[sl]], axis=1
        ).astype(np.float32)
