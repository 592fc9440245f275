"""The `echomimic` backend's own work around the upstream pipeline, with a stand-in pipeline
(the real one needs a GPU and its weights): chunks, per-step progress, cancellation, pieces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
import torch

from rendering.backends.base import RenderCancelled
from rendering.backends.echomimic import EchoMimicBackend
from tests.audio import read_wav, speak

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "avatars" / "aria.png"
STEPS = 6


class StandInScheduler:
    def step(self, *args: Any, **kwargs: Any) -> None:
        return None


class StandInPipeline:
    """Called like Audio2VideoPipeline: steps the scheduler, returns a video one frame short
    (as Whisper's chunking can), values in [0, 1] as (1, 3, frames, h, w)."""

    def __init__(self) -> None:
        self.scheduler = StandInScheduler()
        self.calls: list[tuple[str, int]] = []

    def __call__(
        self, ref: Any, audio: str, mask: Any, w: int, h: int, length: int, *a: Any, **k: Any
    ) -> Any:
        self.calls.append((audio, length))
        for _ in range(STEPS):
            self.scheduler.step()
        return type("Output", (), {"videos": torch.rand(1, 3, max(1, length - 1), h, w)})()


def backend() -> EchoMimicBackend:
    """The backend without its models: what __init__ does after loading, on the CPU."""
    instance = EchoMimicBackend.__new__(EchoMimicBackend)
    instance.fps, instance.segment_s, instance.size, instance._device = 25, 2.0, 64, "cpu"
    instance._hook = None
    instance.pipe = StandInPipeline()
    instance.hook_scheduler(instance.pipe.scheduler)
    return instance


def test_renders_in_chunks_with_per_step_progress_and_pieces(tmp_path: Path) -> None:
    wav = speak("One chunk after another, while the rest still renders.")
    pcm, rate = read_wav(wav)
    progress: list[tuple[float, str]] = []
    pieces: list[int] = []
    renderer = backend()
    result = renderer.render(
        FIXTURE,
        wav,
        tmp_path,
        lambda p, s: progress.append((p, s)),
        lambda path, index, *rest: pieces.append(index),
        lambda: False,
    )
    chunks = -(-result.frames // 50)
    assert [length for _, length in renderer.pipe.calls][:-1] == [50] * (chunks - 1)
    assert pieces == list(range(chunks))
    rendering = [p for p, s in progress if s == "rendering"]
    assert len(rendering) == chunks * STEPS and rendering == sorted(rendering)
    assert rendering[-1] == pytest.approx(90) and progress[-1] == (95.0, "encoding")
    with av.open(str(result.video)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert container.streams.audio
    assert frames == result.frames and abs(frames / 25 - len(pcm) / rate) <= 1 / 25


def test_cancel_stops_within_a_denoising_step(tmp_path: Path) -> None:
    steps: list[float] = []
    renderer = backend()
    with pytest.raises(RenderCancelled):
        renderer.render(
            FIXTURE,
            speak("Stop me after a few steps, please."),
            tmp_path,
            lambda p, s: steps.append(p),
            lambda *a: None,
            lambda: len(steps) >= 3,
        )
    assert len(steps) == 3 and len(renderer.pipe.calls) == 1
