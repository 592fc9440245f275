"""The face as a mesh: landmarks, how each mouth shape moves them, and the fields that follow.

A Layout is the face's landmarks in pixels of the portrait being rendered: from the avatar's
`face` JSON (detected landmarks) or, for a drawn avatar without them, synthesised from the
hand-set mouth point and the image size. Each motion channel (BASES: the four mouth-shape
fields of visemes.SHAPE_FIELDS and the blink) moves the landmarks by a fixed displacement per
unit; anchors around the eyes, a ring around the face and the image border do not move. The
displacements are interpolated piecewise-linearly over a Delaunay triangulation of all those
points (a piecewise-affine warp) and then smoothed, once per portrait: a frame's warp is the
sum of the channels' fields times its parameters, so lips, jaw and cheeks move together, and
nothing outside the face ring moves. The fields are forward displacements; sampling at the
output position minus the field is the first-order inverse, exact enough for motions of a
few percent of the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.interpolate import LinearNDInterpolator
from scipy.ndimage import gaussian_filter

BASES = ("open", "spread", "press", "bite", "blink")
FIELD_STEP = 4  # the fields are interpolated on every 4th pixel, then smoothed and upsampled
BORDER = [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5]]  # fixed


def _points(value: object) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 3 or not np.isfinite(array).all():
        raise ValueError("a landmark ring needs at least three [x, y] points")
    if array.min() < -0.5 or array.max() > 1.5:
        raise ValueError("landmarks lie far outside the image")
    if np.ptp(array[:, 0]) <= 0:
        raise ValueError("a landmark ring has no width")
    return array


@dataclass
class Layout:
    """Landmark rings in pixels (x right, y down) of a width × height portrait."""

    width: int
    height: int
    mouth_outer: np.ndarray
    mouth_inner: np.ndarray
    left_eye: np.ndarray
    right_eye: np.ndarray
    jaw: np.ndarray
    nose: np.ndarray

    @classmethod
    def from_face(cls, face: dict, width: int, height: int) -> Layout:
        """From the avatar's `face` JSON (coordinates 0..1 of the image); ValueError if bad."""
        scale = np.array([width, height], dtype=np.float64)
        rings = face["points"]
        return cls(
            width,
            height,
            *(
                _points(rings[name]) * scale
                for name in ("mouth_outer", "mouth_inner", "left_eye", "right_eye", "jaw", "nose")
            ),
        )

    @classmethod
    def synthetic(cls, mouth: tuple[float, float], width: int, height: int) -> Layout:
        """A frontal face around the hand-set mouth point, proportioned like the drawn avatars
        (the mouth ~14% of the image wide, the eyes 9% to each side and 24% higher)."""
        mx, my = mouth[0] * width, mouth[1] * height
        size = min(width, height)
        a = 0.14 * size  # mouth width
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        outer = np.stack(
            [mx + 0.5 * a * np.cos(t), my + a * np.where(np.sin(t) > 0, 0.2, 0.12) * np.sin(t)], 1
        )
        inner = np.stack([mx + 0.42 * a * np.cos(t), my + 0.01 * a * np.sin(t)], 1)

        def eye(cx: float) -> np.ndarray:
            cy = my - 0.24 * height
            return np.stack([cx + 0.035 * size * np.cos(t), cy + 0.013 * size * np.sin(t)], 1)

        s = np.linspace(0, np.pi, 17)
        jaw = np.stack(
            [mx - 0.23 * size * np.cos(s), my - 0.2 * height + 0.3 * height * np.sin(s)], 1
        )
        nose = np.array(
            [[mx, my - 0.17 * height], [mx - 0.03 * size, my - 0.08 * height]]
            + [[mx + 0.03 * size, my - 0.08 * height], [mx, my - 0.075 * height]]
        )
        return cls(
            width, height, outer, inner, eye(mx - 0.09 * width), eye(mx + 0.09 * width), jaw, nose
        )

    @property
    def mouth_width(self) -> float:
        return float(np.ptp(self.mouth_outer[:, 0]))

    @property
    def mouth_centre(self) -> np.ndarray:
        return self.mouth_outer.mean(axis=0)

    def face_box(self) -> tuple[float, float, float, float]:
        every = np.concatenate([self.jaw, self.left_eye, self.right_eye, self.mouth_outer])
        x0, y0 = every.min(axis=0)
        x1, y1 = every.max(axis=0)
        y0 -= 0.6 * (y1 - y0)  # the forehead above the eyes
        return float(x0), float(y0), float(x1), float(y1)


def split_ring(ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower arcs of a closed ring, each from the left corner to the right one."""
    left, right = int(np.argmin(ring[:, 0])), int(np.argmax(ring[:, 0]))
    n = len(ring)
    one = [ring[(left + i) % n] for i in range((right - left) % n + 1)]
    other = [ring[(left - i) % n] for i in range((left - right) % n + 1)]
    a, b = np.array(one), np.array(other)
    return (a, b) if a[:, 1].mean() <= b[:, 1].mean() else (b, a)


class Mesh:
    """The landmarks, the anchors, and every channel's displacement of them (pixels)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        a = max(layout.mouth_width, 4.0)
        centre = layout.mouth_centre
        self.outer_upper, self.outer_lower = split_ring(layout.mouth_outer)
        self.inner_upper, self.inner_lower = split_ring(layout.mouth_inner)
        groups = {
            "outer_upper": self.outer_upper,
            "outer_lower": self.outer_lower,
            "inner_upper": self.inner_upper,
            "inner_lower": self.inner_lower,
        }
        self.names = list(groups)
        moving = list(groups.values())
        eyes = [layout.left_eye, layout.right_eye]
        fixed = [layout.nose, *self._anchors()]
        self.points = np.concatenate(moving + eyes + [layout.jaw] + fixed)
        self.slices: dict[str, slice] = {}
        start = 0
        for name, arr in [*groups.items(), ("left_eye", eyes[0]), ("right_eye", eyes[1])]:
            self.slices[name] = slice(start, start + len(arr))
            start += len(arr)
        self.slices["jaw"] = slice(start, start + len(layout.jaw))
        self.disp = np.zeros((len(BASES), len(self.points), 2))
        half = a / 2
        gap = self._gap()

        def prof(xs: np.ndarray) -> np.ndarray:
            return np.sqrt(np.clip(1 - ((xs - centre[0]) / half) ** 2, 0, 1))

        for name in self.names:
            pts = self.points[self.slices[name]]
            p = prof(pts[:, 0])
            u = np.clip((pts[:, 0] - centre[0]) / half, -1, 1)
            upper = name.endswith("upper")
            inner = name.startswith("inner")
            d = {k: np.zeros_like(pts) for k in BASES[:4]}
            if upper:
                d["open"][:, 1] = -0.06 * a * p
                d["spread"][:, 1] = 0.03 * a * p
                d["press"][:, 1] = 0.025 * a * p + (gap(pts[:, 0]) / 2 if inner else 0)
                d["bite"][:, 1] = -0.07 * a * p
            else:
                d["open"][:, 1] = 0.3 * a * (0.25 + 0.75 * p)
                d["spread"][:, 1] = -0.03 * a * p
                d["press"][:, 1] = -0.025 * a * p - (gap(pts[:, 0]) / 2 if inner else 0)
                d["bite"][:, 1] = -0.09 * a * p
            d["open"][:, 0] = -0.03 * a * u * (1 - p)  # the corners come in a little
            d["open"][:, 1] += 0.06 * a * (1 - p)  # ... and down with the jaw
            d["spread"][:, 0] = 0.12 * a * u
            d["spread"][:, 1] += -0.02 * a * (1 - p)
            for k, name_k in enumerate(BASES[:4]):
                self.disp[k, self.slices[name]] = d[name_k]
        jaw = self.points[self.slices["jaw"]]
        jaw_half = max(float(np.ptp(jaw[:, 0])) / 2, half)
        chin = np.clip(1 - ((jaw[:, 0] - centre[0]) / jaw_half) ** 2, 0, 1)
        chin *= np.clip((jaw[:, 1] - centre[1]) / (0.5 * a) + 0.5, 0, 1)
        self.disp[BASES.index("open"), self.slices["jaw"], 1] = 0.3 * a * chin
        self.disp[BASES.index("bite"), self.slices["jaw"], 1] = 0.03 * a * chin
        for name in ("left_eye", "right_eye"):
            self._blink(name)

    def _gap(self):  # noqa: ANN202 - a closure over the rest mouth
        """Rest distance between the inner lips as a function of x."""
        up = self.inner_upper[np.argsort(self.inner_upper[:, 0])]
        lo = self.inner_lower[np.argsort(self.inner_lower[:, 0])]

        def gap(xs: np.ndarray) -> np.ndarray:
            return np.maximum(
                0.0, np.interp(xs, lo[:, 0], lo[:, 1]) - np.interp(xs, up[:, 0], up[:, 1])
            )

        return gap

    def _blink(self, name: str) -> None:
        sl = self.slices[name]
        ring = self.points[sl]
        upper, lower = split_ring(ring)
        lo = lower[np.argsort(lower[:, 0])]
        cy = ring[:, 1].mean()
        d = np.zeros_like(ring)
        below = np.interp(ring[:, 0], lo[:, 0], lo[:, 1])
        is_upper = ring[:, 1] < cy
        d[is_upper, 1] = 0.92 * (below[is_upper] - ring[is_upper, 1])
        height = np.ptp(ring[:, 1])
        d[~is_upper, 1] = -0.08 * height * (ring[~is_upper, 1] > cy)
        self.disp[BASES.index("blink"), sl] = d

    def _anchors(self) -> list[np.ndarray]:
        """Points that never move: around each eye, a ring around the face, the border."""
        lay = self.layout
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        out = []
        for eye in (lay.left_eye, lay.right_eye):
            c = eye.mean(axis=0)
            rx = max(np.ptp(eye[:, 0]), 4.0)
            ry = max(np.ptp(eye[:, 1]) * 2.2, 0.45 * rx)
            out.append(np.stack([c[0] + rx * np.cos(t), c[1] + ry * np.sin(t)], 1))
        x0, y0, x1, y1 = lay.face_box()
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx, ry = 0.5 * (x1 - x0) * 1.3, 0.5 * (y1 - y0) * 1.2
        s = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        out.append(np.stack([cx + rx * np.cos(s), cy + ry * np.sin(s)], 1))
        w, h = lay.width, lay.height
        out.append(np.array(BORDER, dtype=np.float64) * [w, h])
        return out

    def moved(self, group: str, params: np.ndarray) -> np.ndarray:
        """(B, n, 2) positions of a landmark group for (B, len(BASES)) channel values."""
        sl = self.slices[group]
        return self.points[sl][None] + np.einsum("bk,knd->bnd", params, self.disp[:, sl])

    def fields(self) -> torch.Tensor:
        """(len(BASES), H, W, 2) forward displacement fields in pixels over the portrait.

        Only the face ring's box is computed: outside it every point is fixed."""
        w, h = self.layout.width, self.layout.height
        sigma = max(0.75, 0.035 * self.layout.mouth_width / FIELD_STEP)
        margin = (3 * sigma + 2) * FIELD_STEP
        inner = self.points[: -len(BORDER)]
        x0, y0 = (np.floor((inner.min(axis=0) - margin) / FIELD_STEP) * FIELD_STEP).astype(int)
        x1, y1 = (np.ceil((inner.max(axis=0) + margin) / FIELD_STEP) * FIELD_STEP).astype(int)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = (
            min(w + FIELD_STEP, max(x1, x0 + FIELD_STEP)),
            min(h + FIELD_STEP, max(y1, y0 + FIELD_STEP)),
        )
        ys = np.arange(y0, y1 + 1, FIELD_STEP, dtype=np.float64)
        xs = np.arange(x0, x1 + 1, FIELD_STEP, dtype=np.float64)
        gx, gy = np.meshgrid(xs, ys)
        values = self.disp.transpose(1, 0, 2).reshape(len(self.points), -1)
        coarse = LinearNDInterpolator(self.points, values, fill_value=0.0)(gx, gy)
        coarse = coarse.reshape(len(ys), len(xs), len(BASES) * 2)
        coarse = gaussian_filter(coarse, sigma=(sigma, sigma, 0), mode="constant")
        # to every pixel (bilinear; coarse sample j lands on pixel x0 + j * STEP)
        chw = torch.from_numpy(coarse.astype(np.float32)).permute(2, 0, 1)[None]
        dense = F.interpolate(
            chw,
            size=((len(ys) - 1) * FIELD_STEP + 1, (len(xs) - 1) * FIELD_STEP + 1),
            mode="bilinear",
            align_corners=True,
        )[0]
        out = torch.zeros(len(BASES) * 2, h, w)
        rows, cols = min(h, y0 + dense.shape[1]) - y0, min(w, x0 + dense.shape[2]) - x0
        out[:, y0 : y0 + rows, x0 : x0 + cols] = dense[:, :rows, :cols]
        return out.view(len(BASES), 2, h, w).permute(0, 2, 3, 1).contiguous()
