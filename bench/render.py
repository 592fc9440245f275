"""Render speed of the `lite` backend: 512×512, 25 fps, a ~10 s espeak-ng utterance, H.264 +
AAC encode included. Prints frames per second, the real-time factor (median of several runs),
the time to the first piece in this (warm) process and in a fresh one, and the cost of the
final remux. Runs on CUDA too when torch sees a GPU (RENDER_DEVICE=auto).

    .venv/bin/python bench/render.py [--runs 5] [--device auto|cpu|cuda]
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
sys.path.insert(0, str(ROOT))
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


def render_once(backend: object, wav: Path) -> dict[str, float]:
    """One render into a fresh directory; seconds to the first piece and in all."""
    from rendering.pieces import concat

    out = Path(tempfile.mkdtemp(prefix="bench-render-"))
    first: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    result = backend.render(  # type: ignore[attr-defined]
        IMAGE,
        wav,
        out,
        lambda p, s: None,
        lambda *a: first.append(time.perf_counter() - start) if not first else None,
        lambda: False,
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()
    os.environ["RENDER_DEVICE"] = args.device
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


if __name__ == "__main__":
    main()
