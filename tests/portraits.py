"""Portraits for tests: the photo fixture's source (NASA's public-domain portrait of Eileen
Collins, shipped by scikit-image) placed on canvases of any size and aspect, and the images
a person could wrongly upload (no face, two faces, a tiny face, a face cut off)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

GREY = (150, 150, 160)


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def placed(canvas: tuple[int, int], size: int, at: tuple[int, int]) -> Image.Image:
    """The 512×512 portrait resized to `size` and pasted at `at` on a grey canvas."""
    image = Image.new("RGB", canvas, GREY)
    image.paste(astronaut().resize((size, size), Image.Resampling.BICUBIC), at)
    return image


def two_faces() -> Image.Image:
    image = Image.new("RGB", (1024, 512), GREY)
    image.paste(astronaut(), (0, 0))
    image.paste(astronaut(), (512, 0))
    return image


def no_face() -> Image.Image:
    rng = np.random.default_rng(7)
    sky = np.linspace(80, 220, 480, dtype=np.float32)[:, None, None] * np.ones((1, 640, 3))
    return Image.fromarray(np.clip(sky + rng.normal(0, 12, sky.shape), 0, 255).astype(np.uint8))


def tiny_face() -> Image.Image:
    """A face about 70 px wide in a 1000×1000 photo: found, but too small to animate."""
    return placed((1000, 1000), 380, (310, 310))


def face_cut_off_left() -> Image.Image:
    """Half of the face beyond the image's left edge."""
    return placed((512, 512), 512, (-200, 0))


def encoded(image: Image.Image, fmt: str, name: str) -> io.BytesIO:
    """The image as an upload: bytes in `fmt` (JPEG, PNG, WEBP) with a file name."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    buffer.name = name
    buffer.seek(0)
    return buffer
