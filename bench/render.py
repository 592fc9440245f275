"""Render speed of the `lite` backend: 512×512, 25 fps, a ~10 s espeak-ng utterance, H.264 +
AAC encode included, for each of the three fixture avatars (the drawn Aria and Lin from their
mouth points, the photograph Astra with its stored landmarks). Prints per avatar frames per
second, the real-time factor (median of several runs) and the time to the first 2 s segment in
this (warm) process; then the first segment of an avatar this process has never rendered, with
and without preparing it first (what a render worker does at start and when an avatar is
saved), interleaved; the first segment in a fresh process, and the cost of the final remux.
Runs on CUDA too when torch sees a GPU (RENDER_DEVICE=auto).

    .venv/bin/python bench/render.py [--runs 5] [--device auto|cpu|cuda] [--baseline REF]
                                     [--piecewise]

With --baseline, the `rendering` package of git revision REF (exported to a temporary
directory) renders the same utterance in a second warm process, its renders interleaved with
this tree's (A B A B): on a machine shared with other work the ratio of the two is the figure
that holds, the absolute ones move with the neighbours. Aria renders from its mouth point;
Astra with its landmarks, the baseline with its mouth point.
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
FIXTURES = ("aria", "lin", "astra")  # two drawn, one photograph (fixtures/avatars.json)
NEW_AVATAR_PAIRS = 3
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


def fixture(slug: str) -> tuple[Path, dict]:
    """A fixture avatar's portrait and what the render task passes with it (mouth, face)."""
    entries = json.loads((ROOT / "fixtures" / "avatars.json").read_text())
    entry = next(e for e in entries if e["slug"] == slug)
    landmarks = {"mouth": (entry["mouth_x"], entry["mouth_y"])}
    if entry.get("face"):
        landmarks["face"] = entry["face"]
    return ROOT / "fixtures" / entry["image"], landmarks


def landmark_args(backend: object, landmarks: dict | None) -> dict:
    """`mouth` and `face` as the backend takes them (a renderer before landmarks: the mouth)."""
    landmarks = dict(landmarks or {})
    if landmarks.get("mouth"):
        landmarks["mouth"] = tuple(landmarks["mouth"])
    if not getattr(backend, "uses_phonemes", False):
        landmarks.pop("face", None)
    return landmarks


def render_once(
    backend: object, wav: Path, image: Path = IMAGE, landmarks: dict | None = None
) -> dict[str, float]:
    """One render into a fresh directory; seconds to the first segment and in all."""
    from rendering.segments import concat

    out = Path(tempfile.mkdtemp(prefix="bench-render-"))
    first: list[float] = []
    extra = landmark_args(backend, landmarks)
    cpu = time.process_time()
    start = time.perf_counter()
    result = backend.render(  # type: ignore[attr-defined]
        image,
        wav,
        out,
        lambda p, s: None,
        lambda *a: (
            first.extend([time.perf_counter() - start, time.process_time() - cpu])
            if not first
            else None
        ),
        lambda: False,
        **extra,
    )
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    # the final file is a remux of the segments: time it again on its own
    from rendering.media import AudioTrack, load_speech
    from rendering.segments import Segment

    segments = [
        Segment(i, p, i * 50, 0, 25) for i, p in enumerate(sorted(out.glob("segment-*.mp4")))
    ]
    audio = AudioTrack(load_speech(wav))
    audio.span(0.0, None)  # wait until encoded
    t0 = time.perf_counter()
    concat(segments, audio, out / "again.mp4")
    remux = time.perf_counter() - t0
    audio.close()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "audio_s": result.duration_ms / 1000,
        "frames": result.frames,
        "seconds": total,
        "cpu_s": cpu,
        "first_segment_s": first[0],
        "first_segment_cpu_s": first[1],
        "remux_s": remux,
    }


def fresh_process(wav: Path) -> dict[str, float]:
    """A new interpreter: time from its start and from the render call to the first segment."""
    code = (
        "import time; t0 = time.perf_counter();"
        "import django; django.setup();"
        "from rendering.backends import get_backend; from bench.render import render_once;"
        "from pathlib import Path; import json;"
        f"b = get_backend(); t1 = time.perf_counter(); r = render_once(b, Path({str(wav)!r}));"
        "print(json.dumps({'first_from_start_s': t1 - t0 + r['first_segment_s'],"
        " 'first_segment_s': r['first_segment_s']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


WORKER_MODES = {
    "cold": "nothing prepared (before)",
    "start": "known at start: every fixture prepared, idle loops made",
    "saved": "saved later: the others prepared at start, this one prepared when saved",
}


def worker_process(mode: str, slug: str, wav: Path) -> None:
    """In a fresh render process with its backend loaded (as a worker after start): prepare as
    `mode` says, render `slug` once; prints the first segment and the preparation times."""
    import django

    django.setup()
    from rendering.backends import get_backend

    backend = get_backend()
    idle_s, prepare_s = [], 0.0
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        for other in FIXTURES if mode != "cold" else ():
            if mode == "saved" and other == slug:
                continue
            image, landmarks = fixture(other)
            backend.prepare(image, **landmark_args(backend, landmarks))  # type: ignore[attr-defined]
            start = time.perf_counter()
            backend.idle_clip(
                image, Path(tmp) / f"{other}.mp4", **landmark_args(backend, landmarks)
            )  # type: ignore[attr-defined]
            idle_s.append(time.perf_counter() - start)
    image, landmarks = fixture(slug)
    if mode == "saved":
        start = time.perf_counter()
        backend.prepare(image, **landmark_args(backend, landmarks))  # type: ignore[attr-defined]
        prepare_s = time.perf_counter() - start
    result = render_once(backend, wav, image, landmarks)
    print(json.dumps({**result, "idle_s": idle_s, "prepare_s": prepare_s}))


def fresh_worker(mode: str, slug: str, wav: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.render", "--worker", f"{mode}:{slug}:{wav}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def new_portrait(image: Path, serial: int) -> Path:
    """The portrait with one pixel changed: a portrait no warm process has seen yet."""
    from PIL import Image

    with Image.open(image) as original:
        picture = original.convert("RGB")
    r, g, b = picture.getpixel((0, 0))
    picture.putpixel((0, 0), ((r + 1 + serial) % 256, g, b))
    path = Path(tempfile.gettempdir()) / f"echoproject-bench-new-{os.getpid()}-{serial}.png"
    picture.save(path)
    return path


def new_avatar_first_segment(backend: object, wav: Path, slug: str, serial: int) -> dict:
    """First segment of two avatars this process has never rendered: one rendered at once (its
    mesh built in the render, as before avatars were prepared), one prepared first."""
    image, landmarks = fixture(slug)
    cold = new_portrait(image, 2 * serial)
    before_run = render_once(backend, wav, cold, landmarks)
    warm = new_portrait(image, 2 * serial + 1)
    start = time.perf_counter()
    backend.prepare(warm, **landmark_args(backend, landmarks))  # type: ignore[attr-defined]
    prepare_s = time.perf_counter() - start
    after_run = render_once(backend, wav, warm, landmarks)
    for path in (cold, warm):
        path.unlink(missing_ok=True)
    return {
        "before_s": before_run["first_segment_s"],
        "after_s": after_run["first_segment_s"],
        "before_cpu_s": before_run["first_segment_cpu_s"],
        "after_cpu_s": after_run["first_segment_cpu_s"],
        "prepare_s": prepare_s,
    }


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
        result = render_once(backend, Path(job["wav"]), Path(job["image"]), job.get("landmarks"))
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

    def render(self, wav: Path, image: Path, landmarks: dict | None) -> dict[str, float]:
        assert self.proc.stdin and self.proc.stdout
        job = {"wav": str(wav), "image": str(image), "landmarks": landmarks}
        self.proc.stdin.write(json.dumps(job))
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
    current, baseline = Server(), Server(baseline_dir)
    try:
        for name, slug in (("drawn", "aria"), ("photo", "astra")):
            img, landmarks = fixture(slug)
            # the first reply of this avatar in these warm processes (the portrait's fields
            # are built then, and cached for the next replies)
            new_here = current.render(wav, img, landmarks)["first_segment_s"]
            new_there = baseline.render(wav, img, landmarks)["first_segment_s"]
            print(
                f"{name:5} first segment of a new avatar in a warm process: this tree "
                f"{new_here * 1000:.0f} ms, baseline {new_there * 1000:.0f} ms"
            )
            mine, theirs = [], []
            for _ in range(runs):
                mine.append(current.render(wav, img, landmarks))
                theirs.append(baseline.render(wav, img, landmarks))
            for label, rows in (("this tree", mine), (f"baseline {ref}", theirs)):
                secs = statistics.median(r["seconds"] for r in rows)
                first = statistics.median(r["first_segment_s"] for r in rows)
                cpu = statistics.median(r["cpu_s"] for r in rows)
                print(
                    f"{name:5} {label:18} render+encode median {secs:.3f} s "
                    f"({rows[0]['audio_s'] / secs:.1f}x real time), first segment "
                    f"{first * 1000:.0f} ms, cpu {cpu:.2f} s"
                )
            pairs = [m["seconds"] / t["seconds"] for m, t in zip(mine, theirs, strict=True)]
            firsts = [
                m["first_segment_s"] / t["first_segment_s"]
                for m, t in zip(mine, theirs, strict=True)
            ]
            print(
                f"{name:5} ratio this/baseline, median of {runs} pairs: whole render "
                f"{statistics.median(pairs):.2f}, first segment {statistics.median(firsts):.2f}"
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a fresh worker
    parser.add_argument(
        "--workers", type=int, default=2, help="fresh workers per avatar and preparation"
    )
    parser.add_argument(
        "--piecewise", action="store_true", help="also time skimage's piecewise-affine warp"
    )
    args = parser.parse_args()
    os.environ["RENDER_DEVICE"] = args.device
    if args.serve is not None:
        serve(args.serve)
        return
    if args.worker:
        mode, slug, wav_path = args.worker.split(":", 2)
        worker_process(mode, slug, Path(wav_path))
        return
    import django

    django.setup()
    import torch

    from rendering.backends import get_backend
    from rendering.backends.lite import IDLE_LOOP_S

    wav = utterance()
    LOAD.append(f"{os.getloadavg()[0]:.2f}")
    fresh = fresh_process(wav)
    backend = get_backend()
    print(
        f"device: {backend.device}  torch threads: {torch.get_num_threads()}  cpus: {os.cpu_count()}"
    )
    all_runs = []
    for slug in FIXTURES:
        image, landmarks = fixture(slug)
        render_once(backend, wav, image, landmarks)  # warm-up: this avatar's fields are built
        runs = [render_once(backend, wav, image, landmarks) for _ in range(args.runs)]
        all_runs += runs
        seconds = [r["seconds"] for r in runs]
        audio_s, frames = runs[0]["audio_s"], runs[0]["frames"]
        median = statistics.median(seconds)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        first = statistics.median(r["first_segment_s"] for r in runs)
        first_cpu = statistics.median(r["first_segment_cpu_s"] for r in runs)
        print(
            f"{slug:6} {audio_s:.2f} s, {frames} frames at 25 fps, 512x512: render+encode median "
            f"{median:.3f} s over {len(runs)} runs (min {min(seconds):.3f}, max "
            f"{max(seconds):.3f}), {frames / median:.0f} frames/s, real-time factor "
            f"{audio_s / median:.1f}x; cpu {cpu:.2f} s ({audio_s / max(cpu / 2, 1e-9):.1f}x on "
            f"2 idle cores); first segment (warm process, known avatar) median {first * 1000:.0f} ms "
            f"(cpu {first_cpu * 1000:.0f} ms)"
        )
    # avatars this process has never rendered, rendered at once vs prepared first, interleaved
    for slug in FIXTURES:
        pairs = [
            new_avatar_first_segment(backend, wav, slug, serial)
            for serial in range(NEW_AVATAR_PAIRS)
        ]
        med = {k: statistics.median(p[k] for p in pairs) * 1000 for k in pairs[0]}
        print(
            f"{slug:6} first segment of a new avatar in a warm process, median of "
            f"{NEW_AVATAR_PAIRS}: rendered at once {med['before_s']:.0f} ms "
            f"(cpu {med['before_cpu_s']:.0f} ms), prepared first {med['after_s']:.0f} ms "
            f"(cpu {med['after_cpu_s']:.0f} ms); preparing took {med['prepare_s']:.0f} ms"
        )
    # a render worker just started (backend loaded): the first reply of an avatar
    idle_s: list[float] = []
    for slug in FIXTURES:
        firsts: dict[str, list[dict]] = {mode: [] for mode in WORKER_MODES}
        for _ in range(args.workers):
            for mode in WORKER_MODES:  # interleaved
                result = fresh_worker(mode, slug, wav)
                firsts[mode].append(result)
                idle_s += result["idle_s"]
        figures = ", ".join(
            f"{WORKER_MODES[mode]}: "
            f"{statistics.median(r['first_segment_s'] for r in rows) * 1000:.0f} ms "
            f"(cpu {statistics.median(r['first_segment_cpu_s'] for r in rows) * 1000:.0f} ms)"
            for mode, rows in firsts.items()
        )
        print(f"{slug:6} first segment, fresh worker, median of {args.workers}: {figures}")
    if idle_s:
        print(
            f"idle loop ({IDLE_LOOP_S:.0f} s at 25 fps, 512x512, encoded): median "
            f"{statistics.median(idle_s) * 1000:.0f} ms per avatar"
        )
    print(f"load average before/after: {LOAD[0]} / {os.getloadavg()[0]:.2f}")
    print(
        f"first segment (fresh process): {fresh['first_segment_s'] * 1000:.0f} ms after the render "
        f"call, {fresh['first_from_start_s']:.2f} s after interpreter start (imports, model)"
    )
    print(
        f"final remux of the segments: median "
        f"{statistics.median(r['remux_s'] for r in all_runs) * 1000:.0f} ms"
    )
    if args.baseline:
        compare(args.baseline, args.runs, wav)
    if args.piecewise:
        piecewise_affine()


if __name__ == "__main__":
    main()
