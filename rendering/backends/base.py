"""The interface every render backend implements, and the one error type of the boundary."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# progress(percent 0-100, stage): stage is "rendering" or "encoding"
ProgressFn = Callable[[float, str], None]
# on_segment(path, index, start_ms, duration_ms): a segment is complete and playable
SegmentFn = Callable[[Path, int, int, int], None]
CancelFn = Callable[[], bool]
RENDERING_SHARE = 90.0  # progress while frames are made; "encoding" (the final file) is 95
ENCODING_PROGRESS = 95.0
DEFAULT_MOUTH = (0.5, 0.7)  # the avatar's mouth centre, fractions of width and height


class RenderError(Exception):
    """A render that failed; `retryable` says whether running it again may succeed."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class RenderCancelled(Exception):
    """The render was cancelled (interrupt, session end); its outputs are to be deleted."""


@dataclass
class RenderResult:
    video: Path
    duration_ms: int
    frames: int
    width: int
    height: int
    segments: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class RenderBackend(ABC):
    """Turns a reference portrait and speech audio into an MP4 with that audio.

    One instance per worker process, created lazily on first use: models load in __init__.
    """

    name: str = ""
    uses_phonemes = False  # render() takes `phonemes` (timed espeak-ng phonemes) when True

    @abstractmethod
    def render(
        self,
        image_path: Path,
        audio_path: Path,
        out_dir: Path,
        progress: ProgressFn,
        on_segment: SegmentFn,
        should_cancel: CancelFn,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> RenderResult:
        """Render into out_dir, calling on_segment per segment; RenderCancelled when told to.

        `mouth` is the avatar's mouth centre (fractions), for backends that need a hint;
        `face` its landmarks (the Avatar.face JSON), None when it has none."""

    def prepare(
        self,
        image_path: Path,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> bool:
        """Do the per-avatar work ahead of its first reply (the worker keeps it); True when
        this backend has such work. Called at worker start and when an avatar is saved."""
        return False

    def idle_clip(
        self,
        image_path: Path,
        out_path: Path,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> Path | None:
        """A short silent MP4 of the avatar breathing and blinking that loops seamlessly, for
        the client to play between replies; None when this backend makes none."""
        return None

    @property
    def device(self) -> str:
        return "cpu"

    @classmethod
    def check(cls) -> str | None:
        """Why this backend cannot start on this machine (one line), or None when it can."""
        return None
