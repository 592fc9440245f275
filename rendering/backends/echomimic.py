"""The `echomimic` backend: EchoMimic's accelerated audio-to-video pipeline (docs/echomimic.md).

The upstream code is imported from ECHOMIMIC_DIR and its weights read from
ECHOMIMIC_WEIGHTS_DIR once, when the worker process starts (never per task). The pipeline
is several times slower than real time even on large GPUs, so the audio is rendered in
chunks of about RENDER_SEGMENT_S: each chunk becomes a playable segment while the next one
renders. The pipeline never calls its own progress callback, so progress and cancellation
hook the scheduler's step, which runs once per denoising step.

What goes in is what upstream's own preprocessing makes: the portrait as the square crop
around the face, the face mask as the face's box grown by a tenth (from the stored
landmarks), and the speech as a 16 kHz float array, which upstream's Whisper takes as it is,
so the `ffmpeg` program it would run to decode a file is never needed.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from avatars.face import Face, FaceError, crop_square
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
from rendering.backends.echomimic_imports import missing_requirements
from rendering.media import AudioTrack, Speech, load_speech
from rendering.segments import SegmentWriter

PIPELINE_MODULE = "src/pipelines/pipeline_echo_mimic_acc.py"
INFERENCE_CONFIG = "configs/inference/inference_v2.yaml"
WEIGHTS = [
    "denoising_unet_acc.pth",
    "motion_module_acc.pth",
    "reference_unet.pth",
    "face_locator.pth",
    "audio_processor/whisper_tiny.pt",
    "sd-vae-ft-mse/config.json",
    "sd-image-variations-diffusers/unet/config.json",
]
ANY_OF = {  # weights that come as .bin or .safetensors
    "sd-vae-ft-mse/diffusion_pytorch_model": (".safetensors", ".bin"),
    "sd-image-variations-diffusers/unet/diffusion_pytorch_model": (".safetensors", ".bin"),
}
STEPS, CFG, CONTEXT_FRAMES, CONTEXT_OVERLAP, SEED = 6, 1.0, 12, 3, 420
SIZE = 512  # the accelerated weights are trained at 512×512
WHISPER_RATE = 16_000
MASK_DILATION = 0.1  # upstream's facemusk_dilation_ratio


def missing_parts() -> list[str]:
    """Everything this machine lacks to run the backend, named so a person can fix it."""
    missing: list[str] = []
    install = Path(settings.ECHOMIMIC_DIR) if settings.ECHOMIMIC_DIR else None
    weights = Path(settings.ECHOMIMIC_WEIGHTS_DIR) if settings.ECHOMIMIC_WEIGHTS_DIR else None
    if install is None:
        missing.append("ECHOMIMIC_DIR is not set")
    elif not (install / PIPELINE_MODULE).is_file():
        missing.append(
            f"ECHOMIMIC_DIR {install} has no {PIPELINE_MODULE} (clone antgroup/echomimic)"
        )
        install = None
    elif not (install / INFERENCE_CONFIG).is_file():
        missing.append(f"ECHOMIMIC_DIR {install} has no {INFERENCE_CONFIG}")
    if weights is None:
        missing.append("ECHOMIMIC_WEIGHTS_DIR is not set")
    elif not weights.is_dir():
        missing.append(f"ECHOMIMIC_WEIGHTS_DIR {weights} does not exist")
    else:
        absent = [name for name in WEIGHTS if not (weights / name).is_file()]
        absent += [
            stem + suffixes[0]
            for stem, suffixes in ANY_OF.items()
            if not any((weights / (stem + s)).is_file() for s in suffixes)
        ]
        if absent:
            missing.append(f"weights missing in {weights}: {', '.join(absent)}")
    packages = missing_requirements(install)
    if packages:
        missing.append(f"Python packages missing: {', '.join(packages)}")
    import torch

    if not torch.cuda.is_available() or settings.RENDER_DEVICE == "cpu":
        missing.append("a CUDA GPU (the pipeline runs in fp16 on cuda only)")
    return missing


def to_whisper_rate(speech: Speech) -> np.ndarray:
    """The speech as the mono float32 array at 16 kHz that upstream's Whisper reads."""
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(speech.samples, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = speech.rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_RATE)
    parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def mask_box(face: Face) -> tuple[float, float, float, float]:
    """The face region the face locator animates, from the landmarks (fractions): ear to ear
    across, brow line to chin down, grown by a tenth on every side as upstream grows its
    detector's box."""
    jaw = np.asarray(face.points["jaw"])
    eyes = np.asarray(face.points["left_eye"] + face.points["right_eye"])
    x0, x1 = float(min(jaw[:, 0].min(), eyes[:, 0].min())), float(jaw[:, 0].max())
    x1 = max(x1, float(eyes[:, 0].max()))
    chin, eye_line = float(jaw[:, 1].max()), float(eyes[:, 1].mean())
    y0, y1 = eye_line - 0.45 * (chin - eye_line), chin  # the brows sit above the eyes
    dx, dy = MASK_DILATION * (x1 - x0), MASK_DILATION * (y1 - y0)
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy)


def mouth_box(mouth: tuple[float, float]) -> tuple[float, float, float, float]:
    """The face region estimated from a hand-set mouth point (drawings with no landmarks)."""
    mx, my = mouth
    return max(0.0, mx - 0.25), max(0.0, my - 0.45), min(1.0, mx + 0.25), min(1.0, my + 0.18)


def reference_image(
    image: Any, mouth: tuple[float, float], face: dict | None, size: int
) -> tuple[Any, tuple[float, float, float, float]]:
    """The portrait as the square the pipeline is given, and the face mask's box in it.

    With landmarks: the crop around the face (the stored avatar image already is one, so this
    keeps it whole). Without: the largest square holding the hand-set mouth point where a
    drawn portrait has it (70 % down), instead of stretching the whole image."""
    from PIL import Image

    if face:
        crop, in_crop = crop_square(image, Face.from_json(face), size=size)
        return crop, mask_box(in_crop)
    w, h = image.size
    side = min(w, h)
    sx = int(np.clip(mouth[0] * w - side / 2, 0, w - side))
    sy = int(np.clip(mouth[1] * h - 0.7 * side, 0, h - side))
    crop = image.crop((sx, sy, sx + side, sy + side)).resize((size, size), Image.Resampling.LANCZOS)
    moved = ((mouth[0] * w - sx) / side, (mouth[1] * h - sy) / side)
    return crop, mouth_box(moved)


class EchoMimicBackend(RenderBackend):
    name = "echomimic"

    @classmethod
    def check(cls) -> str | None:
        missing = missing_parts()
        return "; ".join(missing) if missing else None

    def __init__(self) -> None:
        problem = self.check()
        if problem:
            raise RenderError(f"echomimic backend cannot start: {problem}")
        self.configure("cuda")
        self.pipe = self._load()

    def configure(self, device: str, size: int = SIZE) -> None:
        """Settings of one instance: fp16 on the GPU (the only way it runs in production);
        fp32 elsewhere, which is how the tests drive the same code on a CPU."""
        import torch

        self.fps = settings.RENDER_FPS
        self.segment_s = settings.RENDER_SEGMENT_S
        self.size, self._device = size, device
        self._dtype = torch.float16 if device == "cuda" else torch.float32
        self._hook: Any = None

    @property
    def device(self) -> str:
        return self._device

    def _load(self) -> Any:
        """Build the upstream pipeline once, on this instance's device, scheduler step hooked."""
        import torch
        import yaml
        from diffusers import AutoencoderKL, DDIMScheduler

        install, weights = Path(settings.ECHOMIMIC_DIR), Path(settings.ECHOMIMIC_WEIGHTS_DIR)
        if str(install) not in sys.path:
            sys.path.insert(0, str(install))
        from src.models.face_locator import FaceLocator
        from src.models.unet_2d_condition import UNet2DConditionModel
        from src.models.unet_3d_echo import EchoUNet3DConditionModel
        from src.models.whisper.audio2feature import load_audio_model
        from src.pipelines.pipeline_echo_mimic_acc import Audio2VideoPipeline

        dtype, device = self._dtype, self._device
        infer = yaml.safe_load((install / INFERENCE_CONFIG).read_text())
        base = weights / "sd-image-variations-diffusers"
        vae = AutoencoderKL.from_pretrained(weights / "sd-vae-ft-mse").to(device, dtype=dtype)
        reference = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
        reference.load_state_dict(torch.load(weights / "reference_unet.pth", map_location="cpu"))
        denoising = EchoUNet3DConditionModel.from_pretrained_2d(
            base,
            weights / "motion_module_acc.pth",
            subfolder="unet",
            unet_additional_kwargs=infer["unet_additional_kwargs"],
        )
        denoising.load_state_dict(
            torch.load(weights / "denoising_unet_acc.pth", map_location="cpu"), strict=False
        )
        locator = FaceLocator(320, conditioning_channels=1, block_out_channels=(16, 32, 96, 256))
        locator.load_state_dict(torch.load(weights / "face_locator.pth", map_location="cpu"))
        audio = load_audio_model(
            model_path=str(weights / "audio_processor/whisper_tiny.pt"), device=device
        )
        scheduler = DDIMScheduler(**infer["noise_scheduler_kwargs"])
        pipe = Audio2VideoPipeline(
            vae=vae,
            reference_unet=reference.to(device, dtype=dtype),
            denoising_unet=denoising.to(device, dtype=dtype),
            audio_guider=audio,
            face_locator=locator.to(device, dtype=dtype),
            scheduler=scheduler,
        ).to(device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        self.hook_scheduler(pipe.scheduler)
        return pipe

    def hook_scheduler(self, scheduler: Any) -> None:
        """Wrap the scheduler's step, which the pipeline calls once per denoising step: the
        hook that reports progress and stops a cancelled render. The wrapper keeps the step's
        signature: the pipeline inspects it to decide whether to pass `eta` and `generator`."""
        step = scheduler.step

        @functools.wraps(step)
        def hooked_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            if self._hook is not None:
                self._hook()
            return out

        scheduler.step = hooked_step

    def _face_mask(self, box: tuple[float, float, float, float]) -> Any:
        """The (1, 1, 1, size, size) mask of the face region, 1 inside, as upstream builds it."""
        import torch

        size = self.size
        x0, y0, x1, y1 = (round(v * size) for v in box)
        mask = torch.zeros(size, size)
        mask[y0:y1, x0:x1] = 1.0
        return mask.to(self._device, dtype=self._dtype)[None, None, None]

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
        import torch
        from PIL import Image, UnidentifiedImageError

        from rendering.backends.lite import rgb_frames_to_i420

        started = time.perf_counter()
        try:
            with Image.open(image_path) as image:
                reference, box = reference_image(image.convert("RGB"), mouth, face, self.size)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise RenderError(
                f"avatar image {Path(image_path).name} cannot be read: {exc}"
            ) from None
        except (FaceError, KeyError, TypeError, ValueError) as exc:
            raise RenderError(f"avatar face landmarks cannot be used: {exc}") from None
        speech = load_speech(audio_path)
        pcm = to_whisper_rate(speech)
        frames = speech.frame_count(self.fps)
        out_dir.mkdir(parents=True, exist_ok=True)
        audio = AudioTrack(speech)
        chunk = max(CONTEXT_FRAMES, round(self.segment_s * self.fps))
        spans = [(s, min(s + chunk, frames)) for s in range(0, frames, chunk)]
        total_steps, done_steps = len(spans) * STEPS, 0
        mask = self._face_mask(box)

        def step_done() -> None:
            nonlocal done_steps
            done_steps += 1
            progress(RENDERING_SHARE * done_steps / total_steps, "rendering")
            if should_cancel():
                raise RenderCancelled()

        writer = SegmentWriter(
            out_dir,
            self.size,
            self.size,
            self.fps,
            chunk,
            audio,
            lambda p: on_segment(p.path, p.index, p.start_ms, p.duration_ms),
        )
        self._hook = step_done
        try:
            for start, end in spans:
                lo, hi = (round(f * WHISPER_RATE / self.fps) for f in (start, end))
                part = pcm[lo:hi] if hi > lo else np.zeros(WHISPER_RATE // self.fps, np.float32)
                video = self.pipe(
                    reference,
                    np.ascontiguousarray(part),
                    mask,
                    self.size,
                    self.size,
                    end - start,
                    STEPS,
                    CFG,
                    generator=torch.manual_seed(SEED),
                    audio_sample_rate=WHISPER_RATE,
                    context_frames=CONTEXT_FRAMES,
                    context_overlap=CONTEXT_OVERLAP,
                    fps=self.fps,
                ).videos  # (1, 3, f, h, w) in [0, 1]
                clip = video[0].permute(1, 0, 2, 3)
                if clip.shape[0] < end - start:  # whisper may give a frame less: hold the last
                    pad = clip[-1:].expand(end - start - clip.shape[0], -1, -1, -1)
                    clip = torch.cat([clip, pad])
                for i420 in rgb_frames_to_i420(clip[: end - start]):
                    writer.write(i420)
            progress(ENCODING_PROGRESS, "encoding")
            result_path = writer.finish(out_dir / "video.mp4")
        except BaseException:
            writer.abort()
            raise
        finally:
            self._hook = None
            audio.close()
        return RenderResult(
            video=result_path,
            duration_ms=round(frames * 1000 / self.fps),
            frames=frames,
            width=self.size,
            height=self.size,
            segments=[p.path for p in writer.segments],
            timings={"total_ms": round((time.perf_counter() - started) * 1000, 1)},
        )
