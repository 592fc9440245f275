"""The `lite` backend: animates the reference portrait from the speech signal with torch.

The mouth takes the shapes of the sounds (visemes.py: from espeak-ng's phonemes when the
render task found them, else from the audio), moving the face as a mesh over its landmarks
(warp.py: the avatar's `face` landmarks, or a face laid out around its mouth point); the eyes
blink, the head sways and breathes (motion.py). All of it is one sampling grid per frame
(mouth.py: the head's affine built directly, plus the mesh's fields), applied with
grid_sample to the Y plane and the half-size UV planes, with the inside of the mouth painted
where the lips part, so frames come out as I420 for x264 with no colour conversion. Warping
(a producer thread, torch releases the GIL) overlaps encoding (this thread). docs/rendering.md
describes it with pictures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import tempfile
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from django.conf import settings
from PIL import Image, UnidentifiedImageError

from rendering.backends.base import (
    DEFAULT_MOUTH,
    ENCODING_PROGRESS,
    RENDERING_SHARE,
    CancelFn,
    ProgressFn,
    RenderBackend,
    RenderCancelled,
    RenderError,
    RenderResult,
    SegmentFn,
)
from rendering.backends.motion import Motion
from rendering.backends.mouth import Fields, MouthInside
from rendering.backends.phonemes import Phone
from rendering.backends.visemes import mouth_shapes
from rendering.backends.warp import BASES, Layout, Mesh
from rendering.media import AudioTrack, load_speech
from rendering.segments import Segment, SegmentWriter, write_clip

BATCH = 8
IDLE_LOOP_S = 8.0  # whole cycles of every idle motion (two breaths), and two blinks
WARPER_CACHE = 8  # portraits whose fields a worker keeps (a few MB each at 512×512)
log = logging.getLogger(__name__)


def select_device(preference: str) -> torch.device:
    """cuda when asked or when `auto` finds a GPU, else cpu."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RenderError("RENDER_DEVICE is cuda but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def load_portrait(path: Path, max_size: int) -> np.ndarray:
    """RGB uint8, longest side at most max_size, both sides multiples of 4 (I420 rows)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
            width, height = image.size
            width, height = width - width % 4, height - height % 4
            if width < 16 or height < 16:
                raise RenderError(f"avatar image {path.name} is too small ({image.size})")
            return np.asarray(image.crop((0, 0, width, height)), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise RenderError(f"avatar image {path.name} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise RenderError(f"avatar image {path.name} cannot be read: {exc}") from None


def rgb_to_i420_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BT.601 limited range (what players assume for untagged yuv420p): Y and half-size UV."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    uv = np.stack([u, v]).reshape(2, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return y, uv


def _ignore(*args: object) -> None:
    return None


def _never() -> bool:
    return False


def face_layout(face: dict | None, mouth: tuple[float, float], width: int, height: int) -> Layout:
    """The avatar's landmarks when it has usable ones, else a face around the mouth point."""
    if face:
        try:
            return Layout.from_face(face, width, height)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("avatar face landmarks unusable (%s): using the mouth point", exc)
    return Layout.synthetic(mouth, width, height)


class LiteBackend(RenderBackend):
    name = "lite"
    uses_phonemes = True

    def __init__(self) -> None:
        self._device = select_device(settings.RENDER_DEVICE)
        if self._device.type == "cpu":
            # half the cores for the warp, the rest for x264 and muxing: measured faster
            # than torch taking every core beside them (bench/render.py, docs/benchmarks.md)
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        self.fps = settings.RENDER_FPS
        self.max_size = settings.RENDER_MAX_SIZE
        self.segment_s = settings.RENDER_SEGMENT_S

        self._warpers: OrderedDict[tuple, Warper] = OrderedDict()
        self._warpers_lock = threading.Lock()  # avatars are prepared in a thread beside renders
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny render at start-up, so the first reply does not pay the one-time costs
        (triangulation, interpolation, encoder set-up: ~0.5-1 s on this machine)."""
        with tempfile.TemporaryDirectory(prefix="lite-warm-up-") as tmp:
            folder = Path(tmp)
            Image.new("RGB", (64, 64), (200, 170, 150)).save(folder / "face.png")
            with wave.open(str(folder / "quiet.wav"), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(16000)
                out.writeframes(bytes(2 * 3200))
            self.render(
                folder / "face.png", folder / "quiet.wav", folder / "out", _ignore, _ignore, _never
            )
        self._warpers.clear()

    @property
    def device(self) -> str:
        return str(self._device)

    def warper(self, rgb: np.ndarray, layout: Layout) -> Warper:
        """The portrait's mesh fields, built once per avatar (when the worker prepares it, or
        on its first reply) and kept for the next replies."""
        points = [layout.mouth_outer, layout.mouth_inner, layout.left_eye, layout.jaw]
        key = (
            hashlib.sha1(rgb.tobytes()).hexdigest(),
            rgb.shape,
            np.concatenate(points).round(2).tobytes(),
        )
        with self._warpers_lock:
            if key in self._warpers:
                self._warpers.move_to_end(key)
                return self._warpers[key]
            warper = Warper(rgb, layout, self._device)
            self._warpers[key] = warper
            while len(self._warpers) > WARPER_CACHE:
                self._warpers.popitem(last=False)
            return warper

    def prepare(
        self,
        image_path: Path,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> bool:
        """Build the portrait's mesh fields now and warp one batch of frames with them (the
        first batch at a portrait's crop sizes costs more), so its first reply starts at once."""
        rgb = load_portrait(Path(image_path), self.max_size)
        height, width = rgb.shape[:2]
        layout = face_layout(face, mouth, width, height)
        rest = np.zeros((BATCH, len(BASES) - 1), dtype=np.float32)
        self.warper(rgb, layout).frames(Motion(layout, rest, self.fps).params(0, BATCH))
        return True

    def idle_clip(
        self,
        image_path: Path,
        out_path: Path,
        *,
        mouth: tuple[float, float] = DEFAULT_MOUTH,
        face: dict | None = None,
    ) -> Path:
        """IDLE_LOOP_S of the face at rest (the portrait's own mouth), breathing, swaying and
        blinking, in a loop: its last frame leads into its first as any two frames do."""
        rgb = load_portrait(Path(image_path), self.max_size)
        height, width = rgb.shape[:2]
        layout = face_layout(face, mouth, width, height)
        warper = self.warper(rgb, layout)
        frames = round(IDLE_LOOP_S * self.fps)
        rest = np.zeros((frames, len(BASES) - 1), dtype=np.float32)
        motion = Motion(layout, rest, self.fps, loop=True)

        def batches() -> Iterator[np.ndarray]:
            for start in range(0, frames, BATCH):
                yield from warper.frames(motion.params(start, min(start + BATCH, frames)))

        return write_clip(batches(), out_path, width, height, self.fps)

    @classmethod
    def check(cls) -> str | None:
        import av

        missing = [c for c in ("libx264", "aac") if c not in av.codecs_available]
        if missing:
            return f"PyAV's FFmpeg lacks the encoders {', '.join(missing)}"
        if settings.RENDER_DEVICE == "cuda" and not torch.cuda.is_available():
            return "RENDER_DEVICE is cuda but torch sees no CUDA device"
        return None

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
        phonemes: list[Phone] | None = None,
    ) -> RenderResult:
        started = time.perf_counter()
        rgb = load_portrait(Path(image_path), self.max_size)
        speech = load_speech(audio_path)
        frames = speech.frame_count(self.fps)
        out_dir.mkdir(parents=True, exist_ok=True)
        height, width = rgb.shape[:2]
        layout = face_layout(face, mouth, width, height)
        motion = Motion(layout, mouth_shapes(speech, self.fps, frames, phonemes), self.fps)
        warper = self.warper(rgb, layout)
        prepared = time.perf_counter()

        def segment_done(segment: Segment) -> None:
            on_segment(segment.path, segment.index, segment.start_ms, segment.duration_ms)

        audio = AudioTrack(speech)  # encodes beside the frames
        writer = SegmentWriter(
            out_dir, width, height, self.fps, round(self.segment_s * self.fps), audio, segment_done
        )
        producer = BatchProducer(warper, motion, frames)
        producer.start()
        try:
            for batch in producer:
                for i420 in batch:
                    writer.write(i420)
                progress(RENDERING_SHARE * writer.frames_written / frames, "rendering")
                if should_cancel():
                    raise RenderCancelled()
            progress(ENCODING_PROGRESS, "encoding")
            video = writer.finish(out_dir / "video.mp4")
        except BaseException:
            writer.abort()
            raise
        finally:
            producer.stop()
            audio.close()
        done = time.perf_counter()
        return RenderResult(
            video=video,
            duration_ms=round(frames * 1000 / self.fps),
            frames=frames,
            width=width,
            height=height,
            segments=[p.path for p in writer.segments],
            timings={
                "prepare_ms": round((prepared - started) * 1000, 1),
                "frames_ms": round((done - prepared) * 1000, 1),
            },
        )


class Warper:
    """The portrait as Y and UV tensors, the mesh's fields that move it, and the mouth."""

    def __init__(self, rgb: np.ndarray, layout: Layout, device: torch.device) -> None:
        self.device = device
        y, uv = rgb_to_i420_planes(rgb)
        self.height, self.width = y.shape
        self.y = torch.from_numpy(y)[None, None].to(device)
        self.uv = torch.from_numpy(np.ascontiguousarray(uv))[None].to(device)
        mesh = Mesh(layout)
        fields = mesh.fields()  # forward, pixels
        # backward sampling offsets in grid_sample's normalised units (resolution-free)
        norm = fields * torch.tensor([-2 / self.width, -2 / self.height])
        half = F.avg_pool2d(norm.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        self.full = Fields(norm, device, 2 / self.width)
        self.half = Fields(half, device, 4 / self.width)
        self.mouth = MouthInside(mesh, self.full, device)

    @torch.inference_mode()
    def frames(self, params: np.ndarray) -> np.ndarray:
        """I420 frames (B, H*3/2, W) uint8 for motion parameters (B, PARAMS)."""
        p = torch.from_numpy(params).to(self.device)
        batch = p.shape[0]
        h, w = self.height, self.width
        out = torch.empty(batch, h * w * 3 // 2, dtype=torch.uint8, device=self.device)
        grid = self.full.grid(p)
        y = F.grid_sample(
            self.y.expand(batch, -1, -1, -1),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        uv = F.grid_sample(
            self.uv.expand(batch, -1, -1, -1),
            self.half.grid(p),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        self.mouth.paint(y, uv, params, p)
        out[:, : h * w] = y.reshape(batch, -1).add_(0.5).clamp_(0, 255)
        out[:, h * w :] = uv.reshape(batch, -1).add_(0.5).clamp_(0, 255)
        return out.view(batch, h * 3 // 2, w).cpu().numpy()


class BatchProducer:
    """Makes batches of frames in a thread, a couple ahead of the encoder."""

    def __init__(self, warper: Warper, motion: Motion, frames: int) -> None:
        self.warper, self.motion, self.total = warper, motion, frames
        self.queue: queue.Queue[np.ndarray | BaseException | None] = queue.Queue(maxsize=3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lite-warp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for start in range(0, self.total, BATCH):
                if self._stop.is_set():
                    return
                params = self.motion.params(start, min(start + BATCH, self.total))
                self._put(self.warper.frames(params))
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: np.ndarray | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def rgb_frames_to_i420(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) RGB floats in [0, 1] (any device) to (F, H*3/2, W) uint8 I420 frames."""
    count, _, h, w = frames.shape
    rgb = frames.float() * 255
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    uv = F.avg_pool2d(torch.stack([u, v], dim=1), 2)
    out = torch.cat([y.reshape(count, -1), uv.reshape(count, -1)], dim=1)
    return out.add_(0.5).clamp_(0, 255).to(torch.uint8).view(count, h * 3 // 2, w).cpu().numpy()
