"""Render speed of the `lite` backend: 512×512, 25 fps, a ~10 s espeak-ng utterance, H.264 +
AAC encode included. Prints frames per second, the real-time factor (median of several runs),
the time to the first piece in this (warm) process and in a fresh one, and the cost of the
final remux. Runs on CUDA too when torch sees a GPU (RENDER_DEVICE=auto).

    .venv/bin/python bench/render.py [--runs 5] [--device auto|cpu|cuda] [--baseline REF]
                                     [--piecewise]

With --baseline, the `rendering` package of git revision REF (exported to a temporary
directory) renders the same utterance in a second warm process, its renders interleaved with
this tree's (A B A B): on a machine shared with other work the ratio of the two is the figure
that holds, the absolute ones move with the neighbours. The drawn avatar renders from its
mouth point; the photograph (skimage's astronaut cropped to the face, landmarks from
tests.face_mesh) with its landmarks, the baseline with its mouth point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")

LOAD: list[str] = []  # other work on this shared machine shows in the wall-clock figures
IMAGE = ROOT / "fixtures" / "avatars" / "aria.png"
TEXT = (
    "Welcome back! Today I would like to show you three places for your summer trip: "
    "a quiet island in the south, a busy city by the river, and a small village high in "
    "the mountains."
)


def utterance() -> Path:
    path = Path(tempfile.gettempdir()) / "echoproject-bench-render.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), TEXT], check=True)
    return path


def render_once(
    backend: object, wav: Path, image: Path = IMAGE, face: dict | None = None
) -> dict[str, float]:
    """One render into a fresh directory; seconds to the first piece and in all."""
    from rendering.pieces import concat

    out = Path(tempfile.mkdtemp(prefix="bench-render-"))
    first: list[float] = []
    extra: dict = {"face": face} if face else {}
    if face and not getattr(backend, "uses_phonemes", False):  # a renderer before landmarks
        extra = {"mouth": tuple(face["mouth"])}
    cpu = time.process_time()
    start = time.perf_counter()
    result = backend.render(  # type: ignore[attr-defined]
        image,
        wav,
        out,
        lambda p, s: None,
        lambda *a: first.append(time.perf_counter() - start) if not first else None,
        lambda: False,
        **extra,
    )
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    # the final file is a remux of the pieces: time it again on its own
    from rendering.media import AudioTrack, load_speech
    from rendering.pieces import Piece

    pieces = [Piece(i, p, i * 50, 0, 25) for i, p in enumerate(sorted(out.glob("piece-*.mp4")))]
    audio = AudioTrack(load_speech(wav))
    audio.span(0.0, None)  # wait until encoded
    t0 = time.perf_counter()
    concat(pieces, audio, out / "again.mp4")
    remux = time.perf_counter() - t0
    audio.close()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "audio_s": result.duration_ms / 1000,
        "frames": result.frames,
        "seconds": total,
        "cpu_s": cpu,
        "first_piece_s": first[0],
        "remux_s": remux,
    }


def fresh_process(wav: Path) -> dict[str, float]:
    """A new interpreter: time from its start and from the render call to the first piece."""
    code = (
        "import time; t0 = time.perf_counter();"
        "import django; django.setup();"
        "from rendering.backends import get_backend; from bench.render import render_once;"
        "from pathlib import Path; import json;"
        f"b = get_backend(); t1 = time.perf_counter(); r = render_once(b, Path({str(wav)!r}));"
        "print(json.dumps({'first_from_start_s': t1 - t0 + r['first_piece_s'],"
        " 'first_piece_s': r['first_piece_s']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def photo() -> tuple[Path, dict]:
    """The astronaut's face crop and its landmarks as the renderer's `face` JSON."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from tests.face_mesh import face_json, find_face

    path = Path(tempfile.gettempdir()) / "echoproject-bench-astronaut.png"
    image = Image.fromarray(data.astronaut()).crop((112, 10, 332, 230))
    image = image.resize((512, 512), Image.Resampling.LANCZOS)
    image.save(path)
    points = find_face(np.asarray(image), (0, 0, 512, 512))
    return path, face_json(points, 512, 512)


def serve(package_root: str) -> None:
    """Render on request (a JSON line in, a JSON line out) with this tree's `rendering`
    package, or the one under `package_root` (a baseline's)."""
    if package_root:
        sys.path.insert(0, package_root)
    import django

    django.setup()
    from rendering.backends import get_backend

    backend = get_backend()
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        result = render_once(backend, Path(job["wav"]), Path(job["image"]), job.get("face"))
        print(json.dumps(result), flush=True)


class Server:
    """A warm render process, this tree's or one with a baseline's `rendering` package."""

    def __init__(self, baseline: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.render", "--serve", str(baseline or "")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout
        self.proc.stdout.readline()  # "ready": started, backend loaded

    def render(self, wav: Path, image: Path, face: dict | None) -> dict[str, float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"wav": str(wav), "image": str(image), "face": face}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def export(ref: str) -> Path:
    """The `rendering` package of git revision `ref`, in a temporary directory."""
    target = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    archive = subprocess.run(
        ["git", "archive", ref, "rendering"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def compare(ref: str, runs: int, wav: Path) -> None:
    """This tree against `ref`, interleaved, on the drawn avatar and on the photo."""
    baseline_dir = export(ref)
    image, face = photo()
    current, baseline = Server(), Server(baseline_dir)
    try:
        for name, img, landmarks in (("drawn", IMAGE, None), ("photo", image, face)):
            # the first reply of this avatar in these warm processes (the portrait's fields
            # are built then, and cached for the next replies)
            new_here = current.render(wav, img, landmarks)["first_piece_s"]
            new_there = baseline.render(wav, img, landmarks)["first_piece_s"]
            print(
                f"{name:5} first piece of a new avatar in a warm process: this tree "
                f"{new_here * 1000:.0f} ms, baseline {new_there * 1000:.0f} ms"
            )
            mine, theirs = [], []
            for _ in range(runs):
                mine.append(current.render(wav, img, landmarks))
                theirs.append(baseline.render(wav, img, landmarks))
            for label, rows in (("this tree", mine), (f"baseline {ref}", theirs)):
                secs = statistics.median(r["seconds"] for r in rows)
                first = statistics.median(r["first_piece_s"] for r in rows)
                cpu = statistics.median(r["cpu_s"] for r in rows)
                print(
                    f"{name:5} {label:18} render+encode median {secs:.3f} s "
                    f"({rows[0]['audio_s'] / secs:.1f}x real time), first piece "
                    f"{first * 1000:.0f} ms, cpu {cpu:.2f} s"
                )
            pairs = [m["seconds"] / t["seconds"] for m, t in zip(mine, theirs, strict=True)]
            firsts = [
                m["first_piece_s"] / t["first_piece_s"] for m, t in zip(mine, theirs, strict=True)
            ]
            print(
                f"{name:5} ratio this/baseline, median of {runs} pairs: whole render "
                f"{statistics.median(pairs):.2f}, first piece {statistics.median(firsts):.2f}"
            )
    finally:
        current.close()
        baseline.close()
        shutil.rmtree(baseline_dir, ignore_errors=True)


def piecewise_affine(frames: int = 16) -> None:
    """Per-frame cost of moving the face: scikit-image's PiecewiseAffineTransform (estimated
    and applied every frame, as a per-frame mesh needs) against this tree's fields."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage.transform import PiecewiseAffineTransform, warp

    from rendering.backends.lite import Warper, load_portrait
    from rendering.backends.motion import Motion
    from rendering.backends.warp import Layout, Mesh

    rgb = load_portrait(IMAGE, 512)
    layout = Layout.synthetic((0.5, 0.7), 512, 512)
    mesh = Mesh(layout)
    rng = np.random.default_rng(1)
    channels = rng.uniform(0, 1, (frames, mesh.disp.shape[0]))
    image = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255
    start = time.perf_counter()
    for k in range(frames):
        moved = mesh.points + np.einsum("k,knd->nd", channels[k], mesh.disp)
        # output position -> source position
        transform = PiecewiseAffineTransform.from_estimate(moved, mesh.points)
        warp(image, transform, order=1)
    skimage_ms = (time.perf_counter() - start) / frames * 1000
    warper = Warper(rgb, layout, torch.device("cpu"))
    shapes = rng.uniform(0, 1, (frames, 4))
    params = Motion(layout, shapes, 25).params(0, frames)
    warper.frames(params[:8])
    start = time.perf_counter()
    for i in range(0, frames, 8):
        warper.frames(params[i : i + 8])
    ours_ms = (time.perf_counter() - start) / frames * 1000
    print(
        f"moving the face, 512x512, per frame: skimage PiecewiseAffineTransform (grey only) "
        f"{skimage_ms:.0f} ms, this tree's fields (Y and UV, mouth painted) {ours_ms:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--baseline", help="a git revision to compare with, e.g. main")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: a render process
    parser.add_argument(
        "--piecewise", action="store_true", help="also time skimage's piecewise-affine warp"
    )
    args = parser.parse_args()
    os.environ["RENDER_DEVICE"] = args.device
    if args.serve is not None:
        serve(args.serve)
        return
    import django

    django.setup()
    import torch

    from rendering.backends import get_backend

    wav = utterance()
    LOAD.append(f"{os.getloadavg()[0]:.2f}")
    fresh = fresh_process(wav)
    backend = get_backend()
    render_once(backend, wav)  # warm-up
    runs = [render_once(backend, wav) for _ in range(args.runs)]
    seconds = [r["seconds"] for r in runs]
    audio_s, frames = runs[0]["audio_s"], runs[0]["frames"]
    median = statistics.median(seconds)
    print(
        f"device: {backend.device}  torch threads: {torch.get_num_threads()}  cpus: {os.cpu_count()}"
    )
    print(f"utterance: {audio_s:.2f} s, {frames} frames at 25 fps, 512x512")
    print(
        f"render+encode: median {median:.3f} s over {len(runs)} runs "
        f"(min {min(seconds):.3f}, max {max(seconds):.3f})"
    )
    print(f"speed: {frames / median:.0f} frames/s, real-time factor {audio_s / median:.1f}x")
    cpu = statistics.median(r["cpu_s"] for r in runs)
    print(
        f"cpu time: median {cpu:.3f} s per render ({cpu / median:.2f} cores busy); "
        f"on 2 idle cores at least {audio_s / max(cpu / 2, 1e-9):.1f}x real time"
    )
    print(f"load average before/after: {LOAD[0]} / {os.getloadavg()[0]:.2f}")
    firsts = sorted(r["first_piece_s"] for r in runs)
    print(f"first piece (warm process): median {statistics.median(firsts) * 1000:.0f} ms")
    print(
        f"first piece (fresh process): {fresh['first_piece_s'] * 1000:.0f} ms after the render "
        f"call, {fresh['first_from_start_s']:.2f} s after interpreter start (imports, model)"
    )
    print(
        f"final remux of the pieces: median "
        f"{statistics.median(r['remux_s'] for r in runs) * 1000:.0f} ms"
    )
    if args.baseline:
        compare(args.baseline, args.runs, wav)
    if args.piecewise:
        piecewise_affine()


if __name__ == "__main__":
    main()
